"""The memory backend's labels read back, and workflows counted by status."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from durable.backends.memory.core import MemoryCore
from durable.errors import InvalidArgumentError
from durable.models import QueueDepth, WorkflowStatus, as_status_set
from durable.validation import check_labels

#: The most ids one :meth:`get_labels` call reads (as in the SQL backend).
MAX_LABEL_IDS = 1000


class Labels(MemoryCore):
    """Reading labels, and counting workflows by status."""

    async def get_labels(self, instance_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        ids = list(dict.fromkeys(instance_ids))
        if len(ids) > MAX_LABEL_IDS:
            raise InvalidArgumentError(
                f"get_labels reads at most {MAX_LABEL_IDS} workflows at once, got {len(ids)}"
            )
        with self._lock:
            return {i: dict(self._labels.get(i, {})) for i in ids if i in self._workflows}

    async def count_workflows(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[WorkflowStatus, int]:
        statuses = as_status_set(status)
        wanted = check_labels(labels, "labels filter").items()
        counts = dict.fromkeys(WorkflowStatus, 0)
        with self._lock:
            for w in self._workflows.values():
                if (
                    (statuses is None or w.status in statuses)
                    and (name is None or w.name == name)
                    and (parent_id is None or w.parent_id == parent_id)
                    and wanted <= self._labels.get(w.id, {}).items()
                ):
                    counts[w.status] += 1
        return counts

    async def queue_depths(self) -> list[QueueDepth]:
        found: dict[str, QueueDepth] = {}
        with self._lock:
            for w in self._workflows.values():
                if w.status not in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING):
                    continue
                row = found.get(w.queue) or QueueDepth(
                    queue=w.queue, pending=0, running=0, oldest_pending=None
                )
                if w.status is WorkflowStatus.RUNNING:
                    row = dataclasses.replace(row, running=row.running + 1)
                else:
                    oldest = row.oldest_pending
                    if w.created_at is not None and (oldest is None or w.created_at < oldest):
                        oldest = w.created_at
                    row = dataclasses.replace(row, pending=row.pending + 1, oldest_pending=oldest)
                found[w.queue] = row
        return [found[q] for q in sorted(found)]
