"""An execution as its caller sees it: the checked options of an enqueue
(:class:`EnqueueOptions`), the record and task that start it (:func:`create_execution`), and the
result or exception its stored outcome becomes (:func:`outcome`, :func:`outcome_error`).

:class:`~durable.Client` and :class:`~durable.Runtime` both use these; they are importable from
:mod:`durable.client` too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from durable.backends.base import PersistentBackend
from durable.errors import (
    InvalidArgumentError,
    SerializationError,
    StepError,
    WorkflowCancelledError,
    WorkflowDeadLetteredError,
    WorkflowFailedError,
    rebuild_exception,
)
from durable.models import TaskSpec, WorkflowInfo, WorkflowSnapshot, WorkflowStatus
from durable.validation import (
    check_delay,
    check_id,
    check_int,
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
) -> timedelta | None:
    """Check the arguments of an enqueue (in this order; nothing is written before), and return
    the delay as a timedelta.

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
    return wait


def enqueue_options(
    target: Workflow[Any, Any] | str,
    *,
    idempotency_key: str | None,
    priority: int,
    run_after: datetime | None,
    wait: timedelta | None,
    max_attempts: int | None,
    queue: str | None,
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
    )


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
        return WorkflowCancelledError(info.id, f"workflow {info.id!r} was cancelled")
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


async def create_execution(
    backend: PersistentBackend,
    wf: Workflow[Any, Any] | str,
    instance_id: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    *,
    parent_id: str | None = None,
    options: EnqueueOptions | None = None,
) -> WorkflowInfo:
    """Record an execution of ``wf`` and its task on ``backend`` (the arguments and options are
    checked); an existing id or idempotency key records nothing and returns what exists.

    :raises SerializationError: the arguments cannot be serialized (nothing is written).
    :raises InvalidArgumentError: the id or idempotency key belongs to another workflow.
    """
    name = wf if isinstance(wf, str) else wf.name
    check_id(instance_id, "workflow_id")  # derived ids are made to fit: this never fails
    opts = options or EnqueueOptions()
    queue = opts.queue or (wf.queue if isinstance(wf, Workflow) else "default")
    payload = {"args": list(args), "kwargs": kwargs}
    try:
        backend.serializer.dumps(payload)
    except SerializationError as exc:
        raise SerializationError(
            f"the arguments of workflow {name!r} (id {instance_id!r}) cannot be serialized: {exc}"
        ) from exc
    snapshot = WorkflowSnapshot(
        id=instance_id,
        name=name,
        input=payload,
        parent_id=parent_id,
        queue=queue,
        priority=opts.priority,
        idempotency_key=opts.idempotency_key,
        max_attempts=opts.max_attempts,
    )
    task = TaskSpec(
        instance_id=instance_id,
        name=name,
        queue=queue,
        priority=opts.priority,
        run_after=opts.run_after,
        delay=opts.delay,
    )
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
