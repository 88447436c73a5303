"""A watch on the runtime's event loop.

Code that blocks the loop (``time.sleep``, a synchronous client, CPU-heavy work in an ``async
def`` step or workflow) stops everything the process does on it, heartbeats included: past
``claim_ttl`` its leases lapse, other workers take its executions over and run their steps
again, and the blocked process finds its leases gone when it wakes. Nothing in the lost-lease
messages says why. A thread of the runtime watches the loop run a tick every
:data:`TICK` seconds; when none has run for :data:`BLOCKED_AFTER` seconds it logs, once per
stall, where the loop is stuck (the loop thread's stack, down to the blocking line), and when
the loop runs again, for how long it was blocked and whether its leases may have lapsed.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

#: The runtime's logger: what this module logs, it logs as the runtime.
log = logging.getLogger("durable.runtime")

#: Seconds between two ticks of the loop, and between two looks of the watching thread.
TICK = 0.25
#: Seconds without a tick after which the loop counts as blocked (and it is logged).
BLOCKED_AFTER = 1.0
#: Frames of the loop thread's stack that the warning shows (the innermost ones).
FRAMES_SHOWN = 6


class LoopWatchdog:
    """Watches ``loop`` (run by the thread ``loop_thread``) from a thread of its own; see the
    module's docstring. :meth:`start` and :meth:`stop` are called on the loop's thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        loop_thread: int,
        *,
        executor_id: str,
        claim_ttl: float,
    ) -> None:
        self._loop = loop
        self._loop_thread = loop_thread
        self._executor_id = executor_id
        self._claim_ttl = claim_ttl
        self._last_tick = time.monotonic()
        self._reported = False  # this stall has been logged (by the thread)
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._last_tick = time.monotonic()
        self._timer = self._loop.call_later(TICK, self._tick)
        threading.Thread(  # it ends at the first look after stop()
            target=self._watch, name=f"durable-loop-watchdog-{self._executor_id}", daemon=True
        ).start()

    def stop(self) -> None:
        self._stopping.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        """On the loop: note that it runs; if it was blocked, say for how long."""
        now = time.monotonic()
        blocked = now - self._last_tick - TICK
        self._last_tick = now
        if blocked >= BLOCKED_AFTER:
            lapsed = blocked >= self._claim_ttl
            log.warning(
                "the event loop of executor %s ran again after %.1f s blocked%s",
                self._executor_id,
                blocked,
                f": longer than claim_ttl ({self._claim_ttl:g} s), so its leases may have "
                "lapsed and other workers may be running its executions again"
                if lapsed
                else "",
                extra={
                    "action": "loop.unblocked",
                    "executor_id": self._executor_id,
                    "duration_s": round(blocked, 3),
                },
            )
        self._reported = False
        if not self._stopping.is_set():
            self._timer = self._loop.call_later(TICK, self._tick)

    def _watch(self) -> None:
        """On the watching thread: log a stall once, with where the loop thread is."""
        while not self._stopping.wait(TICK):
            silent = time.monotonic() - self._last_tick - TICK
            if silent < BLOCKED_AFTER or self._reported:
                continue
            self._reported = True
            frame = sys._current_frames().get(self._loop_thread)
            where = (
                "".join(traceback.format_stack(frame, limit=FRAMES_SHOWN)).rstrip()
                if frame is not None
                else "  (its stack could not be read)"
            )
            log.warning(
                "the event loop of executor %s has been blocked for %.1f s, so its heartbeats "
                "cannot run (leases last %g s): code that does not yield runs on it, most often "
                "time.sleep, a synchronous client or heavy computation in an async def step or "
                "workflow (run such code in a def step, which durable runs in a thread, or "
                "through asyncio.to_thread). The loop is at:\n%s",
                self._executor_id,
                silent,
                self._claim_ttl,
                where,
                extra={"action": "loop.blocked", "executor_id": self._executor_id},
            )
