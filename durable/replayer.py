"""Replaying recorded executions against the current code, without running or writing
anything: the check a team runs in CI before it deploys a change to a workflow.

:func:`replay_history` runs the workflow function over a recorded history (read from a
backend, or from a file :mod:`durable.history` wrote) in a *replay-only* execution context
(:attr:`~durable.context.ExecutionContext.replay_only`): every step, sleep, message, event and
child the code reaches is answered from the history (its recorded result returned, its
recorded error raised); no step body runs and nothing is written (the context's backend refuses
every call). The replay ends:

* where the history ends (a position it has not recorded, or one still pending: the execution
  is in flight there): the code agrees with the history so far;
* where the code does something else than the history at a position (another step name, a
  step where a patch marker was recorded, or a missing marker): a divergence, as a worker's
  replay would find it (:class:`~durable.errors.NonDeterminismError`);
* where the function returns or raises: a divergence if it leaves recorded positions
  unreplayed, or if the execution succeeded and the code reaches a position it never recorded,
  returns another output, or raises.

Each result names the code version the execution recorded and the one replaying it.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from durable import context as _context
from durable.context import ExecutionContext, ReplayFrontier, StepGuard
from durable.continuation import ContinueAsNew
from durable.errors import (
    DurableError,
    InvalidArgumentError,
    NonDeterminismError,
    no_stop_iteration,
)
from durable.models import WorkflowSnapshot, WorkflowStatus
from durable.serialization import JSONSerializer, Serializer
from durable.workflow import Workflow


@dataclass(frozen=True, kw_only=True)
class ReplayResult:
    """What replaying one recorded execution against the current code found."""

    workflow_id: str
    workflow_name: str
    status: WorkflowStatus
    """The execution's recorded status."""
    recorded_version: str | None
    """The code version that started the execution (None: unknown)."""
    running_version: str
    """The version of the code replayed against it."""
    replayed: int
    """How many positions the code took before the replay ended (the last one, when it did not
    complete, is where the history stops: a step in flight, a wait)."""
    complete: bool
    """True when the workflow function returned (or raised) within the history; False when
    the replay stopped where the recorded execution is still in flight."""
    output: Any = None
    """What the function returned, when it did."""
    divergence: str | None = None
    """Why the code does not match the history, or None when it does."""

    @property
    def ok(self) -> bool:
        """True when the code replays the execution as it was recorded."""
        return self.divergence is None

    def describe(self) -> str:
        """One line for a report: the id, the verdict, the versions."""
        versions = f"recorded {self.recorded_version or 'unknown'}, running {self.running_version}"
        if self.divergence is not None:
            head = f"{self.workflow_id} ({self.workflow_name})"
            return f"{head}: DIVERGES ({versions}): {self.divergence}"
        if self.complete:
            where = "to its end"
        else:  # the last position it took is where the history stops
            stop = f"up to position {max(self.replayed - 1, 0)}"
            if self.status.is_terminal:
                where = f"{stop}, where the execution ended ({self.status.value})"
            else:
                where = f"{stop}, where it is in flight"
        return f"{self.workflow_id} ({self.workflow_name}): ok, replayed {where} ({versions})"


class ReplayWriteError(DurableError):
    """The replayed code tried to reach the database: a replay answers everything from the
    history, so the code did something the history does not settle."""


class _NoBackend:
    """The backend of a replay: its serializer only; anything else is refused."""

    def __init__(self, serializer: Serializer) -> None:
        self.serializer = serializer
        self.records_steps_blocking = False

    @staticmethod
    def clock() -> datetime:
        """What a step's guard stamps its start with (a replay writes it nowhere)."""
        return datetime.now(UTC)

    def __getattr__(self, name: str) -> Any:
        raise ReplayWriteError(
            f"the replayed code tried to use the backend ({name}): a replay reads only the "
            "recorded history and writes nothing"
        )


class _ReplayHost:
    """The :class:`~durable.context.ExecutionHost` of a replay: nothing runs, nothing waits."""

    executor_id = "durable-replay"
    claim_ttl = timedelta(days=1)
    lease_window = math.inf
    superseded = False
    fanout_warning_after = math.inf
    step_threads = None

    def __init__(self, serializer: Serializer) -> None:
        self.backend: Any = _NoBackend(serializer)
        self.sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep
        self._tasks: set[asyncio.Task[Any]] = set()

    async def renew_lease(self, instance_id: str) -> None:
        return None

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        coro.close()  # a replay starts no background work

        async def nothing() -> None:
            return None

        task = asyncio.get_running_loop().create_task(nothing(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run_child(
        self,
        ctx: ExecutionContext,
        guard: StepGuard,
        wf: Any,
        args: Sequence[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        if guard.replayed:
            return guard.replay()
        raise ReplayFrontier(guard.position, guard.name)


async def replay_history(
    wf: Workflow[Any, Any],
    history: WorkflowSnapshot,
    *,
    app_version: str | None = None,
    serializer: Serializer | None = None,
) -> ReplayResult:
    """Replay the recorded execution ``history`` against ``wf``'s current code (see the
    module's docstring). Returns what it found; a divergence is reported, not raised.

    :param app_version: the version the running code is known as (as ``Runtime(app_version=)``)
        when the workflow has no ``version`` of its own.
    :param serializer: for comparing outputs (default JSON).
    :raises InvalidArgumentError: ``history`` is not an execution of ``wf`` (another name).
    """
    if not isinstance(wf, Workflow):
        raise InvalidArgumentError(f"replay needs a @durable.workflow, got {wf!r}")
    if history.name != wf.name:
        raise InvalidArgumentError(
            f"the history {history.id!r} is of workflow {history.name!r}, not {wf.name!r}"
        )
    ser = serializer or JSONSerializer()
    running = wf.code_version(app_version)
    ctx = ExecutionContext(
        runtime=_ReplayHost(ser),
        workflow_id=history.id,
        workflow_name=wf.name,
        executor_id=_ReplayHost.executor_id,
        history={s.position: s for s in history.steps},
        loop=asyncio.get_running_loop(),
        loop_thread=threading.get_ident(),
        is_async=wf.is_async,
        lease_deadline=math.inf,
        continuations=history.continuations,
        recorded_version=history.code_version,
        running_version=running,
        history_complete=WorkflowStatus(history.status) is WorkflowStatus.SUCCEEDED,
        replay_only=True,
    )
    stored = history.input if isinstance(history.input, dict) else {}
    args, kwargs = list(stored.get("args", [])), dict(stored.get("kwargs", {}))

    def result(
        *, complete: bool, output: Any = None, divergence: str | None = None
    ) -> ReplayResult:
        return ReplayResult(
            workflow_id=history.id,
            workflow_name=wf.name,
            status=WorkflowStatus(history.status),
            recorded_version=history.code_version,
            running_version=running,
            replayed=ctx.positions_used,
            complete=complete,
            output=output,
            divergence=divergence,
        )

    status = WorkflowStatus(history.status)
    try:
        output = await _invoke(ctx, wf, args, kwargs)
        ctx.check_history_consumed()
    except ReplayFrontier as end:
        if status is WorkflowStatus.SUCCEEDED:
            return result(
                complete=False,
                divergence=(
                    f"the code reaches {end.name!r} at position {end.position}, but the "
                    f"execution succeeded with {len(history.steps)} recorded position(s) and "
                    "did not reach it"
                ),
            )
        return result(complete=False)
    except NonDeterminismError as exc:
        return result(complete=False, divergence=str(exc))
    except ContinueAsNew:
        try:
            ctx.check_history_consumed("continued as new")
        except NonDeterminismError as exc:  # before the point the recorded run reached
            return result(complete=False, divergence=str(exc))
        if status is WorkflowStatus.SUCCEEDED:
            return result(
                complete=True,
                divergence="the code continues as new where the recorded run returned",
            )
        return result(complete=True)
    except ReplayWriteError as exc:
        return result(complete=False, divergence=str(exc))
    except Exception as exc:
        if status is WorkflowStatus.SUCCEEDED or not status.is_terminal:
            return result(
                complete=True,
                divergence=f"the replay raised {type(exc).__name__}: {exc}",
            )
        return result(complete=True)
    if status is WorkflowStatus.SUCCEEDED:
        try:
            seen = ser.loads(ser.dumps(output))
        except DurableError as exc:
            return result(complete=True, divergence=f"the replay's output cannot be stored: {exc}")
        if seen != history.output:
            return result(
                complete=True,
                output=seen,
                divergence=(
                    f"the replay returns {seen!r}, but the execution recorded {history.output!r}"
                ),
            )
        return result(complete=True, output=seen)
    return result(complete=True, output=output)


async def _invoke(
    ctx: ExecutionContext, wf: Workflow[Any, Any], args: list[Any], kwargs: dict[str, Any]
) -> Any:
    """Run the workflow function with ``ctx`` current: an async one as a task, a sync one in a
    thread (as a runtime runs them)."""
    scope = contextvars.copy_context()
    scope.run(_context.enter, ctx)
    if wf.is_async:
        return await asyncio.get_running_loop().create_task(wf.fn(*args, **kwargs), context=scope)
    return await asyncio.to_thread(scope.run, no_stop_iteration, wf.fn, *args, **kwargs)
