"""How SQLite transactions wait for the write lock, which one connection at a time holds.

A transaction that only reads begins deferred (:data:`SQLITE_READING`): in a WAL file a reader
neither takes the write lock nor waits for it. A write transaction begins ``IMMEDIATE``: it
takes the lock at once, or waits for it (SQLite's busy timeout), so that two writers never
find out at their first write that one of them must start over.

That wait blocks the thread. On an event loop's thread (the standard-library driver's
transactions run there, without a thread hop) it would stop every coroutine of the loop,
heartbeats included, for as long as another process holds the lock, up to the busy timeout:
leases lapsed and steps ran twice behind another process's long transaction. So a write
transaction begun there waits :data:`LOOP_WAIT_MS` inside SQLite (:data:`SQLITE_LOOP_WAIT`),
then raises :class:`SQLiteLockHeld`, and its caller awaits and begins again until the busy
timeout has passed, the loop running meanwhile.
"""

from __future__ import annotations

from contextvars import ContextVar

#: Milliseconds a SQLite transaction waits for the write lock another connection holds (its
#: busy timeout), then fails with "database is locked" (durable's BackendUnavailableError).
BUSY_TIMEOUT_MS = 30_000
#: Milliseconds a SQLite write transaction begun on an event loop's thread waits inside SQLite
#: for the write lock another connection holds (see :data:`SQLITE_LOOP_WAIT`); the rest of
#: the busy timeout is waited out by awaiting, the loop running meanwhile.
LOOP_WAIT_MS = 20

#: True while the SQLite transaction about to begin only reads: it begins deferred, so that a
#: reader of a WAL file neither takes the write lock nor waits for another process's (set by
#: the backend's read-only transactions; every other one begins ``IMMEDIATE``).
SQLITE_READING: ContextVar[bool] = ContextVar("durable_sqlite_reading", default=False)

#: Set while a SQLite write transaction begins on an event loop's thread: SQLite's busy wait
#: for another process's write lock blocks the thread, and with it every coroutine of the loop
#: (heartbeats included) for up to the busy timeout. Such a transaction waits at most this
#: many milliseconds inside ``BEGIN IMMEDIATE``, then raises :class:`SQLiteLockHeld`; its
#: caller awaits and begins again (see ``InlineRunner.waiting_for_lock``).
SQLITE_LOOP_WAIT: ContextVar[int | None] = ContextVar("durable_sqlite_loop_wait", default=None)


class SQLiteLockHeld(Exception):
    """``BEGIN IMMEDIATE`` met another connection's write lock within its short wait on the
    event loop's thread (:data:`SQLITE_LOOP_WAIT`): nothing ran; wait, then begin again.
    ``error``: SQLite's "database is locked", as SQLAlchemy raises it, for the caller that
    gives up."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def is_sqlite_busy(error: BaseException) -> bool:
    """Whether ``error`` (sqlite3's, or SQLAlchemy's around it) is SQLite's busy: the write
    lock is held by another connection."""
    orig = getattr(error, "orig", error)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == 5)  # SQLITE_BUSY and its extended codes
    return "database is locked" in str(orig)
