"""A time-skipping clock for tests: durable sleeps, timers, timeouts, deadlines and retry
backoffs of days complete in milliseconds, deterministically.

:class:`TimeSkippingClock` is a virtual clock that a backend reads as its ``clock`` (so every
lease, due time, timer and deadline is judged on it, and every row is stamped with it): the
in-memory backend, or the SQL backend on SQLite (``sqlite://``, ``sqlite+aiosqlite://``) or
PostgreSQL, whose statements then bind the clock's time where they read the host's or the
database's clock. A :class:`~durable.Runtime` waits on it (:meth:`TimeSkippingClock.install`): a
step's retry backoff waits in virtual time (:meth:`~TimeSkippingClock.sleep`), and a wait for an
outcome (``runtime.run``, ``client.result``) looks again every few milliseconds
(:meth:`~TimeSkippingClock.poll`).

Time stands still until something moves it:

* **skipping, when idle**: while something waits (an outcome is awaited, or a step backs off),
  and nothing runs (every live lease belongs to a workflow that waits in virtual time) and
  nothing is runnable (no task is due that a worker could claim), the clock jumps to the next
  moment anything is due: the earliest task due time (a sleep's wake-up, a ``recv`` timeout, a
  timer, a retry of a workflow), the end of a step's backoff, or a workflow's deadline. Leases
  held across a jump are extended by it, as their heartbeats would have (their holders are
  alive: they wait). So a 3-day ``durable.sleep`` is one jump, and what a workflow sees (the
  store's time at each step) is the same on every run. The backend looks and moves the leases
  at once (:meth:`skip_idle` of either backend: under the memory backend's lock; on a database,
  one transaction that no write to the tasks runs beside);
* :meth:`~TimeSkippingClock.advance`: by hand, at any moment (set :attr:`auto_skip` False to
  control time only by hand).

A task that is due but that nobody claims (no worker serves its workflow) does not hold time
still for ever: after :data:`UNCLAIMED_GRACE` seconds of real time it is ignored.

On a database the clock is this process's alone: every process that uses the database during
the test must run on it (the plugin's fixtures do: one runtime, its workers in the same
process). MySQL/MariaDB is not supported (its statements read the server's clock).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from durable.backends.base import IdleView
from durable.backends.memory import InMemoryBackend
from durable.backends.sql import SQLAlchemyBackend
from durable.context import current
from durable.errors import InvalidArgumentError
from durable.models import UNTIL_WOKEN, WORKFLOW_TASK
from durable.validation import MAX_DELAY_SECONDS

#: Seconds of real time between two looks of a waiter at the clock.
TICK = 0.001

#: Seconds of real time after which a due task nobody claims no longer holds time still.
UNCLAIMED_GRACE = 0.25


class TimeSkippingClock:
    """A virtual UTC clock for a backend and a runtime (see the module's docstring).

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
        self._backend: InMemoryBackend | SQLAlchemyBackend | None = None
        self._waiters: dict[object, tuple[datetime | None, str | None]] = {}
        self._unclaimed_since: float | None = None
        self._moving = False  # a move on a database is under way (its leases being extended)
        self._pending: set[asyncio.Task[None]] = set()  # advances scheduled on the loop
        self.skipped = timedelta(0)
        """The virtual time this clock has moved forward in all, by skips and by hand."""

    def __repr__(self) -> str:
        return f"TimeSkippingClock({self._now.isoformat()})"

    def __call__(self) -> datetime:
        """The virtual time (the backend's ``clock``)."""
        return self._now

    def now(self) -> datetime:
        """The virtual time now."""
        return self._now

    # -- wiring ----------------------------------------------------------------------------------

    def attach(self, backend: InMemoryBackend | SQLAlchemyBackend) -> None:
        """Make ``backend`` judge every lease, due time and deadline by this clock (a SQL
        backend: before it starts).

        :raises InvalidArgumentError: ``backend`` is neither the in-memory backend nor a SQL
            backend, or a SQL backend that has started.
        :raises ConfigurationError: a SQL backend on MySQL/MariaDB.
        """
        if isinstance(backend, InMemoryBackend):
            backend.clock = self
        elif isinstance(backend, SQLAlchemyBackend):
            backend.use_clock(self)
        else:
            raise InvalidArgumentError(
                "the time-skipping clock needs the in-memory backend (memory://) or a SQL "
                f"backend on SQLite or PostgreSQL; got {type(backend).__qualname__}, which "
                "judges time by its own clock"
            )
        self._backend = backend

    def install(self, runtime: Any) -> None:
        """:meth:`attach` to ``runtime``'s backend, and make the runtime wait on this clock:
        retry backoffs as :meth:`sleep`, waits for outcomes as :meth:`poll`."""
        self.attach(runtime.backend)
        runtime.sleep = self.sleep
        runtime.client.poll_sleep = self.poll

    # -- moving time -----------------------------------------------------------------------------

    def advance(self, delta: timedelta | float) -> None:
        """Move the clock ``delta`` (a timedelta or seconds) forward, from any thread: what
        became due is due now (this process's workers are woken), and live leases are extended
        by ``delta`` (their holders are alive).

        On the in-memory backend the clock moves at once. On a database the leases are moved
        there first: from another thread than the backend's event loop this waits for it;
        on that loop (an async test) the move is scheduled and done when the loop next runs
        (``await`` :meth:`advance_async` to wait for it).

        :raises InvalidArgumentError: ``delta`` is negative or not a duration.
        """
        step = _step(delta)
        backend = self._backend
        if not isinstance(backend, SQLAlchemyBackend):
            self._move(step)
            return
        loop = backend._loop
        if loop is None or loop.is_closed():  # not started: no lease of this process to move
            self._move(step)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            task = loop.create_task(self._advance_db(backend, step))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            return
        asyncio.run_coroutine_threadsafe(self._advance_db(backend, step), loop).result()

    async def advance_async(self, delta: timedelta | float) -> None:
        """:meth:`advance`, done when it returns, on any backend.

        :raises InvalidArgumentError: ``delta`` is negative or not a duration.
        """
        step = _step(delta)
        backend = self._backend
        if not isinstance(backend, SQLAlchemyBackend):
            self._move(step)
            return
        await self._advance_db(backend, step)

    def _move(self, step: timedelta) -> None:
        """Move the clock (the in-memory backend: under its lock, with the leases)."""
        backend = self._backend
        if not isinstance(backend, InMemoryBackend):
            with self._lock:
                self._now += step
                self.skipped += step
            return
        with backend._lock, self._lock:
            before = self._now
            backend.shift_now(before, step)
            self._now = before + step
            self.skipped += step
        backend.notify_work()

    async def _advance_db(self, backend: SQLAlchemyBackend, step: timedelta) -> None:
        while True:
            with self._lock:
                if not self._moving:
                    self._moving = True
                    before = self._now
                    break
            await asyncio.sleep(TICK)  # a skip is moving the leases: after it
        try:
            await backend.shift(before, step)
            self._moved(before, before + step)
        finally:
            self._moving = False
        backend.notify_work()

    def _moved(self, before: datetime, target: datetime) -> None:
        with self._lock:
            self._now = target
            self.skipped += target - before
            self._unclaimed_since = None  # a task still unclaimed after the skip: a new grace

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
                await self.skip()
        finally:
            del self._waiters[token]

    async def _poll(self, holder: str | None) -> None:
        token = object()
        self._waiters[token] = (None, holder)
        try:
            await asyncio.sleep(TICK)
            await self.skip()
        finally:
            del self._waiters[token]

    def skip_if_idle(self) -> bool:
        """Skip to the next due time if nothing runs and nothing is runnable (see the module's
        docstring); returns whether the clock moved. The in-memory backend only (a database
        is asked asynchronously: :meth:`skip`); False on another.
        """
        backend = self._backend
        if not self.auto_skip or not isinstance(backend, InMemoryBackend):
            return False
        with backend._lock:
            now = self._now
            target = backend.skip_idle_now(now, now + UNTIL_WOKEN / 2, self._decider(now))
            if target is None or target <= now:
                return False
            self._moved(now, target)
        backend.notify_work()
        return True

    async def skip(self) -> bool:
        """Skip to the next due time if nothing runs and nothing is runnable (see the module's
        docstring), on any backend; returns whether the clock moved."""
        backend = self._backend
        if not isinstance(backend, SQLAlchemyBackend):
            return self.skip_if_idle()
        if not self.auto_skip:
            return False
        with self._lock:
            if self._moving:
                return False
            self._moving = True
            now = self._now
        try:
            target = await backend.skip_idle(now, now + UNTIL_WOKEN / 2, self._decider(now))
            if target is None or target <= now:
                return False
            self._moved(now, target)
        finally:
            self._moving = False
        backend.notify_work()
        return True

    def _decider(self, now: datetime) -> Callable[[IdleView], datetime | None]:
        """What decides, from the backend's view at ``now``, the moment to skip to (None:
        something runs, is runnable, or nothing is due)."""
        waiters = list(self._waiters.values())

        def decide(view: IdleView) -> datetime | None:
            holders = {h for _, h in waiters if h is not None}
            anonymous = sum(1 for target, h in waiters if target is not None and h is None)
            running = sum(
                1 for iid, tid in view.leases if tid != WORKFLOW_TASK or iid not in holders
            )
            if running > anonymous:
                return None  # something runs: time flows only when all is idle
            if view.due:
                since = self._unclaimed_since
                if since is None:
                    self._unclaimed_since = time.monotonic()
                    return None
                if time.monotonic() - since < UNCLAIMED_GRACE:
                    return None  # runnable: let a worker (or the waiter) claim it first
            else:
                self._unclaimed_since = None
            events = [t for t, _ in waiters if t is not None and t > now]
            if view.next_due is not None:
                events.append(view.next_due)
            if not events:
                return None
            # the grace ends when the clock moves (:meth:`_moved`), not here: a database asks
            # twice (a look, then under its lock), and the second asking began a new grace
            return min(events)

        return decide


def _step(delta: timedelta | float) -> timedelta:
    if isinstance(delta, bool) or not isinstance(delta, timedelta | int | float):
        raise InvalidArgumentError(f"delta must be a timedelta or seconds, got {delta!r}")
    try:
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
    except (ValueError, OverflowError):  # NaN, an infinity, beyond timedelta's range
        step = None
    if step is None or step > MAX_ADVANCE:
        raise InvalidArgumentError(
            f"delta must be a finite duration of at most 100 years, got {delta!r}"
        )
    if step < timedelta(0):
        raise InvalidArgumentError(f"the clock only moves forward, got delta={delta!r}")
    return step


#: The most :meth:`TimeSkippingClock.advance` moves at once: the longest duration durable takes
#: anywhere (further would leave the dates a backend stores).
MAX_ADVANCE = timedelta(seconds=MAX_DELAY_SECONDS)


__all__ = ["UNCLAIMED_GRACE", "TimeSkippingClock"]
