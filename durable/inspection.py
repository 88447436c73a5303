"""What a workflow that is not running waits for: :class:`Waiting`, read from the pending step
at the end of its history (:func:`waiting_of`).

A workflow that suspends records why, as a pending step at its last position:

* ``durable.sleep`` (:data:`~durable.timers.SLEEP_STEP`): it sleeps; the step's output is the
  wake-up time (ISO 8601, on the store's clock);
* ``durable.recv`` (:data:`RECV_STEP`): it waits for a message; the step's input is the topic,
  its output the time the receive gives up (ISO 8601), or None (no limit).

:meth:`Client.waiting <durable.Client.waiting>` says what one workflow waits for, and
:meth:`Client.list_waiting <durable.Client.list_waiting>` lists the workflows that wait
(:meth:`~durable.backends.PersistentBackend.list_waiting`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from durable.models import RECV_STEP, StepRecord, StepStatus, WorkflowInfo
from durable.timers import SLEEP_STEP

#: What :class:`Waiting` calls each kind of wait, by the step that records it.
KINDS = {SLEEP_STEP: "sleep", RECV_STEP: "message"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Waiting:
    """What a workflow that is not running waits for. ``str()`` says it in words: ``sleeping
    until 2030-01-01T12:00:00+00:00``, ``waiting for topic 'decision' until ...``."""

    workflow_id: str
    kind: str
    """``"sleep"`` (``durable.sleep``) or ``"message"`` (``durable.recv``)."""
    position: int
    """The position of the pending step that records the wait."""
    until: datetime | None
    """When it wakes up (a sleep), or when the receive gives up (None: it waits for ever)."""
    topic: str | None = None
    """The topic a receive waits on (None for a sleep)."""
    workflow: WorkflowInfo | None = None
    """The workflow's header, as read with the step (from :meth:`Client.waiting
    <durable.Client.waiting>` and :meth:`Client.list_waiting <durable.Client.list_waiting>`)."""

    def __str__(self) -> str:
        until = self.until.isoformat() if self.until is not None else None
        if self.kind == "sleep":
            return f"sleeping until {until}"
        return f"waiting for topic {self.topic!r}" + (f" until {until}" if until else "")


def waiting_of(
    workflow_id: str, step: StepRecord, workflow: WorkflowInfo | None = None
) -> Waiting | None:
    """What the last step of a workflow that is not running says it waits for, or None when it
    records no wait (it is not pending, or not a sleep or a receive, or its values are not what
    a sleep or a receive records)."""
    kind = KINDS.get(step.name)
    if kind is None or step.status is not StepStatus.PENDING:
        return None
    until = _time(step.output)
    if kind == "sleep":
        if until is None:
            return None
        return Waiting(
            workflow_id=workflow_id,
            kind=kind,
            position=step.position,
            until=until,
            workflow=workflow,
        )
    return Waiting(
        workflow_id=workflow_id,
        kind=kind,
        position=step.position,
        until=until,
        topic=_topic(step.input),
        workflow=workflow,
    )


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    return stamp if stamp.utcoffset() is not None else None


def _topic(value: Any) -> str | None:
    """The topic a receive recorded as its input: the topic itself, or the first of the
    arguments (``{"args": [topic, ...]}``) or ``{"topic": ...}``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get("topic"), str):
            return str(value["topic"])
        args = value.get("args")
        if isinstance(args, list) and args and isinstance(args[0], str):
            return args[0]
    return None


def left_unfinished(info: WorkflowInfo, step: StepRecord) -> bool:
    """Whether ``step`` was left pending by its workflow's end: a sleep or a receive of a
    workflow cancelled meanwhile, a child's step of a parent that ended. It will not complete;
    a view shows it as ended with the workflow (at its ``completed_at``), not as still going."""
    return step.status is StepStatus.PENDING and info.status.is_terminal


def unfinished_text(info: WorkflowInfo) -> str:
    """How a view names a step that :func:`left_unfinished` is true of."""
    return f"unfinished ({info.status.value})"


__all__ = ["KINDS", "RECV_STEP", "Waiting", "left_unfinished", "unfinished_text", "waiting_of"]
