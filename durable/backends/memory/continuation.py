"""The memory backend's continue-as-new: a running workflow ends its run and starts the next
one under the same id, with new input and an empty history."""

from __future__ import annotations

import dataclasses
from typing import Any

from durable.backends.memory.core import MemoryCore
from durable.models import WORKFLOW_TASK, WorkflowInfo, WorkflowStatus


class Continuation(MemoryCore):
    """:meth:`~durable.backends.PersistentBackend.continue_as_new`."""

    async def continue_as_new(
        self, instance_id: str, *, worker_id: str, input: Any
    ) -> WorkflowInfo:
        text = self._dump(input)  # a value the serializer rejects fails before any change
        with self._lock:
            now = self.clock()
            task = self._held(instance_id, WORKFLOW_TASK, worker_id, now)
            current = self._get(instance_id)
            stored = dataclasses.replace(
                current,
                status=WorkflowStatus.PENDING,
                input=text,
                output=None,
                error=None,
                attempts=0,
                interruptions=0,
                continuations=current.continuations + 1,
                updated_at=now,
                version=current.version + 1,
            )
            self._workflows[instance_id] = stored
            self._steps[instance_id] = {}
            for key in self._step_tasks(instance_id):
                del self._tasks[key]
            task.claimed_by = None
            task.claim_expires_at = None
            task.run_after = now
        self.notify_work()
        return self._load_info(stored, lenient=True)
