"""What every area of the memory backend shares: :class:`MemoryCore`, the base of
:class:`~durable.backends.memory.backend.InMemoryBackend` and of its areas' classes, and the
stored task.

Every operation takes ``_lock`` (a re-entrant lock, so one operation may call a helper that takes
it too) for the whole of what it reads and writes: that is the memory backend's transaction.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from durable.backends.base import PersistentBackend, check_aware
from durable.backends.rows import RowRef, step_values, workflow_values
from durable.errors import ClaimLostError, InvalidArgumentError, WorkflowNotFoundError
from durable.models import (
    WORKFLOW_TASK,
    ExecutorInfo,
    Message,
    QueueInfo,
    RegisteredWorkflow,
    StepRecord,
    StepStatus,
    TaskClaim,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.serialization import Serializer
from durable.validation import MAX_LABELS, check_labels


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class StoredTask:
    """A task as the memory backend keeps it: its spec, its place in creation order, when it is
    due and who holds its claim until when; ``order``, the claim order it is kept in (moving
    its due time marks that order to be sorted again)."""

    spec: TaskSpec
    seq: int
    run_after: datetime
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    attempts: int = 0
    order: TaskOrder | None = dataclasses.field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "run_after":
            order = getattr(self, "order", None)  # unset while __init__ runs
            if order is not None:
                order.stale = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.spec.instance_id, self.spec.task_id)


def claim_order(task: StoredTask) -> tuple[int, datetime, int]:
    """The order claims take tasks in: priority, due time, creation."""
    return (task.spec.priority, task.run_after, task.seq)


class TaskOrder:
    """The stored tasks in the order claims take them (priority, due time, creation), so that
    a claim reads the first available tasks and stops, instead of sorting every task it stores
    (a drain of a large backlog was quadratic). Sorted again at the next read after a task was
    added or its due time moved; tasks deleted meanwhile are skipped, and dropped at the next
    sort. Used under the backend's lock."""

    __slots__ = ("_head", "_sorted", "stale")

    def __init__(self) -> None:
        self._sorted: list[StoredTask] = []
        self._head = 0  # the tasks before it were deleted (a drained backlog's first ones)
        self.stale = True

    def tasks(self, store: dict[tuple[str, str], StoredTask]) -> Iterator[StoredTask]:
        """The tasks of ``store`` in claim order."""
        order = self._sorted
        if self.stale or len(order) - self._head > 2 * len(store) + 64:
            order = self._sorted = sorted(store.values(), key=claim_order)
            self._head = 0
            self.stale = False
        head = self._head
        # a deleted task never comes back (a task added again is a new object): skipped once
        while head < len(order) and store.get(order[head].key) is not order[head]:
            head += 1
        self._head = head
        for index in range(head, len(order)):
            task = order[index]
            if store.get(task.key) is task:
                yield task


class MemoryCore(PersistentBackend):
    """The base of the memory backend's areas: the stores the composition root
    (:class:`~durable.backends.memory.backend.InMemoryBackend`) creates, the lock that guards
    them, and the helpers several areas share (stored values in and out, tasks, claims)."""

    serializer: Serializer
    clock: Callable[[], datetime]
    _lock: threading.RLock
    _seq: Iterator[int]
    _workflows: dict[str, WorkflowInfo]
    _steps: dict[str, dict[int, StepRecord]]
    _tasks: dict[tuple[str, str], StoredTask]
    _task_order: TaskOrder
    _idempotency: dict[str, str]
    _registry: dict[str, RegisteredWorkflow]
    _executors: dict[str, ExecutorInfo]
    _messages: dict[str, list[Message]]
    """Per workflow, its messages in the order stored, their values serialized."""
    _labels: dict[str, dict[str, str]]
    """Per workflow, its labels (absent: none)."""

    def _merged_labels(self, snapshot: WorkflowSnapshot) -> dict[str, str]:
        """The labels a new workflow gets: its own (checked) over its parent's."""
        own = check_labels(snapshot.labels)
        inherited = self._labels.get(snapshot.parent_id or "", {})
        merged = {**inherited, **own}
        if len(merged) > MAX_LABELS:
            raise InvalidArgumentError(
                f"workflow {snapshot.id!r}: at most {MAX_LABELS} labels per workflow, got "
                f"{len(merged)} with those inherited from {snapshot.parent_id!r}"
            )
        return merged

    _queues: dict[str, QueueInfo]
    """Stored queues by name (:mod:`.queues`); the claims skip the limited ones."""

    # -- (de)serialization of stored values -------------------------------------------------

    def _dump(self, value: Any) -> str:
        return self.serializer.dumps(value)

    def _store_info(self, info: WorkflowInfo) -> WorkflowInfo:
        check_aware(
            info.created_at, info.updated_at, info.started_at, info.completed_at, info.deadline
        )
        return dataclasses.replace(
            info,
            input=self._dump(info.input),
            output=None if info.output is None else self._dump(info.output),
        )

    def _load_info(self, stored: WorkflowInfo, *, lenient: bool = False) -> WorkflowInfo:
        """Strict: a value that cannot be read raises CorruptRowError; ``lenient`` (listings,
        the header a write returns) marks the header unreadable instead, as the SQL backends
        do."""
        fields = {f: getattr(stored, f) for f in WorkflowInfo.__dataclass_fields__}
        fields.update(
            workflow_values(
                RowRef("workflows", stored.id),
                self.serializer,
                status=stored.status,
                input=stored.input,
                output=stored.output,
                error=stored.error,
                lenient=lenient,
            )
        )
        return WorkflowInfo.from_fields(fields)

    def _store_step(self, step: StepRecord, now: datetime) -> StepRecord:
        if step.position < 0:
            raise InvalidArgumentError(f"a step position must be >= 0, got {step.position}")
        check_aware(step.started_at, step.completed_at)
        return dataclasses.replace(
            step,
            input=None if step.input is None else self._dump(step.input),
            output=None if step.output is None else self._dump(step.output),
            completed_at=step.completed_at
            or (now if step.status is not StepStatus.PENDING else None),
        )

    def _load_step(self, instance_id: str, stored: StepRecord) -> StepRecord:
        values = step_values(
            RowRef("steps", instance_id, stored.position),
            self.serializer,
            status=stored.status,
            input=stored.input,
            output=stored.output,
            error=stored.error,
        )
        return dataclasses.replace(stored, **values)

    def _snapshot(self, instance_id: str) -> WorkflowSnapshot:
        info = self._load_info(self._get(instance_id))
        steps = self._steps.get(instance_id, {})
        fields = {f: getattr(info, f) for f in WorkflowInfo.__dataclass_fields__}
        fields["steps"] = tuple(self._load_step(instance_id, steps[p]) for p in sorted(steps))
        return WorkflowSnapshot.from_fields(fields)

    def _get(self, instance_id: str) -> WorkflowInfo:
        try:
            return self._workflows[instance_id]
        except KeyError:
            raise WorkflowNotFoundError(instance_id) from None

    def _add_task(self, spec: TaskSpec, now: datetime) -> bool:
        key = (spec.instance_id, spec.task_id)
        if key in self._tasks:
            return False
        due = spec.run_after or (now + spec.delay if spec.delay is not None else now)
        self._tasks[key] = StoredTask(
            spec=spec, seq=next(self._seq), run_after=due, order=self._task_order
        )
        self._task_order.stale = True
        return True

    def _held(self, instance_id: str, task_id: str, worker_id: str, now: datetime) -> StoredTask:
        task = self._tasks.get((instance_id, task_id))
        if task is None or task.claimed_by != worker_id or not is_live(task, now):
            holder = task.claimed_by if task is not None and is_live(task, now) else None
            raise ClaimLostError(instance_id, task_id, worker_id, holder)
        return task

    def _hand_back(
        self, instance_id: str, worker_id: str, now: datetime, run_after: datetime, **changes: Any
    ) -> WorkflowInfo:
        """Under the lock: the workflow task ``worker_id`` holds goes back to the queue, due at
        ``run_after``, and the workflow becomes PENDING in a new version with ``changes``.
        Raises :class:`ClaimLostError` (nothing changed) if the lease is not held."""
        task = self._held(instance_id, WORKFLOW_TASK, worker_id, now)
        current = self._get(instance_id)
        stored = dataclasses.replace(
            current,
            status=WorkflowStatus.PENDING,
            updated_at=now,
            version=current.version + 1,
            **changes,
        )
        self._workflows[instance_id] = stored
        task.claimed_by = None
        task.claim_expires_at = None
        task.run_after = run_after
        return stored

    def _started_by(self, task: StoredTask, versions: Sequence[str]) -> bool:
        """The code-version filter of a claim (``Runtime(serve_versions=...)``): a workflow
        task whose execution was started by one of ``versions`` or an unknown one; step tasks
        pass."""
        if task.spec.task_id != WORKFLOW_TASK:
            return True
        info = self._workflows.get(task.spec.instance_id)
        return info is None or info.code_version is None or info.code_version in versions

    def _drop_failures(self, instance_id: str, rerun: Sequence[int] = ()) -> None:
        """Delete the failed steps the next attempt runs again: those at ``rerun`` or marked
        rerun, and those after the last step that did not fail."""
        steps = self._steps.get(instance_id, {})
        kept = [p for p, s in steps.items() if s.status is not StepStatus.FAILED]
        last_kept = max(kept, default=-1)
        again = set(rerun)
        for position, row in list(steps.items()):
            if row.status is StepStatus.FAILED and (
                position > last_kept or position in again or row.rerun
            ):
                del steps[position]

    def _step_tasks(self, instance_id: str) -> list[tuple[str, str]]:
        return [k for k in self._tasks if k[0] == instance_id and k[1] != WORKFLOW_TASK]


def is_live(task: StoredTask, now: datetime) -> bool:
    return task.claim_expires_at is not None and task.claim_expires_at > now


def claim_of(task: StoredTask) -> TaskClaim:
    assert task.claimed_by is not None and task.claim_expires_at is not None
    return TaskClaim(
        instance_id=task.spec.instance_id,
        task_id=task.spec.task_id,
        worker_id=task.claimed_by,
        expires_at=task.claim_expires_at,
        attempts=task.attempts,
        name=task.spec.name,
    )


def check_limit(limit: int) -> None:
    if limit < 1:
        raise InvalidArgumentError(f"limit must be at least 1, got {limit}")


def limited_queues(stored: dict[str, QueueInfo]) -> set[str]:
    """The names of the stored queues that have a limit: only
    :meth:`~durable.backends.base.PersistentBackend.claim_queue_tasks` claims their workflow
    tasks."""
    return {name for name, queue in stored.items() if queue.limited}
