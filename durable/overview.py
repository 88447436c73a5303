"""What operators see at a glance, read through a :class:`~durable.Client`: executions counted
by status, and queue depths (waiting, running, the oldest waiting). Shared by the web view
(:mod:`durable.web`) and the ``durable workflows watch`` / ``durable queues`` commands.

The backend has no count operation: executions are read page by page, newest first, up to
:data:`COUNT_CAP` + 1 per status, so a count above :data:`COUNT_CAP` means "more than that".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from durable import telemetry
from durable.client import Client
from durable.models import WorkflowInfo, WorkflowStatus

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
    """Executions by status, each counted up to :data:`COUNT_CAP` + 1."""
    return {status.value: len(await capped(client, status)) for status in WorkflowStatus}


@dataclass(frozen=True)
class QueueRow:
    """A queue's waiting (pending) and running executions, each counted up to
    :data:`COUNT_CAP` + 1, and when the oldest waiting one was created."""

    queue: str
    pending: int
    running: int
    oldest_pending: datetime | None


async def queue_rows(client: Client) -> list[QueueRow]:
    """The queues with pending or running executions, by name."""
    pending = await capped(client, WorkflowStatus.PENDING)
    running = await capped(client, WorkflowStatus.RUNNING)
    waiting = Counter(info.queue for info in pending)
    busy = Counter(info.queue for info in running)
    oldest: dict[str, datetime] = {}
    for info in pending:
        if info.created_at is not None and (
            info.queue not in oldest or info.created_at < oldest[info.queue]
        ):
            oldest[info.queue] = info.created_at
    rows = [
        QueueRow(queue, waiting[queue], busy[queue], oldest.get(queue))
        for queue in sorted(set(waiting) | set(busy))
    ]
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
