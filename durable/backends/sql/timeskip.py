"""What a test's time-skipping clock (:class:`~durable.testing.clock.TimeSkippingClock`) asks
of the SQL backend: a view of what could run at a moment (:meth:`TimeSkipping.idle_view`), the
leases and heartbeats of live holders carried across a skip (:meth:`TimeSkipping.shift`), and
both at once (:meth:`TimeSkipping.skip_idle`).

They take the clock's time as a parameter: they are used only when the backend was given the
clock (:meth:`~durable.backends.sql.backend.SQLAlchemyBackend.use_clock`), whose time then
judges every lease and due time. A skip is one transaction that no write to the tasks runs
beside (SQLite: its write lock; PostgreSQL: a lock on the tasks table), so what it saw is
still so when it moves the leases. Portable Core; times are added in Python (SQLite stores them
as text), row by row: a test's database holds a handful of live tasks.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa

from durable.backends.base import IdleView
from durable.backends.sql.core import SQLCore
from durable.backends.sql.schema import UTCDateTime, executors, tasks, workflows
from durable.models import STALE_AFTER_HEARTBEATS, WorkflowStatus

_NOW = sa.bindparam("k_now", type_=UTCDateTime())
_HORIZON = sa.bindparam("k_horizon", type_=UTCDateTime())
_BEFORE = sa.bindparam("k_before", type_=UTCDateTime())

_UNCLAIMED = sa.or_(tasks.c.claim_expires_at.is_(None), tasks.c.claim_expires_at <= _NOW)
_LEASES = sa.select(tasks.c.instance_id, tasks.c.task_id).where(tasks.c.claim_expires_at > _NOW)
_DUE = sa.select(sa.exists(sa.select(sa.literal(1)).where(_UNCLAIMED, tasks.c.run_after <= _NOW)))
_NEXT_TASK = sa.select(sa.func.min(tasks.c.run_after)).where(
    _UNCLAIMED, tasks.c.run_after > _NOW, tasks.c.run_after < _HORIZON
)
_NEXT_DEADLINE = sa.select(sa.func.min(workflows.c.deadline)).where(
    workflows.c.deadline > _NOW,
    workflows.c.status.in_([s.value for s in WorkflowStatus if not s.is_terminal]),
)
_HELD = sa.select(tasks.c.instance_id, tasks.c.task_id, tasks.c.claim_expires_at).where(
    tasks.c.claim_expires_at > _BEFORE
)
_EXTEND = (
    sa.update(tasks)
    .where(
        tasks.c.instance_id == sa.bindparam("k_iid"),
        tasks.c.task_id == sa.bindparam("k_tid"),
        tasks.c.claim_expires_at == sa.bindparam("k_was", type_=UTCDateTime()),
    )
    .values(claim_expires_at=sa.bindparam("k_until", type_=UTCDateTime()))
)
_BEATING = sa.select(
    executors.c.id, executors.c.heartbeat_at, executors.c.heartbeat_interval
).where(executors.c.stopped_at.is_(None))
_BEAT = (
    sa.update(executors)
    .where(
        executors.c.id == sa.bindparam("k_id"),
        executors.c.heartbeat_at == sa.bindparam("k_was", type_=UTCDateTime()),
    )
    .values(heartbeat_at=sa.bindparam("k_until", type_=UTCDateTime()))
)


class TimeSkipping(SQLCore):
    """The time-skipping clock's view of the store, and its skips."""

    async def idle_view(self, now: datetime, horizon: datetime) -> IdleView:
        """What could run at ``now`` (see :class:`~durable.backends.base.IdleView`): tasks
        due before ``horizon`` and unfinished workflows' deadlines, in one transaction."""
        return await self._run(
            lambda conn: self._idle_view(conn, now, horizon),
            what="look whether anything could run",
        )

    async def shift(self, before: datetime, step: timedelta) -> None:
        """Carry live holders across a skip of ``step`` from ``before``: the claims live at
        ``before``, and the heartbeats of running executors not stale then, end ``step`` later,
        as their holders' heartbeats (alive: they wait) would have made them."""
        await self._run(
            lambda conn: self._shift(conn, before, step),
            what="carry leases across a skip of the clock",
        )

    async def skip_idle(
        self, now: datetime, horizon: datetime, decide: Callable[[IdleView], datetime | None]
    ) -> datetime | None:
        """In one transaction that no write to the tasks runs beside: the view at ``now``;
        ``decide`` it (the moment to skip to, or None); and if the moment is later,
        :meth:`shift` to it. Returns what ``decide`` returned (the caller moves its clock
        there, after the commit)."""

        if self.dialect.name == "postgresql" and decide(await self.idle_view(now, horizon)) is None:
            return None  # a look without the lock first: most find something to wait for

        def skip(conn: sa.Connection) -> datetime | None:
            if self.dialect.name == "postgresql":  # SQLite: BEGIN IMMEDIATE has the write lock
                conn.execute(sa.text(f"LOCK TABLE {tasks.name} IN SHARE ROW EXCLUSIVE MODE"))
            target = decide(self._idle_view(conn, now, horizon))
            if target is not None and target > now:
                self._shift(conn, now, target - now)
            return target

        return await self._run(skip, what="skip the clock to the next due time")

    def _idle_view(self, conn: sa.Connection, now: datetime, horizon: datetime) -> IdleView:
        params = {"k_now": now, "k_horizon": horizon}
        leases = [(r[0], r[1]) for r in conn.execute(_LEASES, params)]
        due = bool(conn.execute(_DUE, params).scalar())
        times = [
            conn.execute(_NEXT_TASK, params).scalar(),
            conn.execute(_NEXT_DEADLINE, params).scalar(),
        ]
        found = [t for t in times if t is not None]
        return IdleView(leases, due, min(found) if found else None)

    def _shift(self, conn: sa.Connection, before: datetime, step: timedelta) -> None:
        for iid, tid, until in conn.execute(_HELD, {"k_before": before}).all():
            conn.execute(
                _EXTEND, {"k_iid": iid, "k_tid": tid, "k_was": until, "k_until": until + step}
            )
        for executor_id, beat, interval in conn.execute(_BEATING).all():
            if beat < before - timedelta(seconds=STALE_AFTER_HEARTBEATS * interval):
                continue  # silent already: a dead process stays dead
            conn.execute(_BEAT, {"k_id": executor_id, "k_was": beat, "k_until": beat + step})
