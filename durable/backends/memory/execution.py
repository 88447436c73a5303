"""The memory backend's executions: begin, record a step, finish, reschedule, and the steps
handed to other workers (suspend, complete a step's task)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from durable.backends.base import check_aware
from durable.backends.memory.core import MemoryCore
from durable.errors import InvalidArgumentError, StepAlreadyRecordedError
from durable.models import (
    UNTIL_WOKEN,
    WORKFLOW_TASK,
    ErrorInfo,
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)


class Execution(MemoryCore):
    """An execution: begin, record a step, finish, reschedule (the hot path); and steps
    handed to other workers: suspend the workflow, complete a step's task, wake it."""

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
            current = self._get(instance_id)
            stored = self._hand_back(
                instance_id,
                worker_id,
                now,
                now + max(run_after, timedelta(0)),
                error=error,
                attempts=current.attempts if consume_attempt else max(current.attempts - 1, 0),
            )
            if consume_attempt:
                self._drop_failures(instance_id, rerun)
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
        check_aware(*(spec.run_after for spec in tasks))
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
