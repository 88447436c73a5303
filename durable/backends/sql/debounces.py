"""Debouncing: ``enqueue(..., debounce=, debounce_key=)`` joins the burst of its key while the
burst's execution has not started, else starts a new burst.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). One
transaction (:meth:`Debounces.debounce_workflow`):

1. the key's row of ``durable_debounces`` is locked (``SELECT ... FOR UPDATE``; on SQLite the
   write transaction, ``BEGIN IMMEDIATE``, serializes the callers already), so callers of one
   key go one at a time; absent (the key's first burst), it is inserted (``ON CONFLICT DO
   NOTHING``: of racing first callers one inserts, the others wait for its commit and find the
   row), then locked. Locking first matters on MariaDB: an INSERT that meets a duplicate key
   takes a shared lock on the row, and two callers each holding one and asking for the
   exclusive lock deadlock; a caller run again after losing such a deadlock finds the row and
   only locks it;
2. join: one ``UPDATE`` of the burst's workflow task pushes it back to now + delay *only if* it
   holds no claim and its workflow is pending and never started, in the same statement; a claim
   racing it either took the task first (the update matches nothing: a new burst starts, and
   the claimed execution runs the arguments it had) or waits for this transaction (and then
   finds the task due later). Only if the task was pushed back are the input and the deadline
   replaced;
3. otherwise a new execution and its task, due at now + delay, and the key points at it.

Portable Core: the upsert comes from the dialect's ``insert``, the clock from ``later``.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from durable.backends.base import check_debounce
from durable.backends.sql.core import P_IID, write_labels
from durable.backends.sql.schema import UTCDateTime, debounces, tasks, workflows
from durable.backends.sql.workflows import WorkflowRecords
from durable.models import WORKFLOW_TASK, TaskSpec, WorkflowInfo, WorkflowSnapshot, WorkflowStatus

_NAME = sa.bindparam("p_name", type_=sa.String())
_KEY = sa.bindparam("p_key", type_=sa.String())
_NOW = sa.bindparam("p_now", type_=UTCDateTime())


class Debounces(WorkflowRecords):
    """Bursts by ``(workflow name, debounce key)``: the execution each key points at."""

    def _build_debounce_statements(self) -> None:
        d = self.dialect
        this_key = sa.and_(debounces.c.workflow == _NAME, debounces.c.key == _KEY)
        self._debounce_add_key = (
            d.insert(debounces)
            .values(workflow=_NAME, key=_KEY, workflow_id=None, updated_at=_NOW)
            .on_conflict_do_nothing()
        )
        # FOR UPDATE: callers of one key one at a time (rendered as nothing on SQLite, whose
        # write transaction serializes them)
        self._debounce_lock_key = (
            sa.select(debounces.c.workflow_id).where(this_key).with_for_update()
        )
        self._debounce_point_key = (
            sa.update(debounces)
            .where(this_key)
            .values(workflow_id=sa.bindparam("p_wid", type_=sa.String()), updated_at=_NOW)
        )
        never_started = sa.exists(
            sa.select(sa.literal(1)).where(
                workflows.c.id == P_IID,
                workflows.c.status == WorkflowStatus.PENDING.value,
                workflows.c.attempts == 0,
                workflows.c.interruptions == 0,
            )
        )
        # the fence: the task is pushed back only while unclaimed, in this one statement
        self._debounce_push_task = (
            sa.update(tasks)
            .where(
                tasks.c.instance_id == P_IID,
                tasks.c.task_id == WORKFLOW_TASK,
                tasks.c.claimed_by.is_(None),
                never_started,
            )
            .values(run_after=d.later("debounce"))
        )
        self._debounce_set_input = (
            sa.update(workflows)
            .where(workflows.c.id == P_IID)
            .values(
                input=sa.bindparam("p_input", type_=sa.Text()),
                deadline=sa.bindparam("p_deadline", type_=UTCDateTime()),
                version=workflows.c.version + 1,
                updated_at=_NOW,
            )
        )

    async def debounce_workflow(
        self, snapshot: WorkflowSnapshot, task: TaskSpec, key: str, delay: timedelta
    ) -> tuple[WorkflowInfo, bool]:
        check_debounce(snapshot, key, delay)
        stored_input = self._dump(snapshot.input)  # a value the serializer rejects fails first
        now = self.clock()
        row = self._workflow_row(snapshot, now, 1)
        spec = dataclasses.replace(task, run_after=None, delay=delay)
        task_row = self._task_row(spec, now)
        labelled = bool(snapshot.labels) or snapshot.parent_id is not None
        seconds = delay.total_seconds()
        keyed: dict[str, Any] = {"p_name": snapshot.name, "p_key": key, "p_now": now}

        def fn(conn: sa.Connection) -> tuple[WorkflowInfo, bool]:
            locked = conn.execute(self._debounce_lock_key, keyed).first()
            if locked is None:  # the key's first burst
                conn.execute(self._debounce_add_key, keyed)
                locked = conn.execute(self._debounce_lock_key, keyed).one()
            current = locked[0]
            if current is not None:
                pushed = conn.execute(
                    self._debounce_push_task,
                    {"p_iid": current, **self.dialect.clock_params(debounce=seconds)},
                )
                if pushed.rowcount == 1:
                    conn.execute(
                        self._debounce_set_input,
                        {
                            "p_iid": current,
                            "p_input": stored_input,
                            "p_deadline": snapshot.deadline,
                            "p_now": now,
                        },
                    )
                    joined = conn.execute(self._select_workflow, {"p_iid": current}).one()
                    return self._info(joined, lenient=True), False
            # a new burst
            stored = conn.execute(self._create_workflow, row).first()
            created = stored is not None
            if stored is None:  # the id exists (a replayed enqueue): point the key at it
                stored = conn.execute(self._select_workflow, {"p_iid": snapshot.id}).one()
            else:
                if labelled:
                    write_labels(conn, [snapshot])
                conn.execute(self._insert_task, task_row)
                self._announce_work(conn)
            conn.execute(self._debounce_point_key, {**keyed, "p_wid": snapshot.id})
            return self._info(stored, lenient=True), created

        result = await self._run(fn, what=f"debounce workflow {snapshot.name!r} key {key!r}")
        if result[1]:
            self.notify_work()
        return result
