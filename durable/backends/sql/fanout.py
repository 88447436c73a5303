"""Fan-out: a workflow hands steps to other workers as tasks and waits, suspended, for them;
the completion of the last one wakes it.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from durable.backends.sql.core import P_IID, P_WID, SQLCore, overwrite_steps
from durable.backends.sql.schema import steps, tasks, workflows
from durable.errors import StepAlreadyRecordedError
from durable.models import (
    UNTIL_WOKEN,
    WORKFLOW_TASK,
    StepRecord,
    TaskSpec,
    WorkflowStatus,
)


class FanOut(SQLCore):
    """Steps handed to other workers, and the workflow waiting for them."""

    def _build_fanout_statements(self) -> None:
        d = self.dialect
        now = d.now()
        self._lock_workflow_task = (
            sa.select(tasks.c.id)
            .where(tasks.c.instance_id == P_IID, tasks.c.task_id == WORKFLOW_TASK)
            .with_for_update()
        )
        self._suspend_task = (
            sa.update(tasks)
            .where(
                tasks.c.instance_id == P_IID,
                tasks.c.task_id == WORKFLOW_TASK,
                tasks.c.claimed_by == P_WID,
                tasks.c.claim_expires_at > now,
            )
            .values(claimed_by=None, claim_expires_at=None, run_after=d.later("until"))
        )
        other = tasks.alias("other")
        self._wake_if_done = (
            sa.update(tasks)
            .where(
                tasks.c.instance_id == P_IID,
                tasks.c.task_id == WORKFLOW_TASK,
                ~sa.exists(
                    sa.select(other.c.id).where(
                        other.c.instance_id == P_IID, other.c.task_id != WORKFLOW_TASK
                    )
                ),
            )
            .values(run_after=now)
        )
        self._take_task = sa.delete(tasks).where(
            self._task_key, tasks.c.claimed_by == P_WID, tasks.c.claim_expires_at > now
        )
        self._upsert_pending_step = overwrite_steps(
            d, d.insert(steps).values(change_seq=d.next_position())
        ).execution_options(preserve_rowcount=True)

    async def suspend_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        steps: Sequence[StepRecord],
        tasks: Sequence[TaskSpec],
    ) -> None:
        now = self.clock()
        step_rows = [self._step_row(instance_id, s, now) for s in steps]
        task_rows = [self._task_row(t, now) for t in tasks]
        clock = self.dialect.clock_params(until=UNTIL_WOKEN.total_seconds())
        params = {"p_iid": instance_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> None:
            if conn.execute(self._suspend_task, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, WORKFLOW_TASK, worker_id)
            if step_rows:
                conn.execute(self._upsert_pending_step, step_rows)
            if task_rows:
                conn.execute(self._add_task_if_absent, task_rows)
            conn.execute(self._wake_if_done, params)
            conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == instance_id)
                .values(
                    status=WorkflowStatus.PENDING.value,
                    # the attempt goes on when it is woken: that begin does not count again
                    attempts=sa.case((workflows.c.attempts > 0, workflows.c.attempts - 1), else_=0),
                    updated_at=now,
                    version=workflows.c.version + 1,
                )
            )
            self._announce_work(conn)

        await self._run(fn, what=f"suspend workflow {instance_id!r}")
        self.notify_work()

    async def complete_step_task(
        self, instance_id: str, task_id: str, *, worker_id: str, step: StepRecord
    ) -> None:
        row = self._step_row(instance_id, step, self.clock())
        clock = self.dialect.clock_params()
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> bool:
            # one completion at a time per workflow, so that the last one sees it is the last
            conn.execute(self._lock_workflow_task, params)
            if conn.execute(self._take_task, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, task_id, worker_id)
            if conn.execute(self._upsert_pending_step, row).rowcount == 0:
                raise StepAlreadyRecordedError(instance_id, step.position)
            woken = conn.execute(self._wake_if_done, params).rowcount > 0
            if woken:
                self._announce_work(conn)
            return woken

        if await self._run(fn, what=f"complete task {task_id!r} of {instance_id!r}"):
            self.notify_work()
