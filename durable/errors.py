"""Every error ``durable`` raises derives from :class:`DurableError`.

The tree::

    DurableError
    ├── ConfigurationError            bad URL, unknown scheme, bad option value
    │   ├── NothingToServeError       a worker was started with no workflow to serve
    │   └── NotSupportedError         the backend lacks an optional capability (the change feed)
    ├── InvalidArgumentError          a bad argument (also a ValueError)
    ├── BackendError                  the storage failed (driver error kept in __cause__)
    │   ├── BackendUnavailableError   the database cannot be reached
    │   └── SchemaVersionError        the schema is newer than this code, or not migrated
    ├── SerializationError            a value cannot be serialized or deserialized
    │   └── CorruptRowError           a stored row cannot be read (names where it is)
    ├── NotFoundError
    │   ├── WorkflowNotFoundError     no workflow with that id
    │   ├── UnknownWorkflowError      no workflow registered under that name
    │   ├── ScheduleNotFoundError     no schedule with that name
    │   ├── QueueNotFoundError        no stored queue with that name
    │   └── TaskNotFoundError         no task with that (instance id, task id)
    ├── ConflictError
    │   ├── ConcurrentUpdateError     optimistic lock: the stored version moved on
    │   ├── WorkflowAlreadyExistsError
    │   ├── StepAlreadyRecordedError  that step position already has a final outcome
    │   ├── WorkflowFinishedError     the workflow has finished: it receives no messages
    │   ├── ExecutorIdInUseError      another live process runs under that executor id
    │   └── StreamClosedError         a value was written to a stream after it was closed
    ├── ClaimLostError                the caller does not hold the claim it acts under
    ├── NonDeterminismError           a replay diverged from the recorded history
    ├── RecoveriesExhaustedError      interrupted more often than max_recoveries allows
    ├── NonRetryableError             raise it (or a subclass) from a step: no retry
    ├── DeadlineExceededError         a workflow ran past its deadline (recorded, cancelled)
    ├── StepTimeoutError              a step attempt ran past its timeout (also a TimeoutError)
    ├── WorkerCrashedError            a worker's loop died: it claims nothing any more
    ├── WorkflowError                 the outcome of a workflow, as seen by a caller
    │   ├── WorkflowFailedError       it failed; the recorded error is attached
    │   ├── WorkflowCancelledError    it was cancelled
    │   └── WorkflowDeadLetteredError it failed on its last attempt and was dead-lettered
    ├── StepError                     a recorded step failure whose class is not imported here
    └── RaisedToStopError             workflow code raised KeyboardInterrupt, SystemExit,
                                      GeneratorExit or CancelledError of its own: a failure

Each class's docstring is its default message.

An exception as a workflow's or a step's row records it is an :class:`ErrorInfo` (also importable
from :mod:`durable.models`, beside the other records); :func:`rebuild_exception` turns it back
into an exception. They live here, in the lowest layer, because the errors above carry one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback as tb
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


class DurableError(Exception):
    """A durable error occurred."""

    def __init__(self, message: str | None = None, *args: Any) -> None:
        if message is None:
            message = (self.__class__.__doc__ or self.__class__.__name__).strip().splitlines()[0]
        super().__init__(message, *args)

    @property
    def message(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        # subclasses take other constructor arguments than ``args``: rebuild without calling
        # __init__, so that errors cross process boundaries (multiprocessing, pools) intact
        return (_rebuild, (type(self), self.args, self.__dict__))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[DurableError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigurationError(DurableError):
    """The configuration is invalid."""


class NothingToServeError(ConfigurationError):
    """A worker was started with no workflow to serve: register workflows in its registry
    (import the modules that define them) or name them."""


class NotSupportedError(ConfigurationError):
    """The backend cannot do what was asked (an optional capability it lacks); the message names
    the backend and the operation."""


class InvalidArgumentError(DurableError, ValueError):
    """An argument is invalid."""


class BackendError(DurableError):
    """The storage backend failed."""


class BackendUnavailableError(BackendError):
    """The database cannot be reached now (a server down, restarting or out of connection
    slots; its disk full; a SQLite file locked by another program past the busy timeout): the
    same call may succeed later, and nothing of it was written."""


class SchemaVersionError(BackendError):
    """The database schema does not match this version of durable."""


class SerializationError(DurableError):
    """A value could not be serialized or deserialized."""


class CorruptRowError(SerializationError):
    """A stored row cannot be read back: a value its serializer cannot load, an error record
    that is not one, an unknown status, or a value of the wrong shape.

    It names the table, the workflow, the step position (None for the workflow's own row) and
    the column, so that an operator can find the row and repair or delete it. The runtime fails
    an execution whose rows cannot be read, once, instead of retrying it forever.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        table: str | None = None,
        workflow_id: str | None = None,
        position: int | None = None,
        column: str | None = None,
    ) -> None:
        super().__init__(message)
        self.table = table
        self.workflow_id = workflow_id
        self.position = position
        self.column = column

    @classmethod
    def at(
        cls,
        table: str | None,
        workflow_id: str,
        column: str,
        reason: str,
        *,
        position: int | None = None,
    ) -> CorruptRowError:
        """The error for ``column`` of a row of ``table``, with ``reason`` why it is unreadable."""
        row = f"workflow {workflow_id!r}"
        if position is not None:
            row = f"step {position} of {row}"
        where = f"column {column!r}" + (f" of table {table}" if table else "")
        return cls(
            f"the stored {row} cannot be read: {where}: {reason}",
            table=table,
            workflow_id=workflow_id,
            position=position,
            column=column,
        )


class NotFoundError(DurableError):
    """The requested object does not exist."""


class WorkflowNotFoundError(NotFoundError):
    """No workflow has that id."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"no workflow with id {workflow_id!r}")
        self.workflow_id = workflow_id


class UnknownWorkflowError(NotFoundError, LookupError):
    """No workflow is registered under that name."""


class ScheduleNotFoundError(NotFoundError, LookupError):
    """No schedule has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule named {name!r}")
        self.name = name


class QueueNotFoundError(NotFoundError, LookupError):
    """No queue of that name is stored (a queue without a stored configuration has no limits)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no queue named {name!r} is stored")
        self.name = name


class TaskNotFoundError(NotFoundError):
    """No task has that id."""

    def __init__(self, instance_id: str, task_id: str) -> None:
        super().__init__(f"no task {task_id!r} for workflow {instance_id!r}")
        self.instance_id = instance_id
        self.task_id = task_id


class ConflictError(DurableError):
    """The write conflicts with what is stored."""


class ConcurrentUpdateError(ConflictError):
    """The workflow was updated by someone else since it was read."""

    def __init__(self, workflow_id: str, expected_version: int, actual_version: int | None) -> None:
        super().__init__(
            f"workflow {workflow_id!r} was updated concurrently: expected version "
            f"{expected_version}, stored version is {actual_version}"
        )
        self.workflow_id = workflow_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class WorkflowAlreadyExistsError(ConflictError):
    """A workflow with that id already exists."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"a workflow with id {workflow_id!r} already exists")
        self.workflow_id = workflow_id


class StepAlreadyRecordedError(ConflictError):
    """That step already has a recorded outcome."""

    def __init__(self, workflow_id: str, position: int) -> None:
        super().__init__(f"step {position} of workflow {workflow_id!r} is already recorded")
        self.workflow_id = workflow_id
        self.position = position


class WorkflowFinishedError(ConflictError):
    """The workflow has finished: it receives no more messages."""

    def __init__(self, workflow_id: str, status: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} has finished ({status}): it receives no more messages"
        )
        self.workflow_id = workflow_id
        self.status = status


class ExecutorIdInUseError(ConflictError):
    """Another live process runs under that executor id."""

    def __init__(self, executor_id: str, hostname: str, pid: int, heartbeat_at: Any) -> None:
        super().__init__(
            f"executor id {executor_id!r} is in use by process {pid} on host {hostname!r} "
            f"(last heartbeat at {heartbeat_at}): two processes under one id would run the "
            "same work at once. Stop that process, or give this one another executor_id"
        )
        self.executor_id = executor_id
        self.hostname = hostname
        self.pid = pid
        self.heartbeat_at = heartbeat_at


class StreamClosedError(ConflictError):
    """That stream was closed: it takes no more values."""

    def __init__(self, workflow_id: str, key: str) -> None:
        super().__init__(
            f"stream {key!r} of workflow {workflow_id!r} is closed: it takes no more values"
        )
        self.workflow_id = workflow_id
        self.key = key


class ClaimLostError(DurableError):
    """The caller does not hold the claim it acts under (it expired and was taken, or was never
    held)."""

    def __init__(
        self,
        instance_id: str,
        task_id: str,
        worker_id: str,
        holder: str | None,
        *,
        reason: str | None = None,
    ) -> None:
        held = reason or (f"it is held by {holder!r}" if holder else "it is not held by anyone")
        super().__init__(
            f"worker {worker_id!r} does not hold the claim on task {task_id!r} of "
            f"workflow {instance_id!r}: {held}"
        )
        self.instance_id = instance_id
        self.task_id = task_id
        self.worker_id = worker_id
        self.holder = holder


class NonDeterminismError(DurableError):
    """A replay diverged from the recorded history of the workflow."""


class RecoveriesExhaustedError(DurableError):
    """The execution was interrupted (its executors died or lost their leases) more often than
    its workflow's ``max_recoveries`` allows: a crash loop, dead-lettered."""


class NonRetryableError(DurableError):
    """The operation failed in a way that retrying cannot fix."""


class TransactionEndedError(ConfigurationError, NonRetryableError):
    """A ``@durable.transaction`` step's body ended the step's transaction itself (it called
    ``commit()`` or ``rollback()`` on the connection): its writes and the step's record are no
    longer one commit. Neither the step nor its workflow retries it: each attempt would commit
    the body's writes again."""


class DeadlineExceededError(DurableError):
    """The workflow passed its deadline (its ``timeout`` or ``deadline``) before it finished:
    it was cancelled, and this is recorded as its error."""


class StepTimeoutError(DurableError, TimeoutError):
    """A step attempt ran longer than the step's ``timeout``: the attempt failed (and is
    retried as the step's retry policy says)."""


class WorkerCrashedError(DurableError):
    """A worker stopped claiming work: its loop ended on an unexpected error."""


class WorkflowError(DurableError):
    """The workflow did not succeed."""

    def __init__(self, workflow_id: str, message: str, error: ErrorInfo | None = None) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.error = error


class WorkflowFailedError(WorkflowError):
    """The workflow failed."""


class WorkflowCancelledError(WorkflowError):
    """The workflow was cancelled."""


class WorkflowDeadLetteredError(WorkflowError):
    """The workflow failed on its last attempt and was moved to the dead letters."""


class StepError(DurableError):
    """A step failed; its exception class is not among the modules this process has imported
    (or could not be made), so this stands in for it."""

    def __init__(self, error: ErrorInfo) -> None:
        super().__init__(f"{error.type}: {error.message}")
        self.error = error


class RaisedToStopError(DurableError):
    """Workflow code (a step, a workflow's body) raised an exception that means "stop" to
    Python or asyncio, while nothing was stopping: ``KeyboardInterrupt`` or ``SystemExit`` in
    a step or workflow (``sys.exit()`` in a library; under the runtime, signals reach the
    event loop as a shutdown, not workflow code), ``GeneratorExit``, an
    ``asyncio.CancelledError`` while nothing cancelled the execution, or any other
    BaseException that is no ``Exception`` (a ``BaseExceptionGroup``, a library's own). It is
    that code's failure, retried and recorded as any other: let through, it stopped the
    runtime's event loop (and the worker process), or left the execution running with nothing
    recorded, taken over and run again after each lease, in a loop without end."""

    @classmethod
    def of(cls, exc: BaseException) -> RaisedToStopError:
        """The failure that stands for ``exc``."""
        kind = type(exc)
        return cls(f"{kind.__module__}.{kind.__qualname__} raised by workflow code: {exc!r}")


class ControlFlow(BaseException):
    """Internal: the base of durable's own ways out of workflow code (a suspension, a
    continue-as-new, a replay's frontier, a passed deadline, a simulated crash). A
    BaseException, so that ``except Exception`` in workflow code cannot swallow it; never
    taken for that code's failure (see :func:`raise_as_failure`)."""


def raise_as_failure(exc: BaseException) -> NoReturn:
    """Raise ``exc``, a BaseException that is no ``Exception`` out of workflow code, as that
    code's failure (:class:`RaisedToStopError`), unless it is durable's own control flow
    (:class:`ControlFlow`) or a cancellation of the running task (see
    :func:`raise_unless_stopping`), which go on as they are."""
    if isinstance(exc, ControlFlow):
        raise exc
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        raise_unless_stopping(exc)
    raise RaisedToStopError.of(exc) from exc


def stopping_as_failure(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a thread running workflow code: a BaseException that is no
    ``Exception`` (``KeyboardInterrupt``, ``SystemExit``, ...) becomes
    :class:`RaisedToStopError` (from a thread neither stops the process; let through, it
    stopped the event loop awaiting the thread). So do ``CancelledError`` and ``GeneratorExit``:
    no task is cancelled in a thread, the code raised them of its own. durable's own control
    flow (:class:`ControlFlow`) goes on as it is, and ``StopIteration`` is raised as a
    ``RuntimeError`` (see :func:`no_stop_iteration`)."""
    try:
        return no_stop_iteration(fn, *args, **kwargs)
    except Exception:
        raise
    except ControlFlow:
        raise
    except BaseException as exc:
        raise RaisedToStopError.of(exc) from exc


def no_stop_iteration(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, for a thread whose outcome a coroutine awaits: a
    ``StopIteration`` it raises is raised as a ``RuntimeError`` from it, as Python does for a
    coroutine. asyncio cannot pass ``StopIteration`` through a future: the awaiting task was
    never woken, and the step or workflow never ended."""
    try:
        return fn(*args, **kwargs)
    except StopIteration as exc:
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        raise RuntimeError(f"{name} raised StopIteration") from exc


def raise_unless_stopping(exc: BaseException) -> NoReturn:
    """Re-raise ``exc`` (a ``CancelledError`` or ``GeneratorExit`` out of workflow code) if
    the running task is being cancelled; else raise :class:`RaisedToStopError` for it (the
    code raised it of its own)."""
    task = asyncio.current_task()
    if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
        raise exc
    raise RaisedToStopError.of(exc) from exc


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorInfo:
    """An exception as recorded: its class's import path, message, traceback and arguments;
    for an exception group its nested exceptions, and the exception it was raised ``from``."""

    type: str
    message: str
    traceback: str | None = None
    args: tuple[Any, ...] | None = None
    """The exception's ``args`` when they are JSON-serializable (``bytes`` among them stored as
    Latin-1 text, their positions in :attr:`bytes_args`), so the exception can be rebuilt. For an
    exception group, its message alone (its exceptions are :attr:`exceptions`)."""
    attrs: dict[str, Any] | None = None
    """The exception's own attributes (its ``__dict__``) that are JSON-serializable, each
    alone: set again on the rebuilt exception, so that a handler reading one (``e.code``) reads
    in a replay what it read when the step failed. An ``OSError``'s ``filename`` and
    ``filename2`` (which are not in its ``args``) are recorded here too."""
    bytes_args: tuple[int, ...] | None = None
    """The positions in :attr:`args` of arguments that were ``bytes`` (a ``UnicodeDecodeError``'s
    object), stored as Latin-1 text and given back as ``bytes``."""
    exceptions: tuple[ErrorInfo, ...] | None = None
    """An exception group's exceptions (``ExceptionGroup``, ``BaseExceptionGroup``), each
    recorded as this (without its own traceback: the group's shows them all)."""
    cause: ErrorInfo | None = None
    """The exception's ``__cause__`` (``raise ... from cause``), recorded as this (without its
    own traceback: the exception's shows it)."""

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        return _record(exc, traceback=True, within=set())

    def to_json(self) -> str:
        return json.dumps(self._data(), separators=(",", ":"))

    def _data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.traceback is not None:
            data["traceback"] = self.traceback
        if self.args is not None:
            data["args"] = list(self.args)
        if self.attrs:
            data["attrs"] = self.attrs
        if self.bytes_args:
            data["bytes_args"] = list(self.bytes_args)
        if self.exceptions is not None:
            data["exceptions"] = [member._data() for member in self.exceptions]
        if self.cause is not None:
            data["cause"] = self.cause._data()
        return data

    @classmethod
    def from_json(cls, text: str) -> ErrorInfo:
        return cls._from_data(json.loads(text))

    @classmethod
    def _from_data(cls, data: dict[str, Any]) -> ErrorInfo:
        args = data.get("args")
        bytes_args = data.get("bytes_args")
        exceptions = data.get("exceptions")
        cause = data.get("cause")
        return cls(
            type=data["type"],
            message=data["message"],
            traceback=data.get("traceback"),
            args=tuple(args) if args is not None else None,
            attrs=data.get("attrs") or None,
            bytes_args=tuple(int(i) for i in bytes_args) if bytes_args else None,
            exceptions=(
                tuple(cls._from_data(member) for member in exceptions)
                if exceptions is not None
                else None
            ),
            cause=cls._from_data(cause) if cause is not None else None,
        )


#: An ``OSError``'s attributes that its ``args`` leave out (and its message shows).
_OSERROR_ATTRS = ("filename", "filename2")


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _record(exc: BaseException, *, traceback: bool, within: set[int]) -> ErrorInfo:
    """``exc`` as an :class:`ErrorInfo`; ``within`` holds the ids of the exceptions it is
    recorded inside of (its group, the exception it caused), so that a cycle of causes ends."""
    kind = type(exc)
    within = within | {id(exc)}
    exceptions: tuple[ErrorInfo, ...] | None = None
    bytes_args: list[int] = []
    args: tuple[Any, ...] | None
    if isinstance(exc, BaseExceptionGroup):
        args = (exc.message,) if isinstance(exc.message, str) else None
        exceptions = tuple(
            _record(member, traceback=False, within=within)
            for member in exc.exceptions
            if id(member) not in within
        )
    else:
        args = tuple(exc.args)
        if any(isinstance(arg, bytes) for arg in args):
            bytes_args = [i for i, arg in enumerate(args) if isinstance(arg, bytes)]
            args = tuple(arg.decode("latin-1") if isinstance(arg, bytes) else arg for arg in args)
        if not _json_safe(args):
            args, bytes_args = None, []
    attrs: dict[str, Any] = {}
    for name, value in getattr(exc, "__dict__", {}).items():
        if name.startswith("__"):  # durable's own marks (__durable_error__), dunders
            continue
        if _json_safe(value):
            attrs[name] = value
    if isinstance(exc, OSError):
        for name in _OSERROR_ATTRS:
            value = getattr(exc, name, None)
            if value is not None and _json_safe(value):
                attrs[name] = value
    cause = exc.__cause__
    return ErrorInfo(
        type=f"{kind.__module__}.{kind.__qualname__}",
        message=message_of(exc),
        traceback="".join(tb.format_exception(exc)) if traceback else None,
        args=args,
        attrs=attrs or None,
        bytes_args=tuple(bytes_args) or None,
        exceptions=exceptions,
        cause=(
            _record(cause, traceback=False, within=within)
            if cause is not None and id(cause) not in within
            else None
        ),
    )


#: The characters of an error's message a log line carries (see :func:`logged`).
LOGGED_MESSAGE = 2000


def logged(message: str) -> str:
    """An error's message as a log line carries it: whole up to :data:`LOGGED_MESSAGE`
    characters, else cut there and saying how long it was (the record in the database keeps
    it whole; a message of megabytes made a log line of megabytes)."""
    if len(message) <= LOGGED_MESSAGE:
        return message
    return f"{message[:LOGGED_MESSAGE]}... ({len(message)} characters)"


def message_of(exc: BaseException) -> str:
    """``str(exc)``; if that raises (a ``__str__`` that reads an attribute the exception never
    got), a message that says so, so that the failure is still recorded."""
    try:
        return str(exc)
    except Exception as broken:
        return (
            f"<str() of this {type(exc).__qualname__} raised "
            f"{type(broken).__qualname__}: {message_of(broken)}>"
        )


def rebuild_exception(error: ErrorInfo) -> BaseException:
    """The recorded exception, as an instance of its own class whenever that class is found, so
    that a replay takes the ``except`` (or ``except*``) it took when the step failed: built from
    its arguments, or, when its constructor takes others (``Declined(order_id, code)``, or
    SQLAlchemy's ``IntegrityError``), made without calling it, with the recorded ``args``;
    then given its recorded attributes (:attr:`ErrorInfo.attrs`) and its ``__cause__``. An
    exception group is rebuilt with its exceptions, each rebuilt as this does. Otherwise a
    :class:`~durable.errors.StepError` carrying the record.

    The class is looked up among the modules this process has already imported (the worker
    that replays a workflow has imported the classes its ``except`` clauses name): reading a
    record imports nothing, so a row in the database cannot make a process import code. A
    class of a module not imported here is not found."""
    return _rebuild_record(error, member=False)


def _rebuild_record(error: ErrorInfo, *, member: bool) -> BaseException:
    """:func:`rebuild_exception`; a ``member`` (of a group, or a cause) may be any
    ``BaseException`` (a ``KeyboardInterrupt`` inside a ``BaseExceptionGroup``), the recorded
    exception itself an ``Exception`` or an exception group."""
    kind = _find_exception_class(error.type)
    if kind is not None and (
        member or issubclass(kind, Exception) or issubclass(kind, BaseExceptionGroup)
    ):
        rebuilt = _rebuilt(kind, error)
        if rebuilt is not None:
            return rebuilt
    return StepError(error)


def _find_exception_class(path: str) -> type[BaseException] | None:
    """The exception class ``module.QualName`` (the qualified name may be nested:
    ``module.Outer.Inner``) names, among the modules already imported; None if it is not
    there."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest module name imported
        obj: Any = sys.modules.get(".".join(parts[:split]))
        if obj is None:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        if isinstance(obj, type) and issubclass(obj, BaseException):
            return obj
        return None
    return None


def _constructed(
    kind: type[BaseException], args: tuple[Any, ...], error: ErrorInfo, *, bare: bool = False
) -> BaseException | None:
    """``kind(*args)`` (``bare``: made without calling its ``__init__``) with the recorded
    attributes set; None if it cannot be made."""
    made: BaseException
    try:
        if bare:
            made = kind.__new__(kind, *args)
            made.args = args
        else:
            made = kind(*args)
    except Exception:
        return None
    for name, value in (error.attrs or {}).items():
        try:
            setattr(made, name, value)
        except Exception:  # a read-only property, slots: left as the class makes it
            continue
    return made


def _rebuilt(kind: type[BaseException], error: ErrorInfo) -> BaseException | None:
    args: tuple[Any, ...] = error.args if error.args is not None else (error.message,)
    if error.bytes_args:
        args = tuple(
            arg.encode("latin-1") if i in error.bytes_args and isinstance(arg, str) else arg
            for i, arg in enumerate(args)
        )
    if error.exceptions is not None and issubclass(kind, BaseExceptionGroup):
        members = [_rebuild_record(member, member=True) for member in error.exceptions]
        args = (args[0] if args else error.message, members)
    rebuilt = _constructed(kind, args, error)
    if rebuilt is None or message_of(rebuilt) != error.message:
        # its constructor takes other arguments, or builds its message from them (it would
        # build it again from the message: "42: declined: declined"): made without it, as
        # unpickling does, unless that reads less like the exception recorded
        bare = _constructed(kind, args, error, bare=True)
        if bare is not None and (rebuilt is None or message_of(bare) == error.message):
            rebuilt = bare
    if rebuilt is None:
        return None
    if error.cause is not None:
        rebuilt.__cause__ = _rebuild_record(error.cause, member=True)
    rebuilt.__durable_error__ = error  # type: ignore[attr-defined]
    return rebuilt
