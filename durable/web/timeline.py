"""A workflow's steps laid out as a timeline: one bar per step, from when it started to when it
completed (or to now while it runs), placed as percentages of the workflow's span, so a template
draws them with plain CSS widths."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from durable.inspection import left_unfinished, unfinished_text
from durable.models import StepRecord, StepStatus, WorkflowInfo
from durable.timers import SLEEP_STEP

#: The narrowest bar drawn, in percent of the span, so an instant step is still seen.
MIN_WIDTH = 0.6


@dataclass(frozen=True)
class Bar:
    """One step's bar: where it starts and how wide it is (percent of the span), its label and
    the CSS class of its state (``succeeded``, ``failed``, ``pending``, ``sleeping``,
    ``unfinished``: left pending by the workflow's end)."""

    step: StepRecord
    left: float
    width: float
    label: str
    state: str
    seconds: float | None
    status_text: str
    """What the status column says: the step's status, ``sleeping until ...``, or that it was
    left unfinished by the workflow's end."""


def _state(info: WorkflowInfo, step: StepRecord) -> str:
    if left_unfinished(info, step):
        return "unfinished"
    if step.name == SLEEP_STEP and step.status is StepStatus.PENDING:
        return "sleeping"
    return step.status.value


def _status_text(info: WorkflowInfo, step: StepRecord, state: str) -> str:
    if state == "unfinished":
        return unfinished_text(info)
    if state == "sleeping":
        return f"sleeping until {step.output}"
    return step.status.value


def _label(info: WorkflowInfo, step: StepRecord, state: str) -> str:
    if state == "sleeping":
        return f"sleeping until {step.output}"
    if state == "unfinished" and step.name == SLEEP_STEP:
        return f"#{step.position} {step.name}: {unfinished_text(info)}"
    retries = f", {step.attempts} attempts" if step.attempts > 1 else ""
    return f"#{step.position} {step.name}{retries}"


@dataclass(frozen=True)
class Timeline:
    """The bars of a workflow's steps over its span, from ``begin`` to ``end``."""

    bars: list[Bar]
    begin: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.begin).total_seconds()


def timeline(info: WorkflowInfo, steps: list[StepRecord], now: datetime) -> Timeline:
    """One bar per step of ``steps``, in their order, over the span from the workflow's start
    (or its first step's) to its end (or ``now`` while it has not finished)."""
    starts = [s.started_at for s in steps if s.started_at is not None]
    ends = [s.completed_at for s in steps if s.completed_at is not None]
    begin = min([*starts, *([info.started_at] if info.started_at else [])], default=now)
    finish = info.completed_at or now
    finish = max([finish, *ends, begin])
    span = (finish - begin).total_seconds() or 1.0
    out: list[Bar] = []
    cursor = begin
    for step in steps:
        state = _state(info, step)
        start = step.started_at or cursor
        end = step.completed_at or (now if step.status is StepStatus.PENDING else start)
        if state == "unfinished":  # it ended with the workflow
            end = info.completed_at or start
        end = max(end, start)
        left = max(0.0, min(100.0, (start - begin).total_seconds() / span * 100))
        width = max(MIN_WIDTH, (end - start).total_seconds() / span * 100)
        width = min(width, max(MIN_WIDTH, 100.0 - left))
        seconds = (
            (step.completed_at - step.started_at).total_seconds()
            if step.completed_at and step.started_at
            else None
        )
        text = _status_text(info, step, state)
        label = _label(info, step, state)
        out.append(Bar(step, round(left, 3), round(width, 3), label, state, seconds, text))
        cursor = end
    return Timeline(out, begin, finish)
