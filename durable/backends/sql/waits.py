"""Waiting on a direct connection's socket, with the socket left in the event loop's selector.

psycopg's own asyncio wait (``psycopg.waiting.wait_async``) adds the connection's socket to the
loop's selector before each wait and removes it after: two ``epoll_ctl`` calls, the selector's
bookkeeping and a timer for every statement, about 25 us of a lone step's 180 us of CPU here.
:class:`SocketWaiter` takes its place on the direct path's connections (it is the connection's
``wait``, the one method psycopg's cursors call to run a statement's I/O) and keeps the socket
registered from one statement to the next:

* the socket is never read outside its statement's generator (a read ahead of it changes what
  libpq reports when the server closed the connection: the generator's own read then meets the
  end of the stream, and its error is "server closed the connection unexpectedly" instead of the
  server's reason). The selector is level-triggered: an answer is reported once more, on the
  loop's turn in which its woken statement reads it, and that report runs after the statement
  went on (to its next statement, or to wait for something else). So each report is checked
  with a zero-timeout ``poll`` of the socket first, and a report of bytes already read is
  dropped, neither waking the next statement for nothing nor taking the socket out;
* bytes that arrive while no statement waits (the server's goodbye on a connection it
  terminated, a notice) are left unread, and the socket leaves the selector until the next
  statement waits: that statement reads them as psycopg's own wait would, after its query was
  sent, so libpq takes the server's error for the statement's and its reason ("terminating
  connection due to administrator command") reaches the caller. Read while libpq is idle, the
  same error is only a notice to it, and the statement fails with "no connection to the
  server" instead;
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
import select
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
        self._poll = select.poll()  # the socket's readiness, asked without waiting
        self._poll.register(self._fileno, select.POLLIN)
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self._ready = 0
        self._watching = False

    @classmethod
    def install(cls, conn: Any, loop: asyncio.AbstractEventLoop) -> SocketWaiter | None:
        """Make a new waiter ``conn``'s wait (its socket must not change: not for a
        connection being opened or reset). None, with psycopg's own wait left in place, where
        sockets cannot be polled (``select.poll``: not on Windows)."""
        if not hasattr(select, "poll"):
            return None
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

    def said_something(self) -> bool:
        """Whether the socket can be read now, or was hung up: on an idle connection, the
        server spoke unasked (see :mod:`.stale`). Without waiting, and without reading."""
        return bool(self._poll.poll(0))

    def _on_readable(self) -> None:
        if not self._poll.poll(0):  # a second report of an answer its statement read since
            return
        future = self._future
        if future is None:  # nothing waits: left unread for the next statement (see above)
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
