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
    limits: QueueInfo | None = None
    """The queue's stored limits (:class:`durable.Queue`), None when it has none stored."""

    @property
    def limits_text(self) -> str:
        """The limits in a few words, ``-`` for none."""
        return describe_limits(self.limits)


async def queue_rows(client: Client) -> list[QueueRow]:
    """The queues with pending or running executions, and the stored ones (with their
    limits), by name."""
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
    stored = {q.name: q for q in await client.list_queues()}
    return [
        QueueRow(queue, waiting[queue], busy[queue], oldest.get(queue), stored.get(queue))
        for queue in sorted(set(waiting) | set(busy) | set(stored))
    ]
