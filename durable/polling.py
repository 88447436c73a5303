"""How a wait looks again at something another process may change: soon at first, then less
often.

A reader that nothing wakes (a result, an event or a stream written by another process on
SQLite or MySQL/MariaDB, or on PostgreSQL between two notifications) looks again after
:data:`FIRST_PAUSE`, then after pauses that double, up to the caller's ``poll_interval``: a short
wait ends within about as long again as it lasted, a long one costs a look every
``poll_interval``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds between a wait's first look and its second.
FIRST_PAUSE = 0.01
#: Seconds a look still in flight at a wait's timeout has run, beyond which the wait says the
#: database did not answer (a server that hangs rather than refuses), not that nothing came.
UNANSWERED_LOOK = 1.0


def pauses(longest: float) -> Iterator[float]:
    """The pauses between a wait's looks: :data:`FIRST_PAUSE`, then each twice the one before,
    never more than ``longest`` (and ``longest`` from then on)."""
    pause = min(FIRST_PAUSE, longest)
    while True:
        yield pause
        pause = min(pause * 2, longest)


async def within(
    wait: Coroutine[Any, Any, T] | asyncio.Future[T],
    timeout: float | None,
    late: Callable[[], BaseException],
) -> T:
    """``await wait`` (a coroutine, or a task already running), for at most ``timeout``
    seconds (None: no limit); then cancel it without waiting for it to unwind and raise
    ``late()``. A look the database does not answer (a
    server that hangs rather than refuses) can take the driver's connect timeout to give up
    once cancelled: the caller's timeout is kept all the same."""
    task = asyncio.ensure_future(wait)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:  # the caller was cancelled: so is the wait
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    task.add_done_callback(_retrieve)
    raise late()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # read, so that asyncio does not log it as never retrieved


__all__ = ["FIRST_PAUSE", "UNANSWERED_LOOK", "pauses", "within"]
