"""A time-skipping clock for tests: durable sleeps, timers, timeouts, deadlines and retry
backoffs of days complete in milliseconds, deterministically.

:class:`TimeSkippingClock` is a virtual clock that an :class:`~durable.backends.InMemoryBackend`
reads as its ``clock`` (so every lease, due time, timer and deadline is judged on it) and that a
:class:`~durable.Runtime` waits on (:meth:`TimeSkippingClock.install`): a step's retry backoff
waits in virtual time (:meth:`~TimeSkippingClock.sleep`), and a wait for an outcome
(``runtime.run``, ``client.result``) looks again every few milliseconds
(:meth:`~TimeSkippingClock.poll`).

Time stands still until something moves it:

* **skipping, when idle**: while something waits (an outcome is awaited, or a step backs off),
  and nothing runs (every live lease belongs to a workflow that waits in virtual time) and
  nothing is runnable (no task is due that a worker could claim), the clock jumps to the next
  moment anything is due: the earliest task due time (a sleep's wake-up, a ``recv`` timeout, a
  timer, a retry of a workflow), the end of a step's backoff, or a workflow's deadline. Leases
  held across a jump are extended by it, as their heartbeats would have (their holders are
  alive: they wait). So a 3-day ``durable.sleep`` is one jump, and what a workflow sees (the
  store's time at each step) is the same on every run;
* :meth:`~TimeSkippingClock.advance`: by hand, at any moment (set :attr:`auto_skip` False to
  control time only by hand).

A task that is due but that nobody claims (no worker serves its workflow) does not hold time
still for ever: after :data:`UNCLAIMED_GRACE` seconds of real time it is ignored.

The clock needs the in-memory backend: a database judges time by its own clock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from durable.backends.memory import InMemoryBackend
from durable.context import current
from durable.errors import InvalidArgumentError
from durable.models import UNTIL_WOKEN, WORKFLOW_TASK

#: Seconds of real time between two looks of a waiter at the clock.
TICK = 0.001

#: Seconds of real time after which a due task nobody claims no longer holds time still.
UNCLAIMED_GRACE = 0.25


class TimeSkippingClock:
    """A virtual UTC clock for an in-memory backend and a runtime (see the module's docstring).

    :param start: the virtual time at the start (aware; default: this host's time now).
    :param auto_skip: skip to the next due time whenever everything is idle and something
        waits (default True); False: time moves only by :meth:`advance`.
    """

    def __init__(self, start: datetime | None = None, *, auto_skip: bool = True) -> None:
        if start is not None and (not isinstance(start, datetime) or start.utcoffset() is None):
            raise InvalidArgumentError(f"start must be an aware datetime, got {start!r}")
        self._now = (start or datetime.now(UTC)).astimezone(UTC)
        self.auto_skip = auto_skip
        self._lock = threading.Lock()
        self._backend: InMemoryBackend | None = None
        self._waiters: dict[object, tuple[datetime | None, str | None]] = {}
        self._unclaimed_since: float | None = None
        self.skipped = timedelta(0)
        """The virtual time this clock has moved forward in all, by skips and by hand."""

    def __repr__(self) -> str:
        return f"TimeSkippingClock({self._now.isoformat()})"

    def __call__(self) -> datetime:
        """The virtual time (the in-memory backend's ``clock``)."""
        return self._now

    def now(self) -> datetime:
        """The virtual time now."""
        return self._now

    # -- wiring ----------------------------------------------------------------------------------

    def attach(self, backend: InMemoryBackend) -> None:
        """Make ``backend`` judge every lease, due time and deadline by this clock.

        :raises InvalidArgumentError: ``backend`` is not an in-memory backend.
        """
        if not isinstance(backend, InMemoryBackend):
            raise InvalidArgumentError(
                "the time-skipping clock needs the in-memory backend (memory://); "
                f"got {type(backend).__qualname__}, which judges time by its database's clock"
            )
        backend.clock = self
        self._backend = backend

    def install(self, runtime: Any) -> None:
        """:meth:`attach` to ``runtime``'s backend, and make the runtime wait on this clock:
        retry backoffs as :meth:`sleep`, waits for outcomes as :meth:`poll`."""
        self.attach(runtime.backend)
        runtime.sleep = self.sleep
        runtime.client.poll_sleep = self.poll

    # -- moving time -----------------------------------------------------------------------------

    def advance(self, delta: timedelta | float) -> None:
        """Move the clock ``delta`` (a timedelta or seconds) forward, at once, from any thread:
        what became due is due now (this process's workers are woken), and live leases are
        extended by ``delta`` (their holders are alive).

        :raises InvalidArgumentError: ``delta`` is negative or not a duration.
        """
        if isinstance(delta, bool) or not isinstance(delta, timedelta | int | float):
            raise InvalidArgumentError(f"delta must be a timedelta or seconds, got {delta!r}")
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise InvalidArgumentError(f"the clock only moves forward, got delta={delta!r}")
        self._move(step)

    def _move(self, step: timedelta) -> None:
        backend = self._backend
        if backend is None:
            with self._lock:
                self._now += step
                self.skipped += step
            return
        with backend._lock, self._lock:
            before = self._now
            self._now = before + step
            self.skipped += step
            for task in backend._tasks.values():
                if task.claim_expires_at is not None and task.claim_expires_at > before:
                    task.claim_expires_at += step
            for key, executor in list(backend._executors.items()):
                if executor.stopped_at is None and not executor.stale:
                    backend._executors[key] = _bumped(executor, step)
        backend.notify_work()

    # -- waiting ---------------------------------------------------------------------------------

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """Wait ``seconds`` of virtual time (a runtime's ``sleep``: a step's retry backoff).
        While it waits, the clock may skip (the waiting workflow counts as idle)."""
        ctx = current()
        return self._wait(max(float(seconds), 0.0), None if ctx is None else ctx.workflow_id)

    def poll(self, seconds: float) -> Coroutine[Any, Any, None]:
        """A pause between two looks at an outcome (a client's ``poll_sleep``): a tick of real
        time, then a skip if everything is idle. It returns early: the caller looks again."""
        ctx = current()
        return self._poll(None if ctx is None else ctx.workflow_id)

    async def _wait(self, seconds: float, holder: str | None) -> None:
        target = self._now + timedelta(seconds=seconds)
        token = object()
        self._waiters[token] = (target, holder)
        try:
            while self._now < target:
                await asyncio.sleep(TICK)
                self.skip_if_idle()
        finally:
            del self._waiters[token]

    async def _poll(self, holder: str | None) -> None:
        token = object()
        self._waiters[token] = (None, holder)
        try:
            await asyncio.sleep(TICK)
            self.skip_if_idle()
        finally:
            del self._waiters[token]

    def skip_if_idle(self) -> bool:
        """Skip to the next due time if nothing runs and nothing is runnable (see the module's
        docstring); returns whether the clock moved."""
        backend = self._backend
        if not self.auto_skip or backend is None:
            return False
        with backend._lock:
            now = self._now
            waiters = list(self._waiters.values())
            holders = {h for _, h in waiters if h is not None}
            anonymous = sum(1 for target, h in waiters if target is not None and h is None)
            running = 0
            due_unclaimed = False
            events: list[datetime] = [t for t, _ in waiters if t is not None and t > now]
            horizon = now + UNTIL_WOKEN / 2
            for (instance_id, task_id), task in backend._tasks.items():
                if task.claim_expires_at is not None and task.claim_expires_at > now:
                    if task_id != WORKFLOW_TASK or instance_id not in holders:
                        running += 1
                elif task.run_after <= now:
                    due_unclaimed = True
                elif task.run_after < horizon:
                    events.append(task.run_after)
            if running > anonymous:
                return False  # something runs: time flows only when all is idle
            if due_unclaimed:
                since = self._unclaimed_since
                if since is None:
                    self._unclaimed_since = time.monotonic()
                    return False
                if time.monotonic() - since < UNCLAIMED_GRACE:
                    return False  # runnable: let a worker (or the waiter) claim it first
            else:
                self._unclaimed_since = None
            for info in backend._workflows.values():
                if (
                    info.deadline is not None
                    and info.deadline > now
                    and not info.status.is_terminal
                ):
                    events.append(info.deadline)
            if not events:
                return False
            self._unclaimed_since = None
            self._move(min(events) - now)
            return True


def _bumped(executor: Any, step: timedelta) -> Any:
    import dataclasses

    return dataclasses.replace(executor, heartbeat_at=executor.heartbeat_at + step)


__all__ = ["UNCLAIMED_GRACE", "TimeSkippingClock"]
