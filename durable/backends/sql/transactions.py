"""Exactly-once work in the application's own database: a step's body and its record in one
transaction (:meth:`Transactions.run_transactional_step`), and executions and messages recorded
in the caller's transaction (:meth:`Transactions.enqueue_in_transaction`,
:meth:`Transactions.send_in_transaction`).

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). Nothing
here has statements of its own: a transactional step is recorded by the fenced upsert of
:mod:`.execution` (the same claim fence as every step record), an enqueue in the caller's
transaction runs what :mod:`.batches` runs for ``enqueue_many``, a send what :mod:`.messages`
runs for a send. Only the transaction is someone else's.
"""

from __future__ import annotations

import asyncio
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from durable.backends.sql.core import Creation, SQLCore
from durable.backends.sql.dialects import mysql_thread_engine
from durable.backends.sql.direct import CompiledStatement
from durable.backends.sql.runners import AsyncRunner, InlineRunner
from durable.backends.sql.urls import shown_url
from durable.errors import (
    ConfigurationError,
    DurableError,
    SchemaVersionError,
    TransactionEndedError,
)
from durable.models import WORKFLOW_TASK, StepRecord, TaskSpec, WorkflowInfo, WorkflowSnapshot

T = TypeVar("T")

#: Seconds a thread waits for the backend's event loop to read its database's identity anew.
IDENTITY_WAIT = 30.0


class _BodyFailed(Exception):
    """Carries what the step's body (or its record) raised out of the transaction, which
    rolls back; the caller raises the original."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


class Transactions(SQLCore):
    """A step's body with its record in one transaction; enqueues and sends in the caller's."""

    supports_transactions = True

    _record_step_direct: CompiledStatement | None  # built by Execution (.execution)

    if TYPE_CHECKING:  # provided by Execution (.execution), Enqueues (.batches), Messages

        def _record_step_call(
            self, instance_id: str, step: StepRecord, worker_id: str, task_id: str
        ) -> tuple[
            dict[str, Any],
            Callable[[sa.Connection], None],
            Callable[[sa.Connection], DurableError],
        ]: ...

        def _creation(
            self, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
        ) -> tuple[Creation, bool]: ...

        def _sending(
            self, instance_id: str, topic: str, text: str, idempotency_key: str | None
        ) -> Callable[[sa.Connection], tuple[bool, bool]]: ...

    # -- a step's body and its record in one transaction ---------------------------------------

    def _thread_engine(self) -> sa.Engine | None:
        """A sync engine whose transactions may run in any thread, for sync bodies: the
        standard-library SQLite driver's own engine (files); on PostgreSQL, for engines durable
        created, a sync psycopg engine opened lazily with the same connect arguments as the
        hot path's sync connections; on MySQL/MariaDB, for engines durable created, a PyMySQL
        engine with the async one's session settings (both closed with the backend). None
        elsewhere: the body then runs in the async engine's transaction, on its event loop."""
        runner = self._runner
        if isinstance(runner, InlineRunner):
            return runner.engine if runner.thread_safe else None
        engine: sa.Engine | None = self.__dict__.get("_tx_engine")
        if engine is not None:
            return engine
        blocking = self._blocking
        made: sa.Engine | None
        if blocking is not None:
            made = sa.create_engine(self.engine.url, creator=blocking.connect)
        elif self.dialect.name == "mysql" and self._engine_options is not None:
            made = mysql_thread_engine(self.engine.url, self._engine_options)
        else:
            made = None
        if made is None:
            return None
        engine = self.__dict__.setdefault("_tx_engine", made)
        if engine is not made:  # another thread made one meanwhile
            made.dispose()
        return engine

    def _close_transactions(self) -> None:
        """Close the sync engine of :meth:`_thread_engine`, if one was opened."""
        engine: sa.Engine | None = self.__dict__.pop("_tx_engine", None)
        if engine is not None:
            engine.dispose()

    def _step_transaction(
        self,
        instance_id: str,
        body: Callable[[Any], Any],
        record: Callable[[Any], StepRecord],
        worker_id: str,
        task_id: str,
    ) -> Callable[[sa.Connection], StepRecord]:
        """The transaction of a sync body: the body, then its record by the fenced upsert of
        :mod:`.execution` (refused: the transaction rolls back)."""

        def fn(conn: sa.Connection) -> StepRecord:
            try:
                made = record(body(conn))
            except BaseException as exc:  # the user's: carried out, then raised as it was
                raise _body_failed(exc, conn) from None
            if not conn.in_transaction():
                raise _ended_by_body()
            if _aborted(conn.connection.driver_connection):
                raise _aborted_in_body()
            self._write_record(conn, instance_id, made, worker_id, task_id)
            return made

        return fn

    def _write_record(
        self, conn: sa.Connection, instance_id: str, made: StepRecord, worker_id: str, task_id: str
    ) -> None:
        """The step's record in the body's transaction: the fenced upsert of :mod:`.execution`,
        as its prepared statement straight on the driver's connection where that is sqlite3 or
        sync psycopg (as a step record runs on the hot path), else through SQLAlchemy.

        :raises ClaimLostError: the claim is not held.
        :raises StepAlreadyRecordedError: the step is recorded already.
        """
        params, write, explain = self._record_step_call(instance_id, made, worker_id, task_id)
        direct = self._record_step_direct
        raw = conn.connection.driver_connection if direct is not None else None
        if direct is None or raw is None:
            write(self.dialect.connection(conn))
            return
        if isinstance(raw, sqlite3.Connection):
            rowcount = raw.execute(direct.sql, direct.params(params)).rowcount
        elif isinstance(raw, psycopg.Connection):
            rowcount = raw.execute(direct.sql, direct.params(params), prepare=True).rowcount
        else:
            write(self.dialect.connection(conn))
            return
        if rowcount != 1:
            raise explain(conn)

    async def run_transactional_step(
        self,
        instance_id: str,
        body: Callable[[Any], Any],
        record: Callable[[Any], StepRecord],
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
        is_async: bool = False,
        engine: Any = None,
    ) -> StepRecord:
        what = f"run a transactional step of workflow {instance_id!r}"
        runner = self._runner
        if engine is not None:
            await self.own_database_identity()  # read now: the check then needs no query
            return await self._on_named_engine(
                engine, instance_id, body, record, worker_id, task_id, is_async
            )
        try:
            if is_async:
                if not isinstance(runner, AsyncRunner):
                    raise ConfigurationError(
                        "an async @durable.transaction step needs an async engine (durable's "
                        f"database is {self._shown_url_for_errors()}, on a sync driver): use "
                        "sqlite+aiosqlite:// or PostgreSQL, or make the step a plain def"
                    )

                async def transaction(conn: AsyncConnection) -> StepRecord:
                    return await _async_body(
                        conn, body, record, self, instance_id, worker_id, task_id
                    )

                with self._errors(what):
                    return await runner.async_transaction(transaction)
            fn = self._step_transaction(instance_id, body, record, worker_id, task_id)
            engine = self._thread_engine()
            with self._errors(what):
                if engine is not None:  # the body may take a while: not on the event loop
                    return await asyncio.to_thread(_in_transaction, engine, fn)
                return await runner.transaction(fn)
        except _BodyFailed as failed:
            raise failed.error from None

    def run_transactional_step_blocking(
        self,
        instance_id: str,
        body: Callable[[Any], Any],
        record: Callable[[Any], StepRecord],
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
        engine: Any = None,
    ) -> StepRecord | None:
        if engine is not None:
            if not isinstance(engine, sa.Engine) or self.known_database_identity() is None:
                return None  # checked and run by run_transactional_step
            fn = self._step_transaction(instance_id, body, record, worker_id, task_id)
            try:
                with self._errors(f"run a transactional step of workflow {instance_id!r}"):
                    return self._named_transaction(engine, fn)
            except _BodyFailed as failed:
                raise failed.error from None
        engine = self._thread_engine()
        if engine is None:
            return None  # the async engine's transaction runs on its event loop
        fn = self._step_transaction(instance_id, body, record, worker_id, task_id)
        try:
            with self._errors(f"run a transactional step of workflow {instance_id!r}"):
                return _in_transaction(engine, fn)
        except _BodyFailed as failed:
            raise failed.error from None

    async def _on_named_engine(
        self,
        engine: Any,
        instance_id: str,
        body: Callable[[Any], Any],
        record: Callable[[Any], StepRecord],
        worker_id: str,
        task_id: str,
        is_async: bool,
    ) -> StepRecord:
        """:meth:`run_transactional_step` on an engine the caller named (checked to be on
        this backend's database once per engine, inside the transaction)."""
        what = f"run a transactional step of workflow {instance_id!r}"
        fn = self._step_transaction(instance_id, body, record, worker_id, task_id)
        try:
            if is_async:
                if not isinstance(engine, AsyncEngine):
                    raise ConfigurationError(
                        "an async @durable.transaction step's engine must be an AsyncEngine, "
                        f"got {type(engine).__qualname__}"
                    )
                with self._errors(what):
                    async with engine.begin() as conn:
                        await conn.run_sync(self._check_named, engine)
                        return await _async_body(
                            conn, body, record, self, instance_id, worker_id, task_id
                        )
            if not isinstance(engine, sa.Engine):
                raise ConfigurationError(
                    "a def @durable.transaction step's engine must be a (sync) Engine, got "
                    f"{type(engine).__qualname__}"
                )
            with self._errors(what):
                return await asyncio.to_thread(self._named_transaction, engine, fn)
        except _BodyFailed as failed:
            raise failed.error from None

    def _named_transaction(
        self, engine: sa.Engine, fn: Callable[[sa.Connection], StepRecord]
    ) -> StepRecord:
        with engine.begin() as conn:
            self._check_named(conn, engine)
            return fn(conn)

    def _check_named(self, conn: sa.Connection, engine: Any) -> None:
        """Refuse an engine on another database than this backend's (once per engine)."""
        checked: weakref.WeakSet[Any] = self.__dict__.setdefault("_tx_checked", weakref.WeakSet())
        if engine in checked:
            return
        own = self.known_database_identity()
        theirs = self.database_identity(conn)
        if own is not None and theirs != own:  # the server may have restarted since
            own = self.reread_database_identity_blocking() or own
        if own is None or theirs != own:
            raise ConfigurationError(
                f"the engine given to @durable.transaction is connected to another database "
                f"({theirs!r}) than durable's tables ({own!r}): the step's writes and its "
                "checkpoint are only one commit on the same server and database (on "
                "PostgreSQL, through a search_path that finds the same durable_* tables)"
            )
        checked.add(engine)

    def _shown_url_for_errors(self) -> str:
        return shown_url(self.engine.url)

    # -- in the caller's transaction -----------------------------------------------------------

    def enqueue_in_transaction(
        self, connection: Any, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
    ) -> list[tuple[WorkflowInfo, bool]]:
        fn, _with_tasks = self._creation(batch)  # every value checked before anything runs
        with self._errors("enqueue in the caller's transaction", url=_caller_url(connection)):
            conn = self._caller(connection, schema=True)
            self.dialect.lock_for_writing(conn)
            if self.dialect.name != "mysql":  # SQLite holds its write lock; PostgreSQL skips
                return fn(conn)
            # MySQL: a concurrent transaction may insert one of these ids or keys between the
            # look-up and the insert (the insert waits for its commit, then fails on the
            # duplicate): undone to a savepoint and run again with a locking read, which sees
            # that commit, so the caller gets the existing execution and keeps its transaction
            try:
                with conn.begin_nested():
                    return fn(conn)
            except sa.exc.IntegrityError as exc:
                if not self.dialect.duplicate_key(exc):
                    raise
            with conn.begin_nested():
                return fn(conn, locked=True)

    def send_in_transaction(
        self,
        connection: Any,
        instance_id: str,
        topic: str,
        value: Any,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        text = self.serializer.dumps(value)  # before anything is written
        fn = self._sending(instance_id, topic, text, idempotency_key)
        with self._errors(
            f"send a message to workflow {instance_id!r} in the caller's transaction",
            url=_caller_url(connection),
        ):
            conn = self._caller(connection, schema=True)
            self.dialect.lock_for_writing(conn)
            stored, _woken = fn(conn)
        return stored

    def database_identity(self, connection: Any) -> tuple[Any, ...]:
        with self._errors("identify the caller's database", url=_caller_url(connection)):
            row = self._caller(connection).execute(self.dialect.database_identity()).one()
        return self.dialect.identity_of(tuple(row))

    def known_database_identity(self) -> tuple[Any, ...] | None:
        """:meth:`own_database_identity` when it needs no query (read before, or told by the
        URL: a SQLite file), else None."""
        found: tuple[Any, ...] | None = self.__dict__.get("_own_identity")
        return found if found is not None else self.dialect.identity_from_url(self.engine.url)

    def reread_database_identity_blocking(self) -> tuple[Any, ...] | None:
        """:meth:`own_database_identity` read again now, blocking, and kept: on a sync
        connection of its own (from any thread, the event loop's included), else (an async
        engine the caller gave) on the backend's event loop from another thread; None on that
        loop's thread then, where nothing may block. For a caller's identity that differs
        from the one kept: a restarted PostgreSQL server has another start time."""
        engine = self._thread_engine()
        if engine is not None:
            with self._errors("identify durable's database"), engine.connect() as conn:
                row = tuple(conn.execute(self.dialect.database_identity()).one())
            found = self.dialect.identity_of(row)
        else:
            loop = self._loop
            if loop is None or loop.is_closed() or _running_loop() is loop:
                return None
            reading = asyncio.run_coroutine_threadsafe(self._read_database_identity(), loop)
            try:
                found = reading.result(timeout=IDENTITY_WAIT)
            except TimeoutError:  # the loop does not answer: keep what was known
                reading.cancel()
                return None
        self.__dict__["_own_identity"] = found
        return found

    async def own_database_identity(self) -> tuple[Any, ...]:
        found = self.known_database_identity()
        if found is None:
            found = await self._read_database_identity()
        self.__dict__["_own_identity"] = found
        return found

    async def _read_database_identity(self) -> tuple[Any, ...]:
        """The database's identity as the database itself gives it (SQLite: the real path of
        its main file, "" in memory), not as the URL tells it."""
        row = await self._run(
            lambda conn: tuple(conn.execute(self.dialect.database_identity()).one()),
            what="identify durable's database",
            read_only=True,
        )
        return self.dialect.identity_of(row)

    def _caller(self, connection: Any, *, schema: bool = False) -> sa.Connection:
        """The caller's connection, checked: a sync SQLAlchemy ``Connection`` to a database of
        this backend's kind; with ``schema``, whose durable tables are at this code's revision
        (checked once per engine: a producer that only writes in its own transactions never
        starts a backend, which is where the revision is otherwise checked).

        :raises SchemaVersionError: they are missing, out of date, or from a newer durable.
        """
        if not isinstance(connection, sa.Connection):
            raise ConfigurationError(
                "expected a SQLAlchemy Connection in a transaction, got "
                f"{type(connection).__qualname__}"
            )
        name = connection.dialect.name
        if name != self.dialect.name:
            raise ConfigurationError(
                f"the connection is to a {name} database, but durable's tables are in a "
                f"{self.dialect.name} database: the caller's transaction must be on durable's "
                "own database"
            )
        if schema:
            checked: weakref.WeakSet[Any] = self.__dict__.setdefault(
                "_schema_checked", weakref.WeakSet()
            )
            if connection.engine not in checked:
                try:
                    self._check_revision(connection)
                except SchemaVersionError as exc:
                    seen = " (through its search_path)" if self.dialect.name == "postgresql" else ""
                    raise SchemaVersionError(
                        f"{exc}; this is the database as the caller's connection sees it{seen}"
                    ) from None
                checked.add(connection.engine)
        return self.dialect.connection(connection)  # MySQL: what it lacks, emulated


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _caller_url(connection: Any) -> str | None:
    """The URL of the caller's connection, as errors show it (None: not a connection)."""
    engine = getattr(connection, "engine", None)
    return shown_url(engine.url) if isinstance(engine, sa.Engine) else None


def _ended_by_body(raised: BaseException | None = None) -> _BodyFailed:
    """What refuses a body that ended the step's transaction itself (``conn.commit()``,
    ``conn.rollback()``): its writes and the step's record would no longer be one commit (the
    record went into a new transaction that nothing committed, so the step ran again after a
    crash, its writes twice). Also when the body then failed (``raised``: typically
    SQLAlchemy's refusal of the closed transaction's next statement): retried, each attempt
    would commit its writes again. It carries the TransactionEndedError that says so
    (retried neither by the step nor by its workflow)."""
    error = TransactionEndedError(
        "a @durable.transaction step's body ended its transaction (it called commit() "
        "or rollback() on the connection): durable commits it, with the step's record, "
        "when the body returns; use conn.begin_nested() for a part that may fail"
    )
    error.__cause__ = raised
    return _BodyFailed(error)


def _aborted(raw: Any) -> bool:
    """Whether the driver's connection ``raw`` is in a transaction that a failed statement
    aborted (PostgreSQL refuses every statement after it until a rollback)."""
    if isinstance(raw, psycopg.Connection | psycopg.AsyncConnection):
        return raw.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    return False


def _aborted_in_body() -> _BodyFailed:
    """What refuses a body that returned in a transaction one of its statements aborted: the
    body caught the statement's error and went on, but PostgreSQL refuses the step's record
    (and anything else) in that transaction. A failure of the body: nothing of its transaction
    is committed."""
    return _BodyFailed(
        ConfigurationError(
            "a @durable.transaction step's body caught a database error and returned, but the "
            "error aborted the step's transaction (PostgreSQL refuses every statement after it), "
            "so neither its writes nor the step's record can be committed: run the statement "
            "that may fail in conn.begin_nested() (a savepoint), which undoes it alone"
        )
    )


def _in_transaction(engine: sa.Engine, fn: Callable[[sa.Connection], T]) -> T:
    with engine.begin() as conn:
        return fn(conn)


def _body_failed(exc: BaseException, conn: sa.Connection | AsyncConnection) -> BaseException:
    """What a transactional step's body raising ``exc`` on ``conn`` raises from its
    transaction: the body's failure (:class:`_BodyFailed`), unless the transaction's connection
    was lost meanwhile (the database restarted or went away: SQLAlchemy invalidated it). Then
    it is the driver's error that said so, which :meth:`_errors` turns into
    :class:`~durable.errors.BackendUnavailableError`: the attempt is handed back uncounted, as
    for any checkpoint that cannot reach the database, instead of counted as the step's failure
    (and dead-lettered on its last attempt). A body that had ended the transaction itself is
    refused (:func:`_ended_by_body`)."""
    if conn.invalidated:
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, sa.exc.DBAPIError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            return cause
        return _BodyFailed(exc)
    if not conn.in_transaction():  # it ended the transaction, then failed on it
        return _ended_by_body(exc)
    return _BodyFailed(exc)


async def _async_body(
    conn: AsyncConnection,
    body: Callable[[Any], Any],
    record: Callable[[Any], StepRecord],
    backend: Transactions,
    instance_id: str,
    worker_id: str,
    task_id: str,
) -> StepRecord:
    """The transaction of an async body: the body, then its record by the fenced upsert."""
    try:
        made = record(await body(conn))
    except BaseException as exc:
        raise _body_failed(exc, conn) from None
    if not conn.in_transaction():
        raise _ended_by_body()
    raw = (await conn.get_raw_connection()).driver_connection
    if _aborted(raw):
        raise _aborted_in_body()
    params, write, explain = backend._record_step_call(instance_id, made, worker_id, task_id)
    direct = backend._record_step_direct
    if direct is not None and isinstance(raw, psycopg.AsyncConnection):
        # the prepared hot-path statement, on the driver's connection, in this transaction
        cursor = await raw.execute(direct.sql, direct.params(params), prepare=True)
        if cursor.rowcount != 1:
            raise await conn.run_sync(explain)
        return made
    await conn.run_sync(lambda sync: write(backend.dialect.connection(sync)))
    return made
