"""The memory backend's queues with limits: stored, and claimed within their limits under the
backend's lock (its transaction)."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from durable.backends.base import check_queue_limits, queue_limits_to_set
from durable.backends.memory.core import (
    MemoryCore,
    StoredTask,
    check_limit,
    claim_order,
    is_live,
)
from durable.errors import QueueNotFoundError
from durable.models import WORKFLOW_TASK, QueueInfo, TaskClaim, ttl_seconds


class Queues(MemoryCore):
    """Queues with limits, and the claims that keep to them."""

    _queue_starts: dict[str, deque[datetime]]

    async def put_queue(
        self, queue: QueueInfo, *, replace: bool = True, only: Collection[str] | None = None
    ) -> tuple[QueueInfo, bool]:
        check_queue_limits(queue)
        chosen = queue_limits_to_set(only)
        with self._lock:
            now = self.clock()
            stored = self._queues.get(queue.name)
            if stored is not None and not replace:
                return stored, False
            if stored is None:
                new = dataclasses.replace(queue, created_at=now, updated_at=now)
            else:
                changes = {k: getattr(queue, k) for k in chosen}
                new = dataclasses.replace(stored, updated_at=now, **changes)
            self._queues[queue.name] = new
            return new, stored is None

    async def get_queue(self, name: str) -> QueueInfo:
        with self._lock:
            stored = self._queues.get(name)
            if stored is None:
                raise QueueNotFoundError(name)
            return stored

    async def list_queues(self) -> list[QueueInfo]:
        with self._lock:
            return [self._queues[n] for n in sorted(self._queues)]

    async def delete_queue(self, name: str) -> bool:
        with self._lock:
            self._queue_starts.pop(name, None)
            return self._queues.pop(name, None) is not None

    async def claim_queue_tasks(
        self,
        worker_id: str,
        queue: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        versions: Sequence[str] | None = None,
    ) -> list[TaskClaim]:
        check_limit(limit)
        seconds = ttl_seconds(ttl)
        with self._lock:
            config = self._queues.get(queue)
            if config is None or not config.limited:
                return []
            now = self.clock()
            ours = [
                t
                for t in self._tasks.values()
                if t.spec.queue == queue and t.spec.task_id == WORKFLOW_TASK
            ]
            running = [t for t in ours if t.claimed_by is not None and is_live(t, now)]
            room = limit
            if config.concurrency is not None:
                room = min(room, config.concurrency - len(running))
            if config.worker_concurrency is not None:
                mine = sum(1 for t in running if t.claimed_by == worker_id)
                room = min(room, config.worker_concurrency - mine)
            starts = self._queue_starts.setdefault(queue, deque())
            if config.rate_limit is not None and config.rate_period is not None:
                window = now - timedelta(seconds=config.rate_period)
                while starts and starts[0] <= window:
                    starts.popleft()
                room = min(room, config.rate_limit - len(starts))
            if room <= 0:
                return []
            disabled = {n for n, e in self._registry.items() if not e.enabled}
            name_set = None if names is None else set(names)
            free = sorted(
                (
                    t
                    for t in ours
                    if t.run_after <= now
                    and (t.claimed_by is None or not is_live(t, now))
                    and (name_set is None or t.spec.name in name_set)
                    and t.spec.name not in disabled
                    and (versions is None or self._started_by(t, versions))
                ),
                key=claim_order,
            )
            if config.partition_concurrency is not None:
                free = _partition_heads(free, running, config.partition_concurrency)
            claimed = [self._claim_one(t, worker_id, now, seconds) for t in free[:room]]
            if config.rate_limit is not None:
                starts.extend(now for _ in claimed)
            return claimed

    def _claim_one(
        self, task: StoredTask, worker_id: str, now: datetime, seconds: float
    ) -> TaskClaim:
        # the free task is not this worker's live claim: a new claim, one more attempt
        task.attempts += 1
        task.claimed_by = worker_id
        task.claim_expires_at = now + timedelta(seconds=seconds)
        return TaskClaim(
            instance_id=task.spec.instance_id,
            task_id=task.spec.task_id,
            worker_id=worker_id,
            expires_at=task.claim_expires_at,
            attempts=task.attempts,
            name=task.spec.name,
        )


def _partition_heads(
    free: list[StoredTask], running: list[StoredTask], per_partition: int
) -> list[StoredTask]:
    """Of ``free`` (in claim order), those a partition has room for: per partition key, the
    oldest (creation order) up to ``per_partition`` less its running ones; tasks without a key
    all stay."""
    busy: dict[str, int] = {}
    for t in running:
        if t.spec.partition_key is not None:
            busy[t.spec.partition_key] = busy.get(t.spec.partition_key, 0) + 1
    chosen: set[int] = set()
    by_key: dict[str, list[StoredTask]] = {}
    for t in free:
        if t.spec.partition_key is None:
            chosen.add(t.seq)
        else:
            by_key.setdefault(t.spec.partition_key, []).append(t)
    for key, tasks in by_key.items():
        room = per_partition - busy.get(key, 0)
        if room > 0:
            chosen.update(t.seq for t in sorted(tasks, key=lambda t: t.seq)[:room])
    return [t for t in free if t.seq in chosen]
