"""A workflow execution's history as a file: what ``durable workflows export`` writes and the
replayer (:mod:`durable.replayer`, ``durable workflows replay --from-file``) reads.

The format is one JSON object (UTF-8)::

    {
      "format": "durable.history",
      "format_version": 1,
      "serializer": "json",
      "workflow": {"id": "...", "name": "...", "status": "succeeded", "code_version": "...",
                   "input": "<text>", "output": "<text>", "error": {...} | null,
                   "parent_id": null, "queue": "default", "attempts": 1,
                   "continuations": 0, "created_at": "<ISO 8601>", ...},
      "steps": [{"position": 0, "name": "...", "status": "succeeded",
                 "input": "<text>" | null, "output": "<text>" | null, "error": {...} | null,
                 "child_workflow_id": null, "attempts": 1, "rerun": false,
                 "started_at": "<ISO 8601>" | null, "completed_at": "<ISO 8601>" | null}, ...]
    }

Every value (a workflow's input and output, a step's input and output) is the text the
``serializer`` named wrote (so a file round-trips whatever the serializer stores; with the
default JSON serializer it is JSON text inside a JSON string); null stands for None. An error
is ``{"type", "message", "traceback", "args"}`` as :class:`~durable.errors.ErrorInfo` records
it. Times are ISO 8601 with their offset. ``format_version`` grows when a field changes
meaning; readers refuse versions they do not know. Fields may be added within a version:
readers ignore fields they do not know.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from durable.errors import DurableError, ErrorInfo
from durable.models import StepRecord, StepStatus, WorkflowSnapshot, WorkflowStatus
from durable.serialization import JSONSerializer, Serializer

FORMAT = "durable.history"
FORMAT_VERSION = 1

_HEADER_FIELDS = (
    "id",
    "name",
    "status",
    "parent_id",
    "executor_id",
    "queue",
    "priority",
    "idempotency_key",
    "attempts",
    "max_attempts",
    "interruptions",
    "continuations",
    "code_version",
)
_HEADER_TIMES = ("created_at", "updated_at", "started_at", "completed_at", "deadline")


class HistoryFormatError(DurableError):
    """A history file that is not one: not JSON, another format, or a version this durable
    does not read."""


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _error(info: ErrorInfo | None) -> Any:
    return None if info is None else json.loads(info.to_json())


def _parse_error(value: Any) -> ErrorInfo | None:
    return None if value is None else ErrorInfo.from_json(json.dumps(value))


def dump_history(
    snapshot: WorkflowSnapshot, serializer: Serializer | None = None
) -> dict[str, Any]:
    """The history file's object for ``snapshot`` (see the module's docstring), its values
    written by ``serializer`` (default JSON: the backend's own should be given).

    :raises SerializationError: a value the serializer cannot write.
    """
    ser = serializer or JSONSerializer()

    def text(value: Any) -> str | None:
        return None if value is None else ser.dumps(value)

    header: dict[str, Any] = {f: getattr(snapshot, f) for f in _HEADER_FIELDS}
    header["status"] = WorkflowStatus(snapshot.status).value
    header.update({f: _time(getattr(snapshot, f)) for f in _HEADER_TIMES})
    header.update(
        input=text(snapshot.input), output=text(snapshot.output), error=_error(snapshot.error)
    )
    steps = [
        {
            "position": s.position,
            "name": s.name,
            "status": StepStatus(s.status).value,
            "input": text(s.input),
            "output": text(s.output),
            "error": _error(s.error),
            "child_workflow_id": s.child_workflow_id,
            "attempts": s.attempts,
            "rerun": s.rerun,
            "executor_id": s.executor_id,
            "started_at": _time(s.started_at),
            "completed_at": _time(s.completed_at),
        }
        for s in sorted(snapshot.steps, key=lambda s: s.position)
    ]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "serializer": ser.name or type(ser).__name__,
        "workflow": header,
        "steps": steps,
    }


def load_history(data: Any, serializer: Serializer | None = None) -> WorkflowSnapshot:
    """The execution a history file's object (or its JSON text) records, its values read by
    ``serializer`` (default JSON).

    :raises HistoryFormatError: not a history of a version this durable reads, or a field is
        missing or of the wrong kind.
    """
    ser = serializer or JSONSerializer()
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise HistoryFormatError(f"a history file must be JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HistoryFormatError(f'not a durable history (no "format": {FORMAT!r})')
    if data.get("format_version") != FORMAT_VERSION:
        raise HistoryFormatError(
            f"history format version {data.get('format_version')!r} is not one this durable "
            f"reads ({FORMAT_VERSION})"
        )
    written_by = data.get("serializer")
    if written_by not in (None, ser.name, type(ser).__name__):
        raise HistoryFormatError(
            f"the history's values were written by the {written_by!r} serializer; read it "
            f"with that one, not {ser.name or type(ser).__name__!r}"
        )

    def value(text: Any) -> Any:
        return None if text is None else ser.loads(text)

    try:
        head = data["workflow"]
        fields: dict[str, Any] = {f: head[f] for f in _HEADER_FIELDS if f in head}
        fields["status"] = WorkflowStatus(head["status"])
        fields.update({f: _parse_time(head.get(f)) for f in _HEADER_TIMES})
        steps = tuple(
            StepRecord(
                position=int(s["position"]),
                name=s["name"],
                status=StepStatus(s["status"]),
                input=value(s.get("input")),
                output=value(s.get("output")),
                error=_parse_error(s.get("error")),
                child_workflow_id=s.get("child_workflow_id"),
                attempts=int(s.get("attempts", 1)),
                executor_id=s.get("executor_id"),
                started_at=_parse_time(s.get("started_at")),
                completed_at=_parse_time(s.get("completed_at")),
                rerun=bool(s.get("rerun", False)),
            )
            for s in data["steps"]
        )
        return WorkflowSnapshot(
            **fields,
            input=value(head.get("input")),
            output=value(head.get("output")),
            error=_parse_error(head.get("error")),
            steps=steps,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HistoryFormatError(f"a malformed history: {type(exc).__name__}: {exc}") from exc


def write_history_file(
    path: str | Path, snapshot: WorkflowSnapshot, serializer: Serializer | None = None
) -> None:
    """Write ``snapshot``'s history to ``path`` (UTF-8 JSON, indented)."""
    text = json.dumps(dump_history(snapshot, serializer), indent=2, ensure_ascii=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def read_history_file(path: str | Path, serializer: Serializer | None = None) -> WorkflowSnapshot:
    """The execution the history file at ``path`` records (see :func:`load_history`).

    :raises HistoryFormatError: not a history file this durable reads.
    :raises OSError: the file cannot be read.
    """
    return load_history(Path(path).read_text(encoding="utf-8"), serializer)
