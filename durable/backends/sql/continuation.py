"""Continue-as-new: a running workflow ends its run and starts the next one under the same id,
with new input and an empty history.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from durable.backends.sql.core import P_IID, P_WID, SQLCore
from durable.backends.sql.schema import steps, tasks, workflows
from durable.models import WORKFLOW_TASK, WorkflowInfo, WorkflowStatus


class Continuation(SQLCore):
    """:meth:`~durable.backends.PersistentBackend.continue_as_new`."""

    def _build_continuation_statements(self) -> None:
        now = self.dialect.now()
        # the fence and the hand-back in one statement: release the claim, due at once
        self._continue_task = (
            sa.update(tasks)
            .where(self._task_key, tasks.c.claimed_by == P_WID, tasks.c.claim_expires_at > now)
            .values(claimed_by=None, claim_expires_at=None, run_after=now)
        )
        self._drop_history = sa.delete(steps).where(steps.c.workflow_id == P_IID)
        self._drop_step_tasks = sa.delete(tasks).where(
            tasks.c.instance_id == P_IID, tasks.c.task_id != WORKFLOW_TASK
        )
        self._continue_workflow = (
            sa.update(workflows)
            .where(workflows.c.id == P_IID)
            .values(
                status=WorkflowStatus.PENDING.value,
                input=sa.bindparam("p_input", type_=sa.Text()),
                output=None,
                error=None,
                attempts=0,
                interruptions=0,
                continuations=workflows.c.continuations + 1,
                updated_at=sa.bindparam("p_ts", type_=workflows.c.updated_at.type),
                version=workflows.c.version + 1,
            )
            .returning(*workflows.c)
        )

    async def continue_as_new(
        self, instance_id: str, *, worker_id: str, input: Any
    ) -> WorkflowInfo:
        text = self._dump(input)  # a value the serializer rejects fails before any write
        clock = self.dialect.clock_params()
        params = {
            "p_iid": instance_id,
            "p_tid": WORKFLOW_TASK,
            "p_wid": worker_id,
            "p_input": text,
            "p_ts": self.clock(),
            **clock,
        }

        def fn(conn: sa.Connection) -> WorkflowInfo:
            if conn.execute(self._continue_task, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, WORKFLOW_TASK, worker_id)
            conn.execute(self._drop_history, params)
            conn.execute(self._drop_step_tasks, params)
            row = conn.execute(self._continue_workflow, params).one()
            self._announce_work(conn)
            return self._info(row, lenient=True)

        info = await self._run(fn, what=f"continue workflow {instance_id!r} as new")
        self.notify_work()
        return info
