"""Pausing Python's cyclic garbage collector while a batch builds many objects that all survive.

A bulk enqueue of 10,000 rows makes several objects a row (its plan, options, snapshot, task,
parameter rows, header), and keeps them all until it returns. Each collection of the older
generations that their number sets off walks every one of them again, and the more there are,
the more such walks there are: measured on ``enqueue_many`` of 10,000 one-step workflows into
PostgreSQL, about a fifth of its time. Reference counting still frees everything as usual; only
the search for reference cycles waits until the batch is built.

The pause covers synchronous code of durable's only: never an ``await`` that suspends (other
coroutines of the process never run while it holds, and it cannot be left behind by a
coroutine that is never resumed), and never the application's generator of rows, which
:func:`durable.executions.plan_enqueue_many` reads into a list first: its objects may form
cycles that the collector must be free to reclaim.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector for the ``with`` block, then restore it as it was
    (a collector that the application had disabled stays disabled; nested pauses are safe)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
