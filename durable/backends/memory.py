"""A complete backend that keeps everything in this process's memory.

It follows the same contract as the SQL backends (it runs the same contract suite), so a test
suite can swap it in for PostgreSQL. Values are stored serialized, exactly as a database would
hold them: a value the serializer rejects fails the same way, and a stored value cannot be changed
by mutating the object that was saved. Nothing survives the process.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from durable.backends.base import PersistentBackend, batch_owners
from durable.backends.cursors import decode_cursor, encode_cursor
from durable.backends.rows import RowRef, step_values, workflow_values
from durable.errors import (
    ClaimLostError,
    ConcurrentUpdateError,
    InvalidArgumentError,
    SerializationError,
    StepAlreadyRecordedError,
    TaskNotFoundError,
    UnknownWorkflowError,
    WorkflowAlreadyExistsError,
    WorkflowNotFoundError,
)
from durable.models import (
    UNTIL_WOKEN,
    WORKFLOW_TASK,
    AvailableTask,
    ErrorInfo,
    ExecutorInfo,
    Page,
    RegisteredWorkflow,
    StepRecord,
    StepStatus,
    TaskClaim,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
    as_status_set,
    is_stale,
    ttl_seconds,
)
from durable.serialization import Serializer, get_serializer
from durable.validation import check_positive_float


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Task:
    spec: TaskSpec
    seq: int
    run_after: datetime
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    attempts: int = 0


class InMemoryBackend(PersistentBackend):
    """Thread- and task-safe storage in memory.

    :param serializer: ``"json"`` (default), ``"pickle"`` or a :class:`Serializer`.
    :param clock: returns the current UTC time; tests may pass a fake clock to move time.
    """

    def __init__(
        self,
        *,
        serializer: str | Serializer | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.serializer = get_serializer(serializer)
        self.clock = clock
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        self._workflows: dict[str, WorkflowInfo] = {}
        self._steps: dict[str, dict[int, StepRecord]] = {}
        self._tasks: dict[tuple[str, str], _Task] = {}
        self._idempotency: dict[str, str] = {}
        self._registry: dict[str, RegisteredWorkflow] = {}
        self._executors: dict[str, ExecutorInfo] = {}

    def __repr__(self) -> str:
        return f"InMemoryBackend(workflows={len(self._workflows)}, tasks={len(self._tasks)})"

    # -- helpers for tests ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything stored."""
        with self._lock:
            self._workflows.clear()
            self._steps.clear()
            self._tasks.clear()
            self._idempotency.clear()
            self._registry.clear()
            self._executors.clear()

    def workflow_ids(self) -> list[str]:
        """The ids of every stored workflow, in insertion order."""
        with self._lock:
            return list(self._workflows)

    def task_keys(self) -> list[tuple[str, str]]:
        """The ``(instance_id, task_id)`` of every live task, in creation order."""
        with self._lock:
            return sorted(self._tasks, key=lambda k: self._tasks[k].seq)

    def claims(self) -> dict[tuple[str, str], str]:
        """Who holds a live claim on which task."""
        with self._lock:
            now = self.clock()
            return {
                key: t.claimed_by
                for key, t in self._tasks.items()
                if t.claimed_by is not None and _live(t, now)
            }

    # -- (de)serialization of stored values -------------------------------------------------

    def _dump(self, value: Any) -> str:
        return self.serializer.dumps(value)

    def _store_info(self, info: WorkflowInfo) -> WorkflowInfo:
        _check_aware(info.created_at, info.updated_at, info.started_at, info.completed_at)
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
        return WorkflowInfo(**fields)

    def _store_step(self, step: StepRecord, now: datetime) -> StepRecord:
        if step.position < 0:
            raise InvalidArgumentError(f"a step position must be >= 0, got {step.position}")
        _check_aware(step.started_at, step.completed_at)
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
        return WorkflowSnapshot(
            **fields, steps=tuple(self._load_step(instance_id, steps[p]) for p in sorted(steps))
        )

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
        self._tasks[key] = _Task(spec=spec, seq=next(self._seq), run_after=due)
        return True

    def _held(self, instance_id: str, task_id: str, worker_id: str, now: datetime) -> _Task:
        task = self._tasks.get((instance_id, task_id))
        if task is None or task.claimed_by != worker_id or not _live(task, now):
            holder = task.claimed_by if task is not None and _live(task, now) else None
            raise ClaimLostError(instance_id, task_id, worker_id, holder)
        return task

    # -- snapshots --------------------------------------------------------------------------

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
            _check_aware(task.run_after if task is not None else None)
            self._workflows[snapshot.id] = stored
            self._steps[snapshot.id] = steps
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
    ) -> Page[WorkflowInfo]:
        statuses = as_status_set(status)
        _check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        with self._lock:
            rows = [
                w
                for w in self._workflows.values()
                if (statuses is None or w.status in statuses)
                and (name is None or w.name == name)
                and (parent_id is None or w.parent_id == parent_id)
            ]
            rows.sort(key=lambda w: (w.created_at, w.id), reverse=True)
            if after is not None:
                rows = [w for w in rows if (w.created_at, w.id) < after]
            page = rows[: limit + 1]
            items = [self._load_info(w, lenient=True) for w in page[:limit]]
        next_cursor = encode_cursor(items[-1]) if len(page) > limit else None
        return Page(items, next_cursor)

    async def list_steps(self, instance_id: str) -> list[StepRecord]:
        with self._lock:
            self._get(instance_id)
            steps = self._steps.get(instance_id, {})
            return [self._load_step(instance_id, steps[p]) for p in sorted(steps)]

    async def create_workflows(
        self, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
    ) -> list[tuple[WorkflowInfo, bool]]:
        owners = batch_owners(batch)
        prepared: dict[int, tuple[WorkflowInfo, dict[int, StepRecord]]] = {}
        with self._lock:
            now = self.clock()
            existing: dict[int, str] = {}
            # every row checked before anything is stored: all or nothing
            for index, (snapshot, task) in enumerate(batch):
                if owners[index] != index:
                    continue
                found = snapshot.id if snapshot.id in self._workflows else None
                if found is None and snapshot.idempotency_key is not None:
                    found = self._idempotency.get(snapshot.idempotency_key)
                if found is not None:
                    stored_name = self._workflows[found].name
                    if stored_name != snapshot.name:
                        raise InvalidArgumentError(
                            f"inputs[{index}]: workflow id or idempotency key of "
                            f"{snapshot.id!r} belongs to workflow {stored_name!r} (id "
                            f"{found!r}), not {snapshot.name!r}"
                        )
                    existing[index] = found
                    continue
                header = snapshot.header()
                try:
                    stored = self._store_info(
                        dataclasses.replace(
                            header,
                            version=1,
                            created_at=header.created_at or now,
                            updated_at=now,
                        )
                    )
                    steps = {s.position: self._store_step(s, now) for s in snapshot.steps}
                    _check_aware(task.run_after if task is not None else None)
                except InvalidArgumentError as exc:
                    raise InvalidArgumentError(f"inputs[{index}]: {exc}") from exc
                except SerializationError as exc:
                    raise SerializationError(f"inputs[{index}]: {exc}") from exc
                prepared[index] = (stored, steps)
            tasks = False
            for index, (stored, steps) in prepared.items():
                snapshot, task = batch[index]
                self._workflows[snapshot.id] = stored
                self._steps[snapshot.id] = steps
                if snapshot.idempotency_key is not None:
                    self._idempotency[snapshot.idempotency_key] = snapshot.id
                if task is not None:
                    self._add_task(task, now)
                    tasks = True
            results = []
            for index, owner in enumerate(owners):
                if owner in prepared:
                    info = self._load_info(prepared[owner][0], lenient=True)
                    results.append((info, owner == index))
                else:
                    results.append(
                        (self._load_info(self._workflows[existing[owner]], lenient=True), False)
                    )
        if tasks:
            self.notify_work()
        return results

    # -- execution --------------------------------------------------------------------------

    async def begin_execution(
        self, instance_id: str, worker_id: str, *, task_id: str = WORKFLOW_TASK
    ) -> WorkflowSnapshot:
        with self._lock:
            current = self._get(instance_id)
            now = self.clock()
            self._held(instance_id, task_id, worker_id, now)
            # still running: the attempt's executor died or lost its lease; this resumes it
            interrupted = current.status is WorkflowStatus.RUNNING
            self._workflows[instance_id] = dataclasses.replace(
                current,
                status=WorkflowStatus.RUNNING,
                executor_id=worker_id,
                attempts=current.attempts + (0 if interrupted else 1),
                interruptions=current.interruptions + (1 if interrupted else 0),
                started_at=current.started_at or now,
                updated_at=now,
                version=current.version + 1,
            )
            return self._snapshot(instance_id)

    records_steps_blocking = True

    async def record_step(
        self,
        instance_id: str,
        step: StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        self.record_step_blocking(instance_id, step, worker_id=worker_id, task_id=task_id)

    def record_step_blocking(
        self,
        instance_id: str,
        step: StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        stored = self._store_step(step, self.clock())  # serialize before taking the lock
        with self._lock:
            self._held(instance_id, task_id, worker_id, self.clock())
            steps = self._steps.setdefault(instance_id, {})
            existing = steps.get(step.position)
            if existing is not None and existing.status is not StepStatus.PENDING:
                raise StepAlreadyRecordedError(instance_id, step.position)
            steps[step.position] = stored

    async def finish_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        status: WorkflowStatus,
        output: Any = None,
        error: ErrorInfo | None = None,
        rerun: Sequence[int] = (),
    ) -> WorkflowInfo:
        if not WorkflowStatus(status).is_terminal:
            raise InvalidArgumentError(f"finish_workflow needs a final status, got {status!r}")
        text = None if output is None else self._dump(output)
        with self._lock:
            now = self.clock()
            self._held(instance_id, WORKFLOW_TASK, worker_id, now)
            current = self._get(instance_id)
            steps = self._steps.get(instance_id, {})
            for position in rerun:
                row = steps.get(position)
                if row is not None and row.status is StepStatus.FAILED:
                    steps[position] = dataclasses.replace(row, rerun=True)
            stored = dataclasses.replace(
                current,
                status=WorkflowStatus(status),
                output=text,
                error=error,
                updated_at=now,
                completed_at=now,
                version=current.version + 1,
            )
            self._workflows[instance_id] = stored
            del self._tasks[(instance_id, WORKFLOW_TASK)]
            return self._load_info(stored, lenient=True)

    async def reschedule_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        run_after: timedelta,
        error: ErrorInfo | None = None,
        consume_attempt: bool = True,
        rerun: Sequence[int] = (),
    ) -> WorkflowInfo:
        with self._lock:
            now = self.clock()
            task = self._held(instance_id, WORKFLOW_TASK, worker_id, now)
            current = self._get(instance_id)
            stored = dataclasses.replace(
                current,
                status=WorkflowStatus.PENDING,
                error=error,
                attempts=current.attempts if consume_attempt else max(current.attempts - 1, 0),
                updated_at=now,
                version=current.version + 1,
            )
            self._workflows[instance_id] = stored
            if consume_attempt:
                self._drop_failures(instance_id, rerun)
            task.claimed_by = None
            task.claim_expires_at = None
            task.run_after = now + max(run_after, timedelta(0))
        self.notify_work()
        return self._load_info(stored, lenient=True)

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

    async def requeue_workflow(self, instance_id: str) -> WorkflowInfo:
        with self._lock:
            current = self._get(instance_id)
            if current.status not in _REQUEUEABLE:
                raise InvalidArgumentError(
                    f"workflow {instance_id!r} is {current.status.value}: only failed, "
                    "dead-lettered or cancelled workflows can be run again"
                )
            now = self.clock()
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
            )
            self._workflows[instance_id] = stored
            self._drop_failures(instance_id)
            spec = TaskSpec(
                instance_id=instance_id,
                name=current.name,
                queue=current.queue,
                priority=current.priority,
            )
            self._tasks.pop((instance_id, WORKFLOW_TASK), None)
            self._add_task(spec, now)
        self.notify_work()
        return self._load_info(stored, lenient=True)

    async def suspend_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        steps: Sequence[StepRecord],
        tasks: Sequence[TaskSpec],
    ) -> None:
        now = self.clock()
        stored = [self._store_step(s, now) for s in steps]
        _check_aware(*(spec.run_after for spec in tasks))
        with self._lock:
            task = self._held(instance_id, WORKFLOW_TASK, worker_id, now)
            rows = self._steps.setdefault(instance_id, {})
            for step in stored:
                existing = rows.get(step.position)
                if existing is None or existing.status is StepStatus.PENDING:
                    rows[step.position] = step
            for spec in tasks:
                self._add_task(spec, now)
            current = self._get(instance_id)
            self._workflows[instance_id] = dataclasses.replace(
                current,
                status=WorkflowStatus.PENDING,
                # the attempt goes on when it is woken: that begin does not count again
                attempts=max(current.attempts - 1, 0),
                updated_at=now,
                version=current.version + 1,
            )
            task.claimed_by = None
            task.claim_expires_at = None
            task.run_after = now if not self._step_tasks(instance_id) else now + UNTIL_WOKEN
        self.notify_work()

    def _step_tasks(self, instance_id: str) -> list[tuple[str, str]]:
        return [k for k in self._tasks if k[0] == instance_id and k[1] != WORKFLOW_TASK]

    async def complete_step_task(
        self, instance_id: str, task_id: str, *, worker_id: str, step: StepRecord
    ) -> None:
        now = self.clock()
        stored = self._store_step(step, now)
        with self._lock:
            self._held(instance_id, task_id, worker_id, now)
            rows = self._steps.setdefault(instance_id, {})
            existing = rows.get(step.position)
            if existing is not None and existing.status is not StepStatus.PENDING:
                raise StepAlreadyRecordedError(instance_id, step.position)
            rows[step.position] = stored
            del self._tasks[(instance_id, task_id)]
            parent = self._tasks.get((instance_id, WORKFLOW_TASK))
            woken = parent is not None and not self._step_tasks(instance_id)
            if woken and parent is not None:
                parent.run_after = now
        if woken:
            self.notify_work()

    async def cancel_workflow(self, instance_id: str) -> WorkflowInfo:
        with self._lock:
            current = self._get(instance_id)
            if current.status.is_terminal:
                return self._load_info(current, lenient=True)
            now = self.clock()
            stored = dataclasses.replace(
                current,
                status=WorkflowStatus.CANCELLED,
                updated_at=now,
                completed_at=now,
                version=current.version + 1,
            )
            self._workflows[instance_id] = stored
            for key in [k for k in self._tasks if k[0] == instance_id]:
                del self._tasks[key]
            return self._load_info(stored, lenient=True)

    # -- the workflow registry and executors ---------------------------------------------------

    async def register_workflows(self, entries: Sequence[RegisteredWorkflow]) -> None:
        with self._lock:
            now = self.clock()
            for entry in entries:
                known = self._registry.get(entry.name)
                enabled = known.enabled if known is not None else entry.enabled
                self._registry[entry.name] = dataclasses.replace(
                    entry, enabled=enabled, updated_at=now
                )

    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        with self._lock:
            known = self._registry.get(name)
            if known is None:
                raise UnknownWorkflowError(f"no workflow is registered under the name {name!r}")
            entry = dataclasses.replace(known, enabled=enabled, updated_at=self.clock())
            self._registry[name] = entry
            return entry

    async def list_registered_workflows(self) -> list[RegisteredWorkflow]:
        with self._lock:
            return [self._registry[n] for n in sorted(self._registry)]

    async def get_executor(self, executor_id: str) -> ExecutorInfo | None:
        with self._lock:
            known = self._executors.get(executor_id)
            if known is None:
                return None
            return dataclasses.replace(known, stale=is_stale(known, self.clock()))

    async def start_executor(
        self,
        executor_id: str,
        *,
        hostname: str,
        pid: int,
        incarnation: str,
        heartbeat_interval: float,
        replacing: str | None,
    ) -> bool:
        check_positive_float(heartbeat_interval, "heartbeat_interval")
        with self._lock:
            known = self._executors.get(executor_id)
            if (known.incarnation if known is not None else None) != replacing:
                return False
            now = self.clock()
            self._executors[executor_id] = ExecutorInfo(
                id=executor_id,
                hostname=hostname,
                pid=pid,
                started_at=now,
                heartbeat_at=now,
                stopped_at=None,
                stale=False,
                heartbeat_interval=heartbeat_interval,
                incarnation=incarnation,
            )
            return True

    async def record_executor_heartbeat(self, executor_id: str, *, incarnation: str) -> bool:
        with self._lock:
            known = self._executors.get(executor_id)
            if known is None or known.incarnation != incarnation or known.stopped_at is not None:
                return False
            self._executors[executor_id] = dataclasses.replace(known, heartbeat_at=self.clock())
            return True

    async def mark_executor_stopped(self, executor_id: str, *, incarnation: str) -> None:
        with self._lock:
            known = self._executors.get(executor_id)
            if known is not None and known.incarnation == incarnation:
                self._executors[executor_id] = dataclasses.replace(known, stopped_at=self.clock())

    async def list_executors(self, *, stale_after: timedelta | None = None) -> list[ExecutorInfo]:
        limit = None if stale_after is None else timedelta(seconds=ttl_seconds(stale_after))
        with self._lock:
            now = self.clock()
            found = [
                dataclasses.replace(e, stale=is_stale(e, now, limit))
                for e in self._executors.values()
            ]
        return sorted(found, key=lambda e: e.heartbeat_at, reverse=True)

    # -- tasks and claims ---------------------------------------------------------------------

    async def add_task(self, spec: TaskSpec) -> bool:
        _check_aware(spec.run_after)
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
    ) -> TaskClaim | None:
        seconds = ttl_seconds(ttl)
        with self._lock:
            task = self._tasks.get((instance_id, task_id))
            if task is None:
                raise TaskNotFoundError(instance_id, task_id)
            now = self.clock()
            if task.claimed_by not in (None, worker_id) and _live(task, now):
                return None
            if due_only and task.run_after > now:
                return None
            return self._claim(task, worker_id, now, seconds)

    def _claim(self, task: _Task, worker_id: str, now: datetime, seconds: float) -> TaskClaim:
        if not (task.claimed_by == worker_id and _live(task, now)):
            task.attempts += 1
        task.claimed_by = worker_id
        task.claim_expires_at = now + timedelta(seconds=seconds)
        return _claim_of(task)

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
                holder = task.claimed_by if _live(task, now) else None
                raise ClaimLostError(instance_id, task_id, worker_id, holder)
            task.claim_expires_at = now + timedelta(seconds=seconds)
            return _claim_of(task)

    async def release_task_claim(self, instance_id: str, task_id: str, worker_id: str) -> None:
        with self._lock:
            task = self._tasks.get((instance_id, task_id))
            if task is None:
                raise TaskNotFoundError(instance_id, task_id)
            if task.claimed_by != worker_id:
                holder = task.claimed_by if _live(task, self.clock()) else None
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
    ) -> list[_Task]:
        _check_limit(limit)
        name_set = None if names is None else set(names)
        # claims skip the names disabled in the registry
        disabled = {n for n, e in self._registry.items() if not e.enabled} if enabled_only else ()
        queue_set = None if queues is None else set(queues)
        found = [
            t
            for t in self._tasks.values()
            if t.run_after <= now
            and (
                t.claimed_by is None
                or not _live(t, now)
                or (include_own and t.claimed_by == worker_id)
            )
            and (name_set is None or t.spec.name in name_set)
            and t.spec.name not in disabled
            and (queue_set is None or t.spec.queue in queue_set)
        ]
        found.sort(key=lambda t: (t.spec.priority, t.run_after, t.seq))
        return found[:limit]

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
                    claimed_by=t.claimed_by if _live(t, now) else None,
                    claim_expires_at=t.claim_expires_at if _live(t, now) else None,
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
    ) -> list[TaskClaim]:
        seconds = ttl_seconds(ttl)
        with self._lock:
            now = self.clock()
            return [
                self._claim(t, worker_id, now, seconds)
                for t in self._available(
                    worker_id, limit, names, queues, now, include_own, enabled_only=True
                )
            ]


_REQUEUEABLE = frozenset(
    {WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTER, WorkflowStatus.CANCELLED}
)


def _live(task: _Task, now: datetime) -> bool:
    return task.claim_expires_at is not None and task.claim_expires_at > now


def _claim_of(task: _Task) -> TaskClaim:
    assert task.claimed_by is not None and task.claim_expires_at is not None
    return TaskClaim(
        instance_id=task.spec.instance_id,
        task_id=task.spec.task_id,
        worker_id=task.claimed_by,
        expires_at=task.claim_expires_at,
        attempts=task.attempts,
        name=task.spec.name,
    )


def _check_aware(*stamps: datetime | None) -> None:
    """Refuse naive timestamps, as the SQL backends do: they cannot be compared with the others."""
    for stamp in stamps:
        if stamp is not None and stamp.utcoffset() is None:
            raise InvalidArgumentError(
                f"naive datetime {stamp!r}: durable stores timezone-aware times"
            )


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
