"""The memory backend's continue-as-new: a running workflow ends its run and starts the next
one under the same id, with new input and an empty history."""

from __future__ import annotations

from typing import Any

from durable.backends.memory.core import MemoryCore
from durable.models import WorkflowInfo


class Continuation(MemoryCore):
    """:meth:`~durable.backends.PersistentBackend.continue_as_new`."""

    async def continue_as_new(
        self, instance_id: str, *, worker_id: str, input: Any
    ) -> WorkflowInfo:
        text = self._dump(input)  # a value the serializer rejects fails before any change
        with self._lock:
            now = self.clock()
            current = self._get(instance_id)
            stored = self._hand_back(
                instance_id,
                worker_id,
                now,
                now,
                input=text,
                output=None,
                error=None,
                attempts=0,
                interruptions=0,
                continuations=current.continuations + 1,
            )
            self._steps[instance_id] = {}
            for key in self._step_tasks(instance_id):
                del self._tasks[key]
        self.notify_work()
        return self._load_info(stored, lenient=True)
