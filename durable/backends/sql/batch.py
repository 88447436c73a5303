"""Group commit: writes that are pending at the same moment go to the database together.

A durable step must be committed before its workflow moves on, but nothing says each step needs
a round trip (or a transaction) of its own. When many executions in one process checkpoint at
the same moment, one statement or one transaction can carry all of them, as a database does for
its own log. :class:`GroupCommit` is that batcher, one per backend instance and event loop:

* **No added latency when alone.** The first write is handed to a flush task at once (it runs
  on the loop's next turn), or, with ``inline_when_idle`` or ``inline_when_alone``, flushed by
  its caller's own task (no task to start, no future to wake: a lone write costs what the
  statement costs); writes that arrive while ``max_in_flight`` flushes are in flight queue up
  and form the next batch, which starts as soon as a flush ends.
* **Each caller is released only after the commit that holds its write**: its future is set
  from the flush's result for its item, after the flush returned.
* **Per-item outcomes.** The flush returns one result or exception per item, so a refused
  fence or a row the database rejects fails that caller alone. An exception raised by the flush
  itself (the database went away mid-batch) fails every caller of the batch with that same
  exception: nothing is acknowledged that was not committed.
* A caller that is cancelled stops waiting; its write may still commit (as a cancelled single
  statement may), which the fencing and the idempotent step record make harmless. A caller
  cancelled during its own inline flush cancels that statement, as it would its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")

#: The most items one flush carries (a statement's arrays, a transaction's length).
MAX_BATCH = 256


class GroupCommit(Generic[I, R]):
    """Runs ``flush(items)`` for the items submitted meanwhile, one flush at a time.

    ``flush`` returns a sequence as long as ``items``: for each item its result, or the
    exception that item's caller raises. Safe for any number of concurrent callers on the
    event loop it was first used on; :meth:`submit` on another loop raises RuntimeError.

    ``inline_when_idle``: a write submitted when no flush is in flight, none is queued and
    the last flush carried one item (the process writes alone, not in bursts: in a burst,
    the writes made in the same turn of the loop join a flush task's batch) is flushed by
    its caller's task, alone. For a flush that awaits the database (the writes that arrive
    meanwhile still form the next batch); not for one that blocks the loop until it returns:
    nothing could queue during it, so every write would go alone.

    ``inline_when_alone``: for such a flush, one that blocks the loop: a write submitted when
    no flush is in flight or queued and the loop has nothing else ready to run (no other task
    could add a write to a batch before the flush ends) is flushed by its caller's task, alone.
    Read from the loop's queue of ready callbacks (``_ready``, asyncio's own loops); on a loop
    without it, never.
    """

    def __init__(
        self,
        flush: Callable[[list[I]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = 1,
        inline_when_idle: bool = False,
        inline_when_alone: bool = False,
    ) -> None:
        self._flush = flush
        self._max = max_batch
        self._max_in_flight = max_in_flight
        self._inline_when_idle = inline_when_idle
        self._inline_when_alone = inline_when_alone
        self._inline = 0  # flushes run by their callers' tasks, now
        self._last_size = 0  # items of the last flush that started
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: how many flushes ran and how many items they carried (benchmarks read these)
        self.flushes = 0
        self.items = 0

    async def submit(self, item: I) -> R:
        """Queue ``item`` and return its result once the flush that carried it has ended."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a GroupCommit is bound to the event loop it was first used on")
        if not (self._queue or self._flushing or self._inline) and (
            (self._inline_when_idle and self._last_size <= 1)
            or (self._inline_when_alone and not getattr(loop, "_ready", True))
        ):
            return await self._flush_inline(item, loop)
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        self._start_flush(loop)
        return await future

    async def _flush_inline(self, item: I, loop: asyncio.AbstractEventLoop) -> R:
        """Flush ``item`` alone in the caller's task; then start a flush for what queued
        meanwhile."""
        self._inline += 1
        try:
            self.flushes += 1
            self.items += 1
            self._last_size = 1
            results = await self._flush([item])
            if len(results) != 1:  # a bug in the flush: fail loudly
                raise RuntimeError("a group commit flush returned the wrong count")
        finally:
            self._inline -= 1
            self._start_flush(loop)
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def alone(self) -> bool:
        """Whether a write submitted now would be flushed by its caller's task, alone, at once
        (``inline_when_alone``: no flush in flight or queued, and the loop this batcher is
        bound to runs and has nothing else ready). A caller whose flush blocks can then run it
        itself, without the coroutines of :meth:`submit`, and count it (:meth:`flushed_alone`);
        nothing can join its batch meanwhile, as nothing else runs. False off the bound loop,
        and before the first :meth:`submit` binds one."""
        if not self._inline_when_alone or self._queue or self._flushing or self._inline:
            return False
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return loop is running and not getattr(loop, "_ready", True)

    def flushed_alone(self) -> None:
        """Count a write its caller flushed alone after :meth:`alone` said it could."""
        self.flushes += 1
        self.items += 1
        self._last_size = 1

    def _start_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start a flush task for the queued items if fewer than ``max_in_flight`` run."""
        if self._queue and len(self._flushing) + self._inline < self._max_in_flight:
            self._flushing.add(loop.create_task(self._run()))

    def bound_elsewhere(self) -> bool:
        """True when called off the loop this batcher is bound to (the caller then writes on
        its own)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return True
        return self._loop is not None and self._loop is not loop

    async def _run(self) -> None:
        """Flush batches until the queue is empty (items queued during a flush form the next)."""
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                self.flushes += 1
                self.items += len(batch)
                self._last_size = len(batch)
                try:
                    results: Sequence[R | BaseException] = await self._flush(
                        [item for item, _ in batch]
                    )
                    if len(results) != len(batch):  # a bug in the flush: fail loudly
                        raise RuntimeError("a group commit flush returned the wrong count")
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    for _, future in self._queue:
                        future.cancel()
                    self._queue = []
                    raise
                except BaseException as exc:  # handed to every caller
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            # at once, not in a done callback: a submit in between must see this flush gone
            self._flushing.discard(asyncio.current_task())

    async def close(self) -> None:
        """Wait for the flushes in flight (if any) to end."""
        if self._flushing and self._loop is asyncio.get_running_loop():
            await asyncio.wait(set(self._flushing))
        self._loop = None
