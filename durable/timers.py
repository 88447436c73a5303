"""Durable sleep: ``durable.sleep(delta)`` and ``durable.sleep_until(when)`` inside a workflow.

A sleep is a recorded position of the workflow's history, like a step, named
:data:`SLEEP_STEP`. The first time a workflow reaches it:

1. the wake-up time is computed on the store's clock
   (:meth:`~durable.backends.PersistentBackend.now`: the database's on PostgreSQL, the
   injectable ``clock`` of the in-memory backend) and recorded as a *pending* step whose
   output is that time (an ISO 8601 string), fenced by the workflow's lease;
2. the workflow is handed back, due at the wake-up time
   (:meth:`~durable.backends.PersistentBackend.reschedule_workflow` with
   ``consume_attempt=False``: not a failed attempt, not an interruption), which releases its
   claim: it holds no worker slot, no thread and no lease while it sleeps;
3. any worker claims it once it is due and replays it. The replay reaches the pending sleep,
   finds the wake-up time passed, records the sleep as succeeded, and goes on after it. A
   replay that reaches a sleep already recorded as succeeded goes on at once (it costs
   nothing); one that reaches it early (an executor died right after recording it, and its
   lease expired first) hands the workflow back again until the recorded time.

A sleep whose time has passed when it is first reached (a zero or negative delta, a past
``when``) is recorded as succeeded and the workflow goes on without suspending. A replay that
reaches a sleep at a position where the history has something else (or a step where it has a
sleep) fails with :class:`~durable.errors.NonDeterminismError`, like any position.

This process wakes its workers at the wake-up time (an event loop timer), so a sleep of 50 ms
resumes within tens of ms; workers of other processes find it at their next poll, and a
process that restarts finds it at once if it is due.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
import weakref
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from durable.backends.base import PersistentBackend
from durable.context import ExecutionContext, StepGuard, WorkflowSuspended, current
from durable.errors import CorruptRowError, DurableError
from durable.models import SLEEP_STEP, StepStatus
from durable.validation import check_delay, check_run_after

log = logging.getLogger(__name__)

#: Seconds added to the local wake-up timer, so that it fires after the task is due on the store's
#: clock, not a hair before (a worker that claims too early waits a whole poll interval).
WAKE_MARGIN = 0.002


class WorkflowSleeping(WorkflowSuspended):
    """Internal: the workflow sleeps until :attr:`until` without holding its lease (it was
    handed back, due then). A :class:`~durable.context.WorkflowSuspended`, so that workers and
    ``run`` treat it as a suspension; :attr:`delay` tells ``run`` how long to wait before it
    looks again."""

    def __init__(self, workflow_id: str, until: datetime | None, delay: float) -> None:
        shown = "it is woken" if until is None else until.isoformat()
        BaseException.__init__(self, f"workflow {workflow_id!r} sleeps until {shown}")
        self.workflow_id = workflow_id
        self.until = until
        """The wake-up time, on the store's clock (None: a wait only a message ends)."""
        self.delay = delay
        """Seconds from the hand-back to the wake-up time (infinite without one)."""


def sleep(delta: timedelta | float) -> Coroutine[Any, Any, None]:
    """Sleep for ``delta`` (a :class:`~datetime.timedelta` or a number of seconds) inside an
    async workflow: ``await durable.sleep(timedelta(days=3))``.

    The wake-up time (the store's clock now, plus ``delta``) is recorded in the workflow's
    history before it suspends; the workflow then holds no worker slot, thread or lease until it
    is due, survives restarts of every process, and any worker resumes it when due. A replay
    after the wake-up does not sleep again. A zero or negative ``delta`` goes on at once (the
    sleep is still recorded, so replays take the same positions). Its cost: a sleep that
    suspends writes three times (the pending record, the hand-back, the record on waking) and
    reads the store's clock twice; one that does not, one read and one write; a replay of a
    sleep that woke, nothing.

    Outside a workflow, and inside a step, it is ``asyncio.sleep(delta)``. In a sync workflow,
    call :func:`sleep_sync`. Do not sleep beside running steps (``asyncio.gather`` of a sleep and
    a step): the hand-back releases the lease those steps need to record their outcomes.

    :raises InvalidArgumentError: ``delta`` is not a ``timedelta`` or a number (``bool`` is not
        one), not finite, or longer than 100 years.
    :raises DurableError: called from a sync workflow.
    """
    wait = check_delay(delta, "delta")
    return _start(lambda now: now + wait, wait.total_seconds(), "durable.sleep()")


def sleep_until(when: datetime) -> Coroutine[Any, Any, None]:
    """Sleep until ``when`` (a timezone-aware :class:`~datetime.datetime`, judged by the
    store's clock) inside an async workflow: ``await durable.sleep_until(deadline)``.

    As :func:`sleep`, with the wake-up time given: a time that has passed goes on at once.

    :raises InvalidArgumentError: ``when`` is not a ``datetime``, is naive, or is not before
        the year 9999.
    :raises DurableError: called from a sync workflow.
    """
    at = check_run_after(when, "when")
    return _start(lambda _now: at, None, "durable.sleep_until()")


def sleep_sync(delta: timedelta | float) -> None:
    """:func:`sleep` for sync workflows: ``durable.sleep_sync(timedelta(hours=1))``. Outside a
    workflow (and inside a step) it is ``time.sleep(delta)``.

    When the workflow suspends, its thread is given back too: the call does not return, and the
    workflow is replayed from its history when it is due.

    :raises InvalidArgumentError: as :func:`sleep`.
    :raises DurableError: called from an async workflow.
    """
    wait = check_delay(delta, "delta")
    _block(lambda now: now + wait, wait.total_seconds(), "durable.sleep_sync()")


def sleep_until_sync(when: datetime) -> None:
    """:func:`sleep_until` for sync workflows. Outside a workflow (and inside a step) it sleeps
    this thread until ``when`` by this host's clock.

    :raises InvalidArgumentError: as :func:`sleep_until`.
    :raises DurableError: called from an async workflow.
    """
    at = check_run_after(when, "when")
    _block(lambda _now: at, None, "durable.sleep_until_sync()")


#: The wake-up time of a sleep, given the store's time when it is first reached.
Wake = Callable[[datetime], datetime]


def _start(wake: Wake, seconds: float | None, what: str) -> Coroutine[Any, Any, None]:
    """The coroutine of an async sleep, the context checked now (at the call, like a step)."""
    ctx = current()
    if ctx is None:
        return asyncio.sleep(max(_plain_seconds(wake, seconds), 0.0))
    if not ctx.is_async:
        raise DurableError(
            f"{what} was called from the sync workflow {ctx.workflow_name!r}: call "
            f"{what.replace('()', '_sync()')} in sync workflows"
        )
    return _sleep(ctx, ctx.guard(SLEEP_STEP), wake)


def _block(wake: Wake, seconds: float | None, what: str) -> None:
    ctx = current()
    if ctx is None:
        time.sleep(max(_plain_seconds(wake, seconds), 0.0))
        return
    if ctx.is_async:
        raise DurableError(
            f"{what} was called from the async workflow {ctx.workflow_name!r}: write "
            f"`await {what.replace('_sync()', '(...)')}` in async workflows"
        )
    guard = ctx.guard(SLEEP_STEP)  # the position is taken in the workflow's thread, in order
    if guard.replayed:
        guard.replay()
        return
    ctx.block_on(_sleep(ctx, guard, wake))


def _plain_seconds(wake: Wake, seconds: float | None) -> float:
    """Seconds to sleep outside a workflow: the delta, or until the time by this host's clock."""
    if seconds is not None:
        return seconds
    now = datetime.now(UTC)
    return float((wake(now) - now).total_seconds())


async def _sleep(ctx: ExecutionContext, guard: StepGuard, wake: Wake) -> None:
    """Record the sleep at ``guard``'s position and suspend until its wake-up time, or go on
    when that time has passed (see the module's docstring)."""
    if guard.replayed:  # it woke in an earlier run: nothing to wait for, nothing to read
        guard.replay()
        return
    backend = ctx.runtime.backend
    await ctx.ensure_lease()
    with ctx.checkpoint():
        now = await backend.now()
    pending = guard.pending
    if pending is not None:
        until = _recorded(ctx, pending.output, guard.position)
    else:
        until = wake(now)
        if until > now:
            with ctx.checkpoint():
                await guard._record(
                    StepStatus.PENDING, output=until.isoformat(), attempts=1, child=None
                )
    if until <= now:
        await guard.succeed(until.isoformat())
        return
    remaining = until - now
    if ctx.deadline is not None:  # never due after the execution's deadline: it expires then
        remaining = min(remaining, max(ctx.deadline - now, timedelta(0)))
    with ctx.checkpoint():
        await backend.reschedule_workflow(
            ctx.workflow_id,
            worker_id=ctx.executor_id,
            run_after=remaining,
            consume_attempt=False,
        )
    raise suspended(ctx, until, now, action="workflow.sleep", doing="sleeps")


def suspended(
    ctx: ExecutionContext,
    until: datetime | None,
    now: datetime,
    *,
    action: str,
    doing: str,
    **extra: Any,
) -> WorkflowSleeping:
    """The workflow was handed back (it holds no lease), due again at ``until`` on the store's
    clock (None: only when something wakes it), ``now`` being the store's time at the hand-back:
    wake this process's workers when it is due (the hand-back woke them now, too early; the
    timer does not keep a closed backend alive for the length of the wait), log it (``action``
    in ``extra``), and return the :class:`WorkflowSleeping` for the caller to raise. Shared by
    every way a workflow suspends until a time: sleeps, receives (:mod:`durable.messages`)."""
    delay = math.inf if until is None else (until - now).total_seconds()
    if until is not None:
        # in an empty context: the current one holds this execution's context (its history),
        # which the timer would keep alive for the length of the wait
        asyncio.get_running_loop().call_later(
            max(delay, 0.0) + WAKE_MARGIN,
            _notify,
            weakref.ref(ctx.runtime.backend),
            context=contextvars.Context(),
        )
    log.debug(
        "workflow %s %s until %s",
        ctx.workflow_id,
        doing,
        "woken" if until is None else until.isoformat(),
        extra={"action": action, "workflow_id": ctx.workflow_id, "until": until, **extra},
    )
    return WorkflowSleeping(ctx.workflow_id, until, delay)


def _notify(ref: weakref.ReferenceType[PersistentBackend]) -> None:
    backend = ref()
    if backend is not None:
        backend.notify_work()


def _recorded(ctx: ExecutionContext, output: Any, position: int) -> datetime:
    """The wake-up time a pending sleep recorded.

    :raises CorruptRowError: it is not one (the row was not written by a sleep).
    """
    try:
        until = datetime.fromisoformat(output)
    except (TypeError, ValueError):
        until = None
    if until is None or until.utcoffset() is None:
        raise CorruptRowError.at(
            None,
            ctx.workflow_id,
            "output",
            f"a pending {SLEEP_STEP!r} step records its wake-up time as an ISO 8601 string "
            f"with a zone, got {output!r}",
            position=position,
        )
    return until


__all__ = [
    "SLEEP_STEP",
    "WorkflowSleeping",
    "sleep",
    "sleep_sync",
    "sleep_until",
    "sleep_until_sync",
    "suspended",
]
