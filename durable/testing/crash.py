"""Crash injection: a one-line proof that a workflow is replay-safe.

``await durable.testing.check_replay_safe(checkout, "o-1")`` runs ``checkout("o-1")`` once to the
end (the *reference* run), then, for every position of its history (each step, sleep, receive,
child workflow...; of each of its runs, for a workflow that continues as new) and each of three
boundaries,

* **before**: the position is taken, nothing of it has run;
* **inside**: it ran (a step's function returned or raised), its outcome is not recorded yet;
* **after**: its outcome is recorded (the checkpoint), the workflow has not gone on;

runs a new execution of the workflow with the same arguments, crashes it there, and resumes it.
The crash is simulated in this process: an exception no ``except Exception`` can catch is raised
out of the runtime at that point, the execution is abandoned as a killed process leaves it
(status running, its history as recorded), and its lease is dropped, so that resuming it is a
recovery: the next attempt replays the history and goes on.

After each resume it checks that

* the execution ends as the reference did (the same result, or the same exception type) and
  its history has the same steps at the same positions, with the same outputs
  (``compare_outputs=False`` compares results and outputs only by kind, for workflows whose
  steps return random or time-dependent values);
* the replay did not diverge (no :class:`~durable.errors.NonDeterminismError`) and the position
  was reached at all (a run that takes another path than the reference is not deterministic);
* no output recorded before the crash changed, and no step completed before the crash was
  recorded again (it would have run twice).

Every broken boundary is listed in the :class:`ReplayUnsafeError` it raises, by position, step
name and boundary. It runs on its own in-memory backend with a
:class:`~durable.testing.clock.TimeSkippingClock`, so sleeps and backoffs cost nothing; child
workflows run, but crashes are injected into the checked workflow's own positions only. Only
``record_step`` checkpoints have an *inside* and an *after* boundary (a receive, an event or a
stream write records itself in the operation that performs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from durable.backends.memory import InMemoryBackend
from durable.context import ExecutionContext, StepGuard
from durable.errors import (
    ConfigurationError,
    ControlFlow,
    DurableError,
    InvalidArgumentError,
    NonDeterminismError,
    NotSupportedError,
    SerializationError,
)
from durable.models import START_TIMER_STEP, WORKFLOW_TASK, StepRecord, StepStatus
from durable.runtime import Runtime
from durable.testing.clock import TimeSkippingClock
from durable.timers import SLEEP_STEP
from durable.workflow import Workflow

#: Seconds (real time) one run of the checked workflow may take before the check gives up.
RUN_TIMEOUT = 60.0

#: The three boundaries of a position, in the order they are crossed.
PHASES = ("before", "inside", "after")


class ReplayUnsafeError(DurableError, AssertionError):
    """:func:`check_replay_safe` found boundaries where a crash changes what the workflow does;
    :attr:`problems` lists them (an AssertionError too, so pytest shows it as a failed check)."""

    def __init__(self, workflow: str, problems: list[str]) -> None:
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"workflow {workflow!r} is not replay-safe: {len(problems)} problem(s):\n{lines}"
        )
        self.problems = problems


@dataclass
class ReplayCheck:
    """What :func:`check_replay_safe` did: the reference run's outcome and the boundaries it
    crashed at (each ``"<position> <name> <phase>"``), all passed."""

    result: Any
    boundaries: list[str] = field(default_factory=list)


class _Crash(ControlFlow):
    """The simulated crash: a BaseException, so the workflow's ``except Exception`` cannot
    swallow it, and the runtime records nothing for it."""


@dataclass
class _Plan:
    """Where the armed crash fires: one execution, one position of one of its runs (see
    :func:`durable.continue_as_new`), one phase; fired once."""

    instance_id: str
    run: int
    position: int
    phase: str
    fired: bool = False


class _CrashingBackend(InMemoryBackend):
    """An in-memory backend that crashes at a planned ``record_step`` and notes which positions
    each execution recorded through it, each with its run (the execution's ``continuations``
    then: a run that continued as new starts again at position 0)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.plan: _Plan | None = None
        self.recorded: dict[str, list[tuple[int, int]]] = {}
        # each execution's positions as its runs first took them: (run, position) -> name
        self.taken: dict[str, dict[tuple[int, int], str]] = {}
        self._plan_lock = threading.Lock()

    def take(self, instance_id: str, run: int, position: int, phase: str) -> bool:
        """Whether the crash planned at this point fires now (once)."""
        with self._plan_lock:
            plan = self.plan
            if (
                plan is None
                or plan.fired
                or plan.instance_id != instance_id
                or plan.run != run
                or plan.position != position
                or plan.phase != phase
            ):
                return False
            plan.fired = True
            return True

    def record_step_blocking(
        self, instance_id: str, step: StepRecord, *, worker_id: str, task_id: str = WORKFLOW_TASK
    ) -> None:
        with self._lock:
            run = self._get(instance_id).continuations
        if self.take(instance_id, run, step.position, "inside"):
            raise _Crash()
        super().record_step_blocking(instance_id, step, worker_id=worker_id, task_id=task_id)
        self.recorded.setdefault(instance_id, []).append((run, step.position))
        if self.take(instance_id, run, step.position, "after"):
            raise _Crash()


@contextlib.contextmanager
def _crash_before(backend: _CrashingBackend) -> Iterator[None]:
    """While it lasts, taking a position planned as ``before`` in ``backend``'s executions
    crashes there (the only place every position goes through: ``ExecutionContext.guard``),
    and every position taken is noted (:attr:`_CrashingBackend.taken`)."""
    original = ExecutionContext.guard

    def guard(self: ExecutionContext, name: str) -> StepGuard:
        taken = original(self, name)
        if self.runtime.backend is backend:
            run = self.continuations
            where = (run, taken.position)
            backend.taken.setdefault(self.workflow_id, {}).setdefault(where, name)
            if backend.take(self.workflow_id, run, taken.position, "before"):
                raise _Crash()
        return taken

    ExecutionContext.guard = guard  # type: ignore[method-assign]
    try:
        yield
    finally:
        ExecutionContext.guard = original  # type: ignore[method-assign]


async def check_replay_safe(
    workflow: Workflow[Any, Any], *args: Any, compare_outputs: bool = True, **kwargs: Any
) -> ReplayCheck:
    """Prove ``workflow(*args, **kwargs)`` replay-safe: crash it at every boundary of every
    position of its history (before, inside, after), resume it each time, and check it ends as
    an uncrashed run does (see the module's docstring). Returns what was checked.

    Its steps run once per boundary (about three times per position), for real: give it
    stand-ins for side effects you do not want repeated.

    :raises ReplayUnsafeError: a crash at some boundary changed the outcome, the history or a
        recorded output, or made a completed step run again; every such boundary is listed.
    :raises InvalidArgumentError: ``workflow`` is not a durable workflow, or cannot take
        ``args`` and ``kwargs``.
    :raises SerializationError: they cannot be stored.
    :raises DurableError: it cannot run on the in-memory backend the check uses (a
        ``@durable.transaction`` step), or its uncrashed run failed before any step, so
        nothing could be checked.
    """
    if not isinstance(workflow, Workflow):
        raise InvalidArgumentError(f"check_replay_safe needs a @durable.workflow, got {workflow!r}")
    problem = workflow.cannot_take(args, kwargs)
    if problem is not None:
        raise InvalidArgumentError(
            f"check_replay_safe: {workflow.name!r} cannot be called with these arguments: {problem}"
        )
    backend = _CrashingBackend()
    clock = TimeSkippingClock()
    runtime = Runtime(backend, executor_id="replay-check", poll_interval=0.01)
    clock.install(runtime)
    problems: list[str] = []
    async with runtime:
        with _crash_before(backend):
            reference = await _outcome(runtime, workflow, "reference", args, kwargs)
            if not reference[0] and isinstance(
                reference[1], ConfigurationError | NotSupportedError
            ):  # the check could not run it (a transactional step: no transactions in memory)
                raise DurableError(
                    f"check_replay_safe could not run {workflow.name!r} on its in-memory "
                    f"backend, so checked nothing: {reference[1]}"
                ) from reference[1]
            if not reference[0] and isinstance(
                reference[1], InvalidArgumentError | SerializationError
            ):
                raise reference[1]  # refused before it started (its arguments cannot be stored)
            history = await backend.list_steps("reference")
            if not reference[0] and not history:
                raise DurableError(
                    f"check_replay_safe: the uncrashed run of {workflow.name!r} failed before "
                    f"its first step, so there is nothing to check: "
                    f"{type(reference[1]).__name__}: {reference[1]}"
                ) from reference[1]
            through_record = set(backend.recorded.get("reference", []))
            check = ReplayCheck(result=reference[1] if reference[0] else None)
            # every position of every run (a workflow that continued as new had several; its
            # history holds the last one's)
            for (run, position), name in backend.taken.get("reference", {}).items():
                for phase in PHASES:
                    if phase != "before" and (run, position) not in through_record:
                        continue
                    of_run = f" of run {run}" if run else ""
                    where = f"position {position}{of_run} ({name!r}), {phase} it"
                    found = await _scenario(
                        runtime,
                        backend,
                        workflow,
                        args,
                        kwargs,
                        _Plan(f"crash-{run}-{position}-{phase}", run, position, phase),
                        reference,
                        history,
                        compare_outputs,
                    )
                    problems.extend(f"crash at {where}: {p}" for p in found)
                    check.boundaries.append(f"{position}{of_run} {name} {phase}")
    if problems:
        raise ReplayUnsafeError(workflow.name, problems)
    return check


def check_replay_safe_sync(
    workflow: Workflow[Any, Any], *args: Any, compare_outputs: bool = True, **kwargs: Any
) -> ReplayCheck:
    """:func:`check_replay_safe` for sync code (a sync test): runs it on an event loop of its
    own, so call it where no loop is running.

    :raises DurableError: called where an event loop runs (an async test): ``await``
        :func:`check_replay_safe` there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise DurableError(
            "check_replay_safe_sync runs its own event loop, so it cannot be called where one "
            "runs (an async test): await durable.testing.check_replay_safe(...) instead"
        )
    return asyncio.run(
        check_replay_safe(workflow, *args, compare_outputs=compare_outputs, **kwargs)
    )


Outcome = tuple[bool, Any]


async def _outcome(
    runtime: Runtime, workflow: Workflow[Any, Any], workflow_id: str, args: Any, kwargs: Any
) -> Outcome:
    """``(True, result)`` or ``(False, exception)`` of running the execution to its end.

    :raises DurableError: it did not end within :data:`RUN_TIMEOUT` seconds.
    """
    try:
        async with asyncio.timeout(RUN_TIMEOUT) as scope:
            return True, await runtime.run(workflow, *args, workflow_id=workflow_id, **kwargs)
    except Exception as exc:
        if isinstance(exc, TimeoutError) and scope.expired():
            raise DurableError(
                f"check_replay_safe: workflow {workflow.name!r} (execution {workflow_id!r}) did "
                f"not finish within {RUN_TIMEOUT:g} s: it waits for something nothing here "
                "provides (a message received without a timeout, a durable.map step: the check "
                "runs no worker), or it runs that long"
            ) from None
        return False, exc


async def _scenario(
    runtime: Runtime,
    backend: _CrashingBackend,
    workflow: Workflow[Any, Any],
    args: Any,
    kwargs: Any,
    plan: _Plan,
    reference: Outcome,
    history: list[StepRecord],
    compare_outputs: bool,
) -> list[str]:
    """Run one execution, crash it where ``plan`` says, resume it; return its problems."""
    instance_id = plan.instance_id
    backend.plan = plan
    try:
        first = await _outcome(runtime, workflow, instance_id, args, kwargs)
    except _Crash:
        first = None
    finally:
        fired = backend.plan.fired
        backend.plan = None
    if not fired or first is not None:
        assert first is not None
        return [
            "the run never got there: it took another path than the reference run (it "
            + _ended(first)
            + "; the workflow is not deterministic: it branches on time, randomness or I/O "
            "outside steps)"
        ]
    before = {s.position: s for s in await backend.list_steps(instance_id)}
    crashed_run = (await backend.get_workflow(instance_id)).continuations
    recorded_before = len(backend.recorded.get(instance_id, []))
    # the process died: its lease goes (as if it expired), the execution stays running
    await backend.release_task_claim(instance_id, WORKFLOW_TASK, runtime.executor_id)
    resumed = await _outcome(runtime, workflow, instance_id, args, kwargs)
    after = {s.position: s for s in await backend.list_steps(instance_id)}
    problems: list[str] = []
    if not resumed[0] and isinstance(resumed[1], NonDeterminismError):
        return [f"the replay diverged: {resumed[1]}"]
    if resumed[0] != reference[0]:
        problems.append(f"the resumed run {_ended(resumed)}, the reference run {_ended(reference)}")
    elif not resumed[0]:
        if type(resumed[1]) is not type(reference[1]):
            problems.append(
                f"the resumed run {_ended(resumed)}, the reference run {_ended(reference)}"
            )
    elif compare_outputs and not _same(backend, resumed[1], reference[1]):
        problems.append(
            f"the resumed run returned {resumed[1]!r}, the reference run {reference[1]!r}"
        )
    # the crashed run's history, unless it continued as new since (the history went with it)
    same_run = (await backend.get_workflow(instance_id)).continuations == crashed_run
    for position, row in (before if same_run else {}).items():
        if row.status is StepStatus.PENDING:
            continue
        now = after.get(position)
        if (
            now is None
            or now.status is not row.status
            or not _same(backend, now.output, row.output)
        ):
            problems.append(
                f"step {row.name!r} at position {position} was recorded as {row.status.value} "
                f"with {row.output!r} before the crash, and "
                + (
                    "is gone after it"
                    if now is None
                    else f"as {now.status.value} with {now.output!r} after it"
                )
            )
    again = [
        p
        for run, p in backend.recorded.get(instance_id, [])[recorded_before:]
        if run == crashed_run and p in before and before[p].status is not StepStatus.PENDING
    ]
    if again:
        problems.append(f"steps completed before the crash were recorded again: {again}")
    problems.extend(_history_changes(backend, history, after, compare_outputs))
    return problems


def _history_changes(
    backend: _CrashingBackend,
    history: list[StepRecord],
    after: dict[int, StepRecord],
    compare_outputs: bool,
) -> list[str]:
    expected = {s.position: s for s in history}
    if sorted(expected) != sorted(after) or any(
        after[p].name != s.name for p, s in expected.items()
    ):
        return [
            "its history differs from the reference run's: "
            f"{_names(after)} instead of {_names(expected)}"
        ]
    if not compare_outputs:
        return []
    return [
        f"step {s.name!r} at position {p} recorded {after[p].output!r}, the reference run "
        f"{s.output!r}"
        for p, s in expected.items()
        if s.status is not StepStatus.PENDING
        # a wake-up time, a timer's due time: when the run happened, not what it did
        and s.name not in (SLEEP_STEP, START_TIMER_STEP)
        and not _same(backend, after[p].output, s.output)
    ]


def _names(steps: dict[int, StepRecord]) -> list[str]:
    return [f"{p}:{steps[p].name}" for p in sorted(steps)]


def _same(backend: _CrashingBackend, a: Any, b: Any) -> bool:
    """Equal as stored (so a tuple and a list, or 1 and 1.0 after JSON, compare as stored)."""
    try:
        return bool(backend.serializer.dumps(a) == backend.serializer.dumps(b))
    except DurableError:
        return bool(a == b)


def _ended(outcome: Outcome) -> str:
    ok, value = outcome
    if ok:
        return f"returned {value!r}"
    return f"raised {type(value).__name__}: {value}"


__all__ = [
    "PHASES",
    "ReplayCheck",
    "ReplayUnsafeError",
    "check_replay_safe",
    "check_replay_safe_sync",
]
