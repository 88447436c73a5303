"""The memory backend's forks: a new execution from the first steps of another's history (see
:meth:`~durable.backends.PersistentBackend.fork_workflow`)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from durable.backends.base import check_aware, fork_refusal
from durable.backends.memory.core import MemoryCore
from durable.errors import WorkflowAlreadyExistsError
from durable.models import StepStatus, TaskSpec, WorkflowInfo, WorkflowStatus


class Forks(MemoryCore):
    """Forks: the new workflow, its copied steps, events and labels, and its task, under one
    lock."""

    _events: dict[str, dict[str, Any]]  # outputs.StoredEvent, a sibling area

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
        with self._lock:
            source = self._get(source_id)
            history = self._steps.get(source_id, {})
            refusal = fork_refusal(
                source_id,
                from_position,
                [(p, s.status is StepStatus.PENDING) for p, s in history.items()],
            )
            if refusal is not None:
                raise refusal
            if new_id in self._workflows:
                raise WorkflowAlreadyExistsError(new_id)
            now = self.clock()
            stored = WorkflowInfo(
                id=new_id,
                name=source.name,
                status=WorkflowStatus.PENDING,
                input=source.input,  # as stored (serialized)
                queue=source.queue,
                priority=source.priority,
                max_attempts=source.max_attempts,
                version=1,
                created_at=now,
                updated_at=now,
                deadline=deadline,
                trace_context=trace_context,
                partition_key=source.partition_key,
            )
            self._workflows[new_id] = stored
            self._steps[new_id] = {p: s for p, s in history.items() if p < from_position}
            events = {
                key: dataclasses.replace(event)
                for key, event in self._events.get(source_id, {}).items()
                if event.position < from_position
            }
            if events:
                self._events[new_id] = events
            if labels := self._labels.get(source_id):
                self._labels[new_id] = dict(labels)
            self._add_task(
                TaskSpec(
                    instance_id=new_id, name=source.name, queue=source.queue,
                    priority=source.priority, partition_key=source.partition_key,
                ),
                now,
            )  # fmt: skip
        self.notify_work()
        return self._load_info(stored, lenient=True)
