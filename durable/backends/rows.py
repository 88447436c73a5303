"""Reading stored rows back: every stored value a backend decodes goes through here, and a value
that cannot be decoded becomes a :class:`~durable.errors.CorruptRowError` naming the table, the
workflow, the step position and the column, never a bare ``ValueError`` or ``JSONDecodeError``.

Backends decode *strictly* where the caller needs the values (beginning an execution, loading a
snapshot, ``get_workflow``, ``list_steps``): the first unreadable column raises. They decode
*leniently* where one bad row must not hide the others or undo a write (a listing, the header a
write returns): see :func:`workflow_values`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from durable.errors import CorruptRowError
from durable.models import ErrorInfo, StepStatus, WorkflowStatus
from durable.serialization import Serializer

#: The ``type`` of the :class:`~durable.models.ErrorInfo` that stands in for a row's error when
#: the row cannot be read in full (see :func:`workflow_values`).
CORRUPT_ROW = f"{CorruptRowError.__module__}.{CorruptRowError.__qualname__}"


@dataclass(frozen=True, slots=True)
class RowRef:
    """Where a stored row is: its table, its workflow, and its step position (None for the
    workflow's own row)."""

    table: str
    workflow_id: str
    position: int | None = None

    def corrupt(self, column: str, reason: str) -> CorruptRowError:
        return CorruptRowError.at(
            self.table, self.workflow_id, column, reason, position=self.position
        )

    def value(self, serializer: Serializer, column: str, text: Any) -> Any:
        """A value the serializer stored (None stays None)."""
        if text is None:
            return None
        try:
            return serializer.loads(text)
        except Exception as exc:  # a custom serializer may raise anything
            raise self.corrupt(column, str(exc) or type(exc).__name__) from exc

    def error(self, column: str, text: Any) -> ErrorInfo | None:
        """A recorded exception (:meth:`ErrorInfo.to_json`); None or empty is no error."""
        if not text:
            return None
        try:
            error = ErrorInfo.from_json(text)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self.corrupt(column, f"not a recorded error: {exc!r}") from exc
        if not isinstance(error.type, str) or not isinstance(error.message, str):
            raise self.corrupt(column, "not a recorded error: its type or message is no string")
        return error

    def workflow_status(self, text: Any) -> WorkflowStatus:
        try:
            return WorkflowStatus(text)
        except ValueError:
            valid = ", ".join(s.value for s in WorkflowStatus)
            raise self.corrupt(
                "status", f"{text!r} is not a workflow status (valid: {valid})"
            ) from None

    def step_status(self, text: Any) -> StepStatus:
        try:
            return StepStatus(text)
        except ValueError:
            valid = ", ".join(s.value for s in StepStatus)
            raise self.corrupt(
                "status", f"{text!r} is not a step status (valid: {valid})"
            ) from None


def workflow_values(
    ref: RowRef,
    serializer: Serializer,
    *,
    status: Any,
    input: Any,
    output: Any,
    error: Any,
    lenient: bool = False,
) -> dict[str, Any]:
    """The decoded ``status``, ``input``, ``output`` and ``error`` of a workflow's row.

    Strict (the default): the first column that cannot be read raises
    :class:`~durable.errors.CorruptRowError`. Lenient: the row is still returned, marked
    unreadable: its unreadable values are None, an unknown status reads as failed, and ``error``
    is a :data:`CORRUPT_ROW` record whose message names the first unreadable column.
    """
    try:
        return {
            "status": status if isinstance(status, WorkflowStatus) else ref.workflow_status(status),
            "input": ref.value(serializer, "input", input),
            "output": ref.value(serializer, "output", output),
            "error": error if isinstance(error, ErrorInfo) else ref.error("error", error),
        }
    except CorruptRowError:
        if not lenient:
            raise
    # lenient, and a column cannot be read: read each on its own
    values: dict[str, Any] = {}
    problem: CorruptRowError | None = None
    readers: list[tuple[str, Any]] = [
        ("status", lambda: ref.workflow_status(status)),
        ("input", lambda: ref.value(serializer, "input", input)),
        ("output", lambda: ref.value(serializer, "output", output)),
        ("error", lambda: error if isinstance(error, ErrorInfo) else ref.error("error", error)),
    ]
    for column, read in readers:
        try:
            values[column] = read()
        except CorruptRowError as exc:
            problem = problem or exc
            values[column] = WorkflowStatus.FAILED if column == "status" else None
    if problem is not None:
        values["error"] = ErrorInfo(type=CORRUPT_ROW, message=str(problem), args=(str(problem),))
    return values


def step_values(
    ref: RowRef, serializer: Serializer, *, status: Any, input: Any, output: Any, error: Any
) -> dict[str, Any]:
    """The decoded ``status``, ``input``, ``output`` and ``error`` of a step's row.

    :raises CorruptRowError: a column cannot be read.
    """
    return {
        "status": status if isinstance(status, StepStatus) else ref.step_status(status),
        "input": ref.value(serializer, "input", input),
        "output": ref.value(serializer, "output", output),
        "error": error if isinstance(error, ErrorInfo) else ref.error("error", error),
    }
