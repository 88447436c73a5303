"""Events out: ``durable.set_event(key, value)`` inside a workflow, ``client.get_event(id, key)``
outside.

An event is a value a workflow publishes under a key (``"status"``, ``"progress"``) for anyone
to read, while it runs and after it finished: the latest value set for a key wins. Setting it is
a recorded position of the workflow's history, named :data:`EVENT_STEP`, written in one
transaction with the value and fenced by the workflow's lease
(:meth:`~durable.backends.PersistentBackend.set_event`): a replay that reaches it finds it
recorded and sets nothing again (the value it set stays, or a later one), and an executor that
lost its lease cannot set anything.

A reader (:func:`wait_for_event`, behind :meth:`Client.get_event <durable.Client.get_event>`)
waits until the key is set, woken by the write (in this process; on PostgreSQL in every process,
through LISTEN/NOTIFY), and looks again in case a write of another process was not announced
to it: soon at first, then less often, up to ``poll_interval`` seconds apart.

This module also holds what :mod:`durable.streams` shares with it: checking the workflow a call
is made in, and recording a publishing position (:func:`publish`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from durable.backends.base import PersistentBackend
from durable.context import ExecutionContext, StepGuard, current
from durable.errors import (
    BackendUnavailableError,
    DurableError,
    InvalidArgumentError,
    SerializationError,
)
from durable.models import StepRecord, StepStatus
from durable.polling import pauses
from durable.validation import check_name

#: The name a ``set_event`` is recorded under in a workflow's history; its input is
#: ``{"key": key}``.
EVENT_STEP = "durable.set_event"

#: How a publishing call writes: given the workflow's id, its executor's id and the step record.
Write = Callable[[str, str, StepRecord], Awaitable[Any]]


def set_event(key: str, value: Any) -> Coroutine[Any, Any, None]:
    """Set the current workflow's event ``key`` to ``value``, inside an async workflow:
    ``await durable.set_event("status", "waiting")``.

    Readers (:meth:`Client.get_event <durable.Client.get_event>`) see it once this returns,
    and the latest value set for the key wins. It is recorded in the workflow's history in the
    same transaction as the value, so a replay after a crash does not set it again. Costs one
    write (none on a replay).

    :raises InvalidArgumentError: ``key`` is not a non-empty str of at most 255 characters, or
        the backend's serializer cannot store ``value`` (nothing is recorded).
    :raises DurableError: called outside a workflow (or inside a step), or from a sync workflow
        (call :func:`set_event_sync` there).
    """
    key = check_name(key, "key")
    ctx = workflow_context("durable.set_event()", is_async=True)
    check_value(ctx, value, "value")
    return publish(ctx, ctx.guard(EVENT_STEP), key, _setter(ctx, key, value))


def set_event_sync(key: str, value: Any) -> None:
    """:func:`set_event` for sync workflows: ``durable.set_event_sync("status", "waiting")``.

    :raises InvalidArgumentError: as :func:`set_event`.
    :raises DurableError: called outside a workflow (or inside a step), or from an async one.
    """
    key = check_name(key, "key")
    ctx = workflow_context("durable.set_event_sync()", is_async=False)
    check_value(ctx, value, "value")
    publish_blocking(ctx, ctx.guard(EVENT_STEP), key, _setter(ctx, key, value))


def _setter(ctx: ExecutionContext, key: str, value: Any) -> Write:
    backend = ctx.runtime.backend

    async def write(workflow_id: str, executor_id: str, step: StepRecord) -> None:
        await backend.set_event(workflow_id, key, value, worker_id=executor_id, step=step)

    return write


# -- what set_event and the stream writes share ---------------------------------------------------


def workflow_context(what: str, *, is_async: bool) -> ExecutionContext:
    """The workflow the call is made in, of the right flavour.

    :raises DurableError: outside a workflow (or inside a step), or the wrong flavour.
    """
    ctx = current()
    if ctx is None:
        raise DurableError(
            f"{what} was called outside a workflow (or inside a step): workflows publish "
            "events and streams from their own code, between steps"
        )
    if ctx.is_async and not is_async:
        raise DurableError(
            f"{what} was called from the async workflow {ctx.workflow_name!r}: write "
            f"`await {what.replace('_sync()', '(...)')}` in async workflows"
        )
    if is_async and not ctx.is_async:
        raise DurableError(
            f"{what} was called from the sync workflow {ctx.workflow_name!r}: call "
            f"{what.replace('()', '_sync()')} in sync workflows"
        )
    return ctx


def check_value(ctx: ExecutionContext, value: Any, what: str) -> None:
    """Refuse a value the workflow's serializer cannot store, before a position is taken.

    :raises InvalidArgumentError: naming ``what``.
    """
    serializer = ctx.runtime.backend.serializer
    try:
        serializer.dumps(value)
    except SerializationError as exc:
        raise InvalidArgumentError(
            f"{what} cannot be stored: the {serializer.name or type(serializer).__name__} "
            f"serializer refuses a {type(value).__qualname__}: {exc}"
        ) from exc


async def publish(ctx: ExecutionContext, guard: StepGuard, key: str, write: Write) -> Any:
    """Record the publishing position ``guard`` with what ``write`` publishes, in one fenced
    write, unless a replay finds it recorded; returns the recorded output (None)."""
    if guard.replayed:
        return guard.replay()
    await ctx.ensure_lease()
    record = dataclasses.replace(
        guard._entry(StepStatus.SUCCEEDED, attempts=1, child=None), input={"key": key}
    )
    with ctx.checkpoint():
        await write(ctx.workflow_id, ctx.executor_id, record)
    guard.recorded = record
    return None


def publish_blocking(ctx: ExecutionContext, guard: StepGuard, key: str, write: Write) -> Any:
    """:func:`publish` from a sync workflow's thread (the position is taken in that thread, in
    order; the write runs on the runtime's loop)."""
    if guard.replayed:
        return guard.replay()
    return ctx.block_on(publish(ctx, guard, key, write))


# -- reading ---------------------------------------------------------------------------------------


async def wait_for_event(
    backend: PersistentBackend,
    workflow_id: str,
    key: str,
    *,
    timeout: float | None,
    default: Any,
    poll_interval: float,
) -> Any:
    """The value of the workflow's event ``key``, waiting up to ``timeout`` seconds (None: no
    limit) until it is set; ``default`` if it is not set by then, or if the workflow finished
    without setting it. Woken by the write; looks again soon, then less often, up to
    ``poll_interval`` seconds apart (:mod:`durable.polling`).

    A database that cannot be reached meanwhile is waited out the same way, until ``timeout``.

    :raises WorkflowNotFoundError: no such workflow.
    :raises BackendUnavailableError: ``timeout`` passed while the database could not be reached
        (whether the event was set is not known).
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    looks = pauses(poll_interval)
    while True:
        with backend.watch_outputs(workflow_id) as watch:
            unanswered: BackendUnavailableError | None = None
            try:
                event = await backend.get_event(workflow_id, key)
                if event is not None:
                    return event.value
                # finished? then it sets nothing more: one last look, for a value set before
                # the end
                if (await backend.get_workflow(workflow_id)).status.is_terminal:
                    event = await backend.get_event(workflow_id, key)
                    return default if event is None else event.value
            except BackendUnavailableError as exc:  # a restart: look again, until the timeout
                unanswered = exc
            wait = next(looks)
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if unanswered is not None:
                        raise unanswered
                    return default
                wait = min(wait, remaining)
            await watch.wait(wait)


__all__ = ["EVENT_STEP", "set_event", "set_event_sync", "wait_for_event"]
