"""The records a backend stores and returns: workflows, their steps, tasks and claims.

These are plain frozen dataclasses. Values (``input``, ``output`` of workflows and steps) are
Python values here; a backend turns them into text with its serializer and back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, Self, TypeVar

# ErrorInfo lives in durable.errors (the errors it is attached to need it, and that module is the
# lowest layer); it is a record too, so it is importable from here as well.
from durable.errors import ErrorInfo as ErrorInfo
from durable.errors import InvalidArgumentError

T = TypeVar("T")

#: The task id under which a workflow's own execution is claimed.
WORKFLOW_TASK = "workflow"
#: How long a suspended workflow's task waits when nothing wakes it: in practice, forever (every
#: backend schedules it this far ahead; the last of its fanned-out tasks wakes it).
UNTIL_WOKEN = timedelta(days=36500)


class WorkflowStatus(StrEnum):
    """Where a workflow execution stands."""

    PENDING = "pending"
    """Recorded, waiting for an executor (enqueued, scheduled, or waiting for a retry)."""
    RUNNING = "running"
    """An executor has started it; it may be mid-step, or its executor may have died."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD_LETTER = "dead_letter"
    """It failed on its last allowed attempt."""

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        WorkflowStatus.SUCCEEDED,
        WorkflowStatus.FAILED,
        WorkflowStatus.CANCELLED,
        WorkflowStatus.DEAD_LETTER,
    }
)


class StepStatus(StrEnum):
    """Where a step stands. Only ``pending`` steps may be recorded again."""

    PENDING = "pending"
    """Started but not finished: a child workflow or a dispatched task is awaited."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True, slots=True)
class StepRecord:
    """One step of a workflow execution, identified by its position in the workflow."""

    position: int
    name: str
    status: StepStatus = StepStatus.SUCCEEDED
    input: Any = None
    """The arguments, for a step handed to other workers (None for steps run in place)."""
    output: Any = None
    error: ErrorInfo | None = None
    child_workflow_id: str | None = None
    attempts: int = 1
    executor_id: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    """When the step ended. Left None for a final outcome, the backend sets it to the time it
    records the step; a pending step has none."""
    rerun: bool = False
    """Set on a failed step of a workflow that failed for good, when that failure ended the
    workflow's last attempt and nothing recorded after it depends on it: a redrive
    (:meth:`~durable.backends.PersistentBackend.requeue_workflow`) runs the step again instead
    of replaying its failure."""
    serialized_output: str | None = field(default=None, compare=False, repr=False)
    """``output`` as the backend's own serializer already wrote it (the runtime serializes a
    step's value once, to check that it round-trips), or None. A backend may store this text
    instead of serializing ``output`` again; it is never read back into a record."""


#: Each field's slot setter, in the order of StepRecord's fields (a field added, removed or moved
#: breaks the unpacking, or tests/test_records.py's comparison with the constructor)
(
    _set_position,
    _set_name,
    _set_status,
    _set_input,
    _set_output,
    _set_error,
    _set_child,
    _set_attempts,
    _set_executor,
    _set_started,
    _set_completed,
    _set_rerun,
    _set_serialized,
) = (getattr(StepRecord, f.name).__set__ for f in dataclasses.fields(StepRecord))


def new_step_record(
    position: int,
    name: str,
    status: StepStatus,
    output: Any,
    serialized_output: str | None,
    error: ErrorInfo | None,
    child_workflow_id: str | None,
    attempts: int,
    executor_id: str | None,
    started_at: datetime | None,
) -> StepRecord:
    """``StepRecord(...)`` of a step a workflow just ran (no ``input``, no ``completed_at``,
    not ``rerun``), equal to the constructor's, without its ``__init__``: a frozen dataclass
    sets each field through ``object.__setattr__``, which costs about 2 us a record (every
    step builds one); the slots' own setters cost a third of that."""
    record = object.__new__(StepRecord)
    _set_position(record, position)
    _set_name(record, name)
    _set_status(record, status)
    _set_input(record, None)
    _set_output(record, output)
    _set_error(record, error)
    _set_child(record, child_workflow_id)
    _set_attempts(record, attempts)
    _set_executor(record, executor_id)
    _set_started(record, started_at)
    _set_completed(record, None)
    _set_rerun(record, False)
    _set_serialized(record, serialized_output)
    return record


class _Fields:
    """A dataclass's fields as :meth:`WorkflowInfo.from_fields` checks and completes them."""

    __slots__ = ("defaults", "factories", "names", "required")

    def __init__(self, cls: type) -> None:
        fields = dataclasses.fields(cls)
        self.names = frozenset(f.name for f in fields)
        self.required = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        self.defaults = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
        self.factories: tuple[tuple[str, Callable[[], Any]], ...] = tuple(
            (f.name, f.default_factory)
            for f in fields
            if f.default_factory is not dataclasses.MISSING
        )


_FIELDS: dict[type, _Fields] = {}


@dataclass(frozen=True, kw_only=True)
class WorkflowInfo:
    """A workflow execution's header: everything but its steps."""

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> Self:
        """The record with ``values`` (by field name; a field not given takes its default),
        equal to ``cls(**values)`` but several times cheaper to build: the hot path builds a
        header or two for every execution it starts, finishes or enqueues, and a frozen
        dataclass's ``__init__`` sets each of these 25 fields through
        ``object.__setattr__``.

        :raises TypeError: a name is not a field of ``cls``, or a field without a default is
            missing (as ``cls(**values)`` would).
        """
        spec = _FIELDS.get(cls)
        if spec is None:
            spec = _FIELDS[cls] = _Fields(cls)
        given = values.keys()
        if not given <= spec.names or not spec.required <= given:
            unknown = sorted(set(given) - spec.names)
            missing = sorted(spec.required - set(given))
            raise TypeError(
                f"{cls.__qualname__}.from_fields: unknown fields {unknown}, missing {missing}"
            )
        record = object.__new__(cls)
        fields = record.__dict__
        if len(given) < len(spec.names):  # (all given: the rows a backend reads)
            fields.update(spec.defaults)
            for name, factory in spec.factories:
                if name not in given:
                    fields[name] = factory()
        fields.update(values)
        return record

    id: str
    name: str
    status: WorkflowStatus = WorkflowStatus.PENDING
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    parent_id: str | None = None
    executor_id: str | None = None
    queue: str = "default"
    priority: int = 0
    idempotency_key: str | None = None
    attempts: int = 0
    """The number of the current (or last) attempt: attempts that failed (the body raised) and
    the one running. An attempt that was interrupted (its executor died or lost its lease),
    handed back (a graceful shutdown, a database outage) or suspended (waiting for
    :func:`durable.map` items) is not counted again when it resumes. ``max_attempts`` limits
    it."""
    max_attempts: int | None = None
    """Attempts allowed before a failing execution is dead-lettered (None: no retries)."""
    interruptions: int = 0
    """How many times an attempt was interrupted before it ended: its executor died or lost its
    lease, and another one (or the same one, restarted) resumed it. Counted apart from failed
    attempts; the workflow's ``max_recoveries`` limits it (a crash loop is dead-lettered)."""
    version: int = 0
    """Optimistic lock: 0 for a snapshot never saved; every header update adds one."""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    deadline: datetime | None = None
    """When the execution is cancelled if it has not finished (on the store's clock), or None:
    set at its start from the workflow's ``timeout`` or the start's ``timeout`` / ``deadline``
    (see :meth:`~durable.backends.PersistentBackend.cancel_expired_workflows`)."""
    continuations: int = 0
    """How many earlier runs of this execution ended with :func:`durable.continue_as_new`: the
    current run's history starts empty, its input is the one the last run continued with."""
    code_version: str | None = None
    """The version of the code that started the execution (see :mod:`durable.versioning`):
    the workflow's ``version``, the runtime's ``app_version`` or a hash of the workflow's
    source; None when it was started by name by a client that does not have the code."""
    trace_context: str | None = None
    """The trace context of whoever enqueued the execution (W3C ``traceparent`` and
    ``tracestate`` as a JSON object), when OpenTelemetry was active there, else None: a
    worker's workflow span takes it as its parent (see :mod:`durable.telemetry`)."""
    partition_key: str | None = None
    """The execution's partition in a queue with ``partition_concurrency`` (given at enqueue;
    see :class:`durable.Queue`), kept so that a redrive or a fork runs in the same partition."""


@dataclass(frozen=True, kw_only=True)
class WorkflowSnapshot(WorkflowInfo):
    """A workflow execution's whole persisted state: its header and its steps by position."""

    steps: tuple[StepRecord, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Labels to store with a new workflow (``{"customer": "c-42"}``), written by
    :meth:`~durable.backends.PersistentBackend.create_workflow` and ``create_workflows`` only
    (merged over its parent's when ``parent_id`` is set), read back with
    :meth:`~durable.backends.PersistentBackend.get_labels`: snapshots read from the store carry
    none, so that loading a workflow to run it reads no label."""

    def header(self, **changes: Any) -> WorkflowInfo:
        """The snapshot without its steps (nor its labels), with ``changes`` (fields of
        :class:`WorkflowInfo` by name) applied.

        :raises TypeError: a change names no field of :class:`WorkflowInfo`.
        """
        values = self.__dict__.copy()
        del values["steps"], values["labels"]
        values.update(changes)
        return WorkflowInfo.from_fields(values)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskSpec:
    """A unit of claimable work to create: a workflow to run, or a step handed to any worker."""

    instance_id: str
    task_id: str = WORKFLOW_TASK
    name: str
    """What a worker must know to run it: the workflow name, or the step name."""
    queue: str = "default"
    priority: int = 0
    """Lower runs first; equal priorities run in creation order."""
    run_after: datetime | None = None
    """Not available before this time (None: at once, or after ``delay``)."""
    delay: timedelta | None = None
    """When ``run_after`` is None: not available until this long after it is created, by the
    backend's clock (the database's on PostgreSQL)."""
    partition_key: str | None = None
    """The partition of its queue (:attr:`QueueInfo.partition_concurrency`): at most that many
    of a partition's executions run at once, the oldest first. None: no partition."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AvailableTask:
    """A task as :meth:`PersistentBackend.find_available_tasks` sees it (which shows an expired
    claim as no claim), or as :meth:`PersistentBackend.get_task` reads it (as stored)."""

    instance_id: str
    """The workflow the task belongs to."""
    task_id: str
    """The task's id within its workflow (:data:`WORKFLOW_TASK` for the workflow's own)."""
    name: str
    """What a worker must know to run it: the workflow's or the step's name."""
    queue: str
    priority: int
    """Lower runs first."""
    run_after: datetime
    """When it is (or was) due, on the store's clock (aware)."""
    claimed_by: str | None
    """Who holds a live claim on it. From :meth:`~PersistentBackend.find_available_tasks`:
    None when nobody does, and also when a claim expired (nobody took it over, but it is no
    longer held: any worker may claim it); so it is only ever the caller itself. From
    :meth:`~PersistentBackend.get_task`: the stored holder, even of an expired claim."""
    claim_expires_at: datetime | None
    """When that claim expires, on the store's clock; None exactly when ``claimed_by`` is."""
    attempts: int
    """How many times the task has been claimed (0: never)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskClaim:
    """A claim on a task: only ``worker_id`` may act on the task until ``expires_at``."""

    instance_id: str
    task_id: str
    worker_id: str
    expires_at: datetime
    """``ttl`` after the claim, on the store's clock (:meth:`PersistentBackend.now`): the claim
    is held while ``now() < expires_at``; afterwards fenced writes under it fail until the
    holder renews it (if nobody took the task over)."""
    attempts: int
    """How many times the task has been claimed, this claim included (a re-entrant claim by the
    holder does not count again)."""
    name: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class RegisteredWorkflow:
    """A workflow name as the database knows it: served by some worker, enabled or not."""

    name: str
    enabled: bool = True
    """Workers claim executions of enabled names only."""
    description: str | None = None
    updated_at: datetime | None = None


#: An executor silent for longer than this many of its own heartbeat intervals is stale.
STALE_AFTER_HEARTBEATS = 3

#: The heartbeat interval assumed for executors recorded before intervals were stored.
DEFAULT_HEARTBEAT_INTERVAL = 10.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecutorInfo:
    """A runtime process as its heartbeats describe it."""

    id: str
    hostname: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    stale: bool
    """No heartbeat within the staleness threshold, and not stopped: presumed dead. Its leases
    expire and any worker takes its work over. The threshold is :data:`STALE_AFTER_HEARTBEATS`
    of the executor's own ``heartbeat_interval`` unless the caller gives one."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    """Seconds between this executor's heartbeats, as it started with."""
    incarnation: str = ""
    """Which start of which process holds the id (opaque; a new one at every start)."""


def is_stale(executor: ExecutorInfo, now: datetime, stale_after: timedelta | None = None) -> bool:
    """Whether a running ``executor`` has been silent for longer than ``stale_after`` (default:
    :data:`STALE_AFTER_HEARTBEATS` of its own heartbeat interval) at ``now``."""
    if executor.stopped_at is not None:
        return False
    if stale_after is None:
        stale_after = timedelta(seconds=STALE_AFTER_HEARTBEATS * executor.heartbeat_interval)
    return executor.heartbeat_at < now - stale_after


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next one (None: no more)."""

    items: list[T] = field(default_factory=list)
    next_cursor: str | None = None

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def as_status_set(
    status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None,
) -> frozenset[WorkflowStatus] | None:
    """Normalize a status filter; raises InvalidArgumentError naming an unknown status."""
    if status is None:
        return None
    if isinstance(status, str):
        items: list[Any] = [status]
    elif isinstance(status, Iterable) and not isinstance(status, bytes | Mapping):
        items = list(status)
    else:
        raise InvalidArgumentError(
            f"status must be a WorkflowStatus, its name or a sequence of them, got "
            f"{type(status).__qualname__} {status!r}"
        )
    try:
        return frozenset(WorkflowStatus(s) for s in items)
    except ValueError:
        valid = ", ".join(s.value for s in WorkflowStatus)
        raise InvalidArgumentError(
            f"unknown workflow status in {items!r}: valid ones are {valid}"
        ) from None


def ttl_seconds(ttl: timedelta | float) -> float:
    """A lease duration in seconds; raises InvalidArgumentError unless it is positive."""
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if not seconds > 0:
        raise InvalidArgumentError(f"a claim ttl must be positive, got {ttl!r}")
    return seconds


# -- messages in (durable.send / durable.recv) and timers by key ---------------------------------

#: The name a receive is recorded under in a workflow's history: pending while the workflow
#: waits (its input the topic, its output the deadline as ISO 8601, or None without one);
#: succeeded with the message's value (None on a timeout) once it returned.
RECV_STEP = "durable.recv"
#: The name a sleep is recorded under in a workflow's history (:meth:`Runtime.list_steps
#: <durable.Runtime.list_steps>`): pending while the workflow sleeps, its output the wake-up time
#: (ISO 8601, on the store's clock); succeeded once it woke. (``durable.timers.SLEEP_STEP``.)
SLEEP_STEP = "durable.sleep"
#: The name a send from inside a workflow is recorded under (its output None).
SEND_STEP = "durable.send"
#: The name a started timer is recorded under (its input the key, its output the time it fires).
START_TIMER_STEP = "durable.start_timer"
#: The name a cancelled timer is recorded under (its input the key, its output whether a timer
#: that had not fired was cancelled).
CANCEL_TIMER_STEP = "durable.cancel_timer"


@dataclass(frozen=True, kw_only=True)
class Message:
    """A message sent to a workflow (``send``), or delivered by one of its timers."""

    workflow_id: str
    topic: str
    value: Any = None
    seq: int
    """Its place in the order of sending (increasing per store): a topic's messages are
    received in this order."""
    sent_at: datetime
    deliver_at: datetime
    """When it may be received: when it was sent, or when its timer fires."""
    idempotency_key: str | None = None
    timer: bool = False
    """True for a timer's message (its topic is the timer's key)."""
    received_at: datetime | None = None
    received_position: int | None = None
    """The position of the receive that took it in the workflow's history."""


class ReceiveStatus(StrEnum):
    """How :meth:`~durable.backends.PersistentBackend.receive_message` ended."""

    RECEIVED = "received"
    TIMED_OUT = "timed_out"
    WAITING = "waiting"


@dataclass(frozen=True, kw_only=True)
class Receipt:
    """The outcome of :meth:`~durable.backends.PersistentBackend.receive_message`."""

    status: ReceiveStatus
    message: Message | None = None
    """The message received (status ``received``)."""
    wake_at: datetime | None = None
    """Status ``waiting``: when the workflow is due again if no message wakes it first (its
    deadline, or a timer's message on the topic), None when only a message wakes it."""
    now: datetime
    """The store's clock during the operation."""


@dataclass(frozen=True)
class EventRecord:
    """The latest value a workflow set for an event key (``durable.set_event``), as
    :meth:`~durable.backends.PersistentBackend.get_event` returns it."""

    key: str
    value: Any
    position: int
    """The history position of the ``durable.set_event`` step that set it."""
    updated_at: datetime


@dataclass(frozen=True)
class StreamChunk:
    """Values of a workflow's stream, as
    :meth:`~durable.backends.PersistentBackend.read_stream` returns them: ``values`` are those
    at offsets ``offset``, ``offset + 1``, ... in the order they were written."""

    values: tuple[Any, ...]
    offset: int
    closed: bool
    """The stream was closed (``durable.close_stream``): it gets no more values."""
    ended: bool
    """No value will ever be at :attr:`next_offset` or after: the stream was closed, or its
    workflow had finished, when it was read, and ``values`` reach its end."""

    @property
    def next_offset(self) -> int:
        """The offset to read from next."""
        return self.offset + len(self.values)


class MissedTicks(StrEnum):
    """What a schedule does with ticks that passed more than
    :data:`~durable.models.MISSED_AFTER` ago while no scheduler ran (downtime). A tick less
    late than that is *late*, not missed, and always runs."""

    SKIP = "skip"
    """Missed ticks are dropped: only late ones and the next ones run (cron's own behaviour)."""
    LATEST = "latest"
    """The most recent missed tick runs once in place of all of them (unless a late one runs)."""
    ALL = "all"
    """Every missed tick runs, oldest first, at most ``max_catchup`` of them (the most recent)."""


#: How late a tick may be and still run whatever the schedule's :class:`MissedTicks` policy.
MISSED_AFTER = timedelta(seconds=60)


@dataclass(frozen=True, kw_only=True)
class ScheduleInfo:
    """A cron schedule as stored: which workflow it starts, with what, and when next."""

    name: str
    workflow: str
    """The name of the workflow each tick enqueues."""
    cron: str
    timezone: str
    """The IANA zone the cron expression is read in (``"UTC"``, ``"Europe/Paris"``)."""
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    missed: MissedTicks = MissedTicks.SKIP
    max_catchup: int = 10
    queue: str = "default"
    priority: int = 0
    paused: bool = False
    declared: bool = False
    """Declared in code (:func:`durable.scheduled`), stored when a runtime started. A runtime
    whose registry serves the workflow deletes such a schedule once its code no longer declares
    it; a schedule created from a client (False) is kept until deleted."""
    next_run_at: datetime | None = None
    """The next tick (None: the expression has no future tick)."""
    last_tick_at: datetime | None = None
    """The last tick a scheduler enqueued (triggers excluded)."""
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class QueueDepth:
    """A queue's unfinished executions, counted exactly
    (:meth:`~durable.backends.PersistentBackend.queue_depths`)."""

    queue: str
    pending: int
    """Executions waiting (pending: new, retried, sleeping, handed back)."""
    running: int
    oldest_pending: datetime | None
    """When the oldest pending one was created (None: none is pending)."""


@dataclass(frozen=True, kw_only=True)
class QueueInfo:
    """A queue's limits as stored (``durable_queues``): every worker's claim reads them, so a
    change takes effect at the next claim. None means no such limit; a queue whose limits are
    all None is claimed like a queue that is not stored at all (the fast claim)."""

    name: str
    concurrency: int | None = None
    """At most this many of the queue's executions run at once, across every worker."""
    worker_concurrency: int | None = None
    """At most this many of the queue's executions run at once on one executor."""
    rate_limit: int | None = None
    """At most this many starts in any window of :attr:`rate_period` seconds."""
    rate_period: float | None = None
    """The rate limit's window, in seconds (set exactly when :attr:`rate_limit` is)."""
    partition_concurrency: int | None = None
    """At most this many executions of one ``partition_key`` run at once (oldest first)."""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def limited(self) -> bool:
        """Whether any limit is set (the claim then takes the limited path)."""
        return any(
            v is not None
            for v in (
                self.concurrency,
                self.worker_concurrency,
                self.rate_limit,
                self.partition_concurrency,
            )
        )


# -- the change feed (Client.events) -------------------------------------------------------------


class ChangeKind(StrEnum):
    """What a :class:`ChangeEvent` says happened."""

    CREATED = "created"
    """The execution was recorded (enqueued, scheduled, started as a child, forked)."""
    STARTED = "started"
    """An attempt began (a later attempt replaces an earlier one's event: see ChangeEvent)."""
    STEP_RECORDED = "step_recorded"
    """A step's outcome was recorded (``step_status`` succeeded or failed)."""
    STEP_PENDING = "step_pending"
    """A step was recorded as pending: a child workflow or a fanned-out call is awaited."""
    SLEEPING = "sleeping"
    """A ``durable.sleep`` was recorded: the execution sleeps until the step's output time."""
    WAITING = "waiting"
    """A ``durable.recv`` found no message: the execution waits for one."""
    MESSAGE = "message"
    """A message was sent to the execution (``send``, or one of its timers)."""
    FINISHED = "finished"
    """The execution ended; ``status`` says how (succeeded, failed, cancelled, dead letter)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChangeEvent:
    """One state change of the change feed (``Client.events``), at its :attr:`position`.

    The feed is derived from the rows durable writes anyway: each row carries the position of
    the last change that wrote it. So an event is a row's *current* state: a step recorded
    pending and later succeeded shows once, as recorded, at the later position (a reader that
    read in between saw both); a workflow started again (a retry, a crash's resumption) moves
    its ``started`` event to the new position. Rows deleted (retention, ``delete``) take their
    events with them.
    """

    position: int
    """Its place in the feed's one global order: pass the last one read as ``after`` to read
    on. Opaque: compare positions, do not compute with them (on PostgreSQL they exceed 64 bits:
    the writing transaction's id times 2**64 plus a sequence value)."""
    kind: ChangeKind
    workflow_id: str
    workflow_name: str
    time: datetime | None
    """When it happened, as the row records it (created_at, started_at, a step's completed or
    started time, a message's sent_at, completed_at)."""
    status: str | None = None
    """The workflow's status (created, started, finished) or the step's (step events)."""
    step_position: int | None = None
    """The step's position in the workflow's history (step events)."""
    step_name: str | None = None
    """The step's name (step events), or the message's topic (message events)."""
