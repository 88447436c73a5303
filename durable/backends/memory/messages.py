"""The memory backend's messages: sending to a workflow, receiving (or waiting) inside it, and
its timers by key (a timer is a message deliverable later)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from durable.backends.memory.core import MemoryCore
from durable.errors import StepAlreadyRecordedError, WorkflowFinishedError
from durable.models import (
    RECV_STEP,
    UNTIL_WOKEN,
    WORKFLOW_TASK,
    Message,
    Receipt,
    ReceiveStatus,
    StepRecord,
    StepStatus,
    WorkflowStatus,
)


class Messages(MemoryCore):
    """Messages in, timers by key; each operation one hold of the backend's lock."""

    async def send_message(
        self, instance_id: str, topic: str, value: Any, *, idempotency_key: str | None = None
    ) -> bool:
        text = self._dump(value)  # before anything is looked at or written
        with self._lock:
            info = self._get(instance_id)
            stored = self._messages.setdefault(instance_id, [])
            if idempotency_key is not None and any(
                m.idempotency_key == idempotency_key for m in stored
            ):
                return False
            if info.status.is_terminal:
                raise WorkflowFinishedError(instance_id, info.status.value)
            now = self.clock()
            stored.append(
                Message(
                    workflow_id=instance_id,
                    topic=topic,
                    value=text,
                    seq=next(self._seq),
                    sent_at=now,
                    deliver_at=now,
                    idempotency_key=idempotency_key,
                )
            )
            woken = self._wake_receiver(instance_id, topic, now)
        if woken:
            self.notify_work()
        return True

    def _wake_receiver(self, instance_id: str, topic: str, now: datetime) -> bool:
        """Make the workflow's task due now if it waits for a message on ``topic``."""
        task = self._tasks.get((instance_id, WORKFLOW_TASK))
        if task is None or task.claimed_by is not None or task.run_after <= now:
            return False
        steps = self._steps.get(instance_id)
        if not steps:
            return False
        last = steps[max(steps)]
        if last.name != RECV_STEP or last.status is not StepStatus.PENDING:
            return False
        if self.serializer.loads(last.input) != topic:
            return False
        task.run_after = now
        return True

    async def receive_message(
        self,
        instance_id: str,
        topic: str,
        *,
        worker_id: str,
        step: StepRecord,
        deadline: datetime | None,
    ) -> Receipt:
        pending = self._store_step(step, self.clock())
        with self._lock:
            now = self.clock()
            task = self._held(instance_id, WORKFLOW_TASK, worker_id, now)
            rows = self._steps.setdefault(instance_id, {})
            existing = rows.get(step.position)
            if existing is not None and existing.status is not StepStatus.PENDING:
                raise StepAlreadyRecordedError(instance_id, step.position)
            stored = self._messages.setdefault(instance_id, [])
            for index, message in enumerate(stored):
                if (
                    message.topic == topic
                    and message.received_at is None
                    and message.deliver_at <= now
                ):
                    taken = dataclasses.replace(
                        message, received_at=now, received_position=step.position
                    )
                    stored[index] = taken
                    rows[step.position] = dataclasses.replace(
                        pending, status=StepStatus.SUCCEEDED, output=taken.value, completed_at=now
                    )
                    return Receipt(
                        status=ReceiveStatus.RECEIVED,
                        message=self._load_message(taken),
                        now=now,
                    )
            if deadline is not None and deadline <= now:
                rows[step.position] = dataclasses.replace(
                    pending, status=StepStatus.SUCCEEDED, output=None, completed_at=now
                )
                return Receipt(status=ReceiveStatus.TIMED_OUT, now=now)
            wake_at = min(
                (
                    m.deliver_at
                    for m in stored
                    if m.topic == topic and m.received_at is None and m.deliver_at > now
                ),
                default=None,
            )
            if deadline is not None and (wake_at is None or deadline < wake_at):
                wake_at = deadline
            rows[step.position] = pending
            current = self._get(instance_id)
            self._workflows[instance_id] = dataclasses.replace(
                current,
                status=WorkflowStatus.PENDING,
                error=None,
                attempts=max(current.attempts - 1, 0),
                updated_at=now,
                version=current.version + 1,
            )
            task.claimed_by = None
            task.claim_expires_at = None
            task.run_after = wake_at if wake_at is not None else now + UNTIL_WOKEN
            return Receipt(status=ReceiveStatus.WAITING, wake_at=wake_at, now=now)

    async def start_timer(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        delay: timedelta,
        worker_id: str,
        step: StepRecord,
    ) -> datetime:
        text = self._dump(value)
        with self._lock:
            now = self.clock()
            self._held(instance_id, WORKFLOW_TASK, worker_id, now)
            fires_at = now + max(delay, timedelta(0))
            record = self._final_step(instance_id, step, fires_at.isoformat(), now)
            stored = [
                m
                for m in self._messages.get(instance_id, [])
                if not (m.timer and m.topic == key and m.received_at is None)
            ]
            stored.append(
                Message(
                    workflow_id=instance_id,
                    topic=key,
                    value=text,
                    seq=next(self._seq),
                    sent_at=now,
                    deliver_at=fires_at,
                    timer=True,
                )
            )
            self._messages[instance_id] = stored
            self._steps.setdefault(instance_id, {})[step.position] = record
            return fires_at

    async def cancel_timer(
        self, instance_id: str, key: str, *, worker_id: str, step: StepRecord
    ) -> bool:
        with self._lock:
            now = self.clock()
            self._held(instance_id, WORKFLOW_TASK, worker_id, now)
            before = self._messages.get(instance_id, [])
            kept = [m for m in before if not (m.timer and m.topic == key and m.received_at is None)]
            cancelled = len(kept) < len(before)
            record = self._final_step(instance_id, step, cancelled, now)
            self._messages[instance_id] = kept
            self._steps.setdefault(instance_id, {})[step.position] = record
            return cancelled

    def _final_step(
        self, instance_id: str, step: StepRecord, output: Any, now: datetime
    ) -> StepRecord:
        """``step`` as stored, succeeded with ``output``; refused where the position is final."""
        existing = self._steps.get(instance_id, {}).get(step.position)
        if existing is not None and existing.status is not StepStatus.PENDING:
            raise StepAlreadyRecordedError(instance_id, step.position)
        done = dataclasses.replace(
            step, status=StepStatus.SUCCEEDED, output=output, serialized_output=None
        )
        return self._store_step(done, now)

    async def list_messages(
        self, instance_id: str, *, topic: str | None = None, received: bool | None = None
    ) -> list[Message]:
        with self._lock:
            self._get(instance_id)
            return [
                self._load_message(m)
                for m in self._messages.get(instance_id, [])
                if (topic is None or m.topic == topic)
                and (received is None or (m.received_at is not None) == received)
            ]

    def _load_message(self, stored: Message) -> Message:
        return dataclasses.replace(stored, value=self.serializer.loads(stored.value))
