"""Waiting on a direct connection's socket, with the socket left in the event loop's selector.

psycopg's own asyncio wait (``psycopg.waiting.wait_async``) adds the connection's socket to the
loop's selector before each wait and removes it after: two ``epoll_ctl`` calls, the selector's
bookkeeping and a timer for every statement, about 25 us of a lone step's 180 us of CPU here.
:class:`SocketWaiter` takes its place on the direct path's connections (it is the connection's
``wait``, the one method psycopg's cursors call to run a statement's I/O) and keeps the socket
registered from one statement to the next:

* when the socket is readable, the waiter reads it at once (libpq's ``consume_input``, what the
  statement's generator does first when woken): the selector reports a socket for as long as it
  has unread bytes, and an answer left unread until the woken task runs would be reported again
  on the loop's next turn, waking the next statement for nothing;
* bytes that arrive while no statement waits are read the same way (a notice goes to libpq's
  notice handling); if the read fails (the server closed the connection, and libpq closed the
  socket), the socket leaves the selector;
* the socket's callbacks are registered in an empty ``contextvars`` context (the loop keeps the
  context a callback was registered in, and the socket outlives the task of the statement
  that registered it, whose context holds the running execution and its history);
* the socket leaves the selector on every path out of a failed or cancelled wait, and on
  :meth:`SocketWaiter.close`, which must run before the connection is closed: a closed
  descriptor left in the selector would be taken for the next socket given its number.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Generator
from typing import Any, TypeVar

from psycopg import errors
from psycopg.waiting import READY_R, READY_W, WAIT_R, WAIT_W

T = TypeVar("T")


class SocketWaiter:
    """Runs a psycopg connection's I/O generators on one event loop; installed with
    :meth:`install` on a connection that nothing else runs statements on."""

    def __init__(self, pgconn: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._pgconn = pgconn
        self._fileno: int = pgconn.socket
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self._ready = 0
        self._watching = False

    @classmethod
    def install(cls, conn: Any, loop: asyncio.AbstractEventLoop) -> SocketWaiter:
        """Make a new waiter ``conn``'s wait (its socket must not change: not for a
        connection being opened or reset)."""
        waiter = cls(conn.pgconn, loop)
        conn.wait = waiter.wait
        return waiter

    async def wait(self, gen: Generator[Any, Any, T], *_args: Any, **_kwargs: Any) -> T:
        """Drive ``gen`` (psycopg's generators yield what they wait for and are sent what is
        ready) to its end and return its value. psycopg's ``interval`` and ``timeout`` go
        unused: the direct path's statements wait for their answer."""
        try:
            state = next(gen)
            while True:
                if not state & (WAIT_R | WAIT_W):  # nothing would ever wake it: as psycopg
                    raise errors.InternalError(f"bad poll status: {state}")
                if state & WAIT_R:
                    if not self._watching:
                        # in an empty context: the loop keeps the context a callback is
                        # registered in, and this one outlives the statement's task (whose
                        # context holds the execution's, with its history)
                        contextvars.Context().run(
                            self._loop.add_reader, self._fileno, self._on_readable
                        )
                        self._watching = True
                else:  # only a write to wait for: a pending read must not spin the loop
                    self._unwatch()
                if state & WAIT_W:
                    contextvars.Context().run(
                        self._loop.add_writer, self._fileno, self._on_writable
                    )
                self._ready = 0
                self._future = self._loop.create_future()
                try:
                    await self._future
                finally:
                    self._future = None
                    if state & WAIT_W:
                        self._loop.remove_writer(self._fileno)
                state = gen.send(self._ready)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        except OSError as exc:
            self._unwatch()
            raise errors.OperationalError("connection socket closed") from exc
        except BaseException:
            self._unwatch()
            raise

    def close(self) -> None:
        """Take the socket out of the loop's selector; call it before closing the connection."""
        self._unwatch()

    def _on_readable(self) -> None:
        # read what arrived, as the statement's generator would first: the socket is drained,
        # so the selector (level-triggered) does not report it again on the loop's next turn,
        # which would wake the next statement for nothing or find none waiting
        try:
            self._pgconn.consume_input()
            failed = False
        except Exception:  # the connection failed (libpq closed it): its statement says so
            failed = True
        future = self._future
        if future is None:  # nothing waits: a notice, or the server closing the connection
            if failed:
                self._unwatch()
            return
        self._ready |= READY_R
        if not future.done():
            future.set_result(None)

    def _on_writable(self) -> None:
        self._ready |= READY_W
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._fileno)
