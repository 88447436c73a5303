"""The scheduler: fires the due cron schedules of a backend. Every worker runs one
(:attr:`durable.Worker.scheduler`), and any number may run at once: each fire advances the
schedule's ``next_run_at`` by compare-and-set in the transaction that enqueues its ticks
(:meth:`~durable.backends.PersistentBackend.fire_schedule`), so each tick runs once. A
scheduler given a registry fires only the schedules of the workflows registered there: the
ticks get the workflow's retry policy and timeout, and a schedule whose workflow no running code
serves any more (removed in a deploy) fires nowhere, where it used to enqueue executions that no
worker would ever run. What a schedule is, and how ticks become executions, is
:mod:`durable.scheduling`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from durable.backends.base import PersistentBackend
from durable.cron import due_ticks, next_tick
from durable.errors import DurableError, InvalidArgumentError, SerializationError
from durable.models import ScheduleInfo
from durable.registry import Registry
from durable.scheduling import runs_for

log = logging.getLogger(__name__)

#: Seconds between a scheduler's looks for due schedules (at most; it wakes for the next tick).
SCHEDULER_INTERVAL = 1.0
#: How many due schedules a look reads (besides those it left the last time).
_LOOK = 100


class Scheduler:
    """Fires the due schedules of a backend: every worker runs one (:meth:`run`), and any
    number may run at once (see the module docstring).

    :param registry: the workflows whose schedules it fires, and where it finds their retry
        policies and timeouts. None: every schedule, by the workflow's name (no policy).
    :param serves: of those, which it fires now: a worker's scheduler fires only the
        schedules whose workflow and queue the worker claims (:attr:`Worker.names`, its
        ``queues``). None: all of them.
    """

    def __init__(
        self,
        backend: PersistentBackend,
        registry: Registry | None = None,
        *,
        serves: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.serves = serves
        self.fired = 0
        """How many executions this scheduler enqueued."""
        # due schedules it left last time (another registry's workflow, or unreadable): they
        # stay due, first in the store's order, so each look reads that many more
        self._left: set[str] = set()
        # the time of the first look that found more due schedules than it reads (None: the
        # last look read them all)
        self._backlog_since: datetime | None = None

    def _serves(self, schedule: ScheduleInfo) -> bool:
        if self.registry is not None and schedule.workflow not in self.registry:
            return False
        return self.serves is None or self.serves(schedule.workflow, schedule.queue)

    async def run_once(self) -> datetime | None:
        """Fire every due schedule of the workflows it serves once. Returns the earliest next
        tick among those fired (None if none was)."""
        now = await self.backend.now()
        # while it works through a backlog, look after look, the schedules are judged (due,
        # late or missed) at the first look's time: it was running then, and saw them due
        # (each look taking its own time, ticks only late were skipped as missed); those due
        # since are found once the backlog is through
        judged = self._backlog_since or now
        earliest: datetime | None = None
        left: set[str] = set()
        limit = _LOOK + len(self._left)
        due = await self.backend.due_schedules(judged, limit=limit)
        self._backlog_since = judged if len(due) >= limit else None
        for schedule in due:
            assert schedule.next_run_at is not None
            if not self._serves(schedule):
                if schedule.name not in self._left:
                    log.debug(
                        "schedule %s left to the runtimes that serve %s",
                        schedule.name,
                        schedule.workflow,
                        extra={"action": "schedule.not_served", "schedule": schedule.name},
                    )
                left.add(schedule.name)
                continue
            try:
                ticks = due_ticks(
                    schedule.cron,
                    schedule.timezone,
                    since=schedule.next_run_at,
                    now=judged,
                    missed=schedule.missed,
                    max_catchup=schedule.max_catchup,
                )
                following = next_tick(schedule.cron, schedule.timezone, judged)
                runs = runs_for(schedule, ticks, self.registry, trigger=False, now=now)
            except Exception as exc:  # a row edited by hand: the other schedules go on
                left.add(schedule.name)
                log.error(
                    "schedule %s cannot be read: %s: %s",
                    schedule.name,
                    type(exc).__name__,
                    exc,
                    extra={"action": "schedule.refused", "schedule": schedule.name},
                )
                continue
            try:
                results = await self.backend.fire_schedule(
                    schedule.name,
                    expected_next_run_at=schedule.next_run_at,
                    next_run_at=following,
                    runs=runs,
                    last_tick_at=ticks[-1] if ticks else None,
                )
            except (InvalidArgumentError, SerializationError) as exc:
                left.add(schedule.name)
                log.error(  # a broken schedule: the others go on, and it is retried
                    "schedule %s cannot fire: %s",
                    schedule.name,
                    exc,
                    extra={"action": "schedule.refused", "schedule": schedule.name},
                )
                continue
            if results is None:
                continue  # another scheduler fired it
            created = sum(1 for _, new in results if new)
            self.fired += created
            skipped = "" if ticks else " (missed ticks skipped)"
            log.info(
                "schedule %s fired %d tick(s)%s; next at %s",
                schedule.name,
                created,
                skipped,
                following.isoformat() if following else "never",
                extra={"action": "schedule.fired", "schedule": schedule.name},
            )
            if following is not None and (earliest is None or following < earliest):
                earliest = following
        self._left = left
        return earliest

    async def _until_next(self, interval: float) -> float:
        """Seconds until the next tick of any schedule, at most ``interval`` (every scheduler
        wakes for it, so that whichever fires first, the tick is on time)."""
        now = await self.backend.now()
        soon = await self.backend.due_schedules(
            now + timedelta(seconds=interval), limit=1 + len(self._left)
        )
        upcoming = [s for s in soon if s.name not in self._left and self._serves(s)][:1]
        if not upcoming or upcoming[0].next_run_at is None or upcoming[0].next_run_at <= now:
            return interval  # none soon, or one this scheduler could not fire: look later
        return (upcoming[0].next_run_at - now).total_seconds() + 0.005

    async def run(self, stopping: asyncio.Event, *, interval: float = SCHEDULER_INTERVAL) -> None:
        """Fire due schedules until ``stopping`` is set, looking every ``interval`` seconds at
        most (sooner for a tick due before). Errors (a database outage) are logged and the
        loop goes on."""
        failures = 0
        while not stopping.is_set():
            wait = interval
            try:
                await self.run_once()
                failures = 0
                # more are due than a look reads: the next look at once
                wait = 0 if self._backlog_since else await self._until_next(interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may come back: nothing ends this loop
                failures += 1
                self._backlog_since = None  # what it missed meanwhile is downtime
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "firing schedules failed (%d time(s) in a row): %s: %s",
                    failures,
                    type(exc).__name__,
                    exc,
                    exc_info=not isinstance(exc, DurableError),
                    extra={"action": "schedule.failed"},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), wait)
