"""``@durable.step`` and ``durable.run_step``: functions whose outcome is persisted once.

Inside a workflow, calling a step takes the workflow's next position. If the history has that
position, the recorded result is returned (or the recorded error raised) and the function does
not run. Otherwise it runs, is retried according to its :class:`~durable.retry.RetryPolicy`, and
its outcome is persisted before the call returns.

Outside a workflow (and inside another step) a step is a plain call: nothing is persisted. This
keeps steps unit-testable and lets a step call helpers that happen to be steps.

Sync and async: an async step is awaited from async workflows. A sync step is called directly
from sync workflows, and awaited through ``step.aio(...)`` from async ones (it then runs in a
worker thread, so the event loop is never blocked).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import functools
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from datetime import timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from durable import telemetry
from durable.context import (
    ExecutionContext,
    ExecutionHost,
    StepGuard,
    WorkflowSuspended,
    current,
    in_step,
)
from durable.errors import (
    DurableError,
    InvalidArgumentError,
    StepTimeoutError,
    no_stop_iteration,
    raise_as_failure,
    stopping_as_failure,
)
from durable.models import StepRecord, StepStatus, TaskSpec
from durable.registry import default_registry
from durable.retry import NO_RETRY, RetryPolicy
from durable.validation import (
    check_decorated,
    check_duration,
    check_instance,
    check_int,
    check_name,
    default_name,
    is_async_callable,
)

log = logging.getLogger(__name__)

#: Task ids of steps handed to other workers: ``step:<position>``.
STEP_TASK_PREFIX = "step:"

P = ParamSpec("P")
T = TypeVar("T")


class Step(Generic[P, T]):
    """A function whose outcome is persisted when called in a workflow."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        retry: RetryPolicy,
        timeout: timedelta | None = None,
    ) -> None:
        # first: a callable object's attributes (its __dict__) must not replace the step's
        functools.update_wrapper(cast(Any, self), fn)
        self.fn = fn
        self.timeout = timeout
        """How long one attempt may run before it fails with :class:`StepTimeoutError`, or
        None (see :func:`step`)."""
        self.name = check_name(name, "the step name")  # the decorator's, or the default
        self.retry = retry
        self.is_async = is_async_callable(fn)

    @property
    def label(self) -> str:
        """How messages refer to the step in code: its function's ``__name__``, else ``step``
        (a ``functools.partial``, a callable object)."""
        label = getattr(self.fn, "__name__", None)
        return label if isinstance(label, str) else "step"

    def __repr__(self) -> str:
        if self.bound_to is not None:
            return f"<durable step {self.name} bound to {self.bound_to!r}>"
        return f"<durable step {self.name}>"

    #: The instance a step defined in a class body was looked up on (see :meth:`__get__`).
    bound_to: object | None = None

    def __get__(self, instance: object | None, owner: type[Any] | None = None) -> Any:
        """A step defined in a class body is bound to the instance it is looked up on, as a
        method is: ``await service.charge(order)`` runs ``charge(service, order)`` as the step
        (the instance is passed to each attempt, not recorded; a transaction step's body gets
        it before the connection). Looked up on the class, it is the step itself."""
        if instance is None:
            return self
        fn = self.fn
        if self.is_async:

            @functools.wraps(fn)
            async def method_async(*args: Any, **kwargs: Any) -> Any:
                return await fn(instance, *args, **kwargs)

            method: Callable[..., Any] = method_async
        else:

            @functools.wraps(fn)
            def method_sync(*args: Any, **kwargs: Any) -> Any:
                return fn(instance, *args, **kwargs)

            method = method_sync
        bound = copy.copy(self)
        bound.fn = method
        bound.bound_to = instance
        return bound

    async def attempt(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        sleep: Callable[[float], Awaitable[None]],
        threads: concurrent.futures.Executor | None = None,
    ) -> tuple[bool, Any, int]:
        """Run the function with its retry policy, off the event loop if it is sync (see
        :meth:`_in_thread`; ``threads``: the runtime's). Returns ``(True, value, attempts)`` or
        ``(False, exception, attempts)``; a BaseException that is no ``Exception`` raised by the
        function is its failure (:func:`~durable.errors.raise_as_failure`)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    with in_step():
                        if self.is_async:
                            running = self.fn(*args, **kwargs)
                        else:
                            running = self._in_thread(args, kwargs, threads)
                        # without a timeout, awaited as it is: one coroutine less per step
                        value = await (running if self.timeout is None else self._bounded(running))
                except Exception:
                    raise
                except BaseException as exc:
                    raise_as_failure(exc)
            except Exception as exc:
                if self.retry.should_retry(exc, attempt):
                    await sleep(self.retry.delay(attempt))
                    continue
                return False, exc, attempt
            return True, value, attempt

    def _in_thread(
        self,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        threads: concurrent.futures.Executor | None,
    ) -> Awaitable[Any]:
        """One call of the sync function off the event loop: in a thread of ``threads`` (the
        runtime's ``max_threads``); with a :attr:`timeout`, in a thread of its own, so that an
        attempt abandoned past it holds no thread of a pool (abandoned attempts used to take
        every thread of asyncio's default pool, and then no sync step of the process ran)."""
        loop = asyncio.get_running_loop()
        call = functools.partial(
            contextvars.copy_context().run, stopping_as_failure, self.fn, *args, **kwargs
        )
        if self.timeout is None:
            return loop.run_in_executor(threads, call)
        return asyncio.wrap_future(self._in_own_thread(call))

    def _in_own_thread(self, call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``call`` in a daemon thread of its own; its outcome comes in the future returned.
        The future is running from the start, so a caller that stops waiting for it (past a
        timeout) cancels nothing: the thread finishes alone, its outcome ignored."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_running_or_notify_cancel()

        def run() -> None:
            try:
                done.set_result(call())
            except BaseException as exc:  # handed to whoever waits
                done.set_exception(exc)

        threading.Thread(target=run, name=f"durable-step:{self.name}", daemon=True).start()
        return done

    async def _bounded(self, running: Awaitable[Any]) -> Any:
        """Await one attempt, at most :attr:`timeout`: past it, an async step is cancelled; a
        sync step's thread cannot be, so it is left to finish and its result ignored.

        :raises StepTimeoutError: the attempt ran past the timeout.
        """
        if self.timeout is None:
            return await running
        try:
            async with asyncio.timeout(self.timeout.total_seconds()) as scope:
                return await running
        except TimeoutError:
            if scope.expired():
                raise self._timed_out() from None
            raise

    def _call_bounded(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """One attempt of a sync step in a sync workflow's thread, at most :attr:`timeout`: the
        function then runs in a thread of its own, abandoned (its result ignored) if it runs
        past the timeout.

        :raises StepTimeoutError: the attempt ran past the timeout.
        """
        if self.timeout is None:
            return self.fn(*args, **kwargs)
        done = self._in_own_thread(
            functools.partial(contextvars.copy_context().run, self.fn, *args, **kwargs)
        )
        try:
            return done.result(self.timeout.total_seconds())
        except TimeoutError:
            if not done.done():
                raise self._timed_out() from None
            raise

    def _timed_out(self) -> StepTimeoutError:
        return StepTimeoutError(
            f"step {self.name!r} did not finish within its timeout of "
            f"{self.timeout.total_seconds() if self.timeout else 0:g} s: the attempt failed"
        )

    def _execute(self, guard: StepGuard, args: Any, kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Run the step for an async workflow, with retries; persist the outcome (what the
        caller awaits: the coroutine that does it, returned as it is, not awaited in one more
        of its own)."""
        if guard.replayed:
            return _replay(guard)
        tel = telemetry.active
        if tel is not None and tel.recording():  # else no span: one coroutine less per step
            ctx = guard.ctx
            return tel.step(
                ctx.workflow_name,
                ctx.workflow_id,
                self.name,
                guard.position,
                self._run(guard, args, kwargs),
            )
        return self._run(guard, args, kwargs)

    async def _run(self, guard: StepGuard, args: Any, kwargs: Any) -> Any:
        """:meth:`_execute` of a step that is not replayed."""
        ctx = guard.ctx
        if not ctx.lease_ready():  # checked here first: most steps have nothing to await
            await ctx.ensure_lease()
        runtime = ctx.runtime
        ok, value, attempts = await self.attempt(args, kwargs, runtime.sleep, runtime.step_threads)
        if not ok:
            raise await guard.fail(value, attempts=attempts)
        return await guard.succeed(value, attempts=attempts)

    def _execute_blocking(
        self, ctx: ExecutionContext, guard: StepGuard, args: Any, kwargs: Any
    ) -> Any:
        """Run a sync step in a sync workflow's thread; its result is recorded from this thread
        where the backend allows it, else on the loop."""
        if guard.replayed:
            return guard.replay()
        tel = telemetry.active
        if tel is not None and tel.recording():  # else no span: no closure to call per step
            return tel.step_blocking(
                ctx.workflow_name,
                ctx.workflow_id,
                self.name,
                guard.position,
                lambda: self._run_blocking(ctx, guard, args, kwargs),
            )
        return self._run_blocking(ctx, guard, args, kwargs)

    def _run_blocking(self, ctx: ExecutionContext, guard: StepGuard, args: Any, kwargs: Any) -> Any:
        """:meth:`_execute_blocking` of a step that is not replayed."""
        if not ctx.lease_fresh():  # checked here first: a hop to the loop costs more
            ctx.block_on(ctx.ensure_lease())
        attempt = 0
        while True:
            attempt += 1
            try:
                with in_step():  # without a timeout, called here: one call less per step
                    if self.timeout is None:
                        value = self.fn(*args, **kwargs)
                    else:
                        value = self._call_bounded(args, kwargs)
            except Exception as exc:
                if self.retry.should_retry(exc, attempt):
                    ctx.block_on(ctx.runtime.sleep(self.retry.delay(attempt)))
                    continue
                raise ctx.block_on(guard.fail(exc, attempts=attempt))  # noqa: B904 (as replayed)
            return guard.succeed_blocking(value, attempts=attempt)


async def _replay(guard: StepGuard) -> Any:
    """A replayed step's recorded result, or its recorded error raised, when awaited."""
    return guard.replay()


class AsyncStep(Step[P, T]):
    """An ``async def`` step: ``await step(...)``."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        ctx = current()
        if ctx is None:
            return self.fn(*args, **kwargs)  # type: ignore[no-any-return]
        if not ctx.is_async:
            raise DurableError(
                f"async step {self.name!r} was called from the sync workflow "
                f"{ctx.workflow_name!r}: make the workflow async, or the step sync"
            )
        return self._execute(ctx.guard(self.name), args, kwargs)


class SyncStep(Step[P, T]):
    """A plain ``def`` step: called from sync workflows, awaited as ``step.aio(...)`` from async
    ones."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        ctx = current()
        if ctx is None:
            return self.fn(*args, **kwargs)  # type: ignore[no-any-return]
        if ctx.is_async:
            raise DurableError(
                f"sync step {self.name!r} was called directly from the async workflow "
                f"{ctx.workflow_name!r}: write `await {self.label}.aio(...)`"
            )
        return self._execute_blocking(ctx, ctx.guard(self.name), args, kwargs)  # type: ignore[no-any-return]

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        """Await this sync step from an async workflow (it runs in a worker thread)."""
        ctx = current()
        if ctx is None:
            return asyncio.to_thread(no_stop_iteration, self.fn, *args, **kwargs)
        if not ctx.is_async:
            raise DurableError(f"step {self.name!r}: .aio() is for async workflows")
        return self._execute(ctx.guard(self.name), args, kwargs)


class _StepDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]], /) -> AsyncStep[P, T]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, T], /) -> SyncStep[P, T]: ...


def decorator_policy(
    what: str,
    fn: Any,
    name: str | None,
    retry: RetryPolicy | None,
    **options: Any,
) -> RetryPolicy:
    """The retry policy of a step decorator (``what``: ``durable.step``,
    ``durable.transaction``), its arguments checked: ``fn`` decorable, ``name`` a valid name,
    ``retry`` a policy or None, and the separate ``options`` valid for a
    :class:`~durable.retry.RetryPolicy` even when ``retry`` is given or nothing retries.

    :raises InvalidArgumentError: what was wrong, named.
    """
    if fn is not None:
        check_decorated(fn, what)
    if name is not None:
        check_name(name, "name")
    check_instance(retry, RetryPolicy, "retry")
    separate = RetryPolicy(**options)
    return retry or (separate if separate != NO_RETRY else NO_RETRY)


def check_step_function(f: Any, what: str) -> None:
    """Refuse what ``what`` cannot decorate: a non-function, or a function that is a step
    already."""
    check_decorated(f, what)
    if isinstance(f, Step):
        raise DurableError(f"{f.name!r} is already a durable step")


@overload
def step(fn: Callable[P, Coroutine[Any, Any, T]], /) -> AsyncStep[P, T]: ...  # type: ignore[overload-overlap]
@overload
def step(fn: Callable[P, T], /) -> SyncStep[P, T]: ...
@overload
def step(
    *,
    name: str | None = None,
    max_attempts: int = 1,
    initial_delay: float = 1.0,
    backoff_rate: float = 2.0,
    max_delay: float = 3600.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    non_retryable: tuple[type[BaseException], ...] = (),
    retry: RetryPolicy | None = None,
    timeout: timedelta | float | None = None,
) -> _StepDecorator: ...
def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int = 1,
    initial_delay: float = 1.0,
    backoff_rate: float = 2.0,
    max_delay: float = 3600.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    non_retryable: tuple[type[BaseException], ...] = (),
    retry: RetryPolicy | None = None,
    timeout: timedelta | float | None = None,
) -> Any:
    """Make a function a durable step: ``@durable.step`` or ``@durable.step(max_attempts=5)``.

    ``fn`` is a function (``def``: a sync step; ``async def``: an async one), or any callable
    given a ``name``: a ``functools.partial`` (of an ``async def`` function: an async step), an
    object whose ``__call__`` is ``async def`` (an async step) or ``def``. In a class body, put
    ``@staticmethod`` above ``@durable.step``, not below.

    :param name: the name recorded in the history (default ``module:qualname``; required for a
        callable that has no qualname). A replay checks it: renaming a step breaks executions
        in flight. The step is registered under it for the workers that run handed-out calls
        (:func:`durable.map`); one name runs one function (the rule is in
        :mod:`durable.registry`): steps defined inside a function that runs more than once,
        and lambdas, need a ``name`` of their own.
    :param max_attempts: how many times the step runs before its failure is recorded; later
        attempts wait ``initial_delay * backoff_rate ** (n - 1)`` seconds (at most
        ``max_delay``). Exceptions in ``non_retryable``, :class:`~durable.NonRetryableError`,
        or not in ``retry_on`` are recorded at once.
    :param retry: a whole :class:`~durable.retry.RetryPolicy` instead of the separate options.
    :param timeout: how long one attempt may run (a ``timedelta``, or seconds). An attempt
        that runs longer fails with :class:`~durable.errors.StepTimeoutError` (a
        ``TimeoutError``), which is retried as any failure (``max_attempts``, ``retry_on``).
        An async step is cancelled where it awaits. A sync step cannot be stopped: the attempt
        is failed at the timeout and its thread left to finish, its result ignored (a sync
        step with a timeout called from a sync workflow runs in a thread of its own for that
        reason); make such steps idempotent, as a retry may run beside the abandoned attempt.

    :raises InvalidArgumentError: an option of the wrong type or out of range (as
        :class:`~durable.retry.RetryPolicy` checks them), an empty or overlong ``name``, or
        ``fn`` not a function (a ``staticmethod`` object, a generator function), or without
        ``name`` a callable with no qualname, or a ``timeout`` that is not a positive
        ``timedelta`` or number of seconds.
    :raises ConfigurationError: another function is registered under the same step name.
    """
    limit = None if timeout is None else check_duration(timeout, "timeout")
    policy = decorator_policy(
        "durable.step",
        fn,
        name,
        retry,
        max_attempts=max_attempts,
        initial_delay=initial_delay,
        backoff_rate=backoff_rate,
        max_delay=max_delay,
        retry_on=retry_on,
        non_retryable=non_retryable,
    )

    def decorate(f: Callable[..., Any]) -> Step[Any, Any]:
        check_step_function(f, "durable.step")
        kind = AsyncStep if is_async_callable(f) else SyncStep
        made: Step[Any, Any] = kind(
            f, name=name or default_name(f, "durable.step"), retry=policy, timeout=limit
        )
        default_registry.register_step(made)
        return made

    return decorate(fn) if fn is not None else decorate


async def run_step(
    name: str,
    fn: Callable[..., Awaitable[T]] | Callable[..., T],
    /,
    *args: Any,
    retry: RetryPolicy | None = None,
    **kwargs: Any,
) -> T:
    """Run ``fn(*args, **kwargs)`` as a step called ``name`` of the current async workflow.

    The dynamic form of ``@durable.step``: the name is what the history records and a replay
    checks, so it must be the same on every run of the workflow. A sync ``fn`` runs in a worker
    thread. Outside a workflow it is a plain call.

    :raises InvalidArgumentError: ``name`` is empty or too long, ``fn`` is not callable, or
        ``retry`` is not a :class:`~durable.retry.RetryPolicy`.
    """
    check_decorated(fn, "durable.run_step")
    check_instance(retry, RetryPolicy, "retry")
    adhoc: Step[Any, T] = Step(fn, name=name, retry=retry or NO_RETRY)
    ctx = current()
    if ctx is None:
        if adhoc.is_async:
            return await fn(*args, **kwargs)  # type: ignore[no-any-return,misc]
        return await asyncio.to_thread(no_stop_iteration, fn, *args, **kwargs)  # type: ignore[arg-type]
    if not ctx.is_async:
        raise DurableError(f"durable.run_step({name!r}) is for async workflows")
    return await adhoc._execute(ctx.guard(name), args, kwargs)  # type: ignore[no-any-return]


async def map(
    step: Step[P, T],
    items: Iterable[Any],
    *,
    queue: str = "default",
    priority: int = 0,
) -> list[T]:
    """Run ``step(item)`` for every item on any workers, and return the results in order.

    Each call becomes a task that any worker serving the step claims. The workflow does not
    hold a worker slot while it waits: it is suspended (its lease released) and resumes when the
    last task completes; completed items are never run again. The first failed item's error is
    raised (the others still ran). Outside a workflow, the calls run here, one after another.

    The step must be decorated (``@durable.step``) and its module imported by the workers;
    every worker serves the decorated steps of its process, whatever registry its runtime uses.
    If, :attr:`Runtime.fanout_warning_after <durable.Runtime.fanout_warning_after>` seconds
    later, no worker has taken the first of its tasks (still the next in line for that step and
    queue), a warning is logged; the workflow goes on waiting. Only async workflows can fan out.

    :raises InvalidArgumentError: ``queue`` is not a valid name, or ``priority`` not a 32-bit
        int (before anything is written).
    """
    check_name(queue, "queue")
    check_int(priority, "priority")
    if isinstance(step, Step) and step.bound_to is not None:
        raise InvalidArgumentError(
            f"durable.map() cannot hand out {step!r}: other workers run its calls, and they "
            "have no such instance; map a step defined at module level (it may look the "
            "object up), or call the method in the workflow"
        )
    if not isinstance(step, Step):
        raise InvalidArgumentError(
            f"durable.map() takes a @durable.step function, got {type(step).__qualname__}"
        )
    if getattr(step, "transactional", False):
        raise InvalidArgumentError(
            f"durable.map() cannot hand out the transactional step {step.name!r}: its "
            "transaction belongs to the workflow's own attempt; call it in the workflow"
        )
    values = list(items)
    ctx = current()
    if ctx is None:
        if step.is_async:
            return [await step.fn(v) for v in values]
        return [step.fn(v) for v in values]
    if not ctx.is_async:
        raise DurableError("durable.map() is for async workflows")
    guards = [ctx.guard(step.name) for _ in values]
    waiting = [(g, v) for g, v in zip(guards, values, strict=True) if not g.replayed]
    if waiting:
        records = [
            StepRecord(
                position=g.position,
                name=step.name,
                status=StepStatus.PENDING,
                input={"args": [v], "kwargs": {}},
                attempts=0,
            )
            for g, v in waiting
        ]
        specs = [
            TaskSpec(
                instance_id=ctx.workflow_id,
                task_id=f"{STEP_TASK_PREFIX}{g.position}",
                name=step.name,
                queue=queue,
                priority=priority,
            )
            for g, _ in waiting
        ]
        await ctx.record_markers()  # a durable.patched() marker before the items
        with ctx.checkpoint():
            await ctx.runtime.backend.suspend_workflow(
                ctx.workflow_id, worker_id=ctx.executor_id, steps=records, tasks=specs
            )
        ctx.runtime.spawn(
            _warn_if_unclaimed(ctx.runtime, ctx.workflow_id, step.name, queue, specs),
            name=f"durable-fanout-watch:{ctx.workflow_id}",
        )
        raise WorkflowSuspended(ctx.workflow_id)
    results: list[T] = []
    failure: Exception | None = None
    for g in guards:  # every failed item is observed (see ExecutionContext.rerun_positions)
        try:
            results.append(g.replay())
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return results


async def _warn_if_unclaimed(
    runtime: ExecutionHost, workflow_id: str, step_name: str, queue: str, specs: Sequence[TaskSpec]
) -> None:
    """Log a warning if, ``runtime.fanout_warning_after`` seconds after a fan-out was handed
    out, its first task is still at the head of its step's line and was never claimed: workers
    take that line in order, so none has taken anything from it in that time."""
    await asyncio.sleep(runtime.fanout_warning_after)
    try:
        head = await runtime.backend.find_available_tasks(
            runtime.executor_id, 1, names=[step_name], queues=[queue], include_own=False
        )
    except DurableError:
        return  # a diagnostic only: the database may be away
    first = (specs[0].instance_id, specs[0].task_id)
    if head and (head[0].instance_id, head[0].task_id) == first and head[0].attempts == 0:
        log.warning(
            "workflow %s handed %d call(s) of step %r to workers on queue %r %g s ago and no "
            "worker has claimed any: is a worker running (runtime.start_worker or `durable "
            "worker`) that imports the step's module and serves that queue?",
            workflow_id,
            len(specs),
            step_name,
            queue,
            runtime.fanout_warning_after,
            extra={"action": "map.unclaimed", "workflow_id": workflow_id, "step": step_name},
        )
