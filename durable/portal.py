"""A background event loop, so that code that is not async can use the async runtime.

A :class:`Portal` owns one event loop in a daemon thread. Any number of threads may
:meth:`~Portal.call` coroutines on it at once. :meth:`~Portal.stop` first interrupts the calls
still running (their callers get :class:`~durable.errors.DurableError`), then ends the loop the way
:func:`asyncio.run` does (remaining tasks cancelled, async generators and the default executor
shut down); a call made after that is refused at once. No caller is ever left waiting on a loop
that no longer runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from durable.errors import DurableError

T = TypeVar("T")


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
            would block the loop that must run ``coro``).
        """
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
                raise DurableError(
                    f"the {self._owner} was closed while this call was running"
                ) from None
            raise

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._calls.add(task)
        try:
            return await coro
        finally:
            self._calls.discard(task)

    def stop(self, last: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> None:
        """Refuse new calls, cancel the calls still running and wait for them to unwind, then
        run ``last()`` on the loop (its exception is raised here), stop the loop and wait for its
        thread. Idempotent.

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
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(last), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join()

    async def _shutdown(self, last: Callable[[], Coroutine[Any, Any, Any]] | None) -> None:
        calls = list(self._calls)
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        if last is not None:
            await last()
