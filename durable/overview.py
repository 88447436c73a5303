"""What operators see at a glance, read through a :class:`~durable.Client`: executions counted
by status, and queue depths (waiting, running, the oldest waiting). Shared by the web view
(:mod:`durable.web`) and the ``durable workflows watch`` / ``durable queues`` commands.

Counts by status and queue depths are exact, one aggregate query each
(:meth:`~durable.Client.count_workflows`, :meth:`~durable.Client.queue_depths`). :func:`capped`
(executions of a status read page by page, up to :data:`COUNT_CAP` + 1) is kept for callers
that want the rows themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from durable import telemetry
from durable.client import Client
from durable.models import QueueInfo, WorkflowInfo, WorkflowStatus
from durable.queues import describe_limits

#: Executions counted at most per status (and per queue); one more means "more than this".
COUNT_CAP = 1000


async def capped(client: Client, status: WorkflowStatus) -> list[WorkflowInfo]:
    """Up to :data:`COUNT_CAP` + 1 executions of ``status``, newest first."""
    seen: list[WorkflowInfo] = []
    cursor: str | None = None
    while len(seen) <= COUNT_CAP:
        page = await client.list_workflows(status=status, limit=500, cursor=cursor)
        seen += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    return seen[: COUNT_CAP + 1]


async def status_counts(client: Client) -> dict[str, int]:
    """Executions by status, exactly (one ``GROUP BY status`` query: see
    :meth:`~durable.Client.count_workflows`)."""
    counts = await client.count_workflows()
    return {status.value: counts[status] for status in WorkflowStatus}


@dataclass(frozen=True)
class QueueRow:
    """A queue's waiting (pending) and running executions, counted exactly, and when the
    oldest waiting one was created."""

    queue: str
    pending: int
    running: int
    oldest_pending: datetime | None
    limits: QueueInfo | None = None
    """The queue's stored limits (:class:`durable.Queue`), None when it has none stored."""

    @property
    def limits_text(self) -> str:
        """The limits in a few words, ``-`` for none."""
        return describe_limits(self.limits)


async def queue_rows(client: Client) -> list[QueueRow]:
    """The queues with pending or running executions (exact depths, one aggregate query:
    :meth:`~durable.Client.queue_depths`), and the stored ones (with their limits), by name."""
    depths = {d.queue: d for d in await client.queue_depths()}
    stored = {q.name: q for q in await client.list_queues()}
    rows = []
    for queue in sorted(set(depths) | set(stored)):
        d = depths.get(queue)
        rows.append(
            QueueRow(
                queue,
                d.pending if d else 0,
                d.running if d else 0,
                d.oldest_pending if d else None,
                stored.get(queue),
            )
        )
    if telemetry.active is not None:  # the durable.queue.depth gauge reports what was read
        telemetry.active.set_queue_depths(
            {
                **{(row.queue, "pending"): row.pending for row in rows},
                **{(row.queue, "running"): row.running for row in rows},
            }
        )
    return rows


async def report_queue_depths(client: Client) -> list[QueueRow]:
    """Read the queues (:func:`queue_rows`) so that OpenTelemetry's ``durable.queue.depth``
    gauge reports them; call it periodically (e.g. every 15 s) from one process where the
    gauge is wanted. Without OpenTelemetry it only reads them."""
    return await queue_rows(client)


#: How many of an execution's children its page (web) and ``durable workflows show`` list.
SHOWN_CHILDREN = 200


async def shown_children(client: Client, workflow_id: str) -> tuple[list[WorkflowInfo], int]:
    """The newest :data:`SHOWN_CHILDREN` children of ``workflow_id``, and how many it has in
    all (counted only when there are more than those)."""
    page = await client.list_workflows(parent_id=workflow_id, limit=SHOWN_CHILDREN)
    if page.next_cursor is None:
        return page.items, len(page.items)
    counts = await client.count_workflows(parent_id=workflow_id)
    return page.items, sum(counts.values())
