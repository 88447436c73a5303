"""The memory backend's cron schedules: stored, paused, listed, and fired (the advance of
``next_run_at`` and the enqueue of the ticks under one hold of the lock)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from durable.backends.base import check_aware
from durable.backends.memory.core import MemoryCore, check_limit
from durable.errors import ScheduleNotFoundError
from durable.models import ScheduleInfo, TaskSpec, WorkflowInfo, WorkflowSnapshot


class Schedules(MemoryCore):
    """Cron schedules; the stored args and kwargs are kept serialized, as a database would."""

    _schedules: dict[str, ScheduleInfo]

    def _store_schedule(self, schedule: ScheduleInfo) -> ScheduleInfo:
        check_aware(schedule.next_run_at, schedule.last_tick_at)
        return dataclasses.replace(
            schedule,
            args=self._dump(list(schedule.args)),  # type: ignore[arg-type]
            kwargs=self._dump(dict(schedule.kwargs)),  # type: ignore[arg-type]
        )

    def _load_schedule(self, stored: ScheduleInfo) -> ScheduleInfo:
        return dataclasses.replace(
            stored,
            args=self.serializer.loads(stored.args),  # type: ignore[arg-type]
            kwargs=self.serializer.loads(stored.kwargs),  # type: ignore[arg-type]
        )

    def _schedule(self, name: str) -> ScheduleInfo:
        try:
            return self._schedules[name]
        except KeyError:
            raise ScheduleNotFoundError(name) from None

    async def put_schedule(self, schedule: ScheduleInfo) -> tuple[ScheduleInfo, bool]:
        stored = self._store_schedule(schedule)
        with self._lock:
            now = self.clock()
            known = self._schedules.get(schedule.name)
            if known is None:
                new = dataclasses.replace(stored, created_at=now, updated_at=now, last_tick_at=None)
            else:
                moved = known.cron != stored.cron or known.timezone != stored.timezone
                new = dataclasses.replace(
                    stored,
                    paused=known.paused,
                    created_at=known.created_at,
                    updated_at=now,
                    last_tick_at=known.last_tick_at,
                    next_run_at=stored.next_run_at if moved else known.next_run_at,
                )
            self._schedules[schedule.name] = new
            return self._load_schedule(new), known is None

    async def get_schedule(self, name: str) -> ScheduleInfo:
        with self._lock:
            return self._load_schedule(self._schedule(name))

    async def list_schedules(self) -> list[ScheduleInfo]:
        with self._lock:
            return [self._load_schedule(self._schedules[n]) for n in sorted(self._schedules)]

    async def delete_schedule(self, name: str) -> bool:
        with self._lock:
            return self._schedules.pop(name, None) is not None

    async def set_schedule_paused(
        self, name: str, paused: bool, *, next_run_at: datetime | None = None
    ) -> ScheduleInfo:
        check_aware(next_run_at)
        with self._lock:
            known = self._schedule(name)
            new = dataclasses.replace(
                known,
                paused=paused,
                updated_at=self.clock(),
                next_run_at=(
                    next_run_at if next_run_at is not None and known.paused else known.next_run_at
                ),
            )
            self._schedules[name] = new
            return self._load_schedule(new)

    async def due_schedules(self, until: datetime, *, limit: int = 100) -> list[ScheduleInfo]:
        check_limit(limit)
        check_aware(until)
        with self._lock:
            due = [
                s
                for s in self._schedules.values()
                if not s.paused and s.next_run_at is not None and s.next_run_at <= until
            ]
            due.sort(key=lambda s: (s.next_run_at, s.name))
            return [self._load_schedule(s) for s in due[:limit]]

    async def fire_schedule(
        self,
        name: str,
        *,
        expected_next_run_at: datetime,
        next_run_at: datetime | None,
        runs: Sequence[tuple[WorkflowSnapshot, TaskSpec]],
        last_tick_at: datetime | None = None,
    ) -> list[tuple[WorkflowInfo, bool]] | None:
        check_aware(expected_next_run_at, next_run_at, last_tick_at)
        with self._lock:  # re-entrant: create_workflows takes it too, and never suspends
            known = self._schedules.get(name)
            if (
                known is None
                or known.paused
                or known.next_run_at is None
                or known.next_run_at != expected_next_run_at
            ):
                return None
            # all or nothing: a refused run raises here, before the schedule moves
            created = await self.create_workflows(list(runs)) if runs else []
            self._schedules[name] = dataclasses.replace(
                known,
                next_run_at=next_run_at,
                last_tick_at=last_tick_at if last_tick_at is not None else known.last_tick_at,
            )
            return created
