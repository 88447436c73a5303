"""A background event loop, so that code that is not async can use the async runtime.

A :class:`Portal` owns one event loop in a daemon thread. Any number of threads may
:meth:`~Portal.call` coroutines on it at once. :meth:`~Portal.stop` first interrupts the calls
still running (their callers get :class:`~durable.errors.DurableError`), then ends the loop the way
:func:`asyncio.run` does (remaining tasks cancelled, async generators and the default executor
shut down); a call made after that is refused at once. No caller is ever left waiting on a loop
that no longer runs, not even in a process forked from the one that started it: there the
loop's thread does not exist, and a call is refused at once (:func:`forked_message`).

:class:`SyncStartable` is the start/close lifecycle built on it that a client and a runtime
share: ``async with``, or reference-counted ``with`` / ``start_sync()`` and blocking calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import selectors
import threading
import weakref
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from durable.errors import DurableError

T = TypeVar("T")

#: What a process that later forked had started, and its fork closed (see
#: ``SyncStartable.close_sync``): kept here so that it is never finalized in the fork, where
#: closing its connections (which the parent still uses) would close them for the parent too.
_LEFT_BEHIND: list[object] = []


def forked_message(owner: str, pid: int) -> str:
    """Why a call in a fork of the process that started ``owner`` is refused."""
    return (
        f"the {owner} was started in process {pid}, and this process ({os.getpid()}) is a fork "
        "of it: the event loop and the connections it runs on stayed there. Start it in this "
        f"process: after the fork (gunicorn's post_fork hook, or on first use), or a new {owner}"
    )


#: The event loops clients and runtimes of this process were started on (see below).
_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def _detach_inherited_loops() -> None:
    """In a forked child: give each inherited loop that durable started on an empty selector of
    its own (not the forking thread's own loop, which the child goes on running).

    The child's copy of a loop shares the parent's epoll instance (one kernel object behind
    both processes' descriptors): when the child finalizes a connection it inherited (at its
    exit, say), the transport unregisters its socket, and that removes the socket from the
    *parent's* interest list, so the parent's loop never hears the answer to its next
    statement (a hang seen with aiomysql). With a selector of its own, the child's copy knows
    no socket, and its unregistering is a no-op; its copy of the epoll descriptor is closed,
    which leaves the parent's instance as it was. The loop's thread does not exist in the
    child, so nothing runs that copy.
    """
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    for loop in list(_LOOPS):
        inherited = getattr(loop, "_selector", None)
        if loop is running or inherited is None:
            continue
        loop._selector = selectors.DefaultSelector()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            inherited.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_detach_inherited_loops)


class Portal:
    """An event loop running in a daemon thread; :meth:`call` runs a coroutine there and waits.

    Thread-safe. The loop is started by the constructor and runs until :meth:`stop`.
    """

    def __init__(self, name: str = "durable-portal", owner: str = "runtime") -> None:
        """``name``: the thread's; ``owner``: what the portal serves, as errors name it."""
        self._owner = owner
        self._lock = threading.Lock()
        self._stopping = False
        self._calls: set[asyncio.Task[Any]] = set()
        self.pid = os.getpid()
        """The process the loop runs in."""
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=name, daemon=True)
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        with asyncio.Runner() as runner:  # closing it cancels what is left, as asyncio.run does
            self.loop = runner.get_loop()
            self._stopped = asyncio.Event()
            ready.set()
            runner.run(self._stopped.wait())

    def on_own_thread(self) -> bool:
        """Whether the caller runs on the portal's loop (where waiting for it would block it)."""
        return threading.current_thread() is self._thread

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the portal's loop and return its result (or raise its exception).

        :raises DurableError: the portal is stopped, or it was stopped while ``coro`` ran (the
            coroutine was then cancelled), or this is the portal's own thread (waiting here
            would block the loop that must run ``coro``), or a fork of the portal's process.
        """
        if os.getpid() != self.pid:
            coro.close()
            raise DurableError(forked_message(self._owner, self.pid))
        if self.on_own_thread():
            coro.close()
            raise DurableError(
                f"a blocking call was made from the {self._owner}'s own event loop (inside async "
                "code it runs): await the async method instead"
            )
        with self._lock:  # after stop() has begun, nothing new reaches the loop
            if self._stopping:
                coro.close()
                raise DurableError(f"the {self._owner} is closed")
            future = asyncio.run_coroutine_threadsafe(self._tracked(coro), self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._stopping:
                raise closed_while_running(self._owner) from None
            raise

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        return await _as_call(self._calls, coro)

    def stop(self, last: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> None:
        """Refuse new calls, cancel the calls still running and wait for them to unwind, then
        run ``last()`` on the loop (its exception is raised here), stop the loop and wait for its
        thread. Idempotent. In a fork of the portal's process (where its loop does not run) it
        only refuses new calls.

        :raises DurableError: this is the portal's own thread.
        """
        if self.on_own_thread():
            raise DurableError(
                f"the {self._owner}'s event loop cannot stop itself: close it from another thread"
            )
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        if os.getpid() != self.pid:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(last), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join()

    async def _shutdown(self, last: Callable[[], Coroutine[Any, Any, Any]] | None) -> None:
        await _cancel_and_wait(self._calls)
        if last is not None:
            await last()


class SyncStartable:
    """Starting and closing from async code and from sync code, for :class:`~durable.Client`
    and :class:`~durable.Runtime` alike.

    A subclass implements :meth:`start` (which records, when started, the running loop in
    ``_loop`` and its thread in ``_loop_thread`` and sets ``_started``) and :meth:`close`, both
    idempotent, and names itself in :attr:`_noun`. Then it is used as ``async with obj:`` from
    async code, or as ``with obj:`` / :meth:`start_sync` from sync code, where :meth:`blocking`
    runs its coroutines on a background loop (a :class:`Portal`).
    """

    _noun: ClassVar[str]
    """What the object is called in messages: ``"client"``, ``"runtime"``."""
    _portal_name: ClassVar[str]
    """The name of the background loop's thread."""
    _sync_calls: ClassVar[str]
    """What the blocking calls are, in messages (``"its _sync methods"``)."""

    def __init__(self) -> None:
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._loop_pid = 0
        self._portal: Portal | None = None
        self._sync_lock = threading.Lock()  # guards _portal and _sync_users
        self._sync_users = 0
        self._async_users = 0  # open `async with` blocks (on the object's own loop)
        # what closing interrupts, on the object's loop: its waits (_interruptible()) and the
        # blocking calls other threads make without a portal (a portal tracks its own)
        self._calls: set[asyncio.Task[Any]] = set()
        self._closing = False  # from _interrupt() until the next start

    async def start(self) -> None:
        raise NotImplementedError

    def _on_this_loop(self) -> None:
        """Record the running loop as the one the object was started on (by :meth:`start`)."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._loop_thread = threading.get_ident()
        self._loop_pid = os.getpid()
        _LOOPS.add(self._loop)

    def started_elsewhere(self) -> bool:
        """Whether it was started in another process, of which this one is a fork: it cannot
        be used here (the loop and the connections it runs on stayed in that process), and
        :meth:`close_sync` here only forgets it. Start a new one in this process."""
        portal = self._portal
        if portal is not None:
            return portal.pid != os.getpid()
        return self._started and self._loop_pid != os.getpid()

    async def close(self) -> None:
        raise NotImplementedError

    def _closed_error(self) -> DurableError:
        """What a call interrupted by the close (or refused while it closes) raises."""
        return closed_while_running(self._noun)

    def _interruptible(self, wait: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``wait`` (a wait on the object's backend: an outcome, an event, a stream) as a task
        of the running loop that closing the object interrupts (:meth:`_interrupt`): the closing
        cancels it and lets it unwind before the backend closes, so that it looks at nothing
        after the close. The caller awaits the task and raises :meth:`_closed_error` when it
        was cancelled while the caller was not.

        :raises DurableError: the object is closing or closed (``wait`` is not run).
        """
        if self._closing or not self._started:
            wait.close()
            raise self._closed_error()
        task = asyncio.ensure_future(wait)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return task

    async def _interrupt(self) -> None:
        """The first thing :meth:`close` does: refuse new waits and blocking calls, then cancel
        those running (:meth:`_interruptible`, and blocking calls from other threads without a
        portal, which then raise :class:`DurableError`) and wait until they have unwound."""
        self._closing = True
        await _cancel_and_wait(self._calls)

    async def __aenter__(self) -> Self:
        """:meth:`start` as a context manager. Reference-counted, as ``with``: nested blocks
        are fine, and it closes when the last one exits."""
        await self.start()
        self._async_users += 1
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._async_users = max(self._async_users - 1, 0)
        if self._async_users == 0:
            await self.close()

    def __enter__(self) -> Self:
        """:meth:`start_sync` as a context manager. Reference-counted and thread-safe: request
        threads may each enter, nested blocks are fine, and it closes when the last one exits
        (:meth:`close_sync`)."""
        self.start_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_sync()

    def start_sync(self) -> None:
        """Start on a background event loop (a daemon thread), for code that is not async; then
        :meth:`blocking` (and the calls built on it) work from any thread.

        Reference-counted and thread-safe: the first call starts the loop and the object, later
        ones (from any thread) only count, and each must be matched by one :meth:`close_sync`;
        the last one closes. The pattern for a web application (Flask, Django, any WSGI server)
        is to start once per process and close at shutdown::

            runtime.start_sync()                  # at app start, in each worker process
            atexit.register(runtime.close_sync)   # or your server's shutdown hook

            def view(request):                    # any request thread
                return runtime.run_sync(checkout_sync, request.order_id)

        Start after the server forks its worker processes (e.g. in the app factory, or
        gunicorn's ``post_fork``), not before: a thread does not survive a fork.

        :raises DurableError: it was started by async code (``async with``) on an event loop of
            its own (blocking calls from other threads work without this), or this is async code
            running on its own loop.
        :raises BackendUnavailableError: the backend cannot be started (nothing is left running).
        """
        self._refuse_on_portal("start_sync()")
        noun = self._noun
        with self._sync_lock:
            if self._sync_users == 0:
                if self._started:
                    raise DurableError(
                        f"the {noun} was started by async code (`async with {noun}:`); call "
                        f"{self._sync_calls} from other threads without `with {noun}:` / "
                        "start_sync()"
                    )
                portal = Portal(self._portal_name, owner=noun)
                self._portal = portal  # before start(): while started, blocking calls use it
                try:
                    portal.call(self.start())
                except BaseException:
                    self._portal = None
                    with contextlib.suppress(Exception):  # the start's error is the one to see
                        portal.stop(self.close)
                    raise
            self._sync_users += 1

    def close_sync(self) -> None:
        """Undo one :meth:`start_sync` (or ``with``). The last one closes the object and stops
        its loop; blocking calls still running in other threads are then interrupted (a
        runtime's executions are handed back at once, to resume at their next run or on a
        worker) and raise :class:`DurableError`, as do calls made afterwards. More closes than
        starts are ignored.

        In a fork of the process that started it (:meth:`started_elsewhere`) it only forgets
        it: the loop and the connections are the parent's, which closes them, and the object is
        kept from being finalized here (closing its connections would close them for the parent
        too).

        :raises DurableError: called from async code running on the object's own loop.
        """
        self._refuse_on_portal("close_sync()")
        if self.started_elsewhere():
            with self._sync_lock:
                _LEFT_BEHIND.append(self)
                self._sync_users = 0
                self._portal = None
            return
        with self._sync_lock:
            if self._sync_users == 0:
                return
            self._sync_users -= 1
            if self._sync_users > 0:
                return
            portal = self._portal
            try:
                if portal is not None:
                    portal.stop(self.close)
            finally:
                self._portal = None

    def _refuse_on_portal(self, what: str) -> None:
        # waiting for the lock or the loop there could wait for the loop itself
        portal = self._portal
        noun = self._noun
        if portal is not None and portal.on_own_thread():
            raise DurableError(
                f"{what} (or `with {noun}:`) was called from async code running on the "
                f"{noun}'s own event loop: use `async with {noun}:` there, or nothing"
            )

    def blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one of this object's coroutines from sync code, from any thread, and wait for
        its result: on the background loop of :meth:`start_sync` / ``with``, or on the loop of
        async code that started it in another thread. Closing the object (the end of that
        code's ``async with``, or of the loop) interrupts the calls still running.

        :raises DurableError: it is not started (or was closed while the call ran), or this is
            the thread of its own event loop (await the coroutine instead), or a fork of the
            process that started it (:meth:`started_elsewhere`).
        """
        portal = self._portal
        if portal is not None:
            return portal.call(coro)
        loop = self._loop
        noun = self._noun
        if self.started_elsewhere():
            coro.close()
            raise DurableError(forked_message(noun, self._loop_pid))
        if not self._started or loop is None or loop.is_closed():
            coro.close()
            raise DurableError(
                f"the {noun} is not started: call {noun}.start_sync() (or use `with {noun}:`) "
                f"before {self._sync_calls}"
            )
        if threading.get_ident() == self._loop_thread:
            coro.close()
            raise DurableError(
                f"a blocking call was made on the thread of the {noun}'s event loop: await the "
                "async method instead"
            )
        try:
            future = asyncio.run_coroutine_threadsafe(self._tracked(coro), loop)
        except RuntimeError:  # the loop closed since the look above
            coro.close()
            raise self._closed_error() from None
        try:
            return future.result()
        except concurrent.futures.CancelledError:  # by the close, or by the end of the loop
            raise self._closed_error() from None

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a blocking call's ``coro`` as one that closing the object interrupts."""
        if self._closing or not self._started:  # closed since the caller looked
            coro.close()
            raise self._closed_error()
        return await _as_call(self._calls, coro)


async def _as_call(calls: set[asyncio.Task[Any]], coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` in the current task, kept in ``calls`` meanwhile: the calls in flight
    that a close cancels (a portal's, a sync-startable object's)."""
    task = asyncio.current_task()
    assert task is not None
    calls.add(task)
    try:
        return await coro
    finally:
        calls.discard(task)


async def _cancel_and_wait(calls: set[asyncio.Task[Any]]) -> None:
    """Cancel the tasks in ``calls`` (but the current one: a close made from inside a call)
    and wait until they have unwound, their outcomes dropped."""
    current = asyncio.current_task()
    running = [task for task in calls if task is not current and not task.done()]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def closed_while_running(owner: str) -> DurableError:
    """What a call raises that closing its ``owner`` (a client, a runtime) interrupted."""
    return DurableError(f"the {owner} was closed while this call was running")
