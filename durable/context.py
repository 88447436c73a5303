"""The state of one workflow execution, and the step guard every step lowers to.

While a workflow function runs, :func:`current` returns its :class:`ExecutionContext` (a context
variable, so it follows the workflow into ``asyncio.gather`` tasks and into the thread a sync
workflow runs in). Each step call takes the next *position* at the moment it is called, not when
it is scheduled: steps started together get positions in call order, so a replay matches.

A :class:`StepGuard` is one step at one position. If the history already has that position, the
guard is *replayed*: its recorded outcome is returned without running anything, and a name that
differs from the recorded one raises :class:`~durable.errors.NonDeterminismError`. Otherwise the
caller runs the step and the guard persists its outcome (fenced by the workflow's claim) before
the workflow goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, TypeVar

from durable.backends.base import PersistentBackend
from durable.errors import (
    BackendUnavailableError,
    ClaimLostError,
    ControlFlow,
    DurableError,
    NonDeterminismError,
    SerializationError,
    StepAlreadyRecordedError,
    logged,
)
from durable.errors import rebuild_exception as rebuild_exception  # also importable from here
from durable.models import WORKFLOW_TASK, ErrorInfo, StepRecord, StepStatus, new_step_record
from durable.validation import check_name

T = TypeVar("T")
#: Step failures are logged as the step module's (durable.step).
log = logging.getLogger("durable.step")

_current: ContextVar[ExecutionContext | None] = ContextVar("durable_execution", default=None)
_in_step: ContextVar[bool] = ContextVar("durable_in_step", default=False)


class WorkflowSuspended(ControlFlow):
    """Internal: the workflow handed work to others and waits without holding its lease.

    A BaseException, so that ``except Exception`` in workflow code cannot swallow it.
    """

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} is waiting for steps run by other workers")
        self.workflow_id = workflow_id


class ReplayFrontier(ControlFlow):
    """Internal: a replay-only check (:attr:`ExecutionContext.replay_only`) reached a position
    its history does not settle (none recorded, or one still pending): the recorded execution
    went no further, so the check ends there. A BaseException, so that workflow code's
    ``except Exception`` cannot swallow it."""

    def __init__(self, position: int, name: str) -> None:
        super().__init__(f"the history ends before step {name!r} at position {position}")
        self.position = position
        self.name = name


def _settled(record: StepRecord) -> bool:
    """Whether a replay returns ``record``'s outcome without running anything."""
    return record.status is not StepStatus.PENDING and not record.rerun


class Rescheduled(Exception):
    """Internal: the attempt ended without an outcome (it failed, or was handed back) and the
    next one is scheduled.

    Raised by the runtime, recognised by the worker; it lives here, below both, so that the
    worker need not import the runtime (the layers in CONTRIBUTING.md).
    """


class HandedBack(Rescheduled):
    """Internal: the attempt was handed back uncounted, not a failed attempt; its
    ``__cause__`` says why: the database could not be reached (a
    :class:`BackendUnavailableError`), or a sync body got no thread (the runtime's threads
    shut down as the interpreter exits)."""


class ExecutionHost(Protocol):
    """What an execution needs from the runtime that runs it; :class:`durable.Runtime` is one.

    Declared here, below the runtime, so that the execution context, the steps and the workflows
    reach the runtime without importing it (the layers in CONTRIBUTING.md).
    """

    @property
    def backend(self) -> PersistentBackend: ...
    @property
    def executor_id(self) -> str: ...
    @property
    def claim_ttl(self) -> timedelta: ...
    @property
    def lease_window(self) -> float: ...
    @property
    def superseded(self) -> bool: ...
    @property
    def sleep(self) -> Callable[[float], Coroutine[Any, Any, None]]: ...
    @property
    def fanout_warning_after(self) -> float: ...
    @property
    def step_threads(self) -> Executor | None: ...

    async def renew_lease(self, instance_id: str) -> None: ...

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]: ...

    async def run_child(
        self,
        ctx: ExecutionContext,
        guard: StepGuard,
        wf: Any,
        args: Sequence[Any],
        kwargs: dict[str, Any],
    ) -> Any: ...


def current() -> ExecutionContext | None:
    """The workflow execution the caller runs in, or None outside workflows and inside steps."""
    if _in_step.get():
        return None
    return _current.get()


def workflow_id() -> str:
    """The id of the workflow execution the caller runs in.

    :raises DurableError: called outside a workflow.
    """
    ctx = _current.get()
    if ctx is None:
        raise DurableError("durable.workflow_id() was called outside a workflow")
    return ctx.workflow_id


@dataclass(eq=False)
class ExecutionContext:
    """One run of one workflow execution on one executor."""

    runtime: ExecutionHost
    workflow_id: str
    workflow_name: str
    executor_id: str
    history: Mapping[int, StepRecord]
    loop: asyncio.AbstractEventLoop
    loop_thread: int
    is_async: bool
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    divergence: NonDeterminismError | None = None
    """Set when the replay diverged: the workflow fails with it whatever its code does next."""
    lease_deadline: float = 0.0
    """When this executor's lease runs out, by the local monotonic clock (conservatively: the
    time just before the claim or heartbeat that set it, plus the lease's duration)."""
    lease_lost: ClaimLostError | None = None
    """Set when a heartbeat found the lease taken: nothing more may run or be recorded."""
    outage: BackendUnavailableError | None = None
    """Set when a checkpoint could not reach the database: what was recorded is uncertain, so
    the attempt stops (every later step raises this) and is handed back, not counted."""
    deadline: datetime | None = None
    """When the execution is cancelled if it has not finished (on the store's clock), or None:
    hand-backs are never due later, and child workflows inherit it."""
    continuations: int = 0
    """How many runs of this execution came before this one (:func:`durable.continue_as_new`)."""
    _failures: dict[int, int] = field(default_factory=dict)
    """Failed positions this attempt observed (recorded, or replayed and raised), each with the
    number of positions taken at that moment."""
    recorded_version: str | None = None
    """The code version recorded when the execution started (:attr:`WorkflowInfo.code_version
    <durable.models.WorkflowInfo.code_version>`), or None when unknown; named in divergences."""
    running_version: str | None = None
    """The code version that runs this attempt, named in divergences beside the recorded one."""
    unrecorded_markers: list[StepGuard] = field(default_factory=list)
    """Markers an async workflow took (:func:`durable.patched`) that are not recorded yet:
    :meth:`record_markers` records them before anything after them is (:meth:`ensure_lease`,
    and the runtime before it records the outcome)."""
    _marker_lock: asyncio.Lock | None = None
    patch_choices: dict[str, bool] = field(default_factory=dict)
    """The branch :func:`durable.patched` chose for each patch id this run asked about: a later
    check of the same id answers the same (see :mod:`durable.patching`)."""
    history_complete: bool = False
    """The history is all there will ever be (a replay check of an execution that succeeded): a
    position it does not have is never reached for the first time, so no new patch marker is
    taken there."""
    replay_only: bool = False
    """A check of the code against the history (:mod:`durable.replayer`): nothing runs or is
    written; the first position the history does not settle ends the replay
    (:class:`ReplayFrontier`)."""
    _last_caller: tuple[asyncio.Task[Any], str, int] | None = None
    """The task that took the last position (an async workflow's), with that step's name and
    position: see :meth:`_check_interleaving`."""
    _callers: weakref.WeakSet[asyncio.Task[Any]] = field(default_factory=weakref.WeakSet)
    """The tasks that took a position in this run (an async workflow's)."""
    _writes: dict[int, float] = field(default_factory=dict)
    """This execution's own writes awaited now (:meth:`checkpoint`, :meth:`attempt_ended`),
    each by the monotonic time it began, the oldest first."""
    _write_keys: Iterator[int] = field(default_factory=itertools.count)
    backend: PersistentBackend = field(init=False, repr=False)
    """The runtime's backend, looked up once for the attempt (every step uses it)."""

    def __post_init__(self) -> None:
        self.backend = self.runtime.backend

    def attempt_ended(self) -> None:
        """The attempt's body ended: what it awaits from now on is the write of how it ended
        (its outcome, a retry, a continuation, a hand-back), counted as a write of its own
        (:meth:`write_waited`) until the attempt is over."""
        self._writes[next(self._write_keys)] = time.monotonic()

    def write_waited(self) -> float:
        """Seconds the oldest write of this execution's own still awaited has waited (its
        checkpoints, the write of how the attempt ended), by the monotonic clock; 0.0 when
        none is. The lease's heartbeat stops renewing a lease whose write has waited longer
        than ``claim_ttl``: a connection that went silent may hold it for ever. Safe from any
        thread."""
        began = list(self._writes.values())  # one C-level copy: a thread may add or remove
        return time.monotonic() - began[0] if began else 0.0

    def lease_fresh(self) -> bool:
        """True while the lease is certainly held (no I/O; safe from any thread)."""
        return (
            self.lease_lost is None
            and time.monotonic() < self.lease_deadline
            and not self.runtime.superseded
        )

    def lease_ready(self) -> bool:
        """True when :meth:`ensure_lease` has nothing to do now (no marker to record, the
        lease certainly held): a caller may skip awaiting it."""
        return not self.unrecorded_markers and self.lease_fresh()

    async def ensure_lease(self) -> None:
        """Before a step's body runs: make sure this executor still holds the workflow's lease,
        so that an executor that was frozen past its lease (a long pause, a blocked loop) does
        not run a step that its successor may already have completed.

        Free while heartbeats are on time; once the local deadline has passed, a check that
        the executor id is still this process's (see :mod:`durable.identity`) and one renewal
        (which fails if another executor took over).

        :raises ClaimLostError: the lease is gone.
        """
        if self.unrecorded_markers:
            await self.record_markers()
        if self.lease_fresh():
            return
        if self.lease_lost is not None:
            raise self.lease_lost
        runtime = self.runtime
        before = time.monotonic()
        try:
            with self.checkpoint():
                await runtime.renew_lease(self.workflow_id)
        except ClaimLostError as exc:
            self.lease_lost = exc
            raise
        self.lease_deadline = before + runtime.lease_window

    async def renew_lapsed(self, refused: ClaimLostError) -> None:
        """After a write of this execution refused with ``refused``: if its lease had only run
        out, with nobody else holding the workflow (``holder`` None, the lease not known lost),
        renew it (:meth:`ensure_lease`) so that the caller writes again. Safe: nobody else can
        have run or recorded anything under a lease that nobody took over, and the renewal
        fails if another executor holds the workflow now or it was released.

        :raises ClaimLostError: ``refused``, or the renewal's own, when the lease is gone.
        """
        if refused.holder is not None or self.lease_lost is not None:
            raise refused
        self.lease_deadline = 0.0  # the database says the lease ran out: renew it now
        await self.ensure_lease()

    async def record_markers(self) -> None:
        """Record the markers in :attr:`unrecorded_markers`, in order, before the caller
        records anything that comes after them (one writer at a time: a caller that finds a
        write under way waits for it). A marker whose write fails stays unrecorded and the
        error propagates, as a step's would.

        An async workflow cannot wait in :func:`durable.patched` (a plain call), so its marker
        is recorded here, by the next write of the execution: a later position can never be
        recorded without the marker before it.
        """
        if self._marker_lock is None:
            self._marker_lock = asyncio.Lock()
        async with self._marker_lock:
            while self.unrecorded_markers:
                await self.unrecorded_markers[0].succeed(True)
                self.unrecorded_markers.pop(0)

    def checkpoint(self, *, awaited: bool = True) -> _Checkpoint:
        """Around a write of this execution's progress: a database that cannot be reached
        sets :attr:`outage` (then the error propagates). No write once the lease is known
        lost, or another process took this executor id over; a position found recorded
        already means that this attempt's history is out of date, as an attempt that lost its
        lease (:class:`ClaimLostError`), not its failure.

        With ``awaited`` (the default), the time the write takes counts as the execution's
        own write in flight (:meth:`write_waited`): one that outlasts ``claim_ttl`` lets the
        lease lapse. Not for a write around code of the application's own that may take
        long (a transactional step's body).

        :raises ClaimLostError: the lease was lost, or the write found its position recorded.
        """
        return _Checkpoint(self, awaited)

    def lose(self, reason: str) -> ClaimLostError:
        """Take this attempt's lease for lost, for ``reason``: its writes are refused from now
        on (:meth:`checkpoint`, :meth:`ensure_lease`). Returns the error to raise."""
        self.lease_lost = ClaimLostError(
            self.workflow_id, WORKFLOW_TASK, self.executor_id, None, reason=reason
        )
        return self.lease_lost

    def child_suffix(self, position: int) -> str:
        """The suffix of the id of a child started at ``position``: ``/<position>`` in an
        execution's first run, ``/<run>.<position>`` in later ones (see
        :func:`durable.continue_as_new`), so that a later run never finds an earlier run's
        child under its own id."""
        if self.continuations:
            return f"/{self.continuations}.{position}"
        return f"/{position}"

    def next_position(self) -> int:
        with self._lock:
            position = self._next
            self._next += 1
            return position

    @property
    def positions_used(self) -> int:
        return self._next

    def failure_observed(self, position: int) -> None:
        """The failure of the step at ``position`` was recorded, or replayed and raised, now."""
        with self._lock:
            self._failures[position] = self._next

    def rerun_positions(self) -> list[int]:
        """At the end of a failed attempt: the failed positions the next attempt (or a redrive)
        must run again instead of replaying their failure.

        Positions are taken in call order, so a failure after which no position was taken
        cannot have shaped anything recorded: the workflow did not go on past it (the failure
        ended the attempt, even if steps started beside it in ``asyncio.gather`` or
        ``durable.map`` were recorded). Running it again is safe, and needed, or every attempt
        would replay the same failure. A failure the workflow handled and went on from (a
        fallback step took a position after it) keeps replaying, or the next attempt would
        diverge from its history.
        """
        with self._lock:
            return sorted(p for p, taken in self._failures.items() if taken == self._next)

    def guard(self, name: str) -> StepGuard:
        """Take the next position for a step called ``name`` and check it against the history.

        :raises NonDeterminismError: the history has a different step at that position, or the
            replay already diverged.
        """
        if self.divergence is not None:
            raise self.divergence
        if self.outage is not None:
            raise self.outage
        position = self.next_position()
        recorded = self.history.get(position)
        if recorded is not None and recorded.name != name:
            self.divergence = NonDeterminismError(
                f"workflow {self.workflow_id!r} ({self.workflow_name}) called step {name!r} at "
                f"position {position}, but its history recorded {recorded.name!r} there: the "
                "workflow's code changed while this execution was in flight, or it is not "
                "deterministic (it branches on time, randomness or I/O outside steps)"
                f"{self.versions_note()}"
            )
            raise self.divergence
        if self.is_async:
            self._check_interleaving(name, position)
        if self.replay_only and (recorded is None or not _settled(recorded)):
            raise ReplayFrontier(position, name)
        return StepGuard(self, position, name, recorded)

    def _check_interleaving(self, name: str, position: int) -> None:
        """Refuse a step that a task calls after another task, still running, called one since
        this task's last: concurrent branches of several steps each (``asyncio.gather`` of
        coroutines that each call steps) take positions in the order their writes happened to
        end, and a replay, which waits for no write, runs each branch through: it would call
        the steps at other positions (a divergence, or another call's recorded result where the
        names agree). Steps gathered themselves (``asyncio.gather(step(a), step(b))``) take
        their positions in the caller, in order.

        :raises NonDeterminismError: the interleaving (the execution fails at once).
        """
        task = asyncio.current_task()
        if task is None:
            return
        last = self._last_caller
        if last is None or last[0] is not task:
            if last is not None and task in self._callers and not last[0].done():
                raise self._interleaved(name, position, last)
            self._callers.add(task)
        self._last_caller = (task, name, position)

    def _interleaved(
        self, name: str, position: int, last: tuple[asyncio.Task[Any], str, int]
    ) -> NonDeterminismError:
        """The divergence :meth:`_check_interleaving` found (set: the execution fails)."""
        self.divergence = NonDeterminismError(
            f"workflow {self.workflow_id!r} ({self.workflow_name}) called step {name!r} "
            f"(position {position}) from a task that called steps before, after another "
            f"task still running called {last[1]!r} (position {last[2]}): the steps of "
            "concurrent branches interleave, in an order that depends on when their writes "
            "end, and a replay would not follow it. Gather the steps themselves "
            "(asyncio.gather(step(a), step(b))), run each branch as a child workflow, or "
            "use durable.map"
        )
        return self.divergence

    def marker(self, name: str, *, record_new: bool) -> tuple[bool, StepGuard | None]:
        """A marker position (:func:`durable.patched`): taken only where the history agrees.

        At the next position, the history has ``name`` (returns ``(True, guard)``, replayed),
        something else (``(False, None)``: nothing taken, the code goes on as the history did),
        or nothing: then with ``record_new`` the position is taken and ``(True, guard)``
        returned, the guard new (its caller records it); without, ``(False, None)``.

        :raises NonDeterminismError: the replay already diverged.
        """
        if self.divergence is not None:
            raise self.divergence
        if self.outage is not None:
            raise self.outage
        with self._lock:
            position = self._next
            recorded = self.history.get(position)
            if recorded is not None and recorded.name != name:
                return False, None
            if recorded is None and not record_new:
                return False, None
            self._next += 1
        return True, StepGuard(self, position, name, recorded)

    def versions_note(self) -> str:
        """The code versions (recorded, running) for a divergence's message, or ``""`` when
        neither is known."""
        if self.recorded_version is None and self.running_version is None:
            return ""
        return (
            f" (the execution was started by code version {self.recorded_version or 'unknown'}; "
            f"the code running it is version {self.running_version or 'unknown'})"
        )

    def check_history_consumed(self, ended: str = "finished") -> None:
        """At the end of a run (``ended``: how, for the message): every recorded step must
        have been replayed."""
        unreplayed = [p for p in self.history if p >= self._next]
        if unreplayed and self.divergence is None:
            first = self.history[min(unreplayed)]
            self.divergence = NonDeterminismError(
                f"workflow {self.workflow_id!r} ({self.workflow_name}) {ended} after "
                f"{self._next} steps, but its history has step {first.name!r} at position "
                f"{first.position}: the replay skipped recorded steps{self.versions_note()}"
            )
        if self.divergence is not None:
            raise self.divergence

    def block_on(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the runtime's loop from a sync workflow's thread and wait for it."""
        if threading.get_ident() == self.loop_thread:
            coro.close()
            raise DurableError(
                "a sync step or workflow was called on the event loop's thread: call sync steps "
                "from sync workflows, or `await step.aio(...)` from async ones"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()


class _Checkpoint:
    """The context manager of :meth:`ExecutionContext.checkpoint` (a class: every step enters
    one, and a generator-based one costs several times more)."""

    __slots__ = ("_awaited", "_ctx", "_key")

    def __init__(self, ctx: ExecutionContext, awaited: bool) -> None:
        self._ctx = ctx
        self._awaited = awaited
        self._key = -1  # the write's entry in ctx._writes, when awaited

    def __enter__(self) -> None:
        ctx = self._ctx
        if ctx.lease_lost is None and ctx.runtime.superseded:
            # another process runs under this executor id now: the leases are its own
            ctx.lose(f"another process runs under {ctx.executor_id!r} now")
        if ctx.lease_lost is not None:
            raise ctx.lease_lost
        if self._awaited:  # inline: this is every step's path
            key = self._key = next(ctx._write_keys)
            ctx._writes[key] = time.monotonic()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ctx = self._ctx
        ctx._writes.pop(self._key, None)
        if exc is None:
            return
        if isinstance(exc, BackendUnavailableError):
            if ctx.outage is None:
                ctx.outage = exc
        elif isinstance(exc, StepAlreadyRecordedError):
            # this executor's lease lapsed, came back to it, and another attempt of it recorded
            # this position (the executor id fences writes: both attempts passed)
            raise ctx.lose(
                f"step {exc.position} was recorded by another attempt since this one read the "
                "history (its lease lapsed under it)"
            ) from exc


def stamp_of(backend: object) -> datetime:
    """Now, by the clock ``backend`` stamps its rows with (its ``clock``: this host's in
    production, a test's time-skipping clock under :mod:`durable.testing`), else this host's:
    a step's ``started_at`` and its ``completed_at`` are read on one clock."""
    clock = getattr(backend, "clock", None)
    if callable(clock):
        now = clock()
        if isinstance(now, datetime):
            return now
    return datetime.now(UTC)


class StepGuard:
    """One step at one position: replays its recorded outcome, or persists a new one.

    Use it directly for steps that are not decorated functions::

        guard = durable.step_guard("charge-card")
        async with guard:
            if not guard.replayed:
                guard.result = await gateway.charge(order)
        receipt = guard.result

    On leaving the ``async with`` block normally, a new result is persisted; if the block raises,
    the failure is persisted and the exception propagates. A replayed guard persists nothing.
    """

    def __init__(
        self, ctx: ExecutionContext, position: int, name: str, recorded: StepRecord | None
    ) -> None:
        self.ctx = ctx
        self.position = position
        self.name = name
        self.recorded = recorded
        self.result: Any = None
        self._serialized: str | None = None  # the last value _roundtrip serialized
        if recorded is None:  # a new step (the hot path: tested first)
            self.started_at = stamp_of(ctx.backend)
            return
        # a step recorded pending (a sleep, a receive, a child) started when it was recorded
        self.started_at = (
            recorded.started_at
            if recorded.status is StepStatus.PENDING and recorded.started_at is not None
            else stamp_of(ctx.backend)
        )
        if recorded.status is StepStatus.SUCCEEDED:
            self.result = recorded.output

    @property
    def replayed(self) -> bool:
        """True when the step's final outcome is already recorded (nothing runs again)."""
        return self.recorded is not None and self.recorded.status is not StepStatus.PENDING

    @property
    def pending(self) -> StepRecord | None:
        """The recorded pending row (a started child workflow), if any."""
        if self.recorded is not None and self.recorded.status is StepStatus.PENDING:
            return self.recorded
        return None

    def replay(self) -> Any:
        """Return the recorded result, or raise the recorded error."""
        assert self.recorded is not None
        if self.recorded.status is StepStatus.FAILED:
            assert self.recorded.error is not None
            self.ctx.failure_observed(self.position)
            raise rebuild_exception(self.recorded.error)
        return self.recorded.output

    def _roundtrip(self, value: Any) -> Any:
        """The value as a replay will see it; raises SerializationError naming the step. Its
        serialized form is kept for the record (:attr:`StepRecord.serialized_output`), so the
        backend does not serialize it again."""
        serializer = self.ctx.backend.serializer
        try:
            self._serialized, stored = serializer.roundtrip(value)
            return stored
        except SerializationError as exc:
            raise SerializationError(
                f"step {self.name!r} (position {self.position}) of workflow "
                f"{self.ctx.workflow_id!r} returned a value of type {type(value).__qualname__} "
                f"that the {serializer.name or type(serializer).__name__} serializer cannot "
                f"store: {exc}"
            ) from exc

    async def succeed(
        self, value: Any, *, attempts: int = 1, child_workflow_id: str | None = None
    ) -> Any:
        """Persist the step's result and return it as a replay would see it. A result the
        serializer rejects is persisted as the step's failure, and SerializationError raised."""
        try:
            stored = self._roundtrip(value)
        except SerializationError as exc:
            await self.fail(exc, attempts=attempts, child_workflow_id=child_workflow_id)
            raise
        await self._record(
            StepStatus.SUCCEEDED, output=stored, attempts=attempts, child=child_workflow_id
        )
        self.result = stored
        return stored

    def succeed_blocking(self, value: Any, *, attempts: int = 1) -> Any:
        """:meth:`succeed`, from a sync workflow's thread. Where the backend can record from a
        thread (:attr:`~durable.backends.PersistentBackend.records_steps_blocking`), the step
        is recorded here; otherwise on the runtime's event loop, waited for."""
        ctx = self.ctx
        backend = ctx.backend
        if not backend.records_steps_blocking:
            return ctx.block_on(self.succeed(value, attempts=attempts))
        try:
            stored = self._roundtrip(value)
        except SerializationError as exc:
            ctx.block_on(self.fail(exc, attempts=attempts))
            raise
        record = self._entry(StepStatus.SUCCEEDED, output=stored, attempts=attempts, child=None)
        if not ctx.lease_fresh():  # as in _record
            ctx.block_on(ctx.ensure_lease())
        try:
            with ctx.checkpoint():
                backend.record_step_blocking(ctx.workflow_id, record, worker_id=ctx.executor_id)
        except ClaimLostError as exc:
            if ctx.lease_lost is not None:  # known lost: nothing to renew (the loop may be gone)
                raise
            ctx.block_on(ctx.renew_lapsed(exc))
            with ctx.checkpoint():
                backend.record_step_blocking(ctx.workflow_id, record, worker_id=ctx.executor_id)
        self.recorded = record
        self.result = stored
        return stored

    async def fail(
        self, exc: BaseException, *, attempts: int = 1, child_workflow_id: str | None = None
    ) -> BaseException:
        """Persist the step's failure (its exception's type, message, traceback and args), and
        return the exception as a replay will raise it (:func:`rebuild_exception`, with this
        one's traceback): the workflow sees the same in its first run as after a crash, so it
        takes the same path (an ``except`` that matched only the live exception, a message
        its constructor built anew, would have changed in the replay)."""
        # as stored (a tuple among its args is a list then), on every backend
        error = ErrorInfo.from_json(ErrorInfo.from_exception(exc).to_json())
        await self._record(
            StepStatus.FAILED, error=error, attempts=attempts, child=child_workflow_id
        )
        self.ctx.failure_observed(self.position)
        log.info(
            "step %s (position %d) of workflow %s failed after %d attempt(s): %s: %s",
            self.name,
            self.position,
            self.ctx.workflow_id,
            attempts,
            error.type,
            logged(error.message),
            extra={
                "action": "step.failed",
                "workflow_id": self.ctx.workflow_id,
                "step": self.name,
                "position": self.position,
            },
        )
        seen = rebuild_exception(error).with_traceback(exc.__traceback__)
        seen.__suppress_context__ = True  # raised where the live one is handled: not "during"
        return seen

    async def mark_pending(self, child_workflow_id: str) -> None:
        """Persist that the step started a child workflow whose result it awaits."""
        await self._record(StepStatus.PENDING, attempts=1, child=child_workflow_id)

    async def _record(self, status: StepStatus, **fields: Any) -> None:
        """Persist the step with ``status`` and the :meth:`_entry` ``fields``."""
        ctx = self.ctx
        record = self._entry(status, **fields)
        write = ctx.backend.record_step
        if not ctx.lease_fresh():
            # the step outlasted the window in which the lease is surely held (this process
            # may have been paused, and taken for dead): is the executor id still its own?
            # The database fences the write by executor id only
            await ctx.ensure_lease()
        try:
            with ctx.checkpoint():
                await write(ctx.workflow_id, record, worker_id=ctx.executor_id)
        except ClaimLostError as exc:
            await ctx.renew_lapsed(exc)  # the lease ran out under the write: renewed if free
            with ctx.checkpoint():
                await write(ctx.workflow_id, record, worker_id=ctx.executor_id)
        self.recorded = record

    def _entry(
        self,
        status: StepStatus,
        *,
        output: Any = None,
        error: ErrorInfo | None = None,
        attempts: int,
        child: str | None,
    ) -> StepRecord:
        return new_step_record(
            self.position,
            self.name,
            status,
            output,
            self._serialized if output is not None else None,
            error,
            child,
            attempts,
            self.ctx.executor_id,
            self.started_at,
        )

    async def __aenter__(self) -> StepGuard:
        if not self.replayed:
            await self.ctx.ensure_lease()
        self._token = _in_step.set(True)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _in_step.reset(self._token)
        if self.replayed:
            if exc is None and self.recorded is not None:
                self.result = self.replay()
            return
        if exc is None:
            await self.succeed(self.result)
        elif isinstance(exc, Exception):
            await self.fail(exc)


def step_guard(name: str) -> StepGuard:
    """The step guard for the next position of the current workflow (see :class:`StepGuard`).

    :raises DurableError: called outside a workflow.
    :raises InvalidArgumentError: ``name`` is empty, too long or not valid Unicode.
    :raises NonDeterminismError: the history has another step at this position.
    """
    check_name(name, "the step name")
    ctx = current()
    if ctx is None:
        raise DurableError(f"durable.step_guard({name!r}) was called outside a workflow")
    return ctx.guard(name)


def in_step() -> _StepScope:
    """Mark the code that runs as a step's body: durable calls inside it are plain calls."""
    return _StepScope()


class _StepScope:
    __slots__ = ("_token",)  # entered around every step's body: no instance dict

    def __enter__(self) -> None:
        self._token = _in_step.set(True)

    def __exit__(self, *exc: object) -> None:
        _in_step.reset(self._token)


def enter(ctx: ExecutionContext) -> Any:
    """Make ``ctx`` current; returns a token for :func:`leave`."""
    return _current.set(ctx)


def leave(token: Any) -> None:
    _current.reset(token)
