"""What workflows publish, kept in memory: events (the latest value per key) and streams (values
in order, then closed), each written with the step that records it, under the backend's lock
(its transaction) and fenced by the writer's claim."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from durable.backends.memory.core import MemoryCore
from durable.errors import (
    CorruptRowError,
    InvalidArgumentError,
    StepAlreadyRecordedError,
    StreamClosedError,
)
from durable.models import WORKFLOW_TASK, EventRecord, StepRecord, StepStatus, StreamChunk


@dataclass
class StoredEvent:
    """An event's latest value, serialized."""

    text: str
    position: int
    updated_at: datetime


@dataclass
class StoredStream:
    """A stream's values, serialized, in offset order, and whether it is closed."""

    values: list[str] = field(default_factory=list)
    closed: bool = False


class Outputs(MemoryCore):
    """Events and streams: written fenced with their step, read from any task."""

    _events: dict[str, dict[str, StoredEvent]]
    _streams: dict[str, dict[str, StoredStream]]

    def _published(
        self,
        instance_id: str,
        step: StepRecord,
        worker_id: str,
        task_id: str,
        write: Callable[[], Any],
    ) -> Any:
        """Record ``step`` and run ``write`` under the lock, fenced by the claim: both or
        neither (``write`` raises before changing anything, or does not raise)."""
        now = self.clock()
        stored = self._store_step(step, now)  # serialize before taking the lock
        with self._lock:
            self._held(instance_id, task_id, worker_id, self.clock())
            steps = self._steps.setdefault(instance_id, {})
            existing = steps.get(step.position)
            if existing is not None and existing.status is not StepStatus.PENDING:
                raise StepAlreadyRecordedError(instance_id, step.position)
            result = write()
            steps[step.position] = stored
        self.notify_outputs(instance_id)
        return result

    async def set_event(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        text = self._dump(value)

        def write() -> None:
            events = self._events.setdefault(instance_id, {})
            events[key] = StoredEvent(text, step.position, self.clock())

        self._published(instance_id, step, worker_id, task_id, write)

    async def get_event(self, instance_id: str, key: str) -> EventRecord | None:
        with self._lock:
            self._get(instance_id)
            stored = self._events.get(instance_id, {}).get(key)
        if stored is None:
            return None
        return EventRecord(
            key=key,
            value=self._load_output(instance_id, stored.text, "events"),
            position=stored.position,
            updated_at=stored.updated_at,
        )

    async def write_stream(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> int:
        text = self._dump(value)

        def write() -> int:
            stream = self._streams.setdefault(instance_id, {}).setdefault(key, StoredStream())
            if stream.closed:
                raise StreamClosedError(instance_id, key)
            stream.values.append(text)
            return len(stream.values) - 1

        offset: int = self._published(instance_id, step, worker_id, task_id, write)
        return offset

    async def close_stream(
        self,
        instance_id: str,
        key: str,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        def write() -> None:
            stream = self._streams.setdefault(instance_id, {}).setdefault(key, StoredStream())
            stream.closed = True

        self._published(instance_id, step, worker_id, task_id, write)

    async def read_stream(
        self, instance_id: str, key: str, *, offset: int = 0, limit: int = 1000
    ) -> StreamChunk:
        if offset < 0:
            raise InvalidArgumentError(f"offset must be at least 0, got {offset}")
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        with self._lock:
            finished = self._get(instance_id).status.is_terminal
            stream = self._streams.get(instance_id, {}).get(key)
            texts = [] if stream is None else stream.values[offset : offset + limit]
            total = 0 if stream is None else len(stream.values)
            closed = stream is not None and stream.closed
        values = tuple(self._load_output(instance_id, t, "stream_values") for t in texts)
        return StreamChunk(
            values=values,
            offset=offset,
            closed=closed,
            ended=(closed or finished) and offset + len(values) >= total,
        )

    def _forget_outputs(self, instance_id: str) -> None:
        """Drop what a deleted workflow published (call it under the lock)."""
        self._events.pop(instance_id, None)
        self._streams.pop(instance_id, None)

    def _load_output(self, instance_id: str, text: str, table: str) -> Any:
        try:
            return self.serializer.loads(text)
        except Exception as exc:
            raise CorruptRowError.at(table, instance_id, "value", str(exc)) from exc
