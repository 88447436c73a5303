"""An execution as its caller sees it: the checked options of an enqueue
(:class:`EnqueueOptions`; a batch's rows, :class:`Enqueue` and :func:`plan_enqueue_many`), the
record and task that start it (:func:`create_execution`, many: :func:`create_executions`), and the
result or exception its stored outcome becomes (:func:`outcome`, :func:`outcome_error`).

:class:`~durable.Client` and :class:`~durable.Runtime` both use these; they are importable from
:mod:`durable.client` too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from durable import telemetry
from durable.backends.base import PersistentBackend
from durable.errors import (
    InvalidArgumentError,
    SerializationError,
    StepError,
    WorkflowCancelledError,
    WorkflowDeadLetteredError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    rebuild_exception,
)
from durable.gcpause import collector_paused
from durable.models import TaskSpec, WorkflowInfo, WorkflowSnapshot, WorkflowStatus
from durable.validation import (
    check_delay,
    check_duration,
    check_id,
    check_int,
    check_labels,
    check_name,
    check_optional_id,
    check_positive_int,
    check_run_after,
)
from durable.workflow import Workflow

#: The client's logger: an execution recorded here is logged as the client's.
log = logging.getLogger("durable.client")

#: The attempts an execution enqueued by name gets when ``max_attempts`` is not given (the
#: default :class:`~durable.RetryPolicy`'s; the workflow's own policy is not known by name).
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """How an execution is queued (see :meth:`Client.enqueue`)."""

    idempotency_key: str | None = None
    priority: int = 0
    run_after: datetime | None = None
    delay: timedelta | None = None
    max_attempts: int | None = None
    queue: str | None = None
    timeout: timedelta | None = None
    """The start's own timeout (it replaces the workflow's ``timeout``), or None."""
    deadline: datetime | None = None
    """An absolute deadline given at the start (or inherited from a parent), or None."""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The execution's own labels (checked); a child's are merged over its parent's by the
    backend."""
    partition_key: str | None = None
    """The partition of a queue with limits (see :mod:`durable.queues`), or None."""
    debounce: timedelta | None = None
    """Debouncing (see :func:`check_debounce_arguments`): the quiet time a burst of enqueues
    with one ``debounce_key`` waits for after its last call, or None."""
    debounce_key: str | None = None
    """The burst's key (with ``debounce``), per workflow name, or None."""


def check_enqueue_arguments(
    fn: Any,
    *,
    workflow_id: Any,
    idempotency_key: Any,
    priority: Any,
    run_after: Any,
    delay: Any,
    max_attempts: Any,
    queue: Any,
    timeout: Any = None,
    deadline: Any = None,
    labels: Any = None,
) -> timedelta | None:
    """Check the arguments of an enqueue (in this order; nothing is written before), and return
    the delay as a timedelta. ``timeout`` and ``deadline``, when given, are checked with
    :func:`check_timeouts`.

    :raises InvalidArgumentError: one of them is of the wrong type or out of range.
    """
    if isinstance(fn, str):
        check_name(fn, "the workflow name")
    check_optional_id(workflow_id, "workflow_id")
    check_optional_id(idempotency_key, "idempotency_key")
    check_int(priority, "priority")
    if run_after is not None:
        check_run_after(run_after)
    wait = None if delay is None else check_delay(delay)
    if max_attempts is not None:
        check_positive_int(max_attempts, "max_attempts")
    if queue is not None:
        check_name(queue, "queue")
    check_timeouts(timeout, deadline)
    check_labels(labels)
    return wait


def check_debounce_arguments(
    debounce: Any,
    debounce_key: Any,
    *,
    workflow_id: Any,
    idempotency_key: Any,
    run_after: Any,
    delay: Any,
) -> timedelta | None:
    """Check an enqueue's debouncing: ``debounce`` (a positive ``timedelta`` or number of
    seconds) and ``debounce_key`` (an id) come together, and without ``workflow_id``,
    ``idempotency_key``, ``run_after`` or ``delay`` (a burst's execution has a new id, and is
    due ``debounce`` after the last call). Returns the debounce as a timedelta (None: no
    debouncing).

    :raises InvalidArgumentError: one of them is wrong, named.
    """
    if debounce is None and debounce_key is None:
        return None
    if debounce is None:
        raise InvalidArgumentError("debounce_key needs debounce (the quiet time of a burst)")
    if debounce_key is None:
        raise InvalidArgumentError("debounce needs a debounce_key (which calls form a burst)")
    wait = check_duration(debounce, "debounce")
    check_id(debounce_key, "debounce_key")
    for given, what in (
        (workflow_id, "workflow_id"),
        (idempotency_key, "idempotency_key"),
        (run_after, "run_after"),
        (delay, "delay"),
    ):
        if given is not None:
            raise InvalidArgumentError(
                f"debounce cannot be combined with {what} (a burst's execution gets a new id "
                "and is due debounce after the burst's last call)"
            )
    return wait


def check_timeouts(timeout: Any, deadline: Any) -> timedelta | None:
    """Check a start's ``timeout`` (None, or a positive ``timedelta`` or number of seconds)
    and ``deadline`` (None, or a timezone-aware ``datetime``); return the timeout as a
    timedelta.

    :raises InvalidArgumentError: either is of the wrong type or out of range (named).
    """
    if deadline is not None:
        check_run_after(deadline, "deadline")
    return None if timeout is None else check_duration(timeout, "timeout")


def enqueue_options(
    target: Workflow[Any, Any] | str,
    *,
    idempotency_key: str | None,
    priority: int,
    run_after: datetime | None,
    wait: timedelta | None,
    max_attempts: int | None,
    queue: str | None,
    timeout: float | timedelta | None = None,
    deadline: datetime | None = None,
    labels: Mapping[str, str] | None = None,
) -> EnqueueOptions:
    """The options of an enqueue whose arguments are checked (:func:`check_enqueue_arguments`);
    ``max_attempts`` defaults to the workflow's policy (3 for a workflow known by name only).

    :raises InvalidArgumentError: both ``run_after`` and a delay are given.
    """
    if wait is not None and run_after is not None:
        raise InvalidArgumentError("give run_after or delay, not both")
    if max_attempts is None:
        max_attempts = (
            target.retry.max_attempts if isinstance(target, Workflow) else DEFAULT_MAX_ATTEMPTS
        )
    return EnqueueOptions(
        idempotency_key=idempotency_key,
        priority=priority,
        run_after=run_after,
        delay=wait,
        max_attempts=max_attempts,
        queue=queue,
        timeout=check_timeouts(timeout, deadline),
        deadline=deadline,
        labels=check_labels(labels),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckedOptions:
    """An enqueue's options, checked (:func:`check_enqueue_arguments`), as one enqueue
    (:class:`CheckedEnqueue`) and one row of a batch (:class:`PlannedEnqueue`) both hold them;
    :meth:`options` builds the :class:`EnqueueOptions` for the resolved workflow."""

    idempotency_key: str | None
    priority: int
    run_after: datetime | None
    wait: timedelta | None
    max_attempts: int | None
    queue: str | None
    timeout: float | timedelta | None = None
    deadline: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def options(self, target: Workflow[Any, Any] | str) -> EnqueueOptions:
        """The options for ``target`` (the resolved workflow, whose policy gives the default
        ``max_attempts``).

        :raises InvalidArgumentError: both ``run_after`` and a delay are given.
        """
        return enqueue_options(
            target,
            idempotency_key=self.idempotency_key,
            priority=self.priority,
            run_after=self.run_after,
            wait=self.wait,
            max_attempts=self.max_attempts,
            queue=self.queue,
            timeout=self.timeout,
            deadline=self.deadline,
            labels=self.labels,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckedEnqueue(CheckedOptions):
    """The options of one enqueue, checked before anything is written (:meth:`check`), shared
    by :meth:`durable.Client.enqueue`, :meth:`durable.Runtime.enqueue` and
    :func:`durable.enqueue_in`, with what a batch's row has not: partitions and debouncing."""

    workflow_id: str | None
    partition_key: str | None
    debounce: timedelta | None
    debounce_key: str | None

    @classmethod
    def check(
        cls,
        fn: Any,
        *,
        workflow_id: Any = None,
        idempotency_key: Any = None,
        priority: Any = 0,
        run_after: Any = None,
        delay: Any = None,
        max_attempts: Any = None,
        queue: str | None = None,
        timeout: Any = None,
        deadline: Any = None,
        labels: Any = None,
        partition_key: Any = None,
        debounce: Any = None,
        debounce_key: Any = None,
    ) -> CheckedEnqueue:
        """Check an enqueue's arguments, in the order of the signature (``queue`` is already a
        name: see :func:`durable.queues.queue_name`).

        :raises InvalidArgumentError: one of them is of the wrong type or out of range, or
            debouncing is combined with what it excludes (see
            :func:`check_debounce_arguments`); the message names it.
        """
        if isinstance(fn, Workflow):
            given = {
                "workflow_id": workflow_id is not None,
                "idempotency_key": idempotency_key is not None,
                "priority": priority != 0,
                "run_after": run_after is not None,
                "delay": delay is not None,
                "max_attempts": max_attempts is not None,
                "queue": queue is not None,
                "timeout": timeout is not None,
                "deadline": deadline is not None,
                "labels": labels is not None,
                "partition_key": partition_key is not None,
                "debounce": debounce is not None,
                "debounce_key": debounce_key is not None,
            }
            clash = sorted(n for n, was in given.items() if was and n in fn.keyword_parameters())
            if clash:
                raise InvalidArgumentError(
                    f"{', '.join(clash)}: workflow {fn.name!r} has a parameter of that name, "
                    "and enqueue takes it as its own option, not as the workflow's argument: "
                    "pass the argument positionally, or as durable.Enqueue(kwargs={...}) to "
                    "enqueue_many"
                )
        if partition_key is not None:
            check_name(partition_key, "partition_key")
        wait = check_enqueue_arguments(
            fn,
            workflow_id=workflow_id,
            idempotency_key=idempotency_key,
            priority=priority,
            run_after=run_after,
            delay=delay,
            max_attempts=max_attempts,
            queue=queue,
            timeout=timeout,
            deadline=deadline,
            labels=labels,
        )
        quiet = check_debounce_arguments(
            debounce,
            debounce_key,
            workflow_id=workflow_id,
            idempotency_key=idempotency_key,
            run_after=run_after,
            delay=delay,
        )
        return cls(
            workflow_id=workflow_id,
            idempotency_key=idempotency_key,
            priority=priority,
            run_after=run_after,
            wait=wait,
            max_attempts=max_attempts,
            queue=queue,
            timeout=timeout,
            deadline=deadline,
            labels={} if labels is None else labels,
            partition_key=partition_key,
            debounce=quiet,
            debounce_key=debounce_key if quiet is not None else None,
        )

    def options(self, target: Workflow[Any, Any] | str) -> EnqueueOptions:
        """The enqueue's options for ``target``, its partition and debouncing included.

        :raises InvalidArgumentError: both ``run_after`` and a delay are given.
        """
        options = CheckedOptions.options(self, target)  # (no bare super() in a slots class)
        if self.partition_key is None and self.debounce is None:
            return options
        return dataclasses.replace(
            options,
            partition_key=self.partition_key,
            debounce=self.debounce,
            debounce_key=self.debounce_key,
        )


async def resolve_deadline(
    backend: PersistentBackend,
    wf: Workflow[Any, Any] | str,
    opts: EnqueueOptions,
    now: datetime | None = None,
) -> EnqueueOptions:
    """``opts`` with its deadline resolved: the earlier of the given ``deadline`` and the
    store's clock now plus the timeout (the start's ``timeout``, else the workflow's own, when
    the workflow is given decorated). Reads :meth:`~PersistentBackend.now` (unless ``now`` is
    given) only when there is a timeout."""
    if _timeout_of(wf, opts) is None:
        return opts
    return with_deadline(wf, opts, now or await backend.now())


async def _existing(backend: PersistentBackend, instance_id: str) -> WorkflowInfo | None:
    """The execution ``instance_id``, or None if there is none."""
    try:
        return await backend.get_workflow(instance_id)
    except WorkflowNotFoundError:
        return None


def _timeout_of(wf: Workflow[Any, Any] | str, opts: EnqueueOptions) -> timedelta | None:
    """The start's timeout, else the workflow's own (when the workflow is given decorated)."""
    if opts.timeout is not None:
        return opts.timeout
    return wf.timeout if isinstance(wf, Workflow) else None


def with_deadline(
    wf: Workflow[Any, Any] | str, opts: EnqueueOptions, now: datetime
) -> EnqueueOptions:
    """``opts`` with its deadline resolved at ``now`` (see :func:`resolve_deadline`)."""
    timeout = _timeout_of(wf, opts)
    if timeout is None:
        return opts
    limit = now + timeout
    deadline = limit if opts.deadline is None else min(limit, opts.deadline)
    return dataclasses.replace(opts, timeout=None, deadline=deadline)


def not_a_workflow(fn: Any) -> InvalidArgumentError:
    """The error for something given as a workflow that is neither a workflow nor a name."""
    return InvalidArgumentError(
        f"{getattr(fn, '__qualname__', fn)!r} is not a durable workflow: decorate it with "
        "@durable.workflow"
    )


def outcome(info: WorkflowInfo) -> Any:
    """The stored result of a finished execution, or its error raised."""
    if info.status is WorkflowStatus.SUCCEEDED:
        return info.output
    raise outcome_error(info)


def outcome_error(info: WorkflowInfo) -> BaseException:
    """The exception a caller sees for an execution that did not succeed."""
    if info.status is WorkflowStatus.CANCELLED:
        reason = f": {info.error.message}" if info.error is not None else ""
        return WorkflowCancelledError(
            info.id, f"workflow {info.id!r} was cancelled{reason}", info.error
        )
    detail = f"{info.error.type}: {info.error.message}" if info.error else "no error recorded"
    if info.status is WorkflowStatus.DEAD_LETTER:
        return WorkflowDeadLetteredError(
            info.id, f"workflow {info.id!r} was dead-lettered: {detail}", info.error
        )
    if info.error is None:
        return WorkflowFailedError(info.id, f"workflow {info.id!r} failed: {detail}")
    rebuilt = rebuild_exception(info.error)
    if isinstance(rebuilt, StepError):
        return WorkflowFailedError(info.id, f"workflow {info.id!r} failed: {detail}", info.error)
    return rebuilt


def execution_record(
    wf: Workflow[Any, Any] | str,
    instance_id: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    opts: EnqueueOptions,
    *,
    parent_id: str | None = None,
    app_version: str | None = None,
) -> tuple[WorkflowSnapshot, TaskSpec]:
    """The record of a new execution of ``wf`` and the task that runs it (the id is checked;
    the arguments are not serialized here); it records ``wf``'s code version
    (:meth:`Workflow.code_version`, given ``app_version``), or ``app_version`` for a name."""
    name = wf if isinstance(wf, str) else wf.name
    check_id(instance_id, "workflow_id")  # derived ids are made to fit: this never fails
    queue = opts.queue or (wf.queue if isinstance(wf, Workflow) else "default")
    snapshot = WorkflowSnapshot.from_fields(
        {
            "id": instance_id,
            "name": name,
            "input": {"args": list(args), "kwargs": kwargs},
            "parent_id": parent_id,
            "queue": queue,
            "priority": opts.priority,
            "idempotency_key": opts.idempotency_key,
            "max_attempts": opts.max_attempts,
            "deadline": opts.deadline,
            "code_version": (
                wf.code_version(app_version) if isinstance(wf, Workflow) else app_version
            ),
            "labels": opts.labels,
            "trace_context": telemetry.current_trace_context(),
            "partition_key": opts.partition_key,
        }
    )
    task = TaskSpec(
        instance_id=instance_id,
        name=name,
        queue=queue,
        priority=opts.priority,
        run_after=opts.run_after,
        delay=opts.delay,
        partition_key=opts.partition_key,
    )
    return snapshot, task


async def create_execution(
    backend: PersistentBackend,
    wf: Workflow[Any, Any] | str,
    instance_id: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    parent_id: str | None = None,
    options: EnqueueOptions | None = None,
    app_version: str | None = None,
) -> WorkflowInfo:
    """Record an execution of ``wf`` and its task on ``backend`` (the arguments and options are
    checked); an existing id or idempotency key records nothing and returns what exists.

    :raises SerializationError: the arguments cannot be serialized (nothing is written).
    :raises InvalidArgumentError: the id or idempotency key belongs to another workflow, or
        ``wf`` (given decorated) cannot take the arguments (nothing is written).
    """
    if isinstance(wf, Workflow):
        try:
            wf.check_arguments(args, kwargs)
        except InvalidArgumentError:
            # ``run(wf, workflow_id=...)`` of an execution that exists drives it, whatever the
            # arguments given: only a new one must be able to take them
            existing = await _existing(backend, instance_id)
            if existing is None or existing.name != wf.name:
                raise
            return existing
    opts = await resolve_deadline(backend, wf, options or EnqueueOptions())
    snapshot, task = execution_record(
        wf, instance_id, args, kwargs, opts, parent_id=parent_id, app_version=app_version
    )
    name = snapshot.name
    try:
        backend.serializer.dumps(snapshot.input)
    except SerializationError as exc:
        raise SerializationError(
            f"the arguments of workflow {name!r} (id {instance_id!r}) cannot be serialized: {exc}"
        ) from exc
    if opts.debounce is not None and opts.debounce_key is not None:
        info, created = await backend.debounce_workflow(
            snapshot, task, opts.debounce_key, opts.debounce
        )
    else:
        info, created = await backend.create_workflow(snapshot, task=task)
    if info.id != instance_id and info.name != name:  # found by its idempotency key
        raise InvalidArgumentError(
            f"idempotency key {opts.idempotency_key!r} is already used by an execution of "
            f"workflow {info.name!r} (id {info.id!r}), not of {name!r}: an idempotency key "
            "names one execution of one workflow"
        )
    if info.name != name:
        raise InvalidArgumentError(
            f"workflow id {info.id!r} belongs to workflow {info.name!r}, not {name!r}"
        )
    if created:
        log.debug(
            "recorded workflow %s (%s)",
            instance_id,
            name,
            extra={"action": "workflow.created", "workflow_id": instance_id},
        )
    return info


class NamedQueue(Protocol):
    """A queue given by its declaration (:class:`durable.Queue`): the caller of
    :func:`plan_enqueue_many` names it (``queue_name``)."""

    @property
    def name(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Enqueue:
    """One execution of a batch given to :meth:`Client.enqueue_many`: its arguments, and
    optionally its own workflow, id, idempotency key and options (those left None take the
    batch's). ``Enqueue(args=(42,), idempotency_key="order-42")``,
    ``Enqueue(fn="mail.send.v1", kwargs={"to": "a@example.com"})``."""

    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    fn: Workflow[Any, Any] | str | None = None
    workflow_id: str | None = None
    idempotency_key: str | None = None
    priority: int | None = None
    run_after: datetime | None = None
    delay: float | timedelta | None = None
    max_attempts: int | None = None
    queue: str | NamedQueue | None = None
    timeout: float | timedelta | None = None
    deadline: datetime | None = None
    labels: Mapping[str, str] | None = None
    """The row's own labels, merged over the batch's ``labels``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedEnqueue(CheckedOptions):
    """One row of a checked batch (:func:`plan_enqueue_many`): the workflow as given (a name
    is resolved by the caller), its id if given, its arguments and its checked options."""

    fn: Workflow[Any, Any] | str
    workflow_id: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


#: The third-to-last hex digit of a version 4 UUID's variant byte, by the random digit it
#: replaces (the variant's two high bits are ``10``).
_VARIANT_DIGIT = {f"{n:x}": f"{(n & 0x3) | 0x8:x}" for n in range(16)}


def new_workflow_ids(count: int) -> Iterator[str]:
    """``count`` fresh workflow ids: random (version 4) UUIDs written as ``str(uuid.uuid4())``
    writes them, from one read of the system's random source for them all (a bulk enqueue
    would otherwise read it once a row)."""
    digits = os.urandom(16 * count).hex()
    for start in range(0, 32 * count, 32):
        h = digits[start : start + 32]
        yield f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:]}"


def ids_for(planned: Sequence[PlannedEnqueue]) -> list[str]:
    """The id of each row of a batch: its own if given, else a fresh one."""
    fresh = new_workflow_ids(sum(1 for row in planned if not row.workflow_id))
    return [row.workflow_id or next(fresh) for row in planned]


def execution_rows(
    planned: Sequence[PlannedEnqueue], targets: Sequence[Workflow[Any, Any] | str]
) -> list[tuple[Workflow[Any, Any] | str, str, Sequence[Any], dict[str, Any], EnqueueOptions]]:
    """The rows :func:`create_executions` records for a planned batch whose workflows are
    resolved (``targets``, one a row): each row's workflow, id (its own, else a fresh one),
    arguments and options. Built with the garbage collector paused (see :mod:`durable.gcpause`).
    """
    shared: dict[tuple[Any, ...], EnqueueOptions] = {}

    def options(target: Workflow[Any, Any] | str, row: PlannedEnqueue) -> EnqueueOptions:
        # the rows given as tuples share the batch's options: built once (they are frozen)
        if row.labels or row.idempotency_key is not None:
            return row.options(target)
        key: tuple[Any, ...] = (target, row.priority, row.run_after, row.wait)
        key += (row.max_attempts, row.queue, row.timeout, row.deadline)
        built = shared.get(key)
        if built is None:
            built = shared[key] = row.options(target)
        return built

    with collector_paused():
        return [
            (target, instance_id, row.args, row.kwargs, options(target, row))
            for target, row, instance_id in zip(targets, planned, ids_for(planned), strict=True)
        ]


def plan_enqueue_many(
    fn: Any,
    inputs: Any,
    *,
    priority: Any,
    run_after: Any,
    delay: Any,
    max_attempts: Any,
    queue: Any,
    timeout: Any = None,
    deadline: Any = None,
    labels: Any = None,
    queue_name: Callable[[Any], Any],
) -> list[PlannedEnqueue]:
    """Check a batch given to ``enqueue_many`` (every row, before anything is written) and
    return its rows in order. Each row is an :class:`Enqueue` or a tuple or list of positional
    arguments for ``fn``; an :class:`Enqueue`'s options left None take the batch's.
    ``queue_name`` turns a queue as given (the batch's, a row's) into its name.

    :raises InvalidArgumentError: ``inputs`` is not an iterable of rows, a row is neither an
        :class:`Enqueue` nor a tuple or list, a row has no workflow, or an option of the batch
        or of a row is of the wrong type or out of range; the message names the row
        (``inputs[3]``).
    """
    if isinstance(inputs, str | bytes | Mapping) or not isinstance(inputs, Iterable):
        raise InvalidArgumentError(
            "inputs must be an iterable of rows (tuples of arguments or durable.Enqueue), got "
            f"{type(inputs).__qualname__}"
        )
    if fn is not None and not isinstance(fn, str | Workflow):
        raise not_a_workflow(fn)
    queue = queue_name(queue)
    shared_wait = check_enqueue_arguments(
        fn,
        workflow_id=None,
        idempotency_key=None,
        priority=priority,
        run_after=run_after,
        delay=delay,
        max_attempts=max_attempts,
        queue=queue,
    )
    if shared_wait is not None and run_after is not None:
        raise InvalidArgumentError("give run_after or delay, not both")
    limits = (check_timeouts(timeout, deadline), deadline)
    shared_labels = check_labels(labels)
    # the application's generator of rows runs with the collector on (its objects may form
    # cycles); the planning of the rows, with it paused (see durable.gcpause)
    rows = inputs if isinstance(inputs, list | tuple) else list(inputs)
    planned = []
    with collector_paused():
        for index, row in enumerate(rows):
            try:
                one = _plan_row(
                    row,
                    fn,
                    priority,
                    run_after,
                    shared_wait,
                    max_attempts,
                    queue,
                    limits,
                    queue_name,
                )
                if isinstance(one.fn, Workflow):
                    one.fn.check_arguments(one.args, one.kwargs)
                if shared_labels:
                    one = dataclasses.replace(one, labels={**shared_labels, **one.labels})
                planned.append(one)
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"inputs[{index}]: {exc}") from exc
    return planned


def _plan_row(
    row: Any,
    fn: Workflow[Any, Any] | str | None,
    priority: int,
    run_after: datetime | None,
    wait: timedelta | None,
    max_attempts: int | None,
    queue: str | None,
    limits: tuple[timedelta | None, datetime | None],
    queue_name: Callable[[Any], Any],
) -> PlannedEnqueue:
    """One row of a batch: a tuple of arguments takes the batch's options; an
    :class:`Enqueue` its own where it gives them (``timeout`` and ``deadline`` each on its
    own), else the batch's (``limits``: the batch's timeout and deadline)."""
    if isinstance(row, tuple | list):
        if fn is None:
            raise InvalidArgumentError("no workflow: give enqueue_many's fn, or the row's fn")
        # the batch's options, checked once: nothing of the row's own to check
        return PlannedEnqueue(
            fn=fn,
            workflow_id=None,
            args=tuple(row),
            kwargs={},
            idempotency_key=None,
            priority=priority,
            run_after=run_after,
            wait=wait,
            max_attempts=max_attempts,
            queue=queue,
            timeout=limits[0],
            deadline=limits[1],
        )
    if not isinstance(row, Enqueue):
        raise InvalidArgumentError(
            "a row must be a tuple or list of the workflow's positional arguments, or a "
            f"durable.Enqueue, got {type(row).__qualname__}"
        )
    target = row.fn if row.fn is not None else fn
    if target is None:
        raise InvalidArgumentError("no workflow: give enqueue_many's fn, or the row's fn")
    if not isinstance(target, str | Workflow):
        raise not_a_workflow(target)
    if not isinstance(row.args, tuple | list):
        raise InvalidArgumentError(
            f"args must be a tuple or list, got {type(row.args).__qualname__}"
        )
    if not isinstance(row.kwargs, Mapping) or (
        row.kwargs and not all(isinstance(k, str) for k in row.kwargs)
    ):
        raise InvalidArgumentError("kwargs must be a mapping of str to arguments")
    own_queue = queue_name(row.queue)
    own_wait = check_enqueue_arguments(
        target,
        workflow_id=row.workflow_id,
        idempotency_key=row.idempotency_key,
        priority=0 if row.priority is None else row.priority,
        run_after=row.run_after,
        delay=row.delay,
        max_attempts=row.max_attempts,
        queue=own_queue,
    )
    own_timeout = check_timeouts(row.timeout, row.deadline)
    if own_wait is not None and row.run_after is not None:
        raise InvalidArgumentError("give run_after or delay, not both")
    own_time = row.run_after is not None or own_wait is not None
    return PlannedEnqueue(
        fn=target,
        workflow_id=row.workflow_id,
        args=tuple(row.args),
        kwargs=dict(row.kwargs),
        idempotency_key=row.idempotency_key,
        priority=priority if row.priority is None else row.priority,
        run_after=row.run_after if own_time else run_after,
        wait=own_wait if own_time else wait,
        max_attempts=max_attempts if row.max_attempts is None else row.max_attempts,
        queue=queue if own_queue is None else own_queue,
        timeout=limits[0] if own_timeout is None else own_timeout,
        deadline=limits[1] if row.deadline is None else row.deadline,
        labels=check_labels(row.labels),
    )


async def create_executions(
    backend: PersistentBackend,
    rows: Sequence[
        tuple[Workflow[Any, Any] | str, str, Sequence[Any], dict[str, Any], EnqueueOptions]
    ],
    *,
    parent_id: str | None = None,
    app_version: str | None = None,
) -> list[WorkflowInfo]:
    """Record executions and their tasks on ``backend`` in one call (the rows' arguments and
    options are checked): ``(workflow, id, args, kwargs, options)`` each; the headers in
    the rows' order (an existing id or key: the existing execution's).

    :raises SerializationError: a row's arguments cannot be serialized (nothing is written).
    :raises InvalidArgumentError: an id or key belongs to another workflow (nothing is
        written).
    """
    if not rows:
        return []
    # one read of the store's clock for the whole batch, if a row has a timeout
    timed = any(_timeout_of(wf, given) is not None for wf, _, _, _, given in rows)
    now = await backend.now() if timed else None
    batch: list[tuple[WorkflowSnapshot, TaskSpec | None]] = []
    with collector_paused():  # many objects, all kept: see durable.gcpause
        for wf, instance_id, args, kwargs, given in rows:
            opts = given if now is None else with_deadline(wf, given, now)
            # serialized once, by the backend, which names the row it cannot serialize
            snapshot, task = execution_record(
                wf, instance_id, args, kwargs, opts, parent_id=parent_id, app_version=app_version
            )
            batch.append((snapshot, task))
    results = await backend.create_workflows(batch)
    created = sum(1 for _, was_created in results if was_created)
    if created:
        log.debug(
            "recorded %d workflow(s) in one batch of %d",
            created,
            len(batch),
            extra={"action": "workflow.created_many", "count": created},
        )
    return [info for info, _ in results]
