"""The memory backend's debouncing (``debounce_workflow``): a burst's execution joined while it
has not started, else a new one; the whole under the backend's lock."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from durable.backends.base import check_aware, check_debounce
from durable.backends.memory.workflows import Workflows
from durable.models import WORKFLOW_TASK, TaskSpec, WorkflowInfo, WorkflowSnapshot, WorkflowStatus


class Debounces(Workflows):
    """Bursts by ``(workflow name, debounce key)``: the execution each key points at."""

    _debounces: dict[tuple[str, str], str]

    async def debounce_workflow(
        self, snapshot: WorkflowSnapshot, task: TaskSpec, key: str, delay: timedelta
    ) -> tuple[WorkflowInfo, bool]:
        check_debounce(snapshot, key, delay)
        check_aware(snapshot.deadline)
        stored_input = self._dump(snapshot.input)  # a value the serializer rejects fails first
        with self._lock:
            now = self.clock()
            current = self._debounces.get((snapshot.name, key))
            if current is not None:
                info = self._workflows.get(current)
                stored_task = self._tasks.get((current, WORKFLOW_TASK))
                if (
                    info is not None
                    and stored_task is not None
                    and info.status is WorkflowStatus.PENDING
                    and info.attempts == 0
                    and info.interruptions == 0
                    and stored_task.claimed_by is None
                ):
                    stored_task.run_after = now + delay
                    joined = dataclasses.replace(
                        info,
                        input=stored_input,
                        deadline=snapshot.deadline,
                        version=info.version + 1,
                        updated_at=now,
                    )
                    self._workflows[current] = joined
                    return self._load_info(joined, lenient=True), False
            spec = dataclasses.replace(task, run_after=now + delay, delay=None)
            info, created = await self.create_workflow(snapshot, task=spec)
            self._debounces[(snapshot.name, key)] = info.id
            return info, created
