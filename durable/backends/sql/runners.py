"""Runners: how the backend's one-transaction functions reach the database.

Every operation of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` is a function over a
synchronous SQLAlchemy ``Connection``. A runner executes it in one transaction:

* :class:`InlineRunner`, for the standard-library SQLite driver: on the caller's thread (a local
  commit costs tens of microseconds, less than handing it to a thread would). Its single
  statements (the hot path's step records) run straight on ``sqlite3``, compiled once, and the
  ones pending at the same moment share one write transaction (:mod:`.batch`);
* :class:`AsyncRunner`, for async drivers (psycopg, aiosqlite): the whole transaction in one
  greenlet. On PostgreSQL it also runs single statements straight on the driver (:mod:`.direct`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import StaticPool
from sqlalchemy.util import greenlet_spawn

from durable.backends.sql import feed, locking
from durable.backends.sql.batch import GroupCommit
from durable.backends.sql.direct import (
    CompiledStatement,
    DirectResult,
    DirectStatements,
    as_sqlalchemy,
)
from durable.backends.sql.locking import (
    LOOP_WAIT_MS,
    SQLITE_LOOP_WAIT,
    SQLiteLockHeld,
    is_sqlite_busy,
)
from durable.backends.sql.mysql import TRANSACTION_ENDED, resets_by_durable

T = TypeVar("T")


class Runner(ABC):
    """Runs ``fn(connection)`` inside one transaction."""

    @abstractmethod
    async def transaction(self, fn: Callable[[sa.Connection], T]) -> T: ...

    @abstractmethod
    async def connection(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run ``fn`` on a connection with no transaction begun (it manages its own)."""

    async def direct(
        self, statement: CompiledStatement, values: dict[str, Any]
    ) -> DirectResult | None:
        """Run one atomic statement on the driver, without BEGIN/COMMIT or SQLAlchemy's
        execution layer, and return its row count and rows; None where that is not supported
        (the caller then runs it in :meth:`transaction`)."""
        return None

    @abstractmethod
    def checked_out(self) -> int: ...

    async def release(self) -> None:  # noqa: B027 - optional hook
        """Close connections the runner holds outside the engine's pool."""

    async def check_sessions(self) -> None:  # noqa: B027 - optional hook
        """Refuse, at start, connections whose session changes between transactions, where
        the runner keeps state in sessions (see :meth:`DirectStatements.check_sessions`)."""

    @abstractmethod
    async def dispose(self) -> None: ...


#: SQLite: one more than the highest change feed position there is (see :mod:`.feed`).
_NEXT_POSITION = f"SELECT {feed.SQLITE_NEXT_POSITION}"

#: Seconds of the inline runner's work on the event loop's thread after which its next
#: operation lets the loop turn (``asyncio.sleep(0)``): its transactions never wait on I/O, so
#: a caller awaiting them in a loop (a status poll, a workflow of many quick steps) would
#: otherwise hold the loop, heartbeats included, for as long as it goes on.
LOOP_TURN_EVERY = 0.01

#: Set while what follows an operation must run before anything else of the loop does (a
#: refused step record explained, then its lease renewed, before this executor's own worker
#: could claim the execution again): the inline runner does not let the loop turn then.
HOLD_LOOP: ContextVar[bool] = ContextVar("durable_hold_loop", default=False)


class _Counted:
    """A statement that writes a change feed position, with that position as a parameter: its
    SQL, and where the position goes among its parameters (once per occurrence)."""

    __slots__ = ("slots", "sql")

    def __init__(self, sql: str, slots: list[int]) -> None:
        self.sql = sql
        self.slots = slots

    @classmethod
    def of(cls, statement: CompiledStatement) -> _Counted | None:
        """For a statement compiled for sqlite3 (qmark parameters) that computes its position
        (:data:`feed.SQLITE_NEXT_POSITION`); None for any other."""
        pieces = statement.sql.split(feed.SQLITE_NEXT_POSITION)
        # every "?" of the statement must be a parameter (none in a literal), or the slots
        # counted here would be wrong: then the statement keeps computing its position
        if len(pieces) == 1 or statement.sql.count("?") != statement.positional_count:
            return None
        slots: list[int] = []
        before = 0
        for piece in pieces[:-1]:
            before += piece.count("?")
            slots.append(before + len(slots))
        return cls("?".join(pieces), slots)

    def params(self, params: Sequence[Any], position: int) -> tuple[Any, ...]:
        bound = list(params)
        for slot in self.slots:
            bound.insert(slot, position)
        return tuple(bound)


class _Positions:
    """The change feed positions of one SQLite write transaction's statements.

    The first statement that writes a position computes it itself, inside the statement (one
    more than the highest there is: an index lookup per position column, see :mod:`.feed`).
    When a second one comes, the next position is read once, and it and every later one take
    theirs from a counter: writers are serialized (``BEGIN IMMEDIATE``), so within the
    transaction nobody else writes a position, and the counter's are above every position
    committed before and unique. A position whose statement wrote nothing, or was undone, is
    skipped (positions need to increase, not to be dense). One per attempt at a transaction."""

    __slots__ = ("next", "written")

    def __init__(self) -> None:
        self.written = False
        self.next: int | None = None


class InlineRunner(Runner):
    """For the standard-library SQLite driver: a local transaction is cheaper than a thread hop.

    The group commit's batches run on a connection of their own, opened by the engine's pool
    (its connect events apply) and then detached from it, kept for the runner's life: a pool
    checkout and return per batch (the return rolls back) cost about a sixth of a lone step.
    It is used on the event loop's thread only (a batch runs there, without awaiting, so two
    never overlap), closed after an error of any kind (the next batch opens another), closed
    by :meth:`release` and :meth:`dispose`, and forgotten in a forked child (SQLite
    connections must not cross a fork)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        #: False for an in-memory database: its one shared connection must not be used by
        #: two threads' transactions at once.
        self.thread_safe = not isinstance(engine.pool, StaticPool)
        # a write made while nothing else can run is flushed by its caller (a lone workflow's
        # step: no flush task, no turn of the loop); otherwise a flush task gathers the writes
        # made in the same turn of the loop
        self._group: GroupCommit[Chain, list[DirectResult]] = GroupCommit(
            self._flush, inline_when_alone=True
        )
        self._writer: sqlite3.Connection | None = None
        self._writer_cursor: sqlite3.Cursor | None = None
        # each thread's own connection (sync workflows' threads), and every one of them
        self._local = threading.local()
        self._thread_writers: weakref.WeakSet[_ThreadWriter] = weakref.WeakSet()
        self._thread_writers_lock = threading.Lock()
        # each statement's form with its feed position as a parameter (None: it writes none)
        self._counted: dict[CompiledStatement, _Counted | None] = {}
        self._turned_at = time.monotonic()  # when it last let the event loop turn
        _INLINE_RUNNERS.add(self)

    async def transaction(self, fn: Callable[[sa.Connection], T]) -> T:
        done = await self.waiting_for_lock(lambda: self.run(fn))
        if not HOLD_LOOP.get():
            await self.let_loop_turn()
        return done

    async def let_loop_turn(self) -> None:
        """Let the event loop turn if it has not for :data:`LOOP_TURN_EVERY` seconds of this
        runner's work (see there): awaited after each of its operations on the loop."""
        now = time.monotonic()
        if now - self._turned_at >= LOOP_TURN_EVERY:
            self._turned_at = now
            await asyncio.sleep(0)

    async def waiting_for_lock(self, attempt: Callable[[], T]) -> T:
        """``attempt()``, a write transaction begun on the event loop's thread, with SQLite's
        wait for another connection's write lock cut to :data:`~.locking.LOOP_WAIT_MS`: when
        it meets the lock (:class:`~.locking.SQLiteLockHeld`, nothing ran), this awaits and
        begins again, the loop running meanwhile, until the busy timeout has passed, and then
        raises SQLite's "database is locked" as a transaction waiting inside SQLite would have
        (see :mod:`.locking`)."""
        token = SQLITE_LOOP_WAIT.set(LOOP_WAIT_MS)
        try:
            deadline: float | None = None
            pause = 0.002
            while True:
                try:
                    return attempt()
                except SQLiteLockHeld as held:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + (locking.BUSY_TIMEOUT_MS - LOOP_WAIT_MS) / 1000
                    if now >= deadline:
                        raise held.error from None
                    await asyncio.sleep(min(pause, deadline - now))
                    pause = min(pause * 2, 0.1)
        finally:
            SQLITE_LOOP_WAIT.reset(token)

    async def direct(
        self, statement: CompiledStatement, values: dict[str, Any]
    ) -> DirectResult | None:
        """Run ``statement`` on ``sqlite3``, in one write transaction with the other direct
        statements pending at the same moment (group commit)."""
        return (await self.direct_chain((statement,), values))[0]

    def direct_now(
        self, statement: CompiledStatement, values: dict[str, Any]
    ) -> DirectResult | None:
        """:meth:`direct`, run at once and blocking, without a coroutine, when the group commit
        would flush it alone in its caller's task anyway (:meth:`GroupCommit.alone`: a lone
        workflow's step), on the batches' own connection, as a statement of its own
        (:meth:`_autocommitted`). None when the write is not alone, or another connection held
        the write lock past :data:`~.locking.LOOP_WAIT_MS` (nothing was written): the caller
        then awaits :meth:`direct`, which joins a batch, or waits for the lock with the loop
        running."""
        if not self.thread_safe or not self._group.alone():
            return None
        done = self._autocommitted(
            self._own_cursor(), statement, values, self._close_own, busy_is_none=True
        )
        if done is not None:
            self._group.flushed_alone()
        return done

    def direct_blocking(self, statement: CompiledStatement, values: dict[str, Any]) -> DirectResult:
        """:meth:`direct` from a thread that is not the event loop's (a sync workflow's), on
        that thread's own connection (:meth:`_thread_writer`), as a statement of its own
        (:meth:`_autocommitted`), waiting for the write lock as long as the busy timeout."""
        writer = self._thread_writer()
        with writer.lock:  # (release() closes it meanwhile only once this statement ended)
            try:
                done = self._autocommitted(writer.open(), statement, values, writer.close)
            finally:
                if writer.retired:
                    writer.close()
        assert done is not None  # a lock held past the busy timeout raised
        return done

    def _autocommitted(
        self,
        cursor: Any,
        statement: CompiledStatement,
        values: dict[str, Any],
        close: Callable[[], None],
        *,
        busy_is_none: bool = False,
    ) -> DirectResult | None:
        """``statement`` with ``values`` on ``cursor``, the kept cursor of a runner's own
        connection (no transaction open; a cursor made and dropped per statement costs about
        a microsecond), as a statement of its own: SQLite's implicit transaction takes the
        write lock as the statement begins (waiting for it as ``BEGIN IMMEDIATE`` does) and
        commits as it ends, so one call to ``sqlite3`` does what three do in
        :meth:`run_batch`. The statement is the first of its transaction: it writes its own
        feed position (see :class:`_Positions`).

        Errors are raised as :meth:`run_batch` raises them, ``close`` called after any but the
        statement's own (a constraint, a value of the wrong type); with ``busy_is_none``, None
        when the write lock stayed held past the connection's busy timeout (nothing was
        written)."""
        params = None
        try:
            params = statement.params(values)
            cursor.execute(statement.sql, params)  # (sqlite3 resets a statement that failed)
            rows = statement.rows(cursor.fetchall()) if statement.returns_rows else []
        except BaseException as exc:
            conn = cursor.connection
            with contextlib.suppress(Exception):  # (a commit the lock stopped: undone)
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if busy_is_none and isinstance(exc, sqlite3.OperationalError) and is_sqlite_busy(exc):
                return None
            if not isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | StatementError):
                close()  # not the statement's own refusal (a constraint, a value): a new one
            wrapped = as_sqlalchemy(exc, statement, params, self.engine.dialect, False)
            if wrapped is exc:
                raise
            raise wrapped from exc
        return DirectResult(int(cursor.rowcount), rows)

    async def direct_chain(
        self, statements: tuple[CompiledStatement, ...], values: dict[str, Any]
    ) -> list[DirectResult]:
        """Run ``statements`` in order, all with ``values``, as one unit (a savepoint) inside
        the group commit's transaction, stopping after the first (not the last) that changed or
        returned no row; returns the results of those that ran."""
        if self._group.bound_elsewhere():
            return self.run_batch([(statements, values)])[0].result()
        done = await self._group.submit((statements, values))
        if len(done) == len(statements) and done[-1].rowcount:
            # all done (what a refusal stops, a lease renewed say, goes on uninterrupted)
            await self.let_loop_turn()
        return done

    def run_alone(self, statement: CompiledStatement, values: dict[str, Any]) -> DirectResult:
        """Run ``statement`` on ``sqlite3`` at once, in a write transaction of its own (not
        the group commit's next one), blocking: on the batches' own connection on their event
        loop, elsewhere on a pooled one."""
        return self.run_batch([((statement,), values)], own=self._own_here())[0].result()[0]

    def run_alone_then(
        self,
        statement: CompiledStatement,
        values: dict[str, Any],
        follow: Callable[[DirectResult], Sequence[Chain]],
    ) -> tuple[DirectResult, list[Outcome]]:
        """:meth:`run_alone`, then in the same transaction the chains ``follow`` makes of its
        result; the statement's result and the chains' outcomes (a chain that fails is undone
        alone, as in :meth:`run_batch`: the transaction, the statement included, then runs
        again with a savepoint a chain)."""

        def run(conn: Any, savepoints: bool) -> tuple[DirectResult, list[Outcome]] | None:
            positions = _Positions()
            first = self._run_chain(conn, (statement,), values, positions, savepoint=False)
            assert first is not None  # one statement: undone by SQLite itself
            result = first.result()[0]
            outcomes = self._run_items(conn, follow(result), positions, savepoints=savepoints)
            return None if outcomes is None else (result, outcomes)

        return self._in_transaction(run, own=self._own_here(), first=statement)

    def _own_here(self) -> bool:
        """Whether a transaction run now may use the batches' own connection: on their event
        loop (a file database; an in-memory one has a single shared connection)."""
        return self.thread_safe and not self._group.bound_elsewhere()

    async def _flush(self, items: list[Chain]) -> list[list[DirectResult] | BaseException]:
        outcomes = await self.waiting_for_lock(lambda: self.run_batch(items, own=self.thread_safe))
        return [outcome.outcome for outcome in outcomes]

    def _own_connection(self) -> Any:
        """The batches' own connection (see the class), opened on first use. It is used on
        the event loop's thread only: SQLite waits for another connection's write lock there
        for :data:`~.locking.LOOP_WAIT_MS` at most (see :meth:`waiting_for_lock`)."""
        if self._writer is None:
            fairy = self.engine.raw_connection()
            writer = fairy.driver_connection
            fairy.detach()  # the pool forgets it: its slot stays free, closing it is ours
            assert writer is not None
            writer.execute(f"PRAGMA busy_timeout={LOOP_WAIT_MS}")
            self._writer = writer
        return self._writer

    def _own_cursor(self) -> Any:
        """A cursor of :meth:`_own_connection`, kept with it (see :meth:`_autocommitted`)."""
        conn = self._own_connection()
        cursor = self._writer_cursor
        if cursor is None or cursor.connection is not conn:  # the first, or a new connection
            cursor = self._writer_cursor = conn.cursor()
        return cursor

    def _close_own(self) -> None:
        writer, self._writer, self._writer_cursor = self._writer, None, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()

    def _thread_writer(self) -> _ThreadWriter:
        """The calling thread's own write connection's holder (a sync workflow's thread
        records its steps on it: a pool checkout and return per step cost a tenth of one),
        kept in the thread's locals: the connection goes with the thread, or is closed after
        an error of any kind, or by :meth:`release`."""
        writer: _ThreadWriter | None = getattr(self._local, "writer", None)
        if writer is None:
            writer = self._local.writer = _ThreadWriter(self.engine)
            with self._thread_writers_lock:
                self._thread_writers.add(writer)
        return writer

    def _close_threads_own(self) -> None:
        """Close every thread's own connection (:meth:`release`); one a statement runs on is
        closed by its thread once the statement ended. A thread that records again opens
        another."""
        with self._thread_writers_lock:
            writers = list(self._thread_writers)
        for writer in writers:
            writer.retire()

    def run_batch(self, items: Sequence[Chain], *, own: bool = False) -> list[Outcome]:
        """Run ``items`` (see :meth:`direct_chain`) in one write transaction (``BEGIN
        IMMEDIATE`` ... ``COMMIT``) on a pooled ``sqlite3`` connection, from any thread, and
        return each one's outcome.

        An item the database refuses (a constraint, a type) fails alone: SQLite undoes that
        statement, and the transaction goes on; when a chain of several fails after its first
        statement ran, the transaction is rolled back and run again with a savepoint around
        each chain, which undoes the failed chain alone (chains rarely fail: the savepoints'
        two statements a chain are paid only then). Anything else (the file is locked past the
        busy timeout, the disk is full, I/O) rolls the whole transaction back and is raised, as
        SQLAlchemy would raise it, so every item fails with it. ``own``: on the batches' own
        connection (the event loop's thread only), which is closed after such an error.
        """

        def run(conn: Any, savepoints: bool) -> list[Outcome] | None:
            return self._run_items(conn, items, _Positions(), savepoints=savepoints)

        return self._in_transaction(run, own=own, first=items[0][0][0])

    def _in_transaction(
        self, run: Callable[[Any, bool], T | None], *, own: bool, first: CompiledStatement
    ) -> T:
        """``BEGIN IMMEDIATE``, ``run(conn, savepoints)``, ``COMMIT``, on the batches' own
        connection (``own``) or a pooled one. First without savepoints; when ``run`` returns
        None (a chain failed midway, see :meth:`_run_items`), rolled back and run again with
        them. Anything ``run`` or the commit raises rolls the transaction back and is raised
        as SQLAlchemy would raise it (``first``: the statement it names); the own connection
        is then closed."""
        fairy = None
        try:
            if own:
                conn = self._own_connection()
            else:
                fairy = self.engine.raw_connection()
                conn = fairy.driver_connection
            assert conn is not None
            try:
                for savepoints in (False, True):
                    try:
                        conn.execute("BEGIN IMMEDIATE")
                    except sqlite3.OperationalError as exc:
                        if own and SQLITE_LOOP_WAIT.get() is not None and is_sqlite_busy(exc):
                            # another connection writes: nothing ran (a first pass that did
                            # was rolled back); the caller waits off the loop and begins again
                            wrapped = as_sqlalchemy(exc, first, None, self.engine.dialect, False)
                            raise SQLiteLockHeld(wrapped) from exc
                        raise
                    done = run(conn, savepoints)
                    if done is not None:
                        break
                    conn.execute("ROLLBACK")  # a chain failed midway: again, with savepoints
                else:
                    raise AssertionError("with savepoints, no chain fails midway")
                conn.execute("COMMIT")
            except SQLiteLockHeld:
                raise  # the connection is as it was: no transaction
            except BaseException as exc:
                with contextlib.suppress(Exception):  # (a closed connection raises here too)
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                if own:
                    self._close_own()
                wrapped = as_sqlalchemy(exc, first, None, self.engine.dialect, False)
                if wrapped is exc:
                    raise
                raise wrapped from exc
            return done
        finally:
            if fairy is not None:
                fairy.close()

    def run(self, fn: Callable[[sa.Connection], T]) -> T:
        """:meth:`transaction`, in the calling thread."""
        with self.engine.begin() as conn:
            return fn(conn)

    async def connection(self, fn: Callable[[sa.Connection], T]) -> T:
        with self.engine.connect() as conn:
            return fn(conn)

    def checked_out(self) -> int:
        return checked_out_of(self.engine.pool)

    def _run_items(
        self, conn: Any, items: Sequence[Chain], positions: _Positions, *, savepoints: bool
    ) -> list[Outcome] | None:
        """Run ``items`` in the transaction begun. Without ``savepoints`` (optimistic: they
        cost two statements a chain, and chains rarely fail), None as soon as a chain fails
        after one of its statements ran, which only a rollback of the whole transaction
        undoes: the caller then runs them all again with savepoints."""
        outcomes: list[Outcome] = []
        for statements, values in items:
            outcome = self._run_chain(conn, statements, values, positions, savepoint=savepoints)
            if outcome is None:
                return None
            outcomes.append(outcome)
        return outcomes

    def _run_chain(
        self,
        conn: Any,
        statements: tuple[CompiledStatement, ...],
        values: dict[str, Any],
        positions: _Positions,
        *,
        savepoint: bool,
    ) -> Outcome | None:
        """Run one chain; its outcome, or None when it failed after an earlier statement of it
        ran, outside a savepoint (see :meth:`_run_items`); a chain's first statement that fails
        is undone by SQLite itself. ``positions``: the transaction's (see :class:`_Positions`)."""
        unit = savepoint and len(statements) > 1
        if unit:
            conn.execute("SAVEPOINT durable_chain")
        results: list[DirectResult] = []
        statement, params = statements[0], None
        try:
            for statement in statements:
                params = statement.params(values)
                sql = statement.sql
                try:
                    counted = self._counted[statement]
                except KeyError:
                    counted = self._counted[statement] = _Counted.of(statement)
                if counted is not None and not positions.written:  # the first computes its own
                    positions.written = True
                elif counted is not None:
                    if positions.next is None:
                        positions.next = int(conn.execute(_NEXT_POSITION).fetchone()[0])
                    sql, params = counted.sql, counted.params(params, positions.next)
                    positions.next += 1
                cursor = conn.execute(sql, params)
                rows = statement.rows(cursor.fetchall()) if statement.returns_rows else []
                results.append(DirectResult(int(cursor.rowcount), rows))
                if len(results) < len(statements) and (
                    results[-1].rowcount == 0 or (statement.returns_rows and not rows)
                ):
                    break
        except sqlite3.OperationalError:
            raise
        except (sqlite3.DatabaseError, sa.exc.StatementError) as exc:
            if unit:
                conn.execute("ROLLBACK TO durable_chain")
                conn.execute("RELEASE durable_chain")
            elif results:
                return None  # an earlier statement of the chain ran
            return Outcome(as_sqlalchemy(exc, statement, params, self.engine.dialect, False))
        if unit:
            conn.execute("RELEASE durable_chain")
        return Outcome(results)

    async def release(self) -> None:
        await self._group.close()
        self._close_own()
        self._close_threads_own()

    async def dispose(self) -> None:
        self._close_own()
        self._close_threads_own()
        self.engine.dispose()


#: Every InlineRunner alive, so that a forked child forgets their own connections.
_INLINE_RUNNERS: weakref.WeakSet[InlineRunner] = weakref.WeakSet()


def _forget_connections_after_fork() -> None:
    for runner in list(_INLINE_RUNNERS):
        runner._writer = None  # the parent's: neither used nor closed here
        runner._writer_cursor = None
        runner._local = threading.local()
        runner._thread_writers = weakref.WeakSet()
        runner._thread_writers_lock = threading.Lock()


class _ThreadWriter:
    """One thread's own write connection (see :meth:`InlineRunner._thread_writer`), held in the
    thread's locals: it goes with the thread. Its thread uses it holding :attr:`lock`; another
    thread closes it only holding that lock too (:meth:`retire`): a ``sqlite3`` connection
    closed under a statement of another thread's is freed under it."""

    __slots__ = ("__weakref__", "conn", "cursor", "engine", "lock", "retired")

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.conn: Any = None
        self.cursor: Any = None  # the connection's, kept (see InlineRunner._autocommitted)
        self.lock = threading.Lock()
        #: set by retire() while a statement ran: its thread closes the connection after it
        self.retired = False

    def open(self) -> Any:
        """The connection's kept cursor; the connection opened as the batches' is (the
        engine's connect events apply, then the pool forgets it), with the engine's busy
        timeout (the thread may wait). Its thread calls this holding :attr:`lock`."""
        if self.conn is None:
            fairy = self.engine.raw_connection()
            self.conn = fairy.driver_connection
            fairy.detach()
            self.cursor = self.conn.cursor()
        return self.cursor

    def close(self) -> None:
        """Close the connection (holding :attr:`lock`); the next :meth:`open` opens another."""
        conn, self.conn, self.cursor, self.retired = self.conn, None, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def retire(self) -> None:
        """From another thread: close the connection now if no statement runs on it, else
        have its thread close it once the statement ended."""
        if self.lock.acquire(blocking=False):
            try:
                self.close()
            finally:
                self.lock.release()
        else:
            self.retired = True


os.register_at_fork(after_in_child=_forget_connections_after_fork)


#: A batch item: statements run in order with the same values (see ``direct_chain``).
Chain = tuple[tuple[CompiledStatement, ...], dict[str, Any]]


class Outcome:
    """What one item of a batch did: its results, or the exception its caller raises."""

    __slots__ = ("outcome",)

    def __init__(self, outcome: list[DirectResult] | BaseException) -> None:
        self.outcome = outcome

    def result(self) -> list[DirectResult]:
        """The result, or raise the exception."""
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class AsyncRunner(Runner):
    """For async drivers; SQLite ones are serialized in-process (SQLite has one writer)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._direct = DirectStatements(engine)
        #: MySQL and aiosqlite: a transaction runs to its end even when its caller is
        #: cancelled (see :meth:`_shielded`); those still running, which :meth:`release` waits
        #: for.
        self._shield = engine.dialect.name in ("mysql", "mariadb", "sqlite")
        self._unfinished: set[asyncio.Future[Any]] = set()
        #: MySQL: the pool rolls a connection back on its return only if its transaction did not
        #: end here (see mysql.rollback_unless_ended)
        self._mark_ended = resets_by_durable(engine)

    async def transaction(self, fn: Callable[[sa.Connection], T]) -> T:
        # The whole transaction (checkout, begin, fn, commit, checkin) runs in one greenlet:
        # the same driver calls as AsyncEngine.begin() + run_sync(), without paying the
        # async-to-sync switches of each of those steps.
        def run() -> T:
            with self.engine.sync_engine.connect() as conn:
                with conn.begin():
                    result = fn(conn)
                if self._mark_ended:  # committed: the pool's reset has nothing to undo
                    conn.connection.info[TRANSACTION_ENDED] = True
                return result

        transaction = greenlet_spawn(run) if self._lock is None else self._serialized(run)
        if self._shield:
            return await self._shielded(transaction)
        return await transaction

    async def _serialized(self, run: Callable[[], T]) -> T:
        assert self._lock is not None
        async with self._lock:
            return await greenlet_spawn(run)

    async def _shielded(self, transaction: Coroutine[Any, Any, T]) -> T:
        """Run ``transaction`` to its end (commit, or rollback) even if the caller is cancelled
        meanwhile; the caller is not kept waiting. aiomysql interrupted between two statements of
        a transaction (a heartbeat cancelled when its attempt ends) would leave the transaction
        open on the server, holding its row locks, until the connection is closed; aiosqlite
        interrupted in the middle of a transaction could leave its connection inside it,
        holding the file's write lock (every other writer then waited out its busy timeout:
        CI saw it when a ``result(timeout=...)`` ran out during a read)."""
        task = asyncio.ensure_future(transaction)
        self._unfinished.add(task)
        task.add_done_callback(_settled(self._unfinished))
        return await asyncio.shield(task)

    async def connection(self, fn: Callable[[sa.Connection], T]) -> T:
        async with self.engine.connect() as conn:
            return await conn.run_sync(fn)

    async def async_transaction(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run the coroutine function ``fn`` in one transaction on an ``AsyncConnection``
        (committed when it returns, rolled back when it raises)."""
        async with contextlib.AsyncExitStack() as stack:
            if self._lock is not None:
                await stack.enter_async_context(self._lock)
            conn = await stack.enter_async_context(self.engine.begin())
            return await fn(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    async def direct(
        self, statement: CompiledStatement, values: dict[str, Any]
    ) -> DirectResult | None:
        return await self._direct.execute(statement, values)

    async def check_sessions(self) -> None:
        await self._direct.check_sessions()

    def checked_out(self) -> int:
        return checked_out_of(self.engine.sync_engine.pool)

    async def release(self) -> None:
        if self._unfinished:
            await asyncio.wait(set(self._unfinished))
        await self._direct.close()

    async def dispose(self) -> None:
        await self.engine.dispose()


def _settled(unfinished: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback: forget the task, and retrieve its exception (its caller may be gone)."""

    def done(task: asyncio.Future[Any]) -> None:
        unfinished.discard(task)
        if not task.cancelled():
            task.exception()

    return done


def checked_out_of(pool: sa.Pool) -> int:
    counter = getattr(pool, "checkedout", None)
    return int(counter()) if callable(counter) else 0
