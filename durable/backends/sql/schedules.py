"""Cron schedules: stored, paused, listed, and fired: the compare-and-set of ``next_run_at``
and the enqueue of the ticks' executions in one transaction (on PostgreSQL the ``UPDATE``'s row
lock makes a racing scheduler wait and then find ``next_run_at`` moved; on SQLite ``BEGIN
IMMEDIATE`` serializes them).

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). Not on the
hot path: statements are built per call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from durable.backends.base import check_aware
from durable.backends.sql.core import SQLCore
from durable.backends.sql.schema import UTCDateTime, schedules
from durable.errors import InvalidArgumentError, ScheduleNotFoundError
from durable.models import MissedTicks, ScheduleInfo, TaskSpec, WorkflowInfo, WorkflowSnapshot

_DEFINITION = (
    "workflow",
    "cron",
    "timezone",
    "args",
    "kwargs",
    "missed",
    "max_catchup",
    "queue",
    "priority",
    "declared",
)


class Schedules(SQLCore):
    """Cron schedules, one row each in ``durable_schedules``."""

    if TYPE_CHECKING:  # provided by Enqueues (.batches)

        def _creation(
            self, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
        ) -> tuple[Callable[[sa.Connection], list[tuple[WorkflowInfo, bool]]], bool]: ...

    def _schedule_row(self, schedule: ScheduleInfo) -> dict[str, Any]:
        check_aware(schedule.next_run_at)
        return {
            "name": schedule.name,
            "workflow": schedule.workflow,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "args": self.serializer.dumps(list(schedule.args)),
            "kwargs": self.serializer.dumps(dict(schedule.kwargs)),
            "missed": MissedTicks(schedule.missed).value,
            "max_catchup": schedule.max_catchup,
            "queue": schedule.queue,
            "priority": schedule.priority,
            "paused": schedule.paused,
            "declared": schedule.declared,
            "next_run_at": schedule.next_run_at,
        }

    def _schedule_info(self, row: sa.Row[Any]) -> ScheduleInfo:
        values = dict(row._mapping)
        values["args"] = self.serializer.loads(values["args"])
        values["kwargs"] = self.serializer.loads(values["kwargs"])
        values["missed"] = MissedTicks(values["missed"])
        return ScheduleInfo(**values)

    def _read_schedule(self, conn: sa.Connection, name: str) -> ScheduleInfo:
        row = conn.execute(sa.select(schedules).where(schedules.c.name == name)).first()
        if row is None:
            raise ScheduleNotFoundError(name)
        return self._schedule_info(row)

    async def put_schedule(self, schedule: ScheduleInfo) -> tuple[ScheduleInfo, bool]:
        row = self._schedule_row(schedule)
        now = self.clock()
        c = schedules.c
        insert = (
            self.dialect.insert(schedules)
            .values(**row, created_at=now, updated_at=now, last_tick_at=None)
            .on_conflict_do_nothing(index_elements=[c.name])
            .execution_options(preserve_rowcount=True)
        )
        moved = sa.or_(c.cron != row["cron"], c.timezone != row["timezone"])
        update = (
            sa.update(schedules)
            .where(c.name == schedule.name)
            .values(
                **{k: row[k] for k in _DEFINITION},
                next_run_at=sa.case(
                    (moved, sa.bindparam("p_next", row["next_run_at"], type_=c.next_run_at.type)),
                    else_=c.next_run_at,
                ),
                updated_at=now,
            )
        )

        def fn(conn: sa.Connection) -> tuple[ScheduleInfo, bool]:
            created = conn.execute(insert).rowcount == 1
            if not created:
                conn.execute(update)
            return self._read_schedule(conn, schedule.name), created

        return await self._run(fn, what=f"store schedule {schedule.name!r}")

    async def get_schedule(self, name: str) -> ScheduleInfo:
        return await self._run(
            lambda conn: self._read_schedule(conn, name),
            what=f"read schedule {name!r}",
            read_only=True,
        )

    async def list_schedules(self) -> list[ScheduleInfo]:
        stmt = sa.select(schedules).order_by(schedules.c.name)
        return await self._run(
            lambda conn: [self._schedule_info(r) for r in conn.execute(stmt)],
            what="list schedules",
            read_only=True,
        )

    async def delete_schedule(self, name: str) -> bool:
        stmt = (
            sa.delete(schedules)
            .where(schedules.c.name == name)
            .execution_options(preserve_rowcount=True)
        )
        return await self._run(
            lambda conn: conn.execute(stmt).rowcount == 1, what=f"delete schedule {name!r}"
        )

    async def set_schedule_paused(
        self, name: str, paused: bool, *, next_run_at: datetime | None = None
    ) -> ScheduleInfo:
        check_aware(next_run_at)
        values: dict[str, Any] = {"paused": paused, "updated_at": self.clock()}
        if next_run_at is not None:  # only where it was paused (see the interface)
            values["next_run_at"] = sa.case(
                (schedules.c.paused.is_(True), sa.literal(next_run_at, UTCDateTime())),
                else_=schedules.c.next_run_at,
            )
        stmt = (
            sa.update(schedules)
            .where(schedules.c.name == name)
            .values(**values)
            .execution_options(preserve_rowcount=True)
        )

        def fn(conn: sa.Connection) -> ScheduleInfo:
            if conn.execute(stmt).rowcount != 1:
                raise ScheduleNotFoundError(name)
            return self._read_schedule(conn, name)

        return await self._run(fn, what=f"pause or resume schedule {name!r}")

    async def due_schedules(self, until: datetime, *, limit: int = 100) -> list[ScheduleInfo]:
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        check_aware(until)
        c = schedules.c
        stmt = (
            sa.select(schedules)
            .where(c.paused.is_(False), c.next_run_at.is_not(None), c.next_run_at <= until)
            .order_by(c.next_run_at, c.name)
            .limit(limit)
        )
        return await self._run(
            lambda conn: [self._schedule_info(r) for r in conn.execute(stmt)],
            what="find due schedules",
            read_only=True,
        )

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
        c = schedules.c
        advance = (
            sa.update(schedules)
            .where(
                c.name == name,
                c.paused.is_(False),
                c.next_run_at == expected_next_run_at,
            )
            .values(
                next_run_at=next_run_at,
                last_tick_at=sa.func.coalesce(
                    sa.bindparam("p_last", last_tick_at, type_=c.last_tick_at.type),
                    c.last_tick_at,
                ),
            )
            .execution_options(preserve_rowcount=True)
        )
        create, with_tasks = self._creation(list(runs)) if runs else (None, False)

        def fn(conn: sa.Connection) -> list[tuple[WorkflowInfo, bool]] | None:
            if conn.execute(advance).rowcount != 1:
                return None  # fired by another scheduler, paused or deleted: nothing written
            return create(conn) if create is not None else []

        results = await self._run(fn, what=f"fire schedule {name!r}")
        if results and with_tasks and any(created for _, created in results):
            self.notify_work()
        return results
