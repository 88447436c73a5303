"""The SQLAlchemy backend: SQLite and PostgreSQL through one implementation.

Every operation is written once, as a function that runs SQLAlchemy Core statements on a
synchronous :class:`~sqlalchemy.Connection` inside one transaction; a *runner* (:mod:`.runners`)
executes it. Statements are built once and reused, so SQLAlchemy compiles each of them once per
process. On PostgreSQL the hot path (a step record, the start and end of an execution, a
worker's claim), each one statement, runs prepared straight on the driver (:mod:`.direct`).
What differs between databases is in :mod:`.dialects`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from durable.backends.base import PersistentBackend
from durable.backends.memory import UNTIL_WOKEN, decode_cursor, encode_cursor
from durable.backends.rows import RowRef, step_values, workflow_values
from durable.backends.sql import migrate
from durable.backends.sql.dialects import (
    SQLDialect,
    configure_engine,
    create_engine,
    dialect_for,
    normalize_url,
)
from durable.backends.sql.direct import (
    BlockingDirectStatements,
    CompiledStatement,
    DirectResult,
)
from durable.backends.sql.runners import AsyncRunner, InlineRunner, Runner
from durable.backends.sql.schema import (
    PREFIX,
    UTCDateTime,
    executors,
    steps,
    tasks,
    workflow_registry,
    workflows,
)
from durable.errors import (
    BackendError,
    BackendUnavailableError,
    ClaimLostError,
    ConcurrentUpdateError,
    DurableError,
    InvalidArgumentError,
    StepAlreadyRecordedError,
    TaskNotFoundError,
    UnknownWorkflowError,
    WorkflowAlreadyExistsError,
    WorkflowNotFoundError,
)
from durable.models import (
    WORKFLOW_TASK,
    AvailableTask,
    ErrorInfo,
    ExecutorInfo,
    Page,
    RegisteredWorkflow,
    StepRecord,
    StepStatus,
    TaskClaim,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
    as_status_set,
    is_stale,
    ttl_seconds,
)
from durable.serialization import Serializer, get_serializer
from durable.validation import check_positive_float

log = logging.getLogger(__name__)
T = TypeVar("T")

_TERMINAL = [s.value for s in WorkflowStatus if s.is_terminal]
_REQUEUEABLE = [
    WorkflowStatus.FAILED.value,
    WorkflowStatus.DEAD_LETTER.value,
    WorkflowStatus.CANCELLED.value,
]
#: The PostgreSQL channel on which commits that make work available are announced.
WORK_CHANNEL = "durable_work"
_STEP_COLUMNS = [c.name for c in steps.columns]
#: PostgreSQL errors that mean "not now" rather than "not this statement" (besides class 08,
#: connection exceptions): too many connections, and the server shutting down, crashed or
#: starting up (57P01 is also what a backend terminated by pg_terminate_backend reports).
_UNAVAILABLE_SQLSTATES = frozenset({"53300", "57P01", "57P02", "57P03"})


class SQLAlchemyBackend(PersistentBackend):
    """Durable's storage on SQLite or PostgreSQL.

    :param url_or_engine: a database URL (``sqlite:///app.db``, ``sqlite+aiosqlite:///app.db``,
        ``sqlite:///:memory:``, ``postgresql+psycopg://user@host/db``), or an ``Engine`` /
        ``AsyncEngine`` you created (SQLite settings are applied to it).
    :param serializer: ``"json"`` (default), ``"pickle"`` or a :class:`Serializer`.
    :param auto_migrate: apply pending migrations in :meth:`start` (default). When False,
        :meth:`start` raises :class:`SchemaVersionError` unless the schema is current.
    :param sqlite_synchronous: SQLite's ``PRAGMA synchronous``. ``NORMAL`` (default) never loses
        a commit when a process dies, and may lose the last ones if the machine loses power;
        ``FULL`` syncs every commit to disk.
    :param engine_options: passed to SQLAlchemy's ``create_engine`` (pool size and so on;
        on PostgreSQL the pool defaults to 20 connections plus 10 overflow, opened on demand).

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
        self._shown_url = engine.url.render_as_string(hide_password=True)
        self._runner: Runner = (
            AsyncRunner(engine) if isinstance(engine, AsyncEngine) else InlineRunner(engine)
        )
        self.dialect: SQLDialect = dialect_for(engine.dialect.name)
        self._started = False
        self._start_lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._notify = sa.select(sa.func.pg_notify(WORK_CHANNEL, ""))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._build_statements()
        # sync workflows' threads record steps on connections of their own; only on engines
        # durable created, whose connect arguments it knows
        self._blocking = (
            BlockingDirectStatements(engine, dict((engine_options or {}).get("connect_args", {})))
            if isinstance(engine, AsyncEngine) and self._direct and self._owns_engine
            else None
        )

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
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
            fn = migrate.upgrade if self.auto_migrate else migrate.check
            await self._run(fn, what="migrate")
            self._loop = asyncio.get_running_loop()
            self._started = True
            log.debug("backend started: %r", self, extra={"action": "backend.start"})

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        await self._runner.release()
        if self._blocking is not None:
            self._blocking.close()
        if self._owns_engine:
            await self._runner.dispose()
        self._started = False

    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` now."""
        await self._run(lambda conn: migrate.upgrade(conn, revision), what="migrate")

    async def downgrade(self, revision: str) -> None:
        """Downgrade the schema to ``revision`` (``"base"`` drops every durable table)."""
        await self._run(lambda conn: migrate.downgrade(conn, revision), what="downgrade")

    async def schema_revision(self) -> str | None:
        """The schema revision the database is at (None: never migrated)."""
        return await self._run(migrate.current_revision, what="read the schema revision")

    async def _run(self, fn: Callable[[sa.Connection], T], *, what: str = "") -> T:
        """Run ``fn`` in one transaction, turning driver errors into durable's."""
        with self._errors(what):
            return await self._runner.transaction(fn)

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn driver and SQLAlchemy errors raised inside into durable's, naming ``what`` was
        being done: :class:`BackendUnavailableError` when the database cannot be reached (it
        refuses or drops connections, is starting up or shutting down, has too many clients, or
        no pooled connection came free in time), :class:`BackendError` for any other failure.
        Nothing else escapes, so callers that retry on ``DurableError`` survive an outage."""
        try:
            yield
        except DurableError:
            raise
        except (sa.exc.SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error) as exc:
            raise self._translated(exc, what or "run a query") from exc

    def _translated(self, exc: Exception, doing: str) -> Exception:
        """The durable error for ``exc`` (see :meth:`_errors`)."""
        url = self._shown_url
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
                return BackendUnavailableError(
                    f"cannot reach the database at {url} to {doing}: {_first_line(exc.orig)}"
                )
            return BackendError(
                f"database error at {url} while trying to {doing}: {_first_line(exc.orig)}"
            )
        if isinstance(exc, sa.exc.TimeoutError):  # the pool: no connection came free in time
            return BackendUnavailableError(
                f"no pooled connection to the database at {url} came free to {doing} (raise "
                f"pool_size, max_overflow or pool_timeout in engine_options): {_first_line(exc)}"
            )
        if isinstance(exc, sa.exc.StatementError) and isinstance(exc.orig, ValueError):
            # a column type refused a value: a naive datetime
            return InvalidArgumentError(f"cannot {doing}: {exc.orig}")
        return BackendError(f"cannot {doing} at {url}: {type(exc).__name__}: {_first_line(exc)}")

    def _unavailable(self, exc: sa.exc.DBAPIError) -> bool:
        """Whether ``exc`` says the database cannot be reached now (worth retrying as is), as
        opposed to a statement it refused."""
        if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
            return False
        if exc.connection_invalidated or not self._started:
            return True
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

    # -- wake-ups -----------------------------------------------------------------------------

    def _announce_work(self, conn: sa.Connection) -> None:
        """Inside a transaction that makes work available: tell every listening process (on
        PostgreSQL the notification is delivered when, and only if, the transaction commits)."""
        if self.dialect.name == "postgresql":
            conn.execute(self._notify)

    async def wait_for_work(self, timeout: float) -> None:
        listener = self._listener
        if (
            self.dialect.name == "postgresql"
            and self._started
            and (listener is None or listener.done())  # never started, or died: (re)start it
        ):
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="durable-listen"
            )
        await super().wait_for_work(timeout)

    async def _listen(self) -> None:
        """Turn PostgreSQL notifications on the work channel into local wake-ups, reconnecting
        after the server goes away (quickly at first, then once a second; callers of
        :meth:`wait_for_work` poll meanwhile)."""
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {WORK_CHANNEL}")
                    if failures:
                        log.info(
                            "listening for work again after %d failed attempt(s)",
                            failures,
                            extra={"action": "listen.resumed"},
                        )
                    failures = 0
                    self.notify_work()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self.notify_work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server went away: polling covers us meanwhile
                failures += 1
                delay = min(0.05 * 2**failures, 1.0)
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "listening for work failed, retrying in %.1fs: %s",
                    delay,
                    _first_line(exc),
                    extra={"action": "listen.error"},
                )
                await asyncio.sleep(delay)

    # -- statements ---------------------------------------------------------------------------

    def _build_statements(self) -> None:
        d = self.dialect
        now = d.now()
        p_iid = sa.bindparam("p_iid", type_=sa.String())
        p_tid = sa.bindparam("p_tid", type_=sa.String())
        p_wid = sa.bindparam("p_wid", type_=sa.String())
        self._held = sa.exists(
            d.lock_for_fence(
                sa.select(sa.literal(1)).where(
                    tasks.c.instance_id == p_iid,
                    tasks.c.task_id == p_tid,
                    tasks.c.claimed_by == p_wid,
                    tasks.c.claim_expires_at > now,
                )
            )
        )
        self._task_key = sa.and_(tasks.c.instance_id == p_iid, tasks.c.task_id == p_tid)
        # the claim's state, for explaining why a fenced write was refused
        self._claim_state = sa.select(
            tasks.c.claimed_by, sa.case((tasks.c.claim_expires_at > now, True), else_=False)
        ).where(self._task_key)

        # record_step: a fenced upsert that only overwrites pending rows
        values = [sa.bindparam(f"s_{c}", type_=steps.c[c].type).label(c) for c in _STEP_COLUMNS]
        base = d.insert(steps).from_select(_STEP_COLUMNS, sa.select(*values).where(self._held))
        self._record_step = base.on_conflict_do_update(
            index_elements=[steps.c.workflow_id, steps.c.position],
            set_={c: base.excluded[c] for c in _STEP_COLUMNS if c not in ("workflow_id",)},
            where=steps.c.status == StepStatus.PENDING.value,
        ).execution_options(preserve_rowcount=True)
        interrupted = workflows.c.status == WorkflowStatus.RUNNING.value
        self._begin = (
            sa.update(workflows)
            .where(workflows.c.id == p_iid, self._held)
            .values(
                status=WorkflowStatus.RUNNING.value,
                executor_id=p_wid,
                # still running: the attempt's executor died or lost its lease; this resumes it
                attempts=workflows.c.attempts + sa.case((interrupted, 0), else_=1),
                interruptions=workflows.c.interruptions + sa.case((interrupted, 1), else_=0),
                started_at=sa.func.coalesce(workflows.c.started_at, sa.bindparam("p_ts")),
                updated_at=sa.bindparam("p_ts"),
                version=workflows.c.version + 1,
            )
            .returning(*workflows.c)
        )
        self._select_steps = (
            sa.select(steps).where(steps.c.workflow_id == p_iid).order_by(steps.c.position)
        )
        self._select_workflow = sa.select(workflows).where(workflows.c.id == p_iid)
        self._take_workflow_task = sa.delete(tasks).where(
            tasks.c.instance_id == p_iid,
            tasks.c.task_id == WORKFLOW_TASK,
            tasks.c.claimed_by == p_wid,
            tasks.c.claim_expires_at > now,
        )
        self._finish = (
            sa.update(workflows)
            .where(workflows.c.id == p_iid)
            .values(
                status=sa.bindparam("p_status"),
                output=sa.bindparam("p_output"),
                error=sa.bindparam("p_error"),
                updated_at=sa.bindparam("p_ts"),
                completed_at=sa.bindparam("p_ts"),
                version=workflows.c.version + 1,
            )
            .returning(*workflows.c)
        )
        claim_columns = (
            tasks.c.instance_id,
            tasks.c.task_id,
            tasks.c.claimed_by,
            tasks.c.claim_expires_at,
            tasks.c.attempts,
            tasks.c.name,
        )
        claim_values = {
            "claimed_by": p_wid,
            "claim_expires_at": d.later("ttl"),
            "attempts": tasks.c.attempts
            + sa.case(
                (sa.and_(tasks.c.claimed_by == p_wid, tasks.c.claim_expires_at > now), 0),
                else_=1,
            ),
        }
        self._claim_one = (
            sa.update(tasks)
            .where(
                self._task_key,
                sa.or_(
                    tasks.c.claimed_by.is_(None),
                    tasks.c.claimed_by == p_wid,
                    tasks.c.claim_expires_at <= now,
                    tasks.c.claim_expires_at.is_(None),  # a holder without expiry: repaired
                ),
            )
            .values(**claim_values)
            .returning(*claim_columns)
        )
        self._claim_one_due = self._claim_one.where(tasks.c.run_after <= now)
        # fan-out: steps handed to other workers, and the workflow waiting for them
        self._lock_workflow_task = (
            sa.select(tasks.c.id)
            .where(tasks.c.instance_id == p_iid, tasks.c.task_id == WORKFLOW_TASK)
            .with_for_update()
        )
        self._suspend_task = (
            sa.update(tasks)
            .where(
                tasks.c.instance_id == p_iid,
                tasks.c.task_id == WORKFLOW_TASK,
                tasks.c.claimed_by == p_wid,
                tasks.c.claim_expires_at > now,
            )
            .values(claimed_by=None, claim_expires_at=None, run_after=d.later("until"))
        )
        other = tasks.alias("other")
        self._wake_if_done = (
            sa.update(tasks)
            .where(
                tasks.c.instance_id == p_iid,
                tasks.c.task_id == WORKFLOW_TASK,
                ~sa.exists(
                    sa.select(other.c.id).where(
                        other.c.instance_id == p_iid, other.c.task_id != WORKFLOW_TASK
                    )
                ),
            )
            .values(run_after=now)
        )
        self._take_task = sa.delete(tasks).where(
            self._task_key, tasks.c.claimed_by == p_wid, tasks.c.claim_expires_at > now
        )
        pending_ins = d.insert(steps)
        self._upsert_pending_step = pending_ins.on_conflict_do_update(
            index_elements=[steps.c.workflow_id, steps.c.position],
            set_={c: pending_ins.excluded[c] for c in _STEP_COLUMNS if c != "workflow_id"},
            where=steps.c.status == StepStatus.PENDING.value,
        ).execution_options(preserve_rowcount=True)
        task_values: dict[str, Any] = {
            c: sa.bindparam(f"t_{c}", type_=tasks.c[c].type)
            for c in ("instance_id", "task_id", "name", "queue", "priority", "created_at")
        }
        task_values["run_after"] = sa.func.coalesce(
            sa.bindparam("t_run_after", type_=UTCDateTime()), d.later("delay")
        )
        task_values["attempts"] = sa.literal(0)
        self._insert_task = sa.insert(tasks).values(task_values)
        self._add_task_if_absent = (
            d.insert(tasks)
            .values(task_values)
            .on_conflict_do_nothing()
            .execution_options(preserve_rowcount=True)
        )
        self._extend = (
            sa.update(tasks)
            .where(self._task_key, tasks.c.claimed_by == p_wid)
            .values(claim_expires_at=d.later("ttl"))
            .returning(*claim_columns)
        )
        self._release = (
            sa.update(tasks)
            .where(self._task_key, tasks.c.claimed_by == p_wid)
            .values(claimed_by=None, claim_expires_at=None)
        )
        self._complete = sa.delete(tasks).where(
            self._task_key, tasks.c.claimed_by == p_wid, tasks.c.claim_expires_at > now
        )
        self._reschedule_task = (
            sa.update(tasks)
            .where(self._task_key, tasks.c.claimed_by == p_wid, tasks.c.claim_expires_at > now)
            .values(claimed_by=None, claim_expires_at=None, run_after=d.later("delay"))
        )
        # the failed steps the next attempt runs again: those listed (p_rerun) or marked rerun,
        # and those after the last step that did not fail
        last_unfailed = (
            sa.select(sa.func.coalesce(sa.func.max(steps.c.position), -1))
            .where(steps.c.workflow_id == p_iid, steps.c.status != StepStatus.FAILED.value)
            .scalar_subquery()
        )
        self._drop_failures = sa.delete(steps).where(
            steps.c.workflow_id == p_iid,
            steps.c.status == StepStatus.FAILED.value,
            sa.or_(
                steps.c.position > last_unfailed,
                steps.c.rerun,
                steps.c.position.in_(sa.bindparam("p_rerun", expanding=True)),
            ),
        )
        self._mark_rerun = (
            sa.update(steps)
            .where(
                steps.c.workflow_id == p_iid,
                steps.c.status == StepStatus.FAILED.value,
                steps.c.position.in_(sa.bindparam("p_rerun", expanding=True)),
            )
            .values(rerun=True)
        )
        self._available_order = [tasks.c.priority, tasks.c.run_after, tasks.c.id]
        self._claim_values = claim_values
        self._claim_columns = claim_columns
        self._claim_statements: dict[tuple[bool, bool, bool, bool], Any] = {}
        self._direct_claims: dict[tuple[bool, bool, bool], CompiledStatement] = {}
        self._build_direct_statements()
        self._insert_workflow = (
            d.insert(workflows).on_conflict_do_nothing().execution_options(preserve_rowcount=True)
        )
        self._create_workflow = d.insert(workflows).on_conflict_do_nothing().returning(*workflows.c)
        self._select_by_idempotency_key = (
            sa.select(workflows)
            .where(
                sa.or_(
                    workflows.c.id == p_iid,
                    workflows.c.idempotency_key == sa.bindparam("p_key", type_=sa.String()),
                )
            )
            .limit(1)
        )

    def _build_direct_statements(self) -> None:
        """The hot path's single statements, run straight on the driver (PostgreSQL): a step
        record; the start of an execution with its history (an UPDATE in a CTE, then the
        steps); its end, which removes the claimed task and writes the outcome (a DELETE in a
        CTE, which only PostgreSQL allows). Claims are compiled on first use
        (:meth:`_direct_claim`)."""
        self._direct = isinstance(self._runner, AsyncRunner) and self.dialect.name == "postgresql"
        self._record_step_direct = self._begin_direct = self._finish_direct = None
        if not self._direct:
            return
        dialect = self.engine.dialect
        self._record_step_direct = CompiledStatement(self._record_step, dialect)
        # the workflow's row, then its steps' rows (each row has both sets of columns, the
        # other set NULL: a join would repeat the workflow's input on every step)
        began = self._begin.cte("began")
        step_columns = [c for c in _STEP_COLUMNS if c != "workflow_id"]

        def nulls(table: sa.Table, columns: Sequence[str], prefix: str = "") -> list[Any]:
            return [
                sa.type_coerce(sa.null(), table.c[c].type).label(f"{prefix}{c}") for c in columns
            ]

        header = sa.select(
            sa.literal(0).label("part"), *began.c, *nulls(steps, step_columns, "step_")
        )
        history = sa.select(
            sa.literal(1),
            *nulls(workflows, [c.name for c in workflows.c]),
            *[steps.c[c] for c in step_columns],
        ).where(
            steps.c.workflow_id == sa.bindparam("p_iid", type_=sa.String()),
            sa.exists(sa.select(began.c.id)),
        )
        begin = sa.union_all(header, history)
        begin = begin.order_by(begin.selected_columns.part, begin.selected_columns.step_position)
        self._begin_direct = CompiledStatement(begin, dialect)
        taken = self._take_workflow_task.returning(tasks.c.id).cte("taken")
        finish = self._finish.where(sa.exists(sa.select(taken.c.id)))
        self._finish_direct = CompiledStatement(finish, dialect)

    def _direct_claim(self, key: tuple[bool, bool, bool], stmt: Any) -> CompiledStatement | None:
        """The claim statement for ``key`` compiled for the direct path (once), or None where
        there is no direct path."""
        if not self._direct:
            return None
        compiled = self._direct_claims.get(key)
        if compiled is None:
            compiled = self._direct_claims[key] = CompiledStatement(stmt, self.engine.dialect)
        return compiled

    def _claim_statement(
        self, names: bool, queues: bool, include_own: bool, *, find: bool = False
    ) -> Any:
        """The statement that claims (or with ``find``, lists) available tasks, built once per
        combination of filters: building one costs more than running it."""
        key = (names, queues, include_own, find)
        stmt = self._claim_statements.get(key)
        if stmt is not None:
            return stmt
        available = self._available(names, queues, include_own, enabled_only=not find)
        if find:
            now = self.dialect.now()
            live = sa.and_(tasks.c.claimed_by.is_not(None), tasks.c.claim_expires_at > now)
            stmt = (
                sa.select(
                    tasks.c.instance_id,
                    tasks.c.task_id,
                    tasks.c.name,
                    tasks.c.queue,
                    tasks.c.priority,
                    tasks.c.run_after,
                    sa.case((live, tasks.c.claimed_by), else_=None).label("claimed_by"),
                    sa.case((live, tasks.c.claim_expires_at), else_=None).label("claim_expires_at"),
                    tasks.c.attempts,
                )
                .where(available)
                .order_by(*self._available_order)
                .limit(sa.bindparam("p_limit", type_=sa.Integer()))
            )
        else:
            stmt = (
                self.dialect.claim_batch(tasks, available, self._available_order)
                .values(**self._claim_values)
                .returning(*self._claim_columns, tasks.c.priority, tasks.c.run_after, tasks.c.id)
            )
        self._claim_statements[key] = stmt
        return stmt

    def _available(
        self, names: bool, queues: bool, include_own: bool, *, enabled_only: bool = False
    ) -> sa.ColumnElement[bool]:
        """Due tasks that are free (or the worker's own), filtered by name and queue; with
        ``enabled_only`` (claims) also less the names disabled in the registry, read by the same
        statement, so a change is seen by the next claim. The few disabled names are read once
        per statement (a hashed subplan on PostgreSQL), and the claim stays a walk of the
        ``(priority, run_after, id)`` index."""
        now = self.dialect.now()
        p_wid = sa.bindparam("p_wid", type_=sa.String())
        # a claim that has a holder but no expiry (written by hand, or by a bug) is free: it
        # would otherwise be held forever
        free = [
            tasks.c.claimed_by.is_(None),
            tasks.c.claim_expires_at <= now,
            tasks.c.claim_expires_at.is_(None),
        ]
        if include_own:
            free.append(tasks.c.claimed_by == p_wid)
        clauses = [tasks.c.run_after <= now, sa.or_(*free)]
        if names:
            clauses.append(self.dialect.in_list(tasks.c.name, "p_names"))
        if queues:
            clauses.append(self.dialect.in_list(tasks.c.queue, "p_queues"))
        if enabled_only:
            disabled = sa.select(workflow_registry.c.name).where(
                workflow_registry.c.enabled.is_(sa.false())
            )
            clauses.append(tasks.c.name.not_in(disabled))
        return sa.and_(*clauses)

    # -- row conversion -----------------------------------------------------------------------

    def _dump(self, value: Any) -> str | None:
        return None if value is None else self.serializer.dumps(value)

    def _info(self, row: sa.Row[Any], *, lenient: bool = False) -> WorkflowInfo:
        """A workflow's header from its row. Strict: an unreadable column raises
        :class:`CorruptRowError`; ``lenient`` (listings, the header a write returns): the row is
        returned marked unreadable (see :func:`~durable.backends.rows.workflow_values`)."""
        return WorkflowInfo(**self._info_fields(row._mapping, lenient=lenient))

    def _info_fields(self, m: Mapping[Any, Any], *, lenient: bool = False) -> dict[str, Any]:
        return {
            "id": m["id"],
            "name": m["name"],
            **workflow_values(
                RowRef(workflows.name, m["id"]),
                self.serializer,
                status=m["status"],
                input=m["input"],
                output=m["output"],
                error=m["error"],
                lenient=lenient,
            ),
            "parent_id": m["parent_id"],
            "executor_id": m["executor_id"],
            "queue": m["queue"],
            "priority": m["priority"],
            "idempotency_key": m["idempotency_key"],
            "attempts": m["attempts"],
            "max_attempts": m["max_attempts"],
            "interruptions": m["interruptions"],
            "version": m["version"],
            "created_at": m["created_at"],
            "updated_at": m["updated_at"],
            "started_at": m["started_at"],
            "completed_at": m["completed_at"],
        }

    def _snapshot(self, row: sa.Row[Any], step_rows: Sequence[sa.Row[Any]]) -> WorkflowSnapshot:
        instance_id = row._mapping["id"]
        return WorkflowSnapshot(
            **self._info_fields(row._mapping),
            steps=tuple(self._step(instance_id, r._mapping) for r in step_rows),
        )

    def _joined_snapshot(self, rows: Sequence[Mapping[str, Any]]) -> WorkflowSnapshot:
        """A snapshot from the rows of the direct begin statement: the workflow's row first,
        then one row per step in the ``step_`` columns."""
        instance_id = rows[0]["id"]
        history = tuple(
            self._step(
                instance_id, {c: row[f"step_{c}"] for c in _STEP_COLUMNS if c != "workflow_id"}
            )
            for row in rows[1:]
        )
        return WorkflowSnapshot(**self._info_fields(rows[0]), steps=history)

    def _step(self, instance_id: str, m: Mapping[Any, Any]) -> StepRecord:
        """A step from its row; an unreadable column raises :class:`CorruptRowError`."""
        return StepRecord(
            position=m["position"],
            name=m["name"],
            **step_values(
                RowRef(steps.name, instance_id, m["position"]),
                self.serializer,
                status=m["status"],
                input=m["input"],
                output=m["output"],
                error=m["error"],
            ),
            child_workflow_id=m["child_workflow_id"],
            attempts=m["attempts"],
            executor_id=m["executor_id"],
            started_at=m["started_at"],
            completed_at=m["completed_at"],
            rerun=bool(m["rerun"]),
        )

    def _workflow_row(self, info: WorkflowInfo, now: datetime, version: int) -> dict[str, Any]:
        return {
            "id": info.id,
            "name": info.name,
            "status": WorkflowStatus(info.status).value,
            "input": self._dump(info.input),
            "output": self._dump(info.output),
            "error": info.error.to_json() if info.error else None,
            "parent_id": info.parent_id,
            "executor_id": info.executor_id,
            "queue": info.queue,
            "priority": info.priority,
            "idempotency_key": info.idempotency_key,
            "attempts": info.attempts,
            "max_attempts": info.max_attempts,
            "interruptions": info.interruptions,
            "version": version,
            "created_at": info.created_at or now,
            "updated_at": now,
            "started_at": info.started_at,
            "completed_at": info.completed_at,
        }

    def _step_row(self, instance_id: str, step: StepRecord, now: datetime) -> dict[str, Any]:
        if step.position < 0:
            raise InvalidArgumentError(f"a step position must be >= 0, got {step.position}")
        completed = step.completed_at
        if completed is None and step.status is not StepStatus.PENDING:
            completed = now
        return {
            "workflow_id": instance_id,
            "position": step.position,
            "name": step.name,
            "status": StepStatus(step.status).value,
            "input": self._dump(step.input),
            "output": self._dump(step.output),
            "error": step.error.to_json() if step.error else None,
            "child_workflow_id": step.child_workflow_id,
            "attempts": step.attempts,
            "executor_id": step.executor_id,
            "started_at": step.started_at,
            "completed_at": completed,
            "rerun": step.rerun,
        }

    def _task_row(self, spec: TaskSpec, now: datetime) -> dict[str, Any]:
        """Parameters for :attr:`_insert_task`: a task due at ``spec.run_after``, or now by the
        lease clock (the database's on PostgreSQL, so app servers' clocks do not matter)."""
        return {
            "t_instance_id": spec.instance_id,
            "t_task_id": spec.task_id,
            "t_name": spec.name,
            "t_queue": spec.queue,
            "t_priority": spec.priority,
            "t_run_after": spec.run_after,
            "t_created_at": now,
            **self.dialect.clock_params(
                delay=spec.delay.total_seconds() if spec.delay is not None else 0.0
            ),
        }

    def _claim(self, m: Mapping[Any, Any]) -> TaskClaim:
        return TaskClaim(
            instance_id=m["instance_id"],
            task_id=m["task_id"],
            worker_id=m["claimed_by"],
            expires_at=m["claim_expires_at"],
            attempts=m["attempts"],
            name=m["name"],
        )

    def _refusal(
        self,
        conn: sa.Connection,
        clock: dict[str, Any],
        instance_id: str,
        task_id: str,
        worker_id: str,
        *,
        missing_task: bool = False,
    ) -> DurableError:
        """Why a write fenced by a claim was refused."""
        row = conn.execute(
            self._claim_state, {"p_iid": instance_id, "p_tid": task_id, **clock}
        ).first()
        if row is None and missing_task:
            return TaskNotFoundError(instance_id, task_id)
        holder = row[0] if row is not None and row[1] else None
        return ClaimLostError(instance_id, task_id, worker_id, holder)

    # -- snapshots ----------------------------------------------------------------------------

    async def create_workflow(
        self, snapshot: WorkflowSnapshot, *, task: TaskSpec | None = None
    ) -> tuple[WorkflowInfo, bool]:
        now = datetime.now(UTC)
        row = self._workflow_row(snapshot, now, 1)
        step_rows = [self._step_row(snapshot.id, s, now) for s in snapshot.steps]
        task_row = self._task_row(task, now) if task is not None else None
        # "idempotency_key = NULL" matches nothing, so with no key this looks up the id only
        match = {"p_iid": snapshot.id, "p_key": snapshot.idempotency_key}

        def fn(conn: sa.Connection) -> tuple[WorkflowInfo, bool]:
            stored = conn.execute(self._create_workflow, row).first()
            if stored is None:
                existing = conn.execute(self._select_by_idempotency_key, match).one()
                return self._info(existing, lenient=True), False
            if step_rows:
                conn.execute(sa.insert(steps), step_rows)
            if task_row is not None:
                conn.execute(self._insert_task, task_row)
                self._announce_work(conn)
            return self._info(stored, lenient=True), True

        result = await self._run(fn, what=f"create workflow {snapshot.id!r}")
        if result[1] and task_row is not None:
            self.notify_work()
        return result

    async def save_snapshot(self, snapshot: WorkflowSnapshot) -> WorkflowSnapshot:
        now = datetime.now(UTC)
        version = snapshot.version
        row = self._workflow_row(snapshot, now, version + 1)
        step_rows = [self._step_row(snapshot.id, s, now) for s in snapshot.steps]
        instance_id = snapshot.id

        def fn(conn: sa.Connection) -> WorkflowSnapshot:
            if version == 0:
                inserted = conn.execute(self._insert_workflow, row)
                if inserted.rowcount == 0:
                    # the id, else the holder of the idempotency key (never "key IS NULL")
                    clash = workflows.c.id == instance_id
                    if snapshot.idempotency_key is not None:
                        clash = sa.or_(
                            clash, workflows.c.idempotency_key == snapshot.idempotency_key
                        )
                    other = conn.execute(
                        sa.select(workflows.c.id)
                        .where(clash)
                        .order_by(sa.case((workflows.c.id == instance_id, 0), else_=1))
                        .limit(1)
                    ).scalar()
                    raise WorkflowAlreadyExistsError(other or instance_id)
            else:
                values = {k: v for k, v in row.items() if k not in ("id", "created_at")}
                updated = conn.execute(
                    sa.update(workflows)
                    .where(workflows.c.id == instance_id, workflows.c.version == version)
                    .values(values)
                )
                if updated.rowcount == 0:
                    actual = conn.execute(
                        sa.select(workflows.c.version).where(workflows.c.id == instance_id)
                    ).scalar()
                    if actual is None:
                        raise WorkflowNotFoundError(instance_id)
                    raise ConcurrentUpdateError(instance_id, version, actual)
            if step_rows:
                ins = self.dialect.insert(steps)
                conn.execute(
                    ins.on_conflict_do_update(
                        index_elements=[steps.c.workflow_id, steps.c.position],
                        set_={c: ins.excluded[c] for c in _STEP_COLUMNS if c != "workflow_id"},
                    ),
                    step_rows,
                )
            return self._load_snapshot(conn, instance_id)

        try:
            return await self._run(fn, what=f"save workflow {instance_id!r}")
        except BackendError as exc:
            if isinstance(exc.__cause__, sa.exc.IntegrityError):
                raise WorkflowAlreadyExistsError(instance_id) from exc
            raise

    def _load_snapshot(self, conn: sa.Connection, instance_id: str) -> WorkflowSnapshot:
        row = conn.execute(self._select_workflow, {"p_iid": instance_id}).first()
        if row is None:
            raise WorkflowNotFoundError(instance_id)
        step_rows = conn.execute(self._select_steps, {"p_iid": instance_id}).all()
        return self._snapshot(row, step_rows)

    async def load_snapshot(self, instance_id: str) -> WorkflowSnapshot:
        return await self._run(
            lambda conn: self._load_snapshot(conn, instance_id),
            what=f"load workflow {instance_id!r}",
        )

    async def get_workflow(self, instance_id: str) -> WorkflowInfo:
        def fn(conn: sa.Connection) -> WorkflowInfo:
            row = conn.execute(self._select_workflow, {"p_iid": instance_id}).first()
            if row is None:
                raise WorkflowNotFoundError(instance_id)
            return self._info(row)

        return await self._run(fn, what=f"read workflow {instance_id!r}")

    async def delete_snapshot(self, instance_id: str) -> bool:
        def fn(conn: sa.Connection) -> bool:
            conn.execute(sa.delete(tasks).where(tasks.c.instance_id == instance_id))
            conn.execute(sa.delete(steps).where(steps.c.workflow_id == instance_id))
            return (
                conn.execute(sa.delete(workflows).where(workflows.c.id == instance_id)).rowcount > 0
            )

        return await self._run(fn, what=f"delete workflow {instance_id!r}")

    async def list_snapshots(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowInfo]:
        statuses = as_status_set(status)
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        query = sa.select(workflows)
        if statuses is not None:
            query = query.where(workflows.c.status.in_([s.value for s in statuses]))
        if name is not None:
            query = query.where(workflows.c.name == name)
        if parent_id is not None:
            query = query.where(workflows.c.parent_id == parent_id)
        if cursor is not None:
            created, after_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(
                    workflows.c.created_at < created,
                    sa.and_(workflows.c.created_at == created, workflows.c.id < after_id),
                )
            )
        query = query.order_by(workflows.c.created_at.desc(), workflows.c.id.desc()).limit(
            limit + 1
        )

        def fn(conn: sa.Connection) -> Page[WorkflowInfo]:
            rows = conn.execute(query).all()
            items = [self._info(r, lenient=True) for r in rows[:limit]]
            return Page(items, encode_cursor(items[-1]) if len(rows) > limit else None)

        return await self._run(fn, what="list workflows")

    async def list_steps(self, instance_id: str) -> list[StepRecord]:
        def fn(conn: sa.Connection) -> list[StepRecord]:
            rows = conn.execute(self._select_steps, {"p_iid": instance_id}).all()
            if (
                not rows
                and conn.execute(
                    sa.select(workflows.c.id).where(workflows.c.id == instance_id)
                ).first()
                is None
            ):
                raise WorkflowNotFoundError(instance_id)
            return [self._step(instance_id, r._mapping) for r in rows]

        return await self._run(fn, what=f"list steps of {instance_id!r}")

    # -- execution ----------------------------------------------------------------------------

    async def begin_execution(
        self, instance_id: str, worker_id: str, *, task_id: str = WORKFLOW_TASK
    ) -> WorkflowSnapshot:
        clock = self.dialect.clock_params()
        params = {
            "p_iid": instance_id,
            "p_tid": task_id,
            "p_wid": worker_id,
            "p_ts": datetime.now(UTC),
            **clock,
        }

        what = f"begin workflow {instance_id!r}"

        def explain(conn: sa.Connection) -> DurableError:
            if conn.execute(self._select_workflow, params).first() is None:
                return WorkflowNotFoundError(instance_id)
            return self._refusal(conn, clock, instance_id, task_id, worker_id)

        done = await self._run_direct(self._begin_direct, params, what=what)
        if done is not None:  # one statement, one round trip
            if not done.rows:
                raise await self._run(explain, what=what)
            return self._joined_snapshot(done.rows)

        def fn(conn: sa.Connection) -> WorkflowSnapshot:
            row = conn.execute(self._begin, params).first()
            if row is None:
                raise explain(conn)
            return self._snapshot(row, conn.execute(self._select_steps, params).all())

        return await self._run(fn, what=what)

    async def record_step(
        self,
        instance_id: str,
        step: StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        what = f"record step {step.position} of {instance_id!r}"
        params, record, explain = self._record_step_call(instance_id, step, worker_id, task_id)
        # The hot path: one statement that checks the lease and writes the step, atomic by
        # itself, so on PostgreSQL it runs without BEGIN/COMMIT, prepared, on the driver.
        done = await self._run_direct(self._record_step_direct, params, what=what)
        if done is None:
            await self._run(record, what=what)
        elif done.rowcount != 1:
            raise await self._run(explain, what=what)

    @property
    def records_steps_blocking(self) -> bool:  # type: ignore[override]
        """True for SQLite files on the standard-library driver (their transactions run inline)
        and for PostgreSQL engines durable created: a sync workflow's thread records its steps
        itself."""
        runner = self._runner
        return self._blocking is not None or (
            isinstance(runner, InlineRunner) and runner.thread_safe
        )

    def record_step_blocking(
        self,
        instance_id: str,
        step: StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        if not self.records_steps_blocking:
            return super().record_step_blocking(
                instance_id, step, worker_id=worker_id, task_id=task_id
            )
        what = f"record step {step.position} of {instance_id!r}"
        params, record, explain = self._record_step_call(instance_id, step, worker_id, task_id)
        if self._blocking is not None:
            assert self._record_step_direct is not None  # a blocking path implies a direct one
            with self._errors(what):
                if self._blocking.execute(self._record_step_direct, params).rowcount == 1:
                    return
            # refused: why is worth a hop to the event loop (this is not the hot path)
            assert self._loop is not None
            coro = self._run(explain, what=what)
            raise asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        runner = self._runner
        assert isinstance(runner, InlineRunner)
        with self._errors(what):
            runner.run(record)

    def _record_step_call(
        self, instance_id: str, step: StepRecord, worker_id: str, task_id: str
    ) -> tuple[
        dict[str, Any],
        Callable[[sa.Connection], None],
        Callable[[sa.Connection], DurableError],
    ]:
        """The parameters of the fenced step record, a function that runs it, and one that
        explains why it was refused."""
        clock = self.dialect.clock_params()
        row = self._step_row(instance_id, step, datetime.now(UTC))
        params = {f"s_{k}": v for k, v in row.items()}
        params.update(p_iid=instance_id, p_tid=task_id, p_wid=worker_id, **clock)

        def explain(conn: sa.Connection) -> DurableError:
            refusal = self._refusal(conn, clock, instance_id, task_id, worker_id)
            if isinstance(refusal, ClaimLostError) and refusal.holder == worker_id:
                return StepAlreadyRecordedError(instance_id, step.position)
            return refusal

        def record(conn: sa.Connection) -> None:
            if conn.execute(self._record_step, params).rowcount != 1:
                raise explain(conn)

        return params, record, explain

    async def finish_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        status: WorkflowStatus,
        output: Any = None,
        error: ErrorInfo | None = None,
        rerun: Sequence[int] = (),
    ) -> WorkflowInfo:
        if not WorkflowStatus(status).is_terminal:
            raise InvalidArgumentError(f"finish_workflow needs a final status, got {status!r}")
        clock = self.dialect.clock_params()
        params = {
            "p_iid": instance_id,
            "p_wid": worker_id,
            "p_status": WorkflowStatus(status).value,
            "p_output": self._dump(output),
            "p_error": error.to_json() if error else None,
            "p_ts": datetime.now(UTC),
            **clock,
        }

        what = f"finish workflow {instance_id!r}"

        def refusal(conn: sa.Connection) -> DurableError:
            return self._refusal(conn, clock, instance_id, WORKFLOW_TASK, worker_id)

        # one statement, one round trip (marking failed steps to run again takes a transaction)
        direct = self._finish_direct if not rerun else None
        done = await self._run_direct(direct, params, what=what)
        if done is not None:
            if not done.rows:
                raise await self._run(refusal, what=what)
            return WorkflowInfo(**self._info_fields(done.rows[0], lenient=True))

        def fn(conn: sa.Connection) -> WorkflowInfo:
            if conn.execute(self._take_workflow_task, params).rowcount == 0:
                raise refusal(conn)
            if rerun:
                conn.execute(self._mark_rerun, {"p_iid": instance_id, "p_rerun": list(rerun)})
            return self._info(conn.execute(self._finish, params).one(), lenient=True)

        return await self._run(fn, what=what)

    async def reschedule_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        run_after: timedelta,
        error: ErrorInfo | None = None,
        consume_attempt: bool = True,
        rerun: Sequence[int] = (),
    ) -> WorkflowInfo:
        delay = max(run_after.total_seconds(), 0.0)
        clock = self.dialect.clock_params(delay=delay)
        params = {
            "p_iid": instance_id,
            "p_tid": WORKFLOW_TASK,
            "p_wid": worker_id,
            "p_rerun": list(rerun),
            **clock,
        }
        values: dict[str, Any] = {
            "status": WorkflowStatus.PENDING.value,
            "error": error.to_json() if error else None,
            "updated_at": datetime.now(UTC),
            "version": workflows.c.version + 1,
        }
        if not consume_attempt:
            values["attempts"] = sa.case(
                (workflows.c.attempts > 0, workflows.c.attempts - 1), else_=0
            )

        def fn(conn: sa.Connection) -> WorkflowInfo:
            if conn.execute(self._reschedule_task, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, WORKFLOW_TASK, worker_id)
            if consume_attempt:
                conn.execute(self._drop_failures, params)
            row = conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == instance_id)
                .values(values)
                .returning(*workflows.c)
            ).one()
            self._announce_work(conn)
            return self._info(row, lenient=True)

        info = await self._run(fn, what=f"reschedule workflow {instance_id!r}")
        self.notify_work()
        return info

    async def requeue_workflow(self, instance_id: str) -> WorkflowInfo:
        now = datetime.now(UTC)

        def fn(conn: sa.Connection) -> WorkflowInfo:
            row = conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == instance_id, workflows.c.status.in_(_REQUEUEABLE))
                .values(
                    status=WorkflowStatus.PENDING.value,
                    error=None,
                    output=None,
                    attempts=0,
                    interruptions=0,
                    completed_at=None,
                    updated_at=now,
                    version=workflows.c.version + 1,
                )
                .returning(*workflows.c)
            ).first()
            if row is None:
                current = conn.execute(self._select_workflow, {"p_iid": instance_id}).first()
                if current is None:
                    raise WorkflowNotFoundError(instance_id)
                raise InvalidArgumentError(
                    f"workflow {instance_id!r} is {current.status}: only failed, "
                    "dead-lettered or cancelled workflows can be run again"
                )
            conn.execute(self._drop_failures, {"p_iid": instance_id, "p_rerun": []})
            conn.execute(
                sa.delete(tasks).where(
                    tasks.c.instance_id == instance_id, tasks.c.task_id == WORKFLOW_TASK
                )
            )
            spec = TaskSpec(
                instance_id=instance_id, name=row.name, queue=row.queue, priority=row.priority
            )
            conn.execute(self._insert_task, self._task_row(spec, now))
            self._announce_work(conn)
            return self._info(row, lenient=True)

        info = await self._run(fn, what=f"requeue workflow {instance_id!r}")
        self.notify_work()
        return info

    async def suspend_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        steps: Sequence[StepRecord],
        tasks: Sequence[TaskSpec],
    ) -> None:
        now = datetime.now(UTC)
        step_rows = [self._step_row(instance_id, s, now) for s in steps]
        task_rows = [self._task_row(t, now) for t in tasks]
        clock = self.dialect.clock_params(until=UNTIL_WOKEN.total_seconds())
        params = {"p_iid": instance_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> None:
            if conn.execute(self._suspend_task, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, WORKFLOW_TASK, worker_id)
            if step_rows:
                conn.execute(self._upsert_pending_step, step_rows)
            if task_rows:
                conn.execute(self._add_task_if_absent, task_rows)
            conn.execute(self._wake_if_done, params)
            conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == instance_id)
                .values(
                    status=WorkflowStatus.PENDING.value,
                    # the attempt goes on when it is woken: that begin does not count again
                    attempts=sa.case((workflows.c.attempts > 0, workflows.c.attempts - 1), else_=0),
                    updated_at=now,
                    version=workflows.c.version + 1,
                )
            )
            self._announce_work(conn)

        await self._run(fn, what=f"suspend workflow {instance_id!r}")
        self.notify_work()

    async def complete_step_task(
        self, instance_id: str, task_id: str, *, worker_id: str, step: StepRecord
    ) -> None:
        row = self._step_row(instance_id, step, datetime.now(UTC))
        clock = self.dialect.clock_params()
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> bool:
            # one completion at a time per workflow, so that the last one sees it is the last
            conn.execute(self._lock_workflow_task, params)
            if conn.execute(self._take_task, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, task_id, worker_id)
            if conn.execute(self._upsert_pending_step, row).rowcount == 0:
                raise StepAlreadyRecordedError(instance_id, step.position)
            woken = conn.execute(self._wake_if_done, params).rowcount > 0
            if woken:
                self._announce_work(conn)
            return woken

        if await self._run(fn, what=f"complete task {task_id!r} of {instance_id!r}"):
            self.notify_work()

    async def cancel_workflow(self, instance_id: str) -> WorkflowInfo:
        now = datetime.now(UTC)

        def fn(conn: sa.Connection) -> WorkflowInfo:
            row = conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == instance_id, workflows.c.status.not_in(_TERMINAL))
                .values(
                    status=WorkflowStatus.CANCELLED.value,
                    updated_at=now,
                    completed_at=now,
                    version=workflows.c.version + 1,
                )
                .returning(*workflows.c)
            ).first()
            if row is None:
                row = conn.execute(self._select_workflow, {"p_iid": instance_id}).first()
                if row is None:
                    raise WorkflowNotFoundError(instance_id)
                return self._info(row, lenient=True)
            conn.execute(sa.delete(tasks).where(tasks.c.instance_id == instance_id))
            return self._info(row, lenient=True)

        return await self._run(fn, what=f"cancel workflow {instance_id!r}")

    # -- the workflow registry and executors ---------------------------------------------------

    async def register_workflows(self, entries: Sequence[RegisteredWorkflow]) -> None:
        now = datetime.now(UTC)
        rows = [
            {
                "name": e.name,
                "enabled": e.enabled,
                "description": e.description,
                "updated_at": now,
            }
            for e in entries
        ]
        if not rows:
            return
        ins = self.dialect.insert(workflow_registry)
        stmt = ins.on_conflict_do_update(
            index_elements=[workflow_registry.c.name],
            set_={
                "description": ins.excluded.description,
                "updated_at": ins.excluded.updated_at,
            },
        )
        await self._run(lambda conn: conn.execute(stmt, rows), what="register workflows")

    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        stmt = (
            sa.update(workflow_registry)
            .where(workflow_registry.c.name == name)
            .values(enabled=enabled, updated_at=datetime.now(UTC))
            .returning(*workflow_registry.c)
        )

        def fn(conn: sa.Connection) -> RegisteredWorkflow:
            row = conn.execute(stmt).first()
            if row is None:
                raise UnknownWorkflowError(f"no workflow is registered under the name {name!r}")
            return RegisteredWorkflow(**row._mapping)

        return await self._run(fn, what=f"enable or disable workflow {name!r}")

    async def list_registered_workflows(self) -> list[RegisteredWorkflow]:
        stmt = sa.select(workflow_registry).order_by(workflow_registry.c.name)
        return await self._run(
            lambda conn: [RegisteredWorkflow(**r._mapping) for r in conn.execute(stmt)],
            what="list registered workflows",
        )

    def _executor_rows(
        self, where: sa.ColumnElement[bool] | None, stale_after: timedelta | None
    ) -> Callable[[sa.Connection], list[ExecutorInfo]]:
        """Read executors with the storage's current time, and judge staleness by it."""
        stmt = sa.select(executors, self.dialect.now().label("db_now")).order_by(
            executors.c.heartbeat_at.desc()
        )
        if where is not None:
            stmt = stmt.where(where)
        clock = self.dialect.clock_params()

        def fn(conn: sa.Connection) -> list[ExecutorInfo]:
            found = []
            for r in conn.execute(stmt, clock):
                values = dict(r._mapping)
                now = _aware(values.pop("db_now"))
                assert now is not None
                info = ExecutorInfo(**values, stale=False)
                found.append(dataclasses.replace(info, stale=is_stale(info, now, stale_after)))
            return found

        return fn

    async def get_executor(self, executor_id: str) -> ExecutorInfo | None:
        fn = self._executor_rows(executors.c.id == executor_id, None)
        found = await self._run(fn, what=f"read executor {executor_id!r}")
        return found[0] if found else None

    async def start_executor(
        self,
        executor_id: str,
        *,
        hostname: str,
        pid: int,
        incarnation: str,
        heartbeat_interval: float,
        replacing: str | None,
    ) -> bool:
        check_positive_float(heartbeat_interval, "heartbeat_interval")
        clock = self.dialect.clock_params()
        now = self.dialect.now()
        values = {
            "hostname": hostname,
            "pid": pid,
            "incarnation": incarnation,
            "heartbeat_interval": heartbeat_interval,
            "started_at": now,
            "heartbeat_at": now,
            "stopped_at": None,
        }
        stmt: sa.Executable
        if replacing is None:
            stmt = (
                self.dialect.insert(executors)
                .values(id=executor_id, **values)
                .on_conflict_do_nothing(index_elements=[executors.c.id])
            )
        else:
            stmt = (
                sa.update(executors)
                .where(executors.c.id == executor_id, executors.c.incarnation == replacing)
                .values(**values)
            )
        stmt = stmt.execution_options(preserve_rowcount=True)
        return await self._run(
            lambda conn: conn.execute(stmt, clock).rowcount == 1,
            what=f"start executor {executor_id!r}",
        )

    async def record_executor_heartbeat(self, executor_id: str, *, incarnation: str) -> bool:
        clock = self.dialect.clock_params()
        stmt = (
            sa.update(executors)
            .where(
                executors.c.id == executor_id,
                executors.c.incarnation == incarnation,
                executors.c.stopped_at.is_(None),
            )
            .values(heartbeat_at=self.dialect.now())
            .execution_options(preserve_rowcount=True)
        )
        return await self._run(
            lambda conn: conn.execute(stmt, clock).rowcount == 1, what="record a heartbeat"
        )

    async def mark_executor_stopped(self, executor_id: str, *, incarnation: str) -> None:
        clock = self.dialect.clock_params()
        stmt = (
            sa.update(executors)
            .where(executors.c.id == executor_id, executors.c.incarnation == incarnation)
            .values(stopped_at=self.dialect.now())
        )
        await self._run(lambda conn: conn.execute(stmt, clock), what="mark an executor stopped")

    async def list_executors(self, *, stale_after: timedelta | None = None) -> list[ExecutorInfo]:
        limit = None if stale_after is None else timedelta(seconds=ttl_seconds(stale_after))
        return await self._run(self._executor_rows(None, limit), what="list executors")

    # -- tasks and claims ---------------------------------------------------------------------

    async def add_task(self, spec: TaskSpec) -> bool:
        row = self._task_row(spec, datetime.now(UTC))

        def fn(conn: sa.Connection) -> bool:
            if conn.execute(self._select_workflow, {"p_iid": spec.instance_id}).first() is None:
                raise WorkflowNotFoundError(spec.instance_id)
            created = conn.execute(self._add_task_if_absent, row).rowcount == 1
            if created:
                self._announce_work(conn)
            return created

        created = await self._run(fn, what=f"add task {spec.task_id!r} of {spec.instance_id!r}")
        if created:
            self.notify_work()
        return created

    async def claim_task(
        self,
        instance_id: str,
        task_id: str,
        worker_id: str,
        ttl: timedelta,
        *,
        due_only: bool = False,
    ) -> TaskClaim | None:
        clock = self.dialect.clock_params(ttl=ttl_seconds(ttl))
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}
        stmt = self._claim_one_due if due_only else self._claim_one

        def fn(conn: sa.Connection) -> TaskClaim | None:
            row = conn.execute(stmt, params).first()
            if row is not None:
                return self._claim(row._mapping)
            if conn.execute(self._claim_state, params).first() is None:
                raise TaskNotFoundError(instance_id, task_id)
            return None

        return await self._run(fn, what=f"claim task {task_id!r} of {instance_id!r}")

    async def get_task(self, instance_id: str, task_id: str) -> AvailableTask:
        stmt = sa.select(tasks).where(
            tasks.c.instance_id == instance_id, tasks.c.task_id == task_id
        )

        def fn(conn: sa.Connection) -> AvailableTask:
            r = conn.execute(stmt).first()
            if r is None:
                raise TaskNotFoundError(instance_id, task_id)
            return _available_task(r)

        return await self._run(fn, what=f"read task {task_id!r} of {instance_id!r}")

    async def extend_task_claim(
        self, instance_id: str, task_id: str, worker_id: str, ttl: timedelta
    ) -> TaskClaim:
        clock = self.dialect.clock_params(ttl=ttl_seconds(ttl))
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> TaskClaim:
            row = conn.execute(self._extend, params).first()
            if row is None:
                raise self._refusal(conn, clock, instance_id, task_id, worker_id, missing_task=True)
            return self._claim(row._mapping)

        return await self._run(fn, what=f"extend the claim on {task_id!r} of {instance_id!r}")

    async def release_task_claim(self, instance_id: str, task_id: str, worker_id: str) -> None:
        clock = self.dialect.clock_params()
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> None:
            if conn.execute(self._release, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, task_id, worker_id, missing_task=True)
            self._announce_work(conn)

        await self._run(fn, what=f"release the claim on {task_id!r} of {instance_id!r}")
        self.notify_work()

    async def complete_task(self, instance_id: str, task_id: str, worker_id: str) -> None:
        clock = self.dialect.clock_params()
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> None:
            if conn.execute(self._complete, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, task_id, worker_id)

        await self._run(fn, what=f"complete task {task_id!r} of {instance_id!r}")

    def _filter_params(
        self, worker_id: str, limit: int, names: Sequence[str] | None, queues: Sequence[str] | None
    ) -> dict[str, Any]:
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        params: dict[str, Any] = {"p_wid": worker_id, "p_limit": limit}
        if names is not None:
            params["p_names"] = list(names)
        if queues is not None:
            params["p_queues"] = list(queues)
        return params

    async def find_available_tasks(
        self,
        worker_id: str,
        limit: int,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        include_own: bool = True,
    ) -> list[AvailableTask]:
        params = self._filter_params(worker_id, limit, names, queues)
        params.update(self.dialect.clock_params())
        query = self._claim_statement(names is not None, queues is not None, include_own, find=True)

        def fn(conn: sa.Connection) -> list[AvailableTask]:
            return [_available_task(r) for r in conn.execute(query, params)]

        return await self._run(fn, what="find available tasks")

    async def claim_available_tasks(
        self,
        worker_id: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        include_own: bool = True,
    ) -> list[TaskClaim]:
        params = self._filter_params(worker_id, limit, names, queues)
        params.update(self.dialect.clock_params(ttl=ttl_seconds(ttl)))
        key = (names is not None, queues is not None, include_own)
        stmt = self._claim_statement(*key)
        what = "claim available tasks"

        def in_order(rows: Iterable[Mapping[Any, Any]]) -> list[TaskClaim]:
            ordered = sorted(rows, key=lambda r: (r["priority"], r["run_after"], r["id"]))
            return [self._claim(r) for r in ordered]

        # PostgreSQL: one statement, autocommitted
        done = await self._run_direct(self._direct_claim(key, stmt), params, what=what)
        if done is not None:
            return in_order(done.rows)

        def fn(conn: sa.Connection) -> list[TaskClaim]:
            return in_order([r._mapping for r in conn.execute(stmt, params)])

        return await self._run(fn, what=what)


def _aware(value: Any) -> datetime | None:
    """A timestamp from a CASE expression, which loses the column's type on SQLite."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # type: ignore[no-any-return]


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else repr(exc)


def _available_task(r: Any) -> AvailableTask:
    """An :class:`AvailableTask` from a row of the tasks table."""
    return AvailableTask(
        instance_id=r.instance_id,
        task_id=r.task_id,
        name=r.name,
        queue=r.queue,
        priority=r.priority,
        run_after=r.run_after,
        claimed_by=r.claimed_by,
        claim_expires_at=_aware(r.claim_expires_at),
        attempts=r.attempts,
    )
