"""The SQLAlchemy backend: SQLite, PostgreSQL and MySQL/MariaDB through one implementation.

Every operation is written once, as a function that runs SQLAlchemy Core statements on a
synchronous :class:`~sqlalchemy.Connection` inside one transaction; a *runner* (:mod:`.runners`)
executes it. Statements are built once and reused, so SQLAlchemy compiles each of them once per
process. On PostgreSQL the hot path (a step record, the start and end of an execution, a
worker's claim), each one statement, runs prepared straight on the driver (:mod:`.direct`).
What differs between databases is in :mod:`.dialects`.

:class:`SQLAlchemyBackend` is composed of one class per area of the domain, each in its module
with its statements (:mod:`.workflows`, :mod:`.execution`, :mod:`.fanout`, :mod:`.claims`,
:mod:`.executors`, :mod:`.messages`, :mod:`.schedules`, :mod:`.wakeups`, :mod:`.outputs`,
:mod:`.retention`, on the shared base :mod:`.core`). This module is the composition root: the
engine and its runner, start and close, migrations, running a transaction or a direct
statement, and turning driver errors into durable's.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from durable.backends.sql import migrate
from durable.backends.sql.batches import Enqueues
from durable.backends.sql.changes import Changes
from durable.backends.sql.checkpoints import WalCheckpointer
from durable.backends.sql.claims import Claims
from durable.backends.sql.continuation import Continuation
from durable.backends.sql.core import first_line, stop_listener
from durable.backends.sql.debounces import Debounces
from durable.backends.sql.dialects import (
    PG_READ_ONLY,
    SQLDialect,
    configure_engine,
    connect_args_for,
    create_engine,
    dialect_for,
    normalize_url,
)
from durable.backends.sql.direct import (
    BlockingDirectStatements,
    CompiledStatement,
    DirectResult,
)
from durable.backends.sql.execution import Execution
from durable.backends.sql.executors import Executors
from durable.backends.sql.fanout import FanOut
from durable.backends.sql.forks import Forks
from durable.backends.sql.labels import Labels
from durable.backends.sql.locking import SQLITE_READING
from durable.backends.sql.messages import Messages
from durable.backends.sql.outputs import Outputs
from durable.backends.sql.queues import Queues
from durable.backends.sql.retention import Retention
from durable.backends.sql.runners import AsyncRunner, InlineRunner, Runner
from durable.backends.sql.schedules import Schedules
from durable.backends.sql.schema import PREFIX
from durable.backends.sql.timeskip import TimeSkipping
from durable.backends.sql.transactions import Transactions
from durable.backends.sql.urls import shown_url
from durable.backends.sql.wakeups import WORK_CHANNEL, WakeUps
from durable.backends.sql.workflows import WorkflowRecords
from durable.errors import (
    BackendError,
    BackendUnavailableError,
    DurableError,
    InvalidArgumentError,
)
from durable.serialization import Serializer, get_serializer

__all__ = ["WORK_CHANNEL", "SQLAlchemyBackend"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: PostgreSQL errors that mean "not now" rather than "not this statement" (besides class 08,
#: connection exceptions): the disk full, out of memory, too many connections, the server
#: shutting down, crashed or starting up (57P01 is also what a backend terminated by
#: pg_terminate_backend reports), and a database that takes no writes (25006: made read-only
#: for maintenance, or a standby that a failover left a connection on).
_UNAVAILABLE_SQLSTATES = frozenset(
    {PG_READ_ONLY, "53100", "53200", "53300", "57P01", "57P02", "57P03"}
)
#: How many times a transaction the database rolled back to break a deadlock runs again.
DEADLOCK_RETRIES = 8


class SQLAlchemyBackend(
    Outputs,
    Debounces,
    Enqueues,
    WorkflowRecords,
    Execution,
    FanOut,
    Continuation,
    Claims,
    Executors,
    Messages,
    Schedules,
    Queues,
    Retention,
    Labels,
    WakeUps,
    Transactions,
    Forks,
    TimeSkipping,
    Changes,
):
    """Durable's storage on SQLite, PostgreSQL or MySQL/MariaDB.

    :param url_or_engine: a database URL (``sqlite:///app.db``, ``sqlite+aiosqlite:///app.db``,
        ``sqlite:///:memory:``, ``postgresql+psycopg://user@host/db``,
        ``mysql://user@host/db``), or an ``Engine`` / ``AsyncEngine`` you created (SQLite
        settings are applied to it).
    :param serializer: ``"json"`` (default), ``"pickle"`` or a :class:`Serializer`.
    :param auto_migrate: apply pending migrations in :meth:`start` (default). When False,
        :meth:`start` raises :class:`SchemaVersionError` unless the schema is current.
    :param sqlite_synchronous: SQLite's ``PRAGMA synchronous``. ``NORMAL`` (default) never loses
        a commit when a process dies, and may lose the last ones if the machine loses power;
        ``FULL`` syncs every commit to disk.
    :param engine_options: passed to SQLAlchemy's ``create_engine`` (pool size and so on;
        on PostgreSQL the pool defaults to 20 connections plus 10 overflow, opened on demand).
    :param clock: for tests only: returns the current UTC time, which then judges every lease,
        due time and deadline and stamps every row this backend writes, in place of this
        host's clock (SQLite) or the database's ``now()`` (PostgreSQL; not on MySQL/MariaDB).
        A test's :class:`~durable.testing.clock.TimeSkippingClock` sets it. Every process on
        the database must then use the same clock: leave it unset in production.

    :raises ConfigurationError: an unsupported URL or option.
    """

    def __init__(
        self,
        url_or_engine: str | URL | sa.Engine | AsyncEngine,
        *,
        serializer: str | Serializer | None = None,
        auto_migrate: bool = True,
        sqlite_synchronous: str = "NORMAL",
        engine_options: dict[str, Any] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.serializer = get_serializer(serializer)
        self.auto_migrate = auto_migrate
        if isinstance(url_or_engine, sa.Engine | AsyncEngine):
            engine = url_or_engine
            configure_engine(engine)
            self._owns_engine = False
        else:
            engine = create_engine(
                normalize_url(url_or_engine),
                sqlite_synchronous=sqlite_synchronous,
                engine_options=engine_options,
            )
            self._owns_engine = True
        self.engine = engine
        self._shown_url = shown_url(engine.url)
        self._runner: Runner = (
            AsyncRunner(engine) if isinstance(engine, AsyncEngine) else InlineRunner(engine)
        )
        self.dialect: SQLDialect = dialect_for(engine.dialect.name, clock)
        self.clock: Callable[[], datetime] = self.dialect.clock
        self._started = False
        self._start_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._direct = isinstance(self._runner, AsyncRunner) and self.dialect.name == "postgresql"
        self._now_direct: CompiledStatement | None = None  # compiled on first use
        self._checkpointer: WalCheckpointer | None = None  # SQLite files: from start()
        # a SQLite file deleted or replaced under the backend (see _lose_file): why it refuses
        self._file_lost: str | None = None
        self._build_statements()
        # sync workflows' threads record steps on connections of their own; only on engines
        # durable created, whose connect arguments it knows
        self._engine_options = dict(engine_options or {}) if self._owns_engine else None
        self._connect_args = connect_args_for(
            engine.url, (engine_options or {}).get("connect_args") if self._owns_engine else None
        )
        self._blocking = (
            BlockingDirectStatements(engine, self._connect_args)
            if isinstance(engine, AsyncEngine) and self._direct and self._owns_engine
            else None
        )

    def use_clock(self, clock: Callable[[], datetime]) -> None:
        """Judge time by ``clock`` from now on, as if it had been given to the constructor (a
        test's time-skipping clock); before :meth:`start` only.

        :raises InvalidArgumentError: the backend has started.
        :raises ConfigurationError: on MySQL/MariaDB.
        """
        if self._started:
            raise InvalidArgumentError(f"{self!r} has started: give it its clock before it starts")
        self.dialect = dialect_for(self.engine.dialect.name, clock)
        self.clock = self.dialect.clock
        self._now_direct = None
        self._build_statements()

    def __repr__(self) -> str:
        url = shown_url(self.engine.url)
        return f"SQLAlchemyBackend({url!r})"

    @property
    def url(self) -> URL:
        return self.engine.url

    def checked_out_connections(self) -> int:
        """How many pooled connections are in use now (0 when idle: nothing leaked)."""
        return self._runner.checked_out()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            await self._run(
                self.dialect.check_server,
                what="check the database server",
                raw=True,
                read_only=True,
            )
            with self._errors("check the database server"):
                await self._runner.check_sessions()
            # reads settle it at head (every start but the first after an upgrade), and the
            # check without auto_migrate, without the write lock, which another process may
            # hold for a while on SQLite
            if not self.auto_migrate:
                await self._run(migrate.check, what="migrate", raw=True, read_only=True)
            elif (
                await self._run(migrate.check_known, what="migrate", raw=True, read_only=True)
                != migrate.head_revision()
            ):
                await self._migrating(migrate.upgrade, what="migrate")
            # read now, so that a check of a caller's connection against it (enqueue_in on a
            # sync connection, also from async code, where nothing may block) needs no query;
            # after the migration: on PostgreSQL it names the schema durable's tables are in
            await self.own_database_identity()
            if self.dialect.name == "sqlite":
                await self._start_checkpointer()
            self._loop = asyncio.get_running_loop()
            self._started = True
            log.debug("backend started: %r", self, extra={"action": "backend.start"})

    async def _start_checkpointer(self) -> None:
        """A SQLite file: checkpoint its write-ahead log on a thread of its own, not in the
        writers' commits (see :mod:`.checkpoints`); nothing for an in-memory database."""
        if self._checkpointer is not None:
            return
        (path,) = await self._read_database_identity()
        if path:
            self._checkpointer = WalCheckpointer(path, on_lost=self._lose_file)
            self._checkpointer.start()

    def _lose_file(self, how: str) -> None:
        """The checkpointer found the SQLite file's path naming no file, or another one: SQLite
        would go on writing to the file it has open, and lose it all with that file. From now on
        every operation is refused (:class:`BackendError`), saying why. (From its thread.)"""
        assert self._checkpointer is not None
        self._file_lost = (
            f"the SQLite database file {self._checkpointer.path} was {how} while this backend had "
            "it open: what it wrote since would be lost with that file, so it writes nothing "
            "more (restore the file, then start the process again)"
        )
        log.error("%s", self._file_lost, extra={"action": "backend.file_lost"})

    def _file_lost_error(self, what: str) -> BackendError:
        """The refusal of ``what`` once the file was lost (see :meth:`_lose_file`)."""
        return BackendError(f"cannot {what}: {self._file_lost}")

    async def close(self) -> None:
        listeners = (self._listener, self._outputs_listener)
        self._listener = self._outputs_listener = None
        for listener in listeners:
            await stop_listener(listener)
        await self._runner.release()
        if self._blocking is not None:
            self._blocking.close()
        self._close_transactions()
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._owns_engine:
            await self._runner.dispose()
        self._started = False

    async def migrate(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Upgrade the schema to ``revision`` now; the revisions it was at before and is at
        after (None: no durable tables), both read while holding the migration lock, so that
        of several processes migrating at once only the one that upgraded sees them differ."""
        return await self._migrating(lambda conn: migrate.upgrade(conn, revision), what="migrate")

    async def downgrade(self, revision: str) -> None:
        """Downgrade the schema to ``revision`` (``"base"`` drops every durable table)."""
        await self._migrating(lambda conn: migrate.downgrade(conn, revision), what="downgrade")

    async def _migrating(self, fn: Callable[[sa.Connection], T], *, what: str) -> T:
        """Run a schema change (or its check) in a transaction of its own, as
        :func:`.migrate.in_transaction` says (on SQLite, with its foreign keys off meanwhile)."""
        if self.dialect.name != "sqlite":
            return await self._run(fn, what=what, raw=True)
        with self._errors(what):
            return await self._runner.connection(lambda conn: migrate.in_transaction(conn, fn))

    async def schema_revision(self) -> str | None:
        """The schema revision the database is at (None: never migrated)."""
        return await self._run(
            migrate.current_revision, what="read the schema revision", raw=True, read_only=True
        )

    async def now(self) -> datetime:
        """The lease clock's time: the database's ``now()`` on PostgreSQL (one query), this
        host's clock on SQLite (no query), as :mod:`.dialects` decides."""
        local = self.dialect.host_now()
        if local is not None:
            return local
        stmt = sa.select(self.dialect.now().label("now"))
        if self._direct:  # one prepared statement on the hot path's connections
            if self._now_direct is None:
                self._now_direct = CompiledStatement(stmt, self.engine.dialect)
            done = await self._run_direct(self._now_direct, {}, what="read the clock")
            if done is not None:
                return done.rows[0]["now"]  # type: ignore[no-any-return]
        return await self._run(lambda conn: conn.execute(stmt).scalar_one(), what="read the clock")

    async def _run(
        self,
        fn: Callable[[sa.Connection], T],
        *,
        what: str = "",
        raw: bool = False,
        retry_also: Callable[[sa.exc.DBAPIError], bool] | None = None,
        read_only: bool = False,
    ) -> T:
        """Run ``fn`` in one transaction, turning driver errors into durable's. ``fn`` gets the
        dialect's connection (on MySQL, one that emulates what the database lacks), or with
        ``raw`` SQLAlchemy's own (Alembic's). A transaction the database rolled back to break a
        deadlock runs again, up to :data:`DEADLOCK_RETRIES` times, as does one whose error
        ``retry_also`` accepts (a race the caller knows a second run wins). ``read_only``: ``fn``
        writes nothing (on SQLite its transaction then begins deferred, and neither takes nor
        waits for the write lock another process may hold)."""
        wrap = self.dialect.connection
        ran: list[bool] = []  # fn returned: an error from then on is the commit's

        def run(conn: sa.Connection) -> T:
            done = fn(conn if raw else wrap(conn))
            ran.append(True)
            return done

        if read_only:
            token = SQLITE_READING.set(True)
            try:
                return await self._run(fn, what=what, raw=raw, retry_also=retry_also)
            finally:
                SQLITE_READING.reset(token)
        with self._errors(what):
            for attempt in range(DEADLOCK_RETRIES + 1):
                try:
                    return await self._runner.transaction(run)
                except sa.exc.DBAPIError as exc:
                    # a connection the server had closed (an idle timeout, a restart) just
                    # after it passed the pool's check: lost before the commit, nothing of the
                    # transaction was written, so it runs once more on another connection
                    lost = exc.connection_invalidated and not ran and attempt == 0
                    again = (
                        lost
                        or self.dialect.retryable(exc)
                        or (retry_also is not None and retry_also(exc))
                    )
                    if attempt == DEADLOCK_RETRIES or not again:
                        raise
                    ran.clear()
                    log.debug(
                        "%s, running again: %s",
                        "connection lost" if lost else "deadlock",
                        what,
                        extra={"action": "retry"},
                    )
                    await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_revision(self, connection: sa.Connection) -> None:
        """Refuse a database (on a caller's ``connection``) whose durable tables are not at this
        code's revision (:func:`.migrate.check`).

        :raises SchemaVersionError: they are missing, out of date, or from a newer durable.
        """
        migrate.check(connection)

    def _errors(self, what: str, *, url: str | None = None) -> _Translating:
        """Turn driver and SQLAlchemy errors raised inside into durable's, naming ``what`` was
        being done: :class:`BackendUnavailableError` when the database cannot be reached (it
        refuses or drops connections, is starting up or shutting down, has too many clients, or
        no pooled connection came free in time), :class:`BackendError` for any other failure.
        Nothing else escapes, so callers that retry on ``DurableError`` survive an outage.
        ``url``: the database the errors name (default: this backend's; a caller's connection
        is another engine's)."""
        return _Translating(self, what, url)

    def _translated(self, exc: Exception, doing: str, url: str | None = None) -> Exception:
        """The durable error for ``exc`` (see :meth:`_errors`)."""
        url = url or self._shown_url
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        if isinstance(exc, dbapi_error):  # a driver error nobody wrapped: as SQLAlchemy would
            exc = sa.exc.DBAPIError.instance(
                None, None, exc, dbapi_error, dialect=self.engine.dialect
            )
        if isinstance(exc, sa.exc.DBAPIError):
            table = self.dialect.missing_table(exc)
            if table is not None and table.startswith(PREFIX):  # dropped, or never created
                return migrate.missing_tables(url, f" (no table {table})")
            if self._unavailable(exc):
                reason = first_line(exc.orig)
                if _refuses_writes(exc, reason):  # reachable: it takes no writes now
                    return BackendUnavailableError(
                        f"the database at {url} takes no writes now, so cannot {doing}: {reason}"
                    )
                return BackendUnavailableError(
                    f"cannot reach the database at {url} to {doing}: {reason}"
                )
            return BackendError(
                f"database error at {url} while trying to {doing}: {first_line(exc.orig)}"
            )
        if isinstance(exc, sa.exc.TimeoutError):  # the pool: no connection came free in time
            return BackendUnavailableError(
                f"no pooled connection to the database at {url} came free to {doing} (raise "
                f"pool_size, max_overflow or pool_timeout in engine_options): {first_line(exc)}"
            )
        if isinstance(exc, sa.exc.StatementError) and isinstance(exc.orig, ValueError):
            # a column type refused a value: a naive datetime
            return InvalidArgumentError(f"cannot {doing}: {exc.orig}")
        return BackendError(f"cannot {doing} at {url}: {type(exc).__name__}: {first_line(exc)}")

    def _unavailable(self, exc: sa.exc.DBAPIError) -> bool:
        """Whether ``exc`` says the database cannot be reached now (worth retrying as is), as
        opposed to a statement it refused."""
        if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            # psycopg raises a database's refusal to write as an InternalError
            return getattr(exc.orig, "sqlstate", None) == PG_READ_ONLY
        if exc.connection_invalidated or (not self._started and exc.statement is None):
            return True  # lost, or never made (refused, unknown host, bad credentials)
        known = self.dialect.unavailable(exc)
        if known is not None:
            return known
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate is None:  # psycopg: a failure of the connection itself (refused, lost)
            return self.dialect.name == "postgresql"
        return sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES

    async def _run_direct(
        self, statement: CompiledStatement | None, params: dict[str, Any], *, what: str
    ) -> DirectResult | None:
        """Run one of the hot path's single statements straight on the driver; None where the
        direct path does not apply (the caller then runs it in :meth:`_run`)."""
        if statement is None:
            return None
        with self._errors(what):
            return await self._runner.direct(statement, params)

    def _build_statements(self) -> None:
        """Every area's statements, built once per backend (building one costs more than
        running it): the shared ones first, which the others are built from."""
        self._build_core_statements()
        self._build_workflow_statements()
        self._build_execution_statements()
        self._build_fanout_statements()
        self._build_continuation_statements()
        self._build_claim_statements()
        self._build_wakeup_statements()
        self._build_enqueue_statements()
        self._build_message_statements()
        self._build_output_statements()
        self._build_debounce_statements()


def _refuses_writes(exc: sa.exc.DBAPIError, reason: str) -> bool:
    """Whether ``exc``, which says the database is unavailable, is a database that answers but
    takes no writes (read-only, its disk full), not one that cannot be reached."""
    if getattr(exc.orig, "sqlstate", None) == PG_READ_ONLY:
        return True
    lowered = reason.lower()
    return "disk is full" in lowered or "no space left" in lowered or "read-only" in lowered


class _Translating:
    """The context manager of :meth:`SQLAlchemyBackend._errors` (a class: every hot-path
    statement enters one, and a generator-based one costs several times more)."""

    __slots__ = ("_backend", "_url", "_what")

    def __init__(self, backend: SQLAlchemyBackend, what: str, url: str | None = None) -> None:
        self._backend = backend
        self._what = what
        self._url = url

    def __enter__(self) -> None:
        backend = self._backend
        if backend._file_lost is not None:
            raise backend._file_lost_error(self._what or "run a query")

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, DurableError):
            return
        backend = self._backend
        if isinstance(exc, (sa.exc.SQLAlchemyError, backend.engine.dialect.loaded_dbapi.Error)):
            raise backend._translated(exc, self._what or "run a query", self._url) from exc
