"""The memory backend's retention: finished workflows older than a time deleted in batches,
under one hold of the lock per batch (see
:meth:`~durable.backends.PersistentBackend.delete_finished_workflows`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from durable.backends.base import check_aware
from durable.backends.memory.core import MemoryCore, check_limit
from durable.models import StepStatus, WorkflowInfo


class Retention(MemoryCore):
    """Deleting finished workflows past a retention period, and counting them."""

    _events: dict[str, Any]
    _streams: dict[str, Any]

    def _deletable(
        self, before: datetime, names: Sequence[str] | None, queues: Sequence[str] | None
    ) -> list[WorkflowInfo]:
        """The deletable workflows, oldest ``completed_at`` first (call it under the lock)."""
        check_aware(before)
        wanted_names = None if names is None else set(names)
        wanted_queues = None if queues is None else set(queues)
        unfinished = [w for w in self._workflows.values() if not w.status.is_terminal]
        unfinished_ids = {w.id for w in unfinished}
        with_unfinished_children = {w.parent_id for w in unfinished if w.parent_id is not None}
        awaited = {
            s.child_workflow_id
            for steps in self._steps.values()
            for s in steps.values()
            if s.status is StepStatus.PENDING and s.child_workflow_id is not None
        }
        found = [
            w
            for w in self._workflows.values()
            if w.status.is_terminal
            and w.completed_at is not None
            and w.completed_at < before
            and (wanted_names is None or w.name in wanted_names)
            and (wanted_queues is None or w.queue in wanted_queues)
            and w.parent_id not in unfinished_ids
            and w.id not in with_unfinished_children
            and w.id not in awaited
        ]
        return sorted(found, key=lambda w: (w.completed_at, w.id))

    async def delete_finished_workflows(
        self,
        before: datetime,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> int:
        check_limit(limit)
        with self._lock:
            doomed = self._deletable(before, names, queues)[:limit]
            for info in doomed:
                del self._workflows[info.id]
                self._steps.pop(info.id, None)
                self._messages.pop(info.id, None)
                self._events.pop(info.id, None)
                self._streams.pop(info.id, None)
                self._labels.pop(info.id, None)
                for key in [k for k in self._tasks if k[0] == info.id]:
                    del self._tasks[key]
                if info.idempotency_key is not None:
                    self._idempotency.pop(info.idempotency_key, None)
            return len(doomed)

    async def count_finished_workflows(
        self,
        before: datetime,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
    ) -> int:
        with self._lock:
            return len(self._deletable(before, names, queues))
