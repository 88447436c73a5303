"""Forks: a new execution from the first steps of another's history (see
:meth:`~durable.backends.PersistentBackend.fork_workflow`).

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). The new
workflow's row is built from the source's as read (its input copied as stored text, never
deserialized); its steps, events and labels are copied with ``INSERT ... SELECT`` in the same
transaction, which portable SQLAlchemy Core renders on every dialect.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from durable.backends.base import check_aware, fork_refusal
from durable.backends.sql.core import SQLCore
from durable.backends.sql.schema import events, steps, workflow_labels, workflows
from durable.errors import WorkflowAlreadyExistsError, WorkflowNotFoundError
from durable.models import StepStatus, TaskSpec, WorkflowInfo, WorkflowStatus


class Forks(SQLCore):
    """Forks: the new workflow, its copied steps, events and labels, and its task, in one
    transaction."""

    async def fork_workflow(
        self,
        source_id: str,
        new_id: str,
        *,
        from_position: int,
        deadline: datetime | None = None,
        trace_context: str | None = None,
    ) -> WorkflowInfo:
        check_aware(deadline)
        now = self.clock()

        # the source's row locked (shared) until the fork commits: retention, which skips
        # locked rows, cannot delete the history between its read and its copy (the fork would
        # have no steps, and run again the ones it was to replay)
        read_source = self.dialect.lock_for_fence(
            sa.select(
                workflows.c.name,
                workflows.c.input,
                workflows.c.queue,
                workflows.c.priority,
                workflows.c.max_attempts,
                workflows.c.partition_key,
            ).where(workflows.c.id == source_id)
        )

        def fn(conn: sa.Connection) -> WorkflowInfo:
            source = conn.execute(read_source).first()
            if source is None:
                raise WorkflowNotFoundError(source_id)
            history = conn.execute(
                sa.select(steps.c.position, steps.c.status).where(steps.c.workflow_id == source_id)
            ).all()
            refusal = fork_refusal(
                source_id,
                from_position,
                [(p, status == StepStatus.PENDING.value) for p, status in history],
            )
            if refusal is not None:
                raise refusal
            name, stored_input, queue, priority, max_attempts, partition_key = source
            row = conn.execute(
                # a concurrent fork to the same id loses here, not on a constraint error
                self.dialect.insert(workflows)
                .values(created_seq=self.dialect.next_position())
                .on_conflict_do_nothing()
                .returning(*workflows.c),
                {
                    "id": new_id,
                    "name": name,
                    "status": WorkflowStatus.PENDING.value,
                    "input": stored_input,
                    "queue": queue,
                    "priority": priority,
                    "attempts": 0,
                    "max_attempts": max_attempts,
                    "interruptions": 0,
                    "version": 1,
                    "created_at": now,
                    "updated_at": now,
                    "deadline": deadline,
                    "continuations": 0,
                    "trace_context": trace_context,
                    "partition_key": partition_key,
                },
            ).first()
            if row is None:
                raise WorkflowAlreadyExistsError(new_id)
            # the copied steps are one change of the feed's (one position, see .feed)
            step_columns = [c for c in steps.c if c.name not in ("workflow_id", "change_seq")]
            conn.execute(
                sa.insert(steps).from_select(
                    ["workflow_id", *(c.name for c in step_columns), "change_seq"],
                    sa.select(
                        sa.literal(new_id, sa.String()),
                        *step_columns,
                        self.dialect.next_position(),
                    ).where(steps.c.workflow_id == source_id, steps.c.position < from_position),
                )
            )
            event_columns = [c for c in events.c if c.name != "workflow_id"]
            conn.execute(
                sa.insert(events).from_select(
                    ["workflow_id", *(c.name for c in event_columns)],
                    sa.select(sa.literal(new_id, sa.String()), *event_columns).where(
                        events.c.workflow_id == source_id, events.c.position < from_position
                    ),
                )
            )
            conn.execute(
                sa.insert(workflow_labels).from_select(
                    ["workflow_id", "key", "value"],
                    sa.select(
                        sa.literal(new_id, sa.String()),
                        workflow_labels.c.key,
                        workflow_labels.c.value,
                    ).where(workflow_labels.c.workflow_id == source_id),
                )
            )
            conn.execute(
                self._insert_task,
                self._task_row(
                    TaskSpec(
                        instance_id=new_id,
                        name=name,
                        queue=queue,
                        priority=priority,
                        partition_key=partition_key,
                    ),
                    now,
                ),
            )
            self._announce_work(conn)
            return self._info(row, lenient=True)

        info = await self._run(fn, what=f"fork workflow {source_id!r} as {new_id!r}")
        self.notify_work()
        return info
