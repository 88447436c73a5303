"""The memory backend's workflows as records: create, save, load, get, list, delete, cancel,
requeue."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TypeVar

from durable.backends.base import check_aware, deadline_error
from durable.backends.cursors import decode_cursor, encode_cursor
from durable.backends.memory.core import MemoryCore, check_limit
from durable.errors import (
    ConcurrentUpdateError,
    InvalidArgumentError,
    WorkflowAlreadyExistsError,
    WorkflowNotFoundError,
)
from durable.models import (
    WORKFLOW_TASK,
    ErrorInfo,
    Page,
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
    as_status_set,
)
from durable.validation import check_labels

T = TypeVar("T")


class Workflows(MemoryCore):
    """Workflows as records: create, save, load, get, list, delete, cancel, requeue."""

    async def create_workflow(
        self, snapshot: WorkflowSnapshot, *, task: TaskSpec | None = None
    ) -> tuple[WorkflowInfo, bool]:
        self._store_info(snapshot)  # a value the serializer rejects fails first, as in SQL
        with self._lock:
            existing_id = snapshot.id if snapshot.id in self._workflows else None
            if existing_id is None and snapshot.idempotency_key is not None:
                existing_id = self._idempotency.get(snapshot.idempotency_key)
            if existing_id is not None:
                return self._load_info(self._workflows[existing_id], lenient=True), False
            now = self.clock()
            labels = self._merged_labels(snapshot)
            header = snapshot.header()
            stored = self._store_info(
                dataclasses.replace(
                    header,
                    version=1,
                    created_at=header.created_at or now,
                    updated_at=now,
                )
            )
            steps = {s.position: self._store_step(s, now) for s in snapshot.steps}
            check_aware(task.run_after if task is not None else None)
            self._workflows[snapshot.id] = stored
            self._steps[snapshot.id] = steps
            if labels:
                self._labels[snapshot.id] = labels
            if snapshot.idempotency_key is not None:
                self._idempotency[snapshot.idempotency_key] = snapshot.id
            if task is not None:
                self._add_task(task, now)
        if task is not None:
            self.notify_work()
        return self._load_info(stored, lenient=True), True

    async def save_snapshot(self, snapshot: WorkflowSnapshot) -> WorkflowSnapshot:
        with self._lock:
            now = self.clock()
            current = self._workflows.get(snapshot.id)
            if snapshot.version == 0:
                if current is not None:
                    raise WorkflowAlreadyExistsError(snapshot.id)
                created_at = snapshot.created_at or now
            else:
                if current is None:
                    raise WorkflowNotFoundError(snapshot.id)
                if current.version != snapshot.version:
                    raise ConcurrentUpdateError(snapshot.id, snapshot.version, current.version)
                created_at = current.created_at or now
            header = snapshot.header()
            stored = self._store_info(
                dataclasses.replace(
                    header, version=snapshot.version + 1, created_at=created_at, updated_at=now
                )
            )
            new_steps = {s.position: self._store_step(s, now) for s in snapshot.steps}
            if snapshot.idempotency_key is not None:
                other = self._idempotency.get(snapshot.idempotency_key)
                if other is not None and other != snapshot.id:
                    raise WorkflowAlreadyExistsError(other)
            self._workflows[snapshot.id] = stored
            self._steps.setdefault(snapshot.id, {}).update(new_steps)
            if current is not None and current.idempotency_key not in (
                None,
                snapshot.idempotency_key,
            ):
                self._idempotency.pop(current.idempotency_key, None)
            if snapshot.idempotency_key is not None:
                self._idempotency[snapshot.idempotency_key] = snapshot.id
            return self._snapshot(snapshot.id)

    async def load_snapshot(self, instance_id: str) -> WorkflowSnapshot:
        with self._lock:
            return self._snapshot(instance_id)

    async def get_workflow(self, instance_id: str) -> WorkflowInfo:
        with self._lock:
            return self._load_info(self._get(instance_id))

    async def delete_snapshot(self, instance_id: str) -> bool:
        with self._lock:
            info = self._workflows.pop(instance_id, None)
            if info is None:
                return False
            self._steps.pop(instance_id, None)
            self._messages.pop(instance_id, None)
            self._labels.pop(instance_id, None)
            for key in [k for k in self._tasks if k[0] == instance_id]:
                del self._tasks[key]
            if info.idempotency_key is not None:
                self._idempotency.pop(info.idempotency_key, None)
            return True

    async def list_snapshots(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Page[WorkflowInfo]:
        statuses = as_status_set(status)
        check_limit(limit)
        wanted = check_labels(labels, "labels filter").items()
        after = decode_cursor(cursor) if cursor is not None else None
        with self._lock:
            rows = [
                w
                for w in self._workflows.values()
                if (statuses is None or w.status in statuses)
                and (name is None or w.name == name)
                and (parent_id is None or w.parent_id == parent_id)
                and wanted <= self._labels.get(w.id, {}).items()
            ]
            page, more = newest_first(rows, lambda w: w, after, limit)
            items = [self._load_info(w, lenient=True) for w in page]
        return Page(items, encode_cursor(items[-1]) if more else None)

    async def list_waiting(
        self,
        *,
        step_names: Sequence[str],
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[tuple[WorkflowInfo, StepRecord]]:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        names = set(step_names)
        with self._lock:
            rows = []
            for w in self._workflows.values():
                steps = self._steps.get(w.id)
                if w.status is not WorkflowStatus.PENDING or not steps:
                    continue
                last = steps[max(steps)]
                if last.status is StepStatus.PENDING and last.name in names:
                    rows.append((w, last))
            page, more = newest_first(rows, lambda r: r[0], after, limit)
            items = [
                (self._load_info(w, lenient=True), self._load_step(w.id, last)) for w, last in page
            ]
        return Page(items, encode_cursor(items[-1][0]) if more else None)

    async def list_steps(self, instance_id: str) -> list[StepRecord]:
        with self._lock:
            self._get(instance_id)
            steps = self._steps.get(instance_id, {})
            return [self._load_step(instance_id, steps[p]) for p in sorted(steps)]

    async def get_step(self, instance_id: str, position: int) -> StepRecord | None:
        with self._lock:
            self._get(instance_id)
            stored = self._steps.get(instance_id, {}).get(position)
            return None if stored is None else self._load_step(instance_id, stored)

    async def requeue_workflow(self, instance_id: str) -> WorkflowInfo:
        with self._lock:
            current = self._get(instance_id)
            if current.status not in _REQUEUEABLE:
                raise InvalidArgumentError(
                    f"workflow {instance_id!r} is {current.status.value}: only failed, "
                    "dead-lettered or cancelled workflows can be run again"
                )
            now = self.clock()
            stored = self._requeue_one(current, now)
            if current.status is WorkflowStatus.CANCELLED:
                # the descendants its cancel cancelled (stamped with the same time) go on too,
                # those that had started or that their parent awaits (a delayed one that never
                # started would run now, not when it was due: it stays cancelled)
                for child in self._descendants(instance_id):
                    found = self._workflows[child]
                    if (
                        found.status is WorkflowStatus.CANCELLED
                        and found.completed_at == current.completed_at
                        and (found.started_at is not None or self._awaited(found))
                    ):
                        self._requeue_one(found, now)
        self.notify_work()
        return self._load_info(stored, lenient=True)

    def _awaited(self, child: WorkflowInfo) -> bool:
        """Whether ``child``'s parent has a pending step awaiting it (a child workflow)."""
        steps = self._steps.get(child.parent_id or "", {}).values()
        return any(
            s.child_workflow_id == child.id and s.status is StepStatus.PENDING for s in steps
        )

    def _requeue_one(self, current: WorkflowInfo, now: datetime) -> WorkflowInfo:
        """Make one failed, dead-lettered or cancelled workflow pending again, with a new task
        (see :meth:`requeue_workflow`)."""
        passed = current.deadline is not None and current.deadline <= now
        stored = dataclasses.replace(
            current,
            status=WorkflowStatus.PENDING,
            error=None,
            output=None,
            attempts=0,
            interruptions=0,
            completed_at=None,
            updated_at=now,
            version=current.version + 1,
            deadline=None if passed else current.deadline,  # passed: it would cancel it again
        )
        self._workflows[current.id] = stored
        self._drop_failures(current.id)
        spec = TaskSpec(
            instance_id=current.id,
            name=current.name,
            queue=current.queue,
            priority=current.priority,
            partition_key=current.partition_key,
        )
        self._tasks.pop((current.id, WORKFLOW_TASK), None)
        self._add_task(spec, now)
        return stored

    async def cancel_workflow(
        self, instance_id: str, *, error: ErrorInfo | None = None
    ) -> WorkflowInfo:
        with self._lock:
            current = self._get(instance_id)
            now = self.clock()
            stored = self._cancel_one(instance_id, now, error)
            self._cancel_descendants(instance_id, now, error)
            return self._load_info(stored or current, lenient=True)

    async def cancel_expired_workflows(self, *, limit: int = 100) -> list[WorkflowInfo]:
        check_limit(limit)
        with self._lock:
            now = self.clock()
            expired = sorted(
                (
                    w
                    for w in self._workflows.values()
                    if not w.status.is_terminal and w.deadline is not None and w.deadline <= now
                ),
                key=lambda w: (w.deadline, w.id),
            )[:limit]
            cancelled = []
            for workflow in expired:
                error = deadline_error(workflow.id, workflow.deadline)
                stored = self._cancel_one(workflow.id, now, error)
                assert stored is not None
                self._cancel_descendants(workflow.id, now, error)
                cancelled.append(self._load_info(stored, lenient=True))
            return cancelled

    def _cancel_one(
        self, instance_id: str, now: datetime, error: ErrorInfo | None
    ) -> WorkflowInfo | None:
        """Cancel one unfinished workflow and drop its tasks; None if it had finished."""
        current = self._workflows[instance_id]
        if current.status.is_terminal:
            return None
        stored = dataclasses.replace(
            current,
            status=WorkflowStatus.CANCELLED,
            error=error if error is not None else current.error,
            updated_at=now,
            completed_at=now,
            version=current.version + 1,
        )
        self._workflows[instance_id] = stored
        for key in [k for k in self._tasks if k[0] == instance_id]:
            del self._tasks[key]
        return stored

    def _cancel_descendants(self, root: str, now: datetime, error: ErrorInfo | None) -> None:
        for child in self._descendants(root):
            self._cancel_one(child, now, error)

    def _descendants(self, root: str) -> list[str]:
        """The ids of the workflows descending from ``root`` (by ``parent_id``), a generation
        after another."""
        seen = {root}
        frontier = [root]
        found: list[str] = []
        while frontier:
            parents = set(frontier)
            frontier = [
                w.id
                for w in self._workflows.values()
                if w.parent_id in parents and w.id not in seen
            ]
            seen.update(frontier)
            found += frontier
        return found


_REQUEUEABLE = frozenset(
    {WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTER, WorkflowStatus.CANCELLED}
)


def newest_first(
    rows: list[T],
    workflow: Callable[[T], WorkflowInfo],
    after: tuple[datetime, str] | None,
    limit: int,
) -> tuple[list[T], bool]:
    """One page of a newest-first listing of ``rows`` (``workflow`` gives each row's workflow):
    those after the keyset position ``after`` (``created_at`` then ``id``, both descending), at
    most ``limit``, and whether more follow."""
    rows.sort(key=lambda r: (workflow(r).created_at, workflow(r).id), reverse=True)
    if after is not None:
        rows = [r for r in rows if (workflow(r).created_at, workflow(r).id) < after]
    return rows[:limit], len(rows) > limit
