"""The memory backend's tasks and claims: add, claim one or a batch, extend, release, complete."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from durable.backends.base import check_aware
from durable.backends.memory.core import (
    MemoryCore,
    StoredTask,
    check_limit,
    claim_of,
    is_live,
    limited_queues,
)
from durable.errors import ClaimLostError, TaskNotFoundError
from durable.models import WORKFLOW_TASK, AvailableTask, TaskClaim, TaskSpec, ttl_seconds


class Claims(MemoryCore):
    """Tasks and claims: add, claim one or a batch, extend, release, complete."""

    async def add_task(self, spec: TaskSpec) -> bool:
        check_aware(spec.run_after)
        with self._lock:
            self._get(spec.instance_id)
            created = self._add_task(spec, self.clock())
        if created:
            self.notify_work()
        return created

    async def claim_task(
        self,
        instance_id: str,
        task_id: str,
        worker_id: str,
        ttl: timedelta,
        *,
        due_only: bool = False,
        keep_limits: bool = False,
    ) -> TaskClaim | None:
        seconds = ttl_seconds(ttl)
        with self._lock:
            task = self._tasks.get((instance_id, task_id))
            if task is None:
                raise TaskNotFoundError(instance_id, task_id)
            now = self.clock()
            if task.claimed_by not in (None, worker_id) and is_live(task, now):
                return None
            if due_only and task.run_after > now:
                return None
            if (
                keep_limits
                and task_id == WORKFLOW_TASK
                and not (task.claimed_by == worker_id and is_live(task, now))
                and task.spec.queue in limited_queues(self._queues)
            ):
                return None
            return self._claim(task, worker_id, now, seconds)

    def _claim(self, task: StoredTask, worker_id: str, now: datetime, seconds: float) -> TaskClaim:
        if not (task.claimed_by == worker_id and is_live(task, now)):
            task.attempts += 1
        task.claimed_by = worker_id
        task.claim_expires_at = now + timedelta(seconds=seconds)
        return claim_of(task)

    async def get_task(self, instance_id: str, task_id: str) -> AvailableTask:
        with self._lock:
            task = self._tasks.get((instance_id, task_id))
            if task is None:
                raise TaskNotFoundError(instance_id, task_id)
            return AvailableTask(
                instance_id=instance_id,
                task_id=task_id,
                name=task.spec.name,
                queue=task.spec.queue,
                priority=task.spec.priority,
                run_after=task.run_after,
                claimed_by=task.claimed_by,
                claim_expires_at=task.claim_expires_at,
                attempts=task.attempts,
            )

    async def extend_task_claim(
        self, instance_id: str, task_id: str, worker_id: str, ttl: timedelta
    ) -> TaskClaim:
        seconds = ttl_seconds(ttl)
        with self._lock:
            task = self._tasks.get((instance_id, task_id))
            if task is None:
                raise TaskNotFoundError(instance_id, task_id)
            now = self.clock()
            if task.claimed_by != worker_id:
                holder = task.claimed_by if is_live(task, now) else None
                raise ClaimLostError(instance_id, task_id, worker_id, holder)
            task.claim_expires_at = now + timedelta(seconds=seconds)
            return claim_of(task)

    async def release_task_claim(self, instance_id: str, task_id: str, worker_id: str) -> None:
        with self._lock:
            task = self._tasks.get((instance_id, task_id))
            if task is None:
                raise TaskNotFoundError(instance_id, task_id)
            if task.claimed_by != worker_id:
                holder = task.claimed_by if is_live(task, self.clock()) else None
                raise ClaimLostError(instance_id, task_id, worker_id, holder)
            task.claimed_by = None
            task.claim_expires_at = None
        self.notify_work()

    async def complete_task(self, instance_id: str, task_id: str, worker_id: str) -> None:
        with self._lock:
            self._held(instance_id, task_id, worker_id, self.clock())
            del self._tasks[(instance_id, task_id)]

    def _available(
        self,
        worker_id: str,
        limit: int,
        names: Sequence[str] | None,
        queues: Sequence[str] | None,
        now: datetime,
        include_own: bool = True,
        *,
        enabled_only: bool = False,
        versions: Sequence[str] | None = None,
    ) -> list[StoredTask]:
        check_limit(limit)
        name_set = None if names is None else set(names)
        # claims skip the names disabled in the registry
        disabled = {n for n, e in self._registry.items() if not e.enabled} if enabled_only else ()
        queue_set = None if queues is None else set(queues)
        # claims leave the workflow tasks of queues with limits to claim_queue_tasks
        limited = limited_queues(self._queues) if enabled_only else set()
        found: list[StoredTask] = []
        for t in self._task_order.tasks(self._tasks):  # in claim order: the first ones will do
            if (
                t.run_after <= now
                and (
                    t.claimed_by is None
                    or not is_live(t, now)
                    or (include_own and t.claimed_by == worker_id)
                )
                and (name_set is None or t.spec.name in name_set)
                and t.spec.name not in disabled
                and (queue_set is None or t.spec.queue in queue_set)
                and (versions is None or self._started_by(t, versions))
                and not (t.spec.queue in limited and t.spec.task_id == WORKFLOW_TASK)
            ):
                found.append(t)
                if len(found) == limit:
                    break
        return found

    async def find_available_tasks(
        self,
        worker_id: str,
        limit: int,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        include_own: bool = True,
    ) -> list[AvailableTask]:
        with self._lock:
            now = self.clock()
            return [
                AvailableTask(
                    instance_id=t.spec.instance_id,
                    task_id=t.spec.task_id,
                    name=t.spec.name,
                    queue=t.spec.queue,
                    priority=t.spec.priority,
                    run_after=t.run_after,
                    claimed_by=t.claimed_by if is_live(t, now) else None,
                    claim_expires_at=t.claim_expires_at if is_live(t, now) else None,
                    attempts=t.attempts,
                )
                for t in self._available(worker_id, limit, names, queues, now, include_own)
            ]

    async def claim_available_tasks(
        self,
        worker_id: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        include_own: bool = True,
        versions: Sequence[str] | None = None,
    ) -> list[TaskClaim]:
        seconds = ttl_seconds(ttl)
        with self._lock:
            now = self.clock()
            return [
                self._claim(t, worker_id, now, seconds)
                for t in self._available(
                    worker_id,
                    limit,
                    names,
                    queues,
                    now,
                    include_own,
                    enabled_only=True,
                    versions=versions,
                )
            ]
