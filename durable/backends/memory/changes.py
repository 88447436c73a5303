"""The change feed (``Client.events``) of the memory backend: the stores stamp each change with
the next value of one counter as it is written (:class:`Stamps`), so every write of the other
areas is covered without their knowing; the feed reads the stamps of the rows that exist.

Part of :class:`~durable.backends.memory.backend.InMemoryBackend`.
"""

from __future__ import annotations

import itertools
from typing import Any

from durable.backends.base import check_changes_args, step_change_kind
from durable.backends.memory.core import MemoryCore
from durable.models import (
    ChangeEvent,
    ChangeKind,
    Message,
    StepRecord,
    WorkflowInfo,
    WorkflowStatus,
)

Key = tuple[Any, ...]


class Stamps:
    """The positions of the changes: ``(kind, workflow id[, step position | message seq])`` ->
    position (the last write of that row's change)."""

    def __init__(self) -> None:
        self.positions: dict[Key, int] = {}
        self._counter = itertools.count(1)

    def stamp(self, key: Key) -> None:
        self.positions[key] = next(self._counter)

    def workflow(self, old: WorkflowInfo | None, new: WorkflowInfo) -> None:
        if old is None:
            self.stamp(("created", new.id))
        if _workflow_status(new) is WorkflowStatus.RUNNING and (
            old is None
            or _workflow_status(old) is not WorkflowStatus.RUNNING
            or (old.executor_id, old.attempts, old.interruptions)
            != (new.executor_id, new.attempts, new.interruptions)
        ):
            self.stamp(("started", new.id))
        if _terminal(new) and (
            old is None or not _terminal(old) or old.completed_at != new.completed_at
        ):
            self.stamp(("finished", new.id))


def _workflow_status(info: WorkflowInfo) -> WorkflowStatus | None:
    """The workflow's status; None for one that is not a status (a record corrupted by hand:
    reading it is what fails, not writing it)."""
    try:
        return WorkflowStatus(info.status)
    except ValueError:
        return None


def _terminal(info: WorkflowInfo) -> bool:
    status = _workflow_status(info)
    return status is not None and status.is_terminal


class StampedWorkflows(dict[str, WorkflowInfo]):
    def __init__(self, stamps: Stamps) -> None:
        super().__init__()
        self._stamps = stamps

    def __setitem__(self, key: str, value: WorkflowInfo) -> None:
        self._stamps.workflow(self.get(key), value)
        super().__setitem__(key, value)


class StampedSteps(dict[int, StepRecord]):
    def __init__(self, stamps: Stamps, workflow_id: str, rows: Any = ()) -> None:
        super().__init__()
        self._stamps = stamps
        self._id = workflow_id
        self.update(dict(rows))

    def __setitem__(self, key: int, value: StepRecord) -> None:
        if self.get(key) != value:
            self._stamps.stamp(("step", self._id, key))
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


class StampedStepStore(dict[str, dict[int, StepRecord]]):
    def __init__(self, stamps: Stamps) -> None:
        super().__init__()
        self._stamps = stamps

    def __setitem__(self, key: str, value: dict[int, StepRecord]) -> None:
        if not isinstance(value, StampedSteps):
            value = StampedSteps(self._stamps, key, value)
        super().__setitem__(key, value)

    def setdefault(self, key: str, default: Any = None) -> dict[int, StepRecord]:
        if key not in self:
            self[key] = default if default is not None else {}
        return self[key]


class StampedMessages(list[Message]):
    def __init__(self, stamps: Stamps, rows: Any = ()) -> None:
        super().__init__()
        self._stamps = stamps
        for message in rows:
            self.append(message)

    def append(self, message: Message) -> None:
        key = ("message", message.workflow_id, message.seq)
        if key not in self._stamps.positions:
            self._stamps.stamp(key)
        super().append(message)


class StampedMessageStore(dict[str, list[Message]]):
    def __init__(self, stamps: Stamps) -> None:
        super().__init__()
        self._stamps = stamps

    def __setitem__(self, key: str, value: list[Message]) -> None:
        if not isinstance(value, StampedMessages):
            value = StampedMessages(self._stamps, value)
        super().__setitem__(key, value)

    def setdefault(self, key: str, default: Any = None) -> list[Message]:
        if key not in self:
            self[key] = default if default is not None else []
        return self[key]


class Changes(MemoryCore):
    """The change feed."""

    _stamps: Stamps

    async def list_changes(self, *, after: int = 0, limit: int = 100) -> list[ChangeEvent]:
        check_changes_args(after, limit)
        with self._lock:
            found = sorted(
                (position, key)
                for key, position in self._stamps.positions.items()
                if position > after
            )
            events: list[ChangeEvent] = []
            for position, key in found:
                if len(events) >= limit:
                    break
                event = self._change(position, key)
                if event is not None:
                    events.append(event)
            return events

    def _change(self, position: int, key: Key) -> ChangeEvent | None:
        kind, workflow_id = key[0], key[1]
        info = self._workflows.get(workflow_id)
        if info is None:
            return None  # deleted
        common = {"position": position, "workflow_id": workflow_id, "workflow_name": info.name}
        if kind == "step":
            step = self._steps.get(workflow_id, {}).get(key[2])
            if step is None:
                return None
            return ChangeEvent(
                kind=step_change_kind(_status(step), step.name),
                time=step.completed_at or step.started_at,
                status=_status(step),
                step_position=step.position,
                step_name=step.name,
                **common,
            )
        if kind == "message":
            message = next(
                (m for m in self._messages.get(workflow_id, ()) if m.seq == key[2]), None
            )
            if message is None:
                return None
            return ChangeEvent(
                kind=ChangeKind.MESSAGE, time=message.sent_at, step_name=message.topic, **common
            )
        if kind == "started" and info.started_at is None:
            return None
        if kind == "finished" and not _terminal(info):
            return None
        time = {"created": info.created_at, "started": info.started_at}.get(kind, info.completed_at)
        return ChangeEvent(kind=ChangeKind(kind), time=time, status=_status(info), **common)


def _status(record: StepRecord | WorkflowInfo) -> str:
    """The record's status as stored (a corrupted one as it is: the feed shows it)."""
    return str(getattr(record.status, "value", record.status))
