"""Labels and counts: a workflow's labels read back, workflows counted by status, queue depths.

Labels are written with their workflow (:func:`~durable.backends.sql.core.write_labels`, in
the transaction that creates it) and deleted with it (``ON DELETE CASCADE``). Part of
:class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`); not on the hot
path: statements are built per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from durable.backends.sql.core import SQLCore, aware, has_labels
from durable.backends.sql.schema import workflow_labels, workflows
from durable.errors import InvalidArgumentError
from durable.models import QueueDepth, WorkflowStatus, as_status_set

#: The most ids one :meth:`get_labels` call reads.
MAX_LABEL_IDS = 1000


class Labels(SQLCore):
    """Reading labels, and counting workflows by status."""

    async def get_labels(self, instance_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        ids = list(dict.fromkeys(instance_ids))
        if len(ids) > MAX_LABEL_IDS:
            raise InvalidArgumentError(
                f"get_labels reads at most {MAX_LABEL_IDS} workflows at once, got {len(ids)}"
            )
        if not ids:
            return {}

        def fn(conn: sa.Connection) -> dict[str, dict[str, str]]:
            found: dict[str, dict[str, str]] = {
                i: {}
                for i in conn.execute(
                    sa.select(workflows.c.id).where(workflows.c.id.in_(ids))
                ).scalars()
            }
            rows = conn.execute(
                sa.select(workflow_labels)
                .where(workflow_labels.c.workflow_id.in_(ids))
                .order_by(workflow_labels.c.workflow_id, workflow_labels.c.key)
            )
            for row in rows:
                if row.workflow_id in found:
                    found[row.workflow_id][row.key] = row.value
            return found

        return await self._run(fn, what="read labels", read_only=True)

    async def count_workflows(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[WorkflowStatus, int]:
        statuses = as_status_set(status)
        query = sa.select(workflows.c.status, sa.func.count()).group_by(workflows.c.status)
        if statuses is not None:
            query = query.where(workflows.c.status.in_([s.value for s in statuses]))
        if name is not None:
            query = query.where(workflows.c.name == name)
        if parent_id is not None:
            query = query.where(workflows.c.parent_id == parent_id)
        query = query.where(*has_labels(labels))

        def fn(conn: sa.Connection) -> dict[WorkflowStatus, int]:
            counts = dict.fromkeys(WorkflowStatus, 0)
            for value, count in conn.execute(query):
                try:
                    counts[WorkflowStatus(value)] += int(count)
                except ValueError:  # an unreadable status is listed as failed (list_snapshots)
                    counts[WorkflowStatus.FAILED] += int(count)
            return counts

        return await self._run(fn, what="count workflows", read_only=True)

    async def queue_depths(self) -> list[QueueDepth]:
        wanted = [WorkflowStatus.PENDING.value, WorkflowStatus.RUNNING.value]
        query = (
            sa.select(
                workflows.c.queue,
                workflows.c.status,
                sa.func.count(),
                sa.func.min(workflows.c.created_at),
            )
            .where(workflows.c.status.in_(wanted))
            .group_by(workflows.c.queue, workflows.c.status)
        )

        def fn(conn: sa.Connection) -> list[QueueDepth]:
            found: dict[str, dict[str, Any]] = {}
            for queue, status, count, oldest in conn.execute(query):
                row = found.setdefault(
                    queue, {"queue": queue, "pending": 0, "running": 0, "oldest_pending": None}
                )
                row[status] = int(count)
                if status == WorkflowStatus.PENDING.value:
                    row["oldest_pending"] = aware(oldest)
            return [QueueDepth(**found[q]) for q in sorted(found)]

        return await self._run(fn, what="count queues", read_only=True)
