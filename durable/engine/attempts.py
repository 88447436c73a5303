"""How the runtime runs an execution: one attempt under its lease, from its history (replay)
to its recorded outcome; driving or awaiting an execution; child workflows."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn, cast

from durable import context as _context
from durable import telemetry
from durable.backends.base import deadline_error
from durable.context import (
    ExecutionContext,
    HandedBack,
    Rescheduled,
    StepGuard,
    WorkflowSuspended,
)
from durable.continuation import ContinueAsNew, WorkflowContinued
from durable.engine.core import stored_arguments
from durable.engine.leases import Leases
from durable.errors import (
    BackendUnavailableError,
    ClaimLostError,
    ControlFlow,
    CorruptRowError,
    DurableError,
    InvalidArgumentError,
    NonRetryableError,
    RecoveriesExhaustedError,
    SerializationError,
    TaskNotFoundError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    logged,
    raise_as_failure,
    stopping_as_failure,
)
from durable.executions import EnqueueOptions
from durable.models import (
    WORKFLOW_TASK,
    ErrorInfo,
    TaskClaim,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.queues import QueueLimits
from durable.timers import WAKE_MARGIN, WorkflowSleeping
from durable.validation import derived_id
from durable.workflow import Workflow

#: The runtime's logger: what this module logs, it logs as the runtime.
log = logging.getLogger("durable.runtime")

#: The characters of an error's message kept when the database refuses to store the whole
#: error (see ``_renewing_error``).
ERROR_KEPT = 2000

#: How a workflow span ends on these signals: not as an error (see durable.telemetry).
#: The first class an exception is an instance of names the outcome: subclasses before their
#: bases (a continue-as-new and a sleep are suspensions too).
_SPAN_OUTCOMES: dict[type[BaseException], str] = {
    WorkflowSleeping: "sleeping",
    WorkflowContinued: "continued",
    WorkflowSuspended: "suspended",
    ClaimLostError: "interrupted",
    asyncio.CancelledError: "handed_back",
    HandedBack: "handed_back",  # an outage ended it, uncounted
    WorkflowCancelledError: "cancelled",  # by a cancel or a deadline: not a failed attempt
}


class ClaimedStarts:
    """The executions a worker's claims started (:meth:`PersistentBackend.claim_and_begin_tasks`),
    kept until whoever runs each here first takes its snapshot: the worker, or a coroutine of
    this runtime that drives the same execution (:meth:`Attempts._drive`: a parent running its
    child, :meth:`~durable.Runtime.run`), which must not start it a second time (that would
    count an interruption)."""

    def __init__(self) -> None:
        self._starts: dict[str, WorkflowSnapshot] = {}
        self._in_flight: set[asyncio.Future[None]] = set()  # claims sent, not answered yet
        self._driven: dict[str, int] = {}  # executions driven here now: how many drives each
        # executions whose start a drive took from a worker's claim (take_landed), until that
        # claim comes to be run or handed back: it was the drive's to run
        self._taken: set[str] = set()

    @contextlib.contextmanager
    def driving(self, instance_id: str) -> Iterator[None]:
        """Mark ``instance_id`` as driven by a coroutine of this runtime for the ``with``
        block (:meth:`Attempts._drive`): the worker's claims of it are then the drive's to run
        (see :meth:`driven`)."""
        self._driven[instance_id] = self._driven.get(instance_id, 0) + 1
        try:
            yield
        finally:
            left = self._driven[instance_id] - 1
            if left:
                self._driven[instance_id] = left
            else:
                del self._driven[instance_id]

    def driven(self, instance_id: str) -> bool:
        """Whether a coroutine of this runtime drives ``instance_id`` now. Leases are held by
        executor id, so a worker's claim of it and the drive's are one lease: the drive runs
        each of its runs (taking the start a worker's claim made), and the worker neither runs
        it nor hands the lease back, which would take it from under the drive's run."""
        return instance_id in self._driven

    async def claim(
        self, claiming: Coroutine[Any, Any, list[tuple[TaskClaim, WorkflowSnapshot | None]]]
    ) -> list[TaskClaim]:
        """Run a claim; keep the starts it made."""
        landed = asyncio.get_running_loop().create_future()
        self._in_flight.add(landed)
        try:
            claims = await claiming
            for claim, began in claims:
                if began is not None:
                    self._starts[claim.instance_id] = began
            return [claim for claim, _ in claims]
        finally:
            self._in_flight.discard(landed)
            landed.set_result(None)

    def started(self, instance_id: str) -> bool:
        """Whether a claim of the worker's began the execution, which it has not run yet."""
        return instance_id in self._starts

    def take(self, instance_id: str) -> WorkflowSnapshot | None:
        """The start a claim made for ``instance_id``, once (None: none, or already taken)."""
        return self._starts.pop(instance_id, None)

    async def take_landed(self, instance_id: str) -> WorkflowSnapshot | None:
        """:meth:`take`, once the claims in flight now have landed: one of them may have
        taken this execution's task (and started it) before this runtime's own claim renewed
        it. A claim sent later cannot take it (it skips live claims), so it is not waited
        for."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
        began = self.take(instance_id)
        if began is not None:
            self._taken.add(instance_id)
        return began

    def taken_by_drive(self, instance_id: str) -> bool:
        """Whether a drive took the start a worker's claim of ``instance_id`` made (see
        :meth:`take_landed`), once: the claim's run was the drive's, which may have ended (and
        the execution with it) before the worker came to the claim."""
        if instance_id in self._taken:
            self._taken.discard(instance_id)
            return True
        return False


class Attempts(Leases):
    """Running executions: one attempt of one execution under its lease (:meth:`_execute`),
    driving an execution here or waiting for whoever runs it (:meth:`_drive`), and child
    workflows (:meth:`run_child`)."""

    @property
    def _claimed(self) -> ClaimedStarts:
        """This runtime's :class:`ClaimedStarts` (made on first use)."""
        starts = self.__dict__.get("_claimed_starts")
        if starts is None:
            starts = self.__dict__["_claimed_starts"] = ClaimedStarts()
        return cast(ClaimedStarts, starts)

    async def claim_work(
        self, limit: int, *, names: Sequence[str], queues: Sequence[str] | None
    ) -> list[TaskClaim]:
        """A worker's claim of up to ``limit`` available tasks under this executor's lease;
        the workflows it started are run by :meth:`execute_claimed` (or handed back by
        :meth:`hand_back_claim`) without being started again.

        Queues with limits (:mod:`durable.queues`) are claimed first, each by its own limited
        claim (which the ordinary one leaves them to); the rest of ``limit`` goes to the
        ordinary claim. A runtime without limited queues pays no extra round trip."""
        # Runtime(serve_versions=...): only then is the claim filtered by code version
        versions = self.claim_versions()
        by_version: dict[str, Any] = {} if versions is None else {"versions": versions}
        claims: list[TaskClaim] = []
        for queue in await self._queue_limits.limited(queues):
            claims += await self.backend.claim_queue_tasks(
                self.executor_id,
                queue,
                limit - len(claims),
                self.claim_ttl,
                names=names,
                **by_version,
            )
            if len(claims) >= limit:
                return claims
        return claims + await self._claimed.claim(
            self.backend.claim_and_begin_tasks(
                self.executor_id,
                limit - len(claims),
                self.claim_ttl,
                names=names,
                queues=queues,
                **by_version,
            )
        )

    @property
    def _queue_limits(self) -> QueueLimits:
        """Which queues are limited, re-read now and then (made on first use)."""
        limits = self.__dict__.get("_queue_limits_cache")
        if limits is None:
            limits = self.__dict__["_queue_limits_cache"] = QueueLimits(self.backend)
        return cast(QueueLimits, limits)

    async def hand_back_claim(self, claim: TaskClaim) -> None:
        """Give back a claim of :meth:`claim_work` that will not be run: released, or if the
        claim started the workflow, put back to pending without counting the attempt.

        :raises DurableError: the backend refused or could not be reached."""
        if self._claimed.driven(claim.instance_id) or self._claimed.taken_by_drive(
            claim.instance_id
        ):
            return  # the lease is the drive's too: handing it back would take it from its run
        if self._claimed.take(claim.instance_id) is None:
            await self.backend.release_task_claim(
                claim.instance_id, claim.task_id, self.executor_id
            )
        else:
            await self.backend.reschedule_workflow(
                claim.instance_id,
                worker_id=self.executor_id,
                run_after=timedelta(0),
                consume_attempt=False,
            )

    async def _drive(
        self, wf: Workflow[Any, Any], instance_id: str, *, keep_limits: bool = True
    ) -> Any:
        """Run the execution here, or wait for whoever runs it; return its outcome.

        Within this runtime one coroutine at a time drives a given execution (the others wait
        for it and then find it finished); across executors the lease decides. With
        ``keep_limits`` (the default), an execution of a queue with limits is not claimed here
        but left to the workers' limited claims (:mod:`durable.queues`), and waited for.
        """
        with self._claimed.driving(instance_id):
            return await self._drive_here(wf, instance_id, keep_limits=keep_limits)

    async def _drive_here(
        self, wf: Workflow[Any, Any], instance_id: str, *, keep_limits: bool
    ) -> Any:
        """The loop of :meth:`_drive`."""
        noted: set[str] = set()
        while True:
            wait = self.poll_interval
            # before the look: a worker's claim of it after the look wakes the pause below
            woken = self.client._wake_up()
            async with self._locks.hold(instance_id):
                unreadable: CorruptRowError | None = None
                try:
                    info = await self.backend.get_workflow(instance_id)
                    if info.status.is_terminal:
                        return self.outcome(info)
                except CorruptRowError as exc:
                    unreadable = exc  # if it can still run, running it fails it (once)
                try:
                    claim = await self.backend.claim_task(
                        instance_id,
                        WORKFLOW_TASK,
                        self.executor_id,
                        self.claim_ttl,
                        due_only=True,
                        keep_limits=keep_limits,
                    )
                except TaskNotFoundError:
                    if unreadable is not None:
                        raise unreadable from unreadable.__cause__
                    claim = None  # it finished (or was cancelled) since we looked: look again
                if claim is not None:
                    began = await self._claimed.take_landed(instance_id)
                    if self._superseded:
                        raise self._lost(instance_id, WORKFLOW_TASK)
                    try:
                        return await self._execute(wf, instance_id, began)
                    except WorkflowContinued:  # its next run is due at once
                        wait = 0.0
                    except WorkflowSleeping as sleeping:  # look again when it is due
                        wait = min(wait, max(sleeping.delay + WAKE_MARGIN, 0.0))
                    except (Rescheduled, WorkflowSuspended):
                        pass  # it goes on when due (a retry) or when woken (its steps done)
                else:
                    await self._note_wait(instance_id, noted)
            await self.client.pause(wait, woken)

    async def _note_wait(self, instance_id: str, noted: set[str]) -> None:
        """Say, once per holder, whose lease a run waits for and until when: at WARNING when the
        holder looks dead (after a crash, a rerun under a new executor id waits for the old
        process's lease), at INFO when a live executor runs it."""
        try:
            task = await self.backend.get_task(instance_id, WORKFLOW_TASK)
        except DurableError:
            return  # gone (finished) or unreadable: the loop looks again
        holder = task.claimed_by
        if holder is None or holder == self.executor_id or holder in noted:
            return
        noted.add(holder)
        with contextlib.suppress(DurableError):
            known = await self.backend.get_executor(holder)
            if known is not None and known.stopped_at is None and not known.stale:
                log.info(  # a live executor runs it: the usual case, nothing to worry about
                    "workflow %s is run by executor %s: waiting for it",
                    instance_id,
                    holder,
                    extra={"action": "workflow.waiting", "workflow_id": instance_id},
                )
                return
        log.warning(
            "workflow %s is held by executor %s, which sends no heartbeats, and whose lease "
            "runs until %s: waiting for the lease to expire. If %s was this program before a "
            "restart, give the Runtime a stable executor_id: a restart under the same id "
            "resumes its work at once",
            instance_id,
            holder,
            task.claim_expires_at.isoformat() if task.claim_expires_at else "-",
            holder,
            extra={
                "action": "workflow.waiting",
                "workflow_id": instance_id,
                "holder": holder,
                "until": task.claim_expires_at,
            },
        )

    async def _execute(
        self,
        wf: Workflow[Any, Any],
        instance_id: str,
        began: WorkflowSnapshot | None = None,
        *,
        own_task: bool = False,
    ) -> Any:
        """Run the body under this executor's lease (already claimed) and record the outcome;
        ``began``: the start its claim made (:class:`ClaimedStarts`), else this starts it.
        ``own_task``: the caller's task exists for this attempt alone (a worker's), so the body
        runs in it rather than in a task of its own (see :meth:`_invoke`).

        How an attempt ends:

        * the body returns: the output is recorded (``succeeded``);
        * the body raises: a *failed* attempt, retried with backoff while ``max_attempts``
          allows (:meth:`_record_failure`), else ``dead_letter``; ``failed`` at once for an
          error not worth retrying (:class:`NonRetryableError`, a diverged replay, an output
          that cannot be stored);
        * a checkpoint cannot reach the database: the attempt is handed back, due again after
          :data:`~durable.runtime.OUTAGE_BACKOFF`, not counted (if even that cannot reach the
          database, the lease expires and the next executor resumes it);
        * the lease is lost, or this executor dies: an *interrupted* attempt, which the next
          :meth:`~PersistentBackend.begin_execution` counts in ``interruptions``; after more
          than the workflow's ``max_recoveries`` the execution is dead-lettered (a crash loop).
        """
        leased_at = time.monotonic()  # the claim was taken before this: a safe lower bound
        try:
            snapshot = began
            if snapshot is None:  # the lease may have run out since the claim: renewed then
                snapshot = await self._renewing(
                    instance_id,
                    lambda: self.backend.begin_execution(instance_id, self.executor_id),
                )
            args, kwargs = stored_arguments(snapshot.input, instance_id)
        except CorruptRowError as exc:  # fail it once; never leave it to be claimed forever
            await self._fail_unreadable(instance_id, exc)
            raise
        except BackendUnavailableError as outage:
            # nothing ran: the claim is given back through the outage, not left to wait out
            # its lease
            await self._hand_back(instance_id, outage, begun=False)
        if snapshot.interruptions > wf.max_recoveries:
            # its executors kept dying (or losing their leases) in the middle of it
            interrupted = (
                f"{snapshot.interruptions} attempt(s) were interrupted before finishing (their "
                f"executors stopped or lost their leases); max_recoveries is {wf.max_recoveries}"
            )
            last = snapshot.error
            info = await self._record_outcome(
                instance_id,
                worker_id=self.executor_id,
                status=WorkflowStatus.DEAD_LETTER,
                error=ErrorInfo.from_exception(
                    RecoveriesExhaustedError(
                        interrupted
                        + (f"; the last failure was {last.type}: {last.message}" if last else "")
                    )
                ),
            )
            raise self.outcome_error(info)
        deadline = snapshot.deadline
        remaining: float | None = None
        if deadline is not None:  # one read of the store's clock, for executions with one
            now = await self.backend.now()
            if now >= deadline:  # claimed past its deadline (it slept, waited or queued)
                raise await self._expire(instance_id, deadline)
            remaining = (deadline - now).total_seconds()
        tel = telemetry.active
        if tel is None or not tel.recording():  # no span to open (nothing would record it)
            return await self._attempt(wf, snapshot, (args, kwargs), leased_at, remaining, own_task)
        with tel.workflow_span(
            wf.name,
            instance_id,
            executor_id=self.executor_id,
            attempt=snapshot.attempts,
            trace_context=snapshot.trace_context,
            replayed_steps=len(snapshot.steps),
            outcomes=_SPAN_OUTCOMES,
        ):
            return await self._attempt(wf, snapshot, (args, kwargs), leased_at, remaining, own_task)

    async def _attempt(
        self,
        wf: Workflow[Any, Any],
        snapshot: WorkflowSnapshot,
        arguments: tuple[Sequence[Any], Any],
        leased_at: float,
        remaining: float | None,
        own_task: bool = False,
    ) -> Any:
        """The body of :meth:`_execute` once the execution has begun: run it under its lease
        and record how the attempt ended."""
        instance_id = snapshot.id
        deadline = snapshot.deadline
        args, kwargs = arguments
        assert self._loop is not None
        ctx = ExecutionContext(
            runtime=self,
            workflow_id=instance_id,
            workflow_name=wf.name,
            executor_id=self.executor_id,
            history={s.position: s for s in snapshot.steps},
            loop=self._loop,
            loop_thread=self._loop_thread,
            is_async=wf.is_async,
            lease_deadline=leased_at + self.lease_window,
            deadline=deadline,
            continuations=snapshot.continuations,
            recorded_version=snapshot.code_version,
            running_version=wf.code_version(self.app_version),
        )
        # the lease's heartbeat: a timer, not a task, until the first extension is due (most
        # executions end before it, and a timer costs less than a task to start and cancel)
        loop = asyncio.get_running_loop()
        beating: list[asyncio.Task[None]] = []

        def beat() -> None:
            beating.append(loop.create_task(self._heartbeat(instance_id, context=ctx, due=True)))

        timer = loop.call_later(self.heartbeat_interval, beat)
        try:
            unstorable = False
            try:
                try:
                    output = await self._invoke_by(ctx, wf, args, kwargs, remaining, own_task)
                except Exception:
                    raise
                except ContinueAsNew:
                    ctx.check_history_consumed("continued as new")  # before the point it reached
                    raise
                except BaseException as exc:  # durable's control flow, a cancellation go on;
                    raise_as_failure(exc)  # what the code raised of its own is its failure
                finally:
                    # what it awaits from now on is its own write, as a checkpoint is: the
                    # heartbeat stops if that waits too long (_heartbeat)
                    ctx.attempt_ended()
                ctx.check_history_consumed()
                unstorable = True
                output = self._roundtrip_output(wf, instance_id, output)
                unstorable = False
            except (ClaimLostError, asyncio.CancelledError):
                raise
            except Exception as exc:
                if ctx.outage is not None:
                    await self._hand_back(instance_id, ctx.outage)
                error = ctx.divergence or exc
                # a diverged replay fails at once: another attempt would replay the same
                # history against the same code
                retryable = error is exc and ctx.divergence is None and not unstorable
                try:
                    retrying = await self._record_failure(
                        wf, snapshot, ctx, error, retryable=retryable
                    )
                except BackendUnavailableError as outage:
                    await self._hand_back(instance_id, outage)
                if retrying:
                    raise Rescheduled(instance_id) from exc
                if error is exc:
                    raise
                raise error from exc
            if ctx.outage is not None:  # the workflow went on past it: nothing is certain
                await self._hand_back(instance_id, ctx.outage)
            try:
                await self._renewing(
                    instance_id,
                    lambda: self._record_end(
                        instance_id,
                        worker_id=self.executor_id,
                        status=WorkflowStatus.SUCCEEDED,
                        output=output,
                    ),
                    ctx,
                )
            except BackendUnavailableError as exc:
                await self._hand_back(instance_id, exc)
            except SerializationError as exc:
                await self._fail_unstorable(wf, snapshot, ctx, exc)
            return output
        except ClaimLostError:
            info = await self.backend.get_workflow(instance_id)
            if info.status is WorkflowStatus.CANCELLED:
                raise self.outcome_error(info) from None
            raise
        except _DeadlinePassed:
            assert deadline is not None
            raise await self._expire(instance_id, deadline) from None
        except ContinueAsNew as continued:
            try:
                await self._continue(instance_id, continued)
            except SerializationError as exc:
                await self._fail_unstorable(wf, snapshot, ctx, exc)
        except asyncio.CancelledError:
            # its caller stopped waiting (a cancelled run(), a worker's stop): a sync body's
            # thread cannot be stopped, so its writes are refused from now on (it stops at its
            # next step) and the next attempt, here or elsewhere, does not race it
            ctx.lose("its attempt was cancelled")
            await self._release_quietly(instance_id)
            raise
        finally:
            timer.cancel()
            for heartbeat in beating:
                heartbeat.cancel()

    async def _invoke_by(
        self,
        ctx: ExecutionContext,
        wf: Workflow[Any, Any],
        args: Sequence[Any],
        kwargs: Any,
        remaining: float | None,
        own_task: bool = False,
    ) -> Any:
        """:meth:`_invoke`, stopped after ``remaining`` seconds (the execution's deadline), if
        given: an async body is cancelled where it awaits; a sync body's thread cannot be
        stopped, so it is abandoned (its next write is refused once the execution is cancelled).

        :raises _DeadlinePassed: the deadline came first.
        """
        if remaining is None:
            return await self._invoke(ctx, wf, args, kwargs, own_task)
        try:
            async with asyncio.timeout(remaining) as scope:
                return await self._invoke(ctx, wf, args, kwargs, own_task)
        except TimeoutError:
            if scope.expired():
                raise _DeadlinePassed() from None
            raise

    async def _expire(self, instance_id: str, deadline: datetime) -> BaseException:
        """Cancel an execution that passed its deadline (and its descendants), recording why;
        return the error its caller sees."""
        info = await self.backend.cancel_workflow(
            instance_id, error=deadline_error(instance_id, deadline)
        )
        log.info(
            "workflow %s passed its deadline %s: cancelled",
            instance_id,
            deadline.isoformat(),
            extra={"action": "workflow.deadline", "workflow_id": instance_id},
        )
        return self.outcome_error(info)

    async def _continue(self, instance_id: str, continued: ContinueAsNew) -> NoReturn:
        """Record that the run ended with :func:`durable.continue_as_new` (fenced by the lease):
        the next run is due at once."""
        try:
            await self.backend.continue_as_new(
                instance_id, worker_id=self.executor_id, input=continued.input
            )
        except BackendUnavailableError as outage:
            await self._hand_back(instance_id, outage)
        log.debug(
            "workflow %s continues as new",
            instance_id,
            extra={"action": "workflow.continued", "workflow_id": instance_id},
        )
        raise WorkflowContinued(instance_id) from None

    async def _fail_unstorable(
        self,
        wf: Workflow[Any, Any],
        snapshot: WorkflowSnapshot,
        ctx: ExecutionContext,
        refused: SerializationError,
    ) -> NoReturn:
        """The database refused to store how the attempt ended (its output, or the input it
        continues with: on MariaDB, a value larger than its ``max_allowed_packet``): record
        the attempt failed with that refusal, not retried (the same outcome would be refused
        again; left unrecorded, its lease would lapse and the body run again and again), and
        raise it."""
        try:
            await self._record_failure(wf, snapshot, ctx, refused, retryable=False)
        except BackendUnavailableError as outage:
            await self._hand_back(snapshot.id, outage)
        raise refused

    async def _record_outcome(self, instance_id: str, **outcome: Any) -> WorkflowInfo:
        """``finish_workflow(instance_id, **outcome)``, then wake this process's waits for
        outcomes (a ``result`` of this runtime's client sees it at once)."""
        info = await self.backend.finish_workflow(instance_id, **outcome)
        self.client.note_finished()
        return info

    async def _record_end(self, instance_id: str, **outcome: Any) -> None:
        """:meth:`_record_outcome` for a caller that does not use the stored header
        (``finish_execution``: the backend need not build it)."""
        await self.backend.finish_execution(instance_id, **outcome)
        self.client.note_finished()

    async def _fail_unreadable(self, instance_id: str, exc: CorruptRowError) -> None:
        """Record that the execution failed because its stored rows cannot be read (fenced by
        the claim, like any outcome)."""
        log.error(
            "workflow %s failed: %s",
            instance_id,
            exc,
            extra={"action": "workflow.unreadable", "workflow_id": instance_id},
        )
        await self._record_end(
            instance_id,
            worker_id=self.executor_id,
            status=WorkflowStatus.FAILED,
            error=ErrorInfo.from_exception(exc),
        )

    async def _invoke(
        self,
        ctx: ExecutionContext,
        wf: Workflow[Any, Any],
        args: Sequence[Any],
        kwargs: Any,
        own_task: bool = False,
    ) -> Any:
        """Run the body with ``ctx`` current: an async body in a task with a context of its
        own, or, when the calling task exists for this attempt alone (``own_task``: a worker's),
        in that task with ``ctx`` current until it returns (a task less per execution); a sync
        body in a thread of the runtime's pool."""
        if wf.is_async:
            try:
                if own_task:
                    token = _context.enter(ctx)
                    try:
                        output = await wf.fn(*args, **kwargs)
                    finally:
                        _context.leave(token)
                else:
                    scope = contextvars.copy_context()
                    scope.run(_context.enter, ctx)
                    loop = asyncio.get_running_loop()
                    output = await loop.create_task(wf.fn(*args, **kwargs), context=scope)
            except Exception:
                if ctx.unrecorded_markers:  # best effort before the failure is recorded
                    with contextlib.suppress(DurableError):
                        await ctx.record_markers()
                raise
            # durable.patched() markers not recorded yet go before the outcome
            await ctx.record_markers()
            return output
        scope = contextvars.copy_context()
        scope.run(_context.enter, ctx)
        assert self._body_threads is not None
        try:
            running = asyncio.get_running_loop().run_in_executor(
                self._body_threads, lambda: scope.run(stopping_as_failure, wf.fn, *args, **kwargs)
            )
        except RuntimeError as refused:  # no more threads: the runtime or the interpreter ends
            # the body never ran: handed back uncounted, as at a graceful stop (it was the
            # workflow's failed attempt, dead-lettered with max_attempts=1)
            await self._release_through_outage(ctx.workflow_id)
            raise HandedBack(ctx.workflow_id) from refused
        return await running

    def _roundtrip_output(self, wf: Workflow[Any, Any], instance_id: str, output: Any) -> Any:
        serializer = self.backend.serializer
        try:
            return serializer.roundtrip(output)[1]
        except SerializationError as exc:
            raise SerializationError(
                f"workflow {wf.name!r} (id {instance_id!r}) returned a value of type "
                f"{type(output).__qualname__} that cannot be stored: {exc}"
            ) from exc

    async def _record_failure(
        self,
        wf: Workflow[Any, Any],
        snapshot: WorkflowSnapshot,
        ctx: ExecutionContext,
        error: BaseException,
        *,
        retryable: bool,
    ) -> bool:
        """Record a failed attempt: schedule the next attempt (returns True), or record the
        final failure: dead-lettered when retries ran out, failed when the error is not worth
        retrying or the execution allows no retries.

        The failed steps whose failure ended the attempt
        (:meth:`ExecutionContext.rerun_positions`) run again on the next attempt, or on a
        redrive (:meth:`retry`) after a final failure, whatever their position."""
        info = ErrorInfo.from_exception(error)
        limit = snapshot.max_attempts
        policy = wf.retry
        rerun = ctx.rerun_positions()
        worth_retrying = (
            retryable
            and limit is not None
            and not isinstance(error, (NonRetryableError, *policy.non_retryable))
            and isinstance(error, policy.retry_on)
        )
        if worth_retrying and limit is not None and snapshot.attempts < limit:
            delay = policy.delay(snapshot.attempts)
            if ctx.deadline is not None:  # never due after its deadline: expire then
                left = (ctx.deadline - await self.backend.now()).total_seconds()
                delay = max(min(delay, left), 0.0)
            await self._renewing_error(
                snapshot.id,
                info,
                lambda error: self.backend.reschedule_workflow(
                    snapshot.id,
                    worker_id=self.executor_id,
                    run_after=timedelta(seconds=delay),
                    error=error,
                    rerun=rerun,
                ),
                ctx,
            )
            log.info(
                "workflow %s failed attempt %d of %d, retrying in %.1fs: %s",
                snapshot.id,
                snapshot.attempts,
                limit,
                delay,
                logged(info.message),
                extra={"action": "workflow.retry", "workflow_id": snapshot.id},
            )
            return True
        status = WorkflowStatus.DEAD_LETTER if worth_retrying else WorkflowStatus.FAILED
        await self._renewing_error(
            snapshot.id,
            info,
            lambda error: self._record_end(
                snapshot.id, worker_id=self.executor_id, status=status, error=error, rerun=rerun
            ),
            ctx,
        )
        return False

    async def _renewing_error(
        self,
        instance_id: str,
        info: ErrorInfo,
        write: Callable[[ErrorInfo], Awaitable[object]],
        ctx: ExecutionContext,
    ) -> None:
        """``write(info)`` under :meth:`_renewing`; if the database refuses to store ``info``
        (MariaDB: larger than its ``max_allowed_packet``), ``write`` again with the error cut
        down to its type and the start of its message, which says why."""
        try:
            await self._renewing(instance_id, lambda: write(info), ctx)
        except SerializationError as refused:
            kept = ErrorInfo(
                type=info.type,
                message=f"{info.message[:ERROR_KEPT]}... (cut: the database refused to store "
                f"the whole error: {refused})",
            )
            await self._renewing(instance_id, lambda: write(kept), ctx)

    async def run_child(
        self,
        ctx: ExecutionContext,
        guard: StepGuard,
        wf: Workflow[Any, Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run ``wf`` as a child of ``ctx``'s workflow at ``guard``'s position.

        The child's id is ``<parent id>/<position>`` (when that would be longer than 255
        characters, the parent id is shortened to a prefix and a hash of it:
        :func:`durable.validation.derived_id`); the parent's step records it, pending, before
        the child runs, so a replay awaits the same child instead of starting another.

        The child's outcome becomes the parent's step. A child does not retry by itself
        (it has no ``max_attempts``); its parent's attempts are its retries. When the parent
        runs this step again (its failure ended a failed attempt of the parent, or the parent
        is redriven, or it was interrupted before recording the child's failure) and finds the
        child failed or dead-lettered, the child is redriven as a new attempt of its own
        (:meth:`retry`): its completed steps are not run again, its failed ones are. A
        cancelled child stays cancelled, unless its parent's cancel cancelled it and the parent
        is run again: :meth:`~durable.backends.PersistentBackend.requeue_workflow` runs it again
        with its parent, and the parent awaits it again.
        """
        if guard.replayed:
            return guard.replay()
        await ctx.ensure_lease()
        pending = guard.pending
        child_id = pending.child_workflow_id if pending else None
        with ctx.checkpoint():
            if child_id is None:
                child_id = derived_id(ctx.workflow_id, ctx.child_suffix(guard.position))
                inherited = None if ctx.deadline is None else EnqueueOptions(deadline=ctx.deadline)
                info = await self._create(
                    wf, child_id, args, kwargs, parent_id=ctx.workflow_id, options=inherited
                )
                await guard.mark_pending(child_id)
            else:
                info = await self.backend.get_workflow(child_id)
            if info.status in (WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTER):
                with contextlib.suppress(InvalidArgumentError):  # someone redrove it already
                    await self.backend.requeue_workflow(child_id)
        try:
            keep_limits = await self._child_keeps_limits(ctx, info)
            while True:
                try:
                    value = await self._drive(wf, child_id, keep_limits=keep_limits)
                    break
                except WorkflowCancelledError:
                    # cancelled with this workflow while this attempt awaited it, then run
                    # again with it (requeue_workflow): this attempt, which the new claim of
                    # its executor lets go on, awaits the child again
                    again = await self.backend.get_workflow(child_id)
                    if again.status is not WorkflowStatus.PENDING:
                        raise
        except (ClaimLostError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if isinstance(exc, BackendUnavailableError) and not hasattr(exc, "__durable_error__"):
                ctx.outage = ctx.outage or exc  # not the child's recorded error: an outage now
            if ctx.outage is not None:
                raise
            if (
                isinstance(exc, WorkflowCancelledError)
                and ctx.deadline is not None
                and await self.backend.now() >= ctx.deadline
            ):  # the child expired with the deadline it inherited: so does this workflow
                raise _DeadlinePassed() from exc
            await guard.fail(exc, child_workflow_id=child_id)
            raise
        return await guard.succeed(value, child_workflow_id=child_id)

    async def _child_keeps_limits(self, ctx: ExecutionContext, child: WorkflowInfo) -> bool:
        """Whether a child run by its parent waits for its queue's limits: yes when its queue
        has limits, unless it is the queue of its parent or of another ancestor (the child is
        then part of the work of that ancestor, which holds a place in the queue while it
        waits for its descendants: waiting for another place could wait for ever)."""
        if not await self._queue_limits.limited([child.queue]):
            return False
        ancestor: str | None = ctx.workflow_id
        seen: set[str] = set()
        while ancestor is not None and ancestor not in seen:
            seen.add(ancestor)
            try:
                info = await self.backend.get_workflow(ancestor)
            except WorkflowNotFoundError:
                break  # deleted (retention): it holds no place
            if info.queue == child.queue:
                return False
            ancestor = info.parent_id
        return True

    async def execute_claimed(self, wf: Workflow[Any, Any], instance_id: str) -> Any:
        """Run an execution whose workflow task this executor has just claimed, and return
        its output. Returns None without running it when a drive of this runtime (``run``, a
        parent running its child, the recovery started on start) runs it now, or ran it while
        this call waited for it: the drive's outcome is the execution's.

        :raises ClaimLostError: another process took this executor id over.
        """
        return (await self.run_claimed(wf, instance_id))[1]

    async def run_claimed(self, wf: Workflow[Any, Any], instance_id: str) -> tuple[bool, Any]:
        """:meth:`execute_claimed`, and whether this call ran the execution (False: a drive
        of this runtime ran it, or runs it now; a worker does not count it as its own)."""
        if self._superseded:
            self._claimed.take(instance_id)
            raise self._lost(instance_id, WORKFLOW_TASK)
        driven = self._claimed.driven(instance_id)
        # another attempt of this execution runs here: this executor's lease lapsed under it,
        # another executor took the execution and lost it in turn, and this claim took it back
        # while that attempt went on (and may record more steps)
        overlapped = self._locks.held(instance_id)
        async with self._locks.hold(instance_id):
            if self._claimed.driven(instance_id):
                # a drive of this runtime runs it (see ClaimedStarts.driven): claimed, it is
                # due (a message came, its fanned-out calls ended), so the drive looks now,
                # not at its next poll
                self.client.note_finished()
                return False, None
            if (
                self._claimed.taken_by_drive(instance_id)
                and (await self.backend.get_workflow(instance_id)).status.is_terminal
            ):
                return False, None  # a drive ran it to its end, with the start this claim made
            began = self._claimed.take(instance_id)
            if driven and began is None:
                # a drive that ended while this waited ran it: it took the start this claim
                # made, or began the run itself (a start left here is this claim's to run)
                return False, None
            if overlapped:
                # the history this claim read predates what that attempt recorded: begin
                # again, from what it left (nothing, if it finished the execution)
                began = None
            # None if this runtime ran it meanwhile (the start then fails the fence, as before);
            # the worker's task for this execution runs its body too
            return True, await self._execute(wf, instance_id, began, own_task=True)


class _DeadlinePassed(ControlFlow):
    """Internal: the execution's deadline passed while its body ran here (a BaseException, so
    that the body's ``except Exception`` cannot swallow it)."""
