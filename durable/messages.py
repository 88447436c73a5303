"""Messages in, and timers by key: ``durable.send`` / ``durable.recv`` and
``durable.start_timer`` / ``durable.cancel_timer`` inside a workflow.

Each call is a recorded position of the workflow's history, like a step:

* ``recv(topic, timeout)`` (:data:`~durable.models.RECV_STEP`): the backend, in one
  transaction fenced by the workflow's lease, either takes the topic's next message and records
  the receive as succeeded with its value (so a replay returns the same message, and a crash
  cannot separate the two), or records the receive as *pending* (its input the topic, its
  output the deadline, ISO 8601, or None) and hands the workflow back, due at the deadline or at
  a timer's message on the topic, whichever comes first; a send on the topic wakes it at once
  (see :meth:`~durable.backends.PersistentBackend.receive_message`). While it waits it holds no
  worker slot, thread or lease, as in a durable sleep (:mod:`durable.timers`). A replay that
  reaches the pending receive tries again: a message, the deadline passed (None), or wait on.
* ``send(workflow_id, topic, value)`` (:data:`~durable.models.SEND_STEP`): stored for the
  target, then recorded; a re-run after a crash between the two stores it once (its idempotency
  key is the caller's, or one derived from the sender and the position).
* ``start_timer(key, delay)`` / ``cancel_timer(key)``
  (:data:`~durable.models.START_TIMER_STEP`, :data:`~durable.models.CANCEL_TIMER_STEP`): a
  timer is a message on topic ``key`` deliverable ``delay`` from now (on the store's clock),
  written with its record in one transaction. Restarting a key replaces its timer; cancelling it
  before the workflow received its message means it is never received.

From outside a workflow, send with :meth:`durable.Client.send` (or :meth:`durable.Runtime.send`).
"""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any

from durable.context import ExecutionContext, StepGuard, current
from durable.errors import (
    CorruptRowError,
    DurableError,
    InvalidArgumentError,
    NonDeterminismError,
    SerializationError,
    WorkflowFinishedError,
    WorkflowNotFoundError,
)
from durable.models import (
    CANCEL_TIMER_STEP,
    RECV_STEP,
    SEND_STEP,
    START_TIMER_STEP,
    ReceiveStatus,
    StepRecord,
    StepStatus,
)
from durable.timers import suspended
from durable.validation import check_delay, check_id, check_name, check_optional_id, derived_id

_KEEP: Any = object()  # start_timer's value when none is given: the key


# -- receiving ---------------------------------------------------------------------------------


def recv(topic: str, timeout: timedelta | float | None = None) -> Coroutine[Any, Any, Any]:
    """Receive the next message sent to this workflow on ``topic``, in an async workflow:
    ``decision = await durable.recv("decision", timeout=timedelta(days=3))``.

    Messages of a topic are received in the order they were sent, each exactly once; one sent
    before the workflow waits (or before it started) is kept until received. Without a message,
    the workflow is handed back and holds no worker slot, thread or lease until a send on the
    topic wakes it, its timer on the topic fires, or ``timeout`` (a ``timedelta`` or seconds,
    judged on the store's clock from the first time this position is reached) passes: then
    the result is None. ``timeout=None`` waits for ever; 0 takes a message only if one is
    there. The receive is recorded with the message, so a replay returns the same one.

    A message whose value is None is received as None, like a timeout. Do not receive beside
    running steps (``asyncio.gather``): waiting releases the lease they need.

    :raises InvalidArgumentError: ``topic`` is not a non-empty str of at most 255 characters,
        or ``timeout`` is not None, a ``timedelta`` or a number of seconds (finite, not
        negative, at most 100 years).
    :raises DurableError: called outside a workflow, inside a step, or from a sync workflow
        (call :func:`recv_sync` there).
    """
    check_name(topic, "topic")
    wait = _timeout(timeout)
    ctx = _workflow_context("durable.recv()", is_async=True)
    return _recv(ctx, ctx.guard(RECV_STEP), topic, wait)


def recv_sync(topic: str, timeout: timedelta | float | None = None) -> Any:
    """:func:`recv` for sync workflows. When the workflow waits, its thread is given back too:
    the call does not return, and the workflow is replayed from its history when woken.

    :raises InvalidArgumentError: as :func:`recv`.
    :raises DurableError: called outside a workflow, inside a step, or from an async workflow.
    """
    check_name(topic, "topic")
    wait = _timeout(timeout)
    ctx = _workflow_context("durable.recv_sync()", is_async=False)
    guard = ctx.guard(RECV_STEP)  # taken in the workflow's thread, in order
    if guard.replayed:
        return guard.replay()
    return ctx.block_on(_recv(ctx, guard, topic, wait))


async def _recv(
    ctx: ExecutionContext, guard: StepGuard, topic: str, timeout: timedelta | None
) -> Any:
    _check_topic(ctx, guard, topic)
    if guard.replayed:
        return guard.replay()
    backend = ctx.runtime.backend
    await ctx.ensure_lease()
    pending = guard.pending
    if pending is not None:
        deadline = _recorded_deadline(ctx, pending.output, guard.position)
    elif timeout is not None:
        with ctx.checkpoint():
            deadline = await backend.now() + timeout
    else:
        deadline = None
    step = StepRecord(
        position=guard.position,
        name=RECV_STEP,
        status=StepStatus.PENDING,
        input=topic,
        output=None if deadline is None else deadline.isoformat(),
        attempts=1,
        executor_id=ctx.executor_id,
        started_at=pending.started_at if pending is not None else guard.started_at,
    )
    with ctx.checkpoint():
        receipt = await backend.receive_message(
            ctx.workflow_id, topic, worker_id=ctx.executor_id, step=step, deadline=deadline
        )
    if receipt.status is ReceiveStatus.WAITING:
        raise suspended(
            ctx,
            receipt.wake_at,
            receipt.now,
            action="workflow.recv",
            doing=f"waits for a message on {topic!r}",
            topic=topic,
        )
    value = receipt.message.value if receipt.message is not None else None
    guard.recorded = StepRecord(
        position=guard.position, name=RECV_STEP, output=value, executor_id=ctx.executor_id
    )
    guard.result = value
    return value


def _check_topic(ctx: ExecutionContext, guard: StepGuard, topic: str) -> None:
    """A receive replayed (or still waiting) at ``guard``'s position must be on the topic its
    history recorded there: one on another topic is code changed in flight (it would wait for
    ever on a topic nobody sends, while the message sent on the recorded one stays queued).

    :raises NonDeterminismError: the topics differ."""
    recorded = guard.recorded
    if recorded is None or not isinstance(recorded.input, str) or recorded.input == topic:
        return
    ctx.divergence = NonDeterminismError(
        f"workflow {ctx.workflow_id!r} ({ctx.workflow_name}) receives on topic {topic!r} at "
        f"position {guard.position}, but its history recorded a receive on topic "
        f"{recorded.input!r} there: the workflow's code changed while this execution was in "
        f"flight{ctx.versions_note()}"
    )
    raise ctx.divergence


def _recorded_deadline(ctx: ExecutionContext, output: Any, position: int) -> datetime | None:
    """The deadline a pending receive recorded (None: it waits for ever).

    :raises CorruptRowError: the row was not written by a receive.
    """
    if output is None:
        return None
    try:
        deadline = datetime.fromisoformat(output)
    except (TypeError, ValueError):
        deadline = None
    if deadline is None or deadline.utcoffset() is None:
        raise CorruptRowError.at(
            None,
            ctx.workflow_id,
            "output",
            f"a pending {RECV_STEP!r} step records its deadline as an ISO 8601 string with a "
            f"zone, or null, got {output!r}",
            position=position,
        )
    return deadline


# -- sending -----------------------------------------------------------------------------------


def send(
    workflow_id: str, topic: str, value: Any = None, *, idempotency_key: str | None = None
) -> Coroutine[Any, Any, None]:
    """Send ``value`` to the workflow ``workflow_id`` on ``topic``, from an async workflow:
    ``await durable.send("approval-o-1", "decision", {"ok": True})``.

    The send is recorded as a step of this workflow: a replay does not send again, and a re-run
    after a crash between the send and its record stores the message once (with
    ``idempotency_key``, or a key derived from this workflow's id and the position). A target
    that does not exist, or has finished, raises (and the failure is recorded like a step's).
    Outside workflows, send with :meth:`durable.Client.send`.

    :raises InvalidArgumentError: ``workflow_id``, ``topic`` or ``idempotency_key`` is not a
        non-empty str of at most 255 characters, or ``value`` cannot be serialized (nothing is
        recorded).
    :raises WorkflowNotFoundError: no workflow has that id.
    :raises WorkflowFinishedError: that workflow has finished.
    :raises DurableError: called outside a workflow, inside a step, or from a sync workflow
        (call :func:`send_sync` there).
    """
    _check_send_names(workflow_id, topic, idempotency_key)
    ctx = _workflow_context("durable.send()", is_async=True)
    check_value(ctx.runtime.backend.serializer, value)
    return _send(ctx, ctx.guard(SEND_STEP), workflow_id, topic, value, idempotency_key)


def send_sync(
    workflow_id: str, topic: str, value: Any = None, *, idempotency_key: str | None = None
) -> None:
    """:func:`send` for sync workflows.

    :raises InvalidArgumentError: as :func:`send`.
    :raises DurableError: called outside a workflow, inside a step, or from an async workflow.
    """
    _check_send_names(workflow_id, topic, idempotency_key)
    ctx = _workflow_context("durable.send_sync()", is_async=False)
    check_value(ctx.runtime.backend.serializer, value)
    guard = ctx.guard(SEND_STEP)
    if guard.replayed:
        guard.replay()
        return
    ctx.block_on(_send(ctx, guard, workflow_id, topic, value, idempotency_key))


def _check_send_names(workflow_id: str, topic: str, key: str | None) -> None:
    check_id(workflow_id, "workflow_id")
    check_name(topic, "topic")
    check_optional_id(key, "idempotency_key")


def check_value(serializer: Any, value: Any, what: str = "value") -> None:
    """Refuse a message value the store's serializer cannot store, naming the argument.

    :raises InvalidArgumentError: it cannot be serialized.
    """
    try:
        serializer.dumps(value)
    except SerializationError as exc:
        raise InvalidArgumentError(
            f"{what} cannot be stored: {type(value).__qualname__} {exc}"
        ) from exc


async def _send(
    ctx: ExecutionContext,
    guard: StepGuard,
    workflow_id: str,
    topic: str,
    value: Any,
    key: str | None,
) -> None:
    if guard.replayed:
        guard.replay()
        return
    await ctx.ensure_lease()
    if key is None:  # per run (continue_as_new starts again at position 0), as a child's id
        key = derived_id(f"durable.send:{ctx.workflow_id}", ctx.child_suffix(guard.position))
    try:
        with ctx.checkpoint():
            await ctx.runtime.backend.send_message(workflow_id, topic, value, idempotency_key=key)
    except (WorkflowNotFoundError, WorkflowFinishedError) as exc:
        await guard.fail(exc)
        raise
    await guard.succeed(None)


# -- timers by key -----------------------------------------------------------------------------


def start_timer(
    key: str, delay: timedelta | float, *, value: Any = _KEEP
) -> Coroutine[Any, Any, datetime]:
    """Start the timer ``key`` in an async workflow: ``await durable.start_timer("reminder",
    timedelta(days=1))``. When it fires, ``delay`` (a ``timedelta`` or seconds) after now on the
    store's clock, it delivers a message on topic ``key`` to this workflow, whose value is
    ``value`` (default: ``key``); :func:`recv` on ``key`` receives it, and a workflow waiting
    on that topic is due at that time without anything polling. Starting a key again replaces
    its timer; :func:`cancel_timer` cancels it. Returns the time it fires. The timer and its
    record are written in one transaction: a replay returns the same time and starts nothing.

    :raises InvalidArgumentError: ``key`` is not a non-empty str of at most 255 characters,
        ``delay`` is not a ``timedelta`` or a finite number of seconds of at most 100 years, or
        ``value`` cannot be serialized.
    :raises DurableError: called outside a workflow, inside a step, or from a sync workflow
        (call :func:`start_timer_sync` there).
    """
    check_name(key, "key")
    wait = check_delay(delay, "delay")
    ctx = _workflow_context("durable.start_timer()", is_async=True)
    message = _timer_value(ctx, key, value)
    return _start_timer(ctx, ctx.guard(START_TIMER_STEP), key, wait, message)


def start_timer_sync(key: str, delay: timedelta | float, *, value: Any = _KEEP) -> datetime:
    """:func:`start_timer` for sync workflows.

    :raises InvalidArgumentError: as :func:`start_timer`.
    :raises DurableError: called outside a workflow, inside a step, or from an async workflow.
    """
    check_name(key, "key")
    wait = check_delay(delay, "delay")
    ctx = _workflow_context("durable.start_timer_sync()", is_async=False)
    message = _timer_value(ctx, key, value)
    guard = ctx.guard(START_TIMER_STEP)
    if guard.replayed:
        return _fires_at(guard.replay())
    return ctx.block_on(_start_timer(ctx, guard, key, wait, message))


def cancel_timer(key: str) -> Coroutine[Any, Any, bool]:
    """Cancel the timer ``key`` in an async workflow: ``await durable.cancel_timer("reminder")``.
    Returns True when a timer whose message was not received yet was cancelled: it is then never
    received (even if it was due); False when there was none (never started, cancelled, or its
    message already received).

    :raises InvalidArgumentError: ``key`` is not a non-empty str of at most 255 characters.
    :raises DurableError: called outside a workflow, inside a step, or from a sync workflow
        (call :func:`cancel_timer_sync` there).
    """
    check_name(key, "key")
    ctx = _workflow_context("durable.cancel_timer()", is_async=True)
    return _cancel_timer(ctx, ctx.guard(CANCEL_TIMER_STEP), key)


def cancel_timer_sync(key: str) -> bool:
    """:func:`cancel_timer` for sync workflows.

    :raises InvalidArgumentError: as :func:`cancel_timer`.
    :raises DurableError: called outside a workflow, inside a step, or from an async workflow.
    """
    check_name(key, "key")
    ctx = _workflow_context("durable.cancel_timer_sync()", is_async=False)
    guard = ctx.guard(CANCEL_TIMER_STEP)
    if guard.replayed:
        return bool(guard.replay())
    return ctx.block_on(_cancel_timer(ctx, guard, key))


def _timer_value(ctx: ExecutionContext, key: str, value: Any) -> Any:
    message = key if value is _KEEP else value
    check_value(ctx.runtime.backend.serializer, message)
    return message


def _step(ctx: ExecutionContext, guard: StepGuard, name: str, key: str) -> StepRecord:
    return StepRecord(
        position=guard.position,
        name=name,
        input=key,
        attempts=1,
        executor_id=ctx.executor_id,
        started_at=guard.started_at,
    )


async def _start_timer(
    ctx: ExecutionContext, guard: StepGuard, key: str, delay: timedelta, value: Any
) -> datetime:
    if guard.replayed:
        return _fires_at(guard.replay())
    await ctx.ensure_lease()
    with ctx.checkpoint():
        fires_at = await ctx.runtime.backend.start_timer(
            ctx.workflow_id,
            key,
            value,
            delay=delay,
            worker_id=ctx.executor_id,
            step=_step(ctx, guard, START_TIMER_STEP, key),
        )
    guard.result = fires_at.isoformat()
    return fires_at


async def _cancel_timer(ctx: ExecutionContext, guard: StepGuard, key: str) -> bool:
    if guard.replayed:
        return bool(guard.replay())
    await ctx.ensure_lease()
    with ctx.checkpoint():
        cancelled = await ctx.runtime.backend.cancel_timer(
            ctx.workflow_id,
            key,
            worker_id=ctx.executor_id,
            step=_step(ctx, guard, CANCEL_TIMER_STEP, key),
        )
    guard.result = cancelled
    return cancelled


def _fires_at(output: Any) -> datetime:
    return datetime.fromisoformat(output)


# -- shared ------------------------------------------------------------------------------------


def _timeout(timeout: timedelta | float | None) -> timedelta | None:
    if timeout is None:
        return None
    wait = check_delay(timeout, "timeout")
    if wait < timedelta(0):
        raise InvalidArgumentError(f"timeout must not be negative, got {timeout!r}")
    return wait


def _workflow_context(what: str, *, is_async: bool) -> ExecutionContext:
    """The calling workflow's context, of the flavour ``what`` is for.

    :raises DurableError: outside a workflow (or inside a step), or in the other flavour.
    """
    ctx = current()
    if ctx is None:
        outside = (
            "; from outside a workflow, send with client.send(...) or runtime.send(...)"
            if what.startswith("durable.send")
            else ""
        )
        raise DurableError(
            f"{what} was called outside a workflow (or inside a step): it is a recorded "
            f"position of a workflow's history{outside}"
        )
    if ctx.is_async != is_async:
        if is_async:
            raise DurableError(
                f"{what} was called from the sync workflow {ctx.workflow_name!r}: call "
                f"{what.replace('()', '_sync()')} in sync workflows"
            )
        raise DurableError(
            f"{what} was called from the async workflow {ctx.workflow_name!r}: write "
            f"`await {what.replace('_sync()', '(...)')}` in async workflows"
        )
    return ctx


__all__ = [
    "cancel_timer",
    "cancel_timer_sync",
    "check_value",
    "recv",
    "recv_sync",
    "send",
    "send_sync",
    "start_timer",
    "start_timer_sync",
]
