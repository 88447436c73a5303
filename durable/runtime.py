"""The runtime: runs workflows on a backend, one persisted step at a time.

``Runtime`` is async at heart. Sync workflows run in worker threads and reach the event loop for
each checkpoint; sync callers (a Flask or Django view) use ``with runtime:`` and
``runtime.run_sync(...)``, which run the same async machinery on a background event loop (see
:mod:`durable.portal`). There is one implementation of everything, and it is async.

Execution of one workflow, in order, each line persisted before the next:

1. ``create_workflow``: the execution and its task are recorded (input serialized first, so a bad
   input fails before anything is written);
2. ``claim_task``: this executor takes the workflow's lease; another live holder means someone
   else runs it, and the caller waits for the outcome instead;
3. ``begin_execution``: status running, history loaded;
4. the body runs; each step replays from the history or runs and is recorded by
   ``record_step``, fenced by the lease, which a heartbeat keeps alive;
5. ``finish_workflow``: output or error recorded, task removed, in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from durable import context as _context
from durable.backends.base import PersistentBackend
from durable.context import ExecutionContext, StepGuard, WorkflowSuspended, rebuild_exception
from durable.errors import (
    ClaimLostError,
    DurableError,
    InvalidArgumentError,
    NonRetryableError,
    NothingToServeError,
    SerializationError,
    StepError,
    TaskNotFoundError,
    WorkflowCancelledError,
    WorkflowDeadLetteredError,
    WorkflowFailedError,
)
from durable.models import (
    WORKFLOW_TASK,
    ErrorInfo,
    ExecutorInfo,
    Page,
    RegisteredWorkflow,
    StepRecord,
    StepStatus,
    TaskClaim,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.portal import Portal
from durable.registry import Registry, default_registry
from durable.step import STEP_TASK_PREFIX
from durable.worker import Worker
from durable.workflow import Workflow

log = logging.getLogger(__name__)
T = TypeVar("T")


class Rescheduled(Exception):
    """Internal: the attempt failed and the next one is scheduled."""


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """How an execution is queued (see :meth:`Runtime.enqueue`)."""

    idempotency_key: str | None = None
    priority: int = 0
    run_after: datetime | None = None
    delay: timedelta | None = None
    max_attempts: int | None = None
    queue: str | None = None


def default_executor_id() -> str:
    """``host-pid-random``: unique per process. Pass a stable id to recover your own work at once
    after a restart."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Runtime:
    """Runs durable workflows on a backend.

    :param backend: any :class:`~durable.backends.PersistentBackend`; the runtime starts it on
        entry and closes it on exit.
    :param executor_id: this process's identity in leases. It must be unique among live
        processes. A runtime restarted with the same id takes its unfinished work back at once;
        work of other executors is taken over only after their leases expire.
    :param claim_ttl: seconds a lease lasts without a heartbeat.
    :param heartbeat_interval: seconds between heartbeats (default a third of ``claim_ttl``).
    :param recover: on start, resume started, unfinished executions of the workflows this
        process has registered: its own at once, others' whose leases expired (default True).
        Executions that never started are left to workers (:meth:`start_worker`).
    :param poll_interval: seconds between looks at a workflow another executor is running.
    :param registry: where workflow names are looked up (default: the decorators' registry).
    :param max_threads: worker threads for sync workflows and sync steps.
    """

    def __init__(
        self,
        backend: PersistentBackend,
        *,
        executor_id: str | None = None,
        claim_ttl: float = 30.0,
        heartbeat_interval: float | None = None,
        recover: bool = True,
        poll_interval: float = 0.5,
        registry: Registry | None = None,
        max_threads: int = 64,
        sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
    ) -> None:
        if not isinstance(backend, PersistentBackend):
            raise InvalidArgumentError(
                f"Runtime needs a PersistentBackend (e.g. durable.connect(url)), "
                f"got {type(backend).__qualname__}"
            )
        if claim_ttl <= 0:
            raise InvalidArgumentError(f"claim_ttl must be positive, got {claim_ttl}")
        self.backend = backend
        self.executor_id = executor_id or default_executor_id()
        self.claim_ttl = timedelta(seconds=claim_ttl)
        self.heartbeat_interval = heartbeat_interval or claim_ttl / 3
        self.recover_on_start = recover
        self.poll_interval = poll_interval
        self.registry = registry or default_registry
        self.sleep = sleep
        self._max_threads = max_threads
        self._threads: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._locks = KeyedLock()
        self._workers: list[Worker] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._node_heartbeats_task: asyncio.Task[Any] | None = None
        self._portal: Portal | None = None
        self._started = False

    def __repr__(self) -> str:
        return f"Runtime({self.backend!r}, executor_id={self.executor_id!r})"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend and, if ``recover``, resume unfinished work in the background."""
        if self._started:
            return
        await self.backend.start()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._threads = ThreadPoolExecutor(self._max_threads, thread_name_prefix="durable")
        self._started = True
        await self.backend.register_workflows(
            [
                RegisteredWorkflow(name=name, enabled=True, description=description)
                for name, _enabled, description in self.registry.describe()
            ]
        )
        await self._node_heartbeat()
        self._node_heartbeats_task = self.spawn(
            self._node_heartbeats(), name="durable-node-heartbeat"
        )
        if self.recover_on_start:
            self.spawn(self.recover(), name="durable-recover")

    async def close(self) -> None:
        """Stop background work (its leases are released so others resume it at once), then
        close the backend."""
        if not self._started:
            return
        workers, self._workers = self._workers, []
        for worker in workers:
            await worker.stop()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(DurableError):
            await self.backend.mark_executor_stopped(self.executor_id)
        self._started = False
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        await self.backend.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __enter__(self) -> Self:
        """Start the runtime on a background event loop, for code that is not async."""
        self._portal = Portal()
        self._portal.call(self.start())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        portal, self._portal = self._portal, None
        if portal is not None:
            try:
                portal.call(self.close())
            finally:
                portal.stop()

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; it is cancelled when the runtime closes."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)
        return task

    def _require_started(self) -> None:
        if not self._started:
            raise DurableError(
                "the runtime is not started: use `async with runtime:` (or `with runtime:` from "
                "sync code)"
            )

    # -- running workflows --------------------------------------------------------------------

    def resolve(self, fn: Workflow[Any, Any] | str) -> Workflow[Any, Any]:
        """The registered workflow for a decorated function or a name.

        :raises InvalidArgumentError: ``fn`` is not a durable workflow.
        :raises UnknownWorkflowError: no workflow has that name.
        """
        if isinstance(fn, Workflow):
            return fn
        if isinstance(fn, str):
            return self.registry.get(fn)
        raise InvalidArgumentError(
            f"{getattr(fn, '__qualname__', fn)!r} is not a durable workflow: decorate it with "
            "@durable.workflow"
        )

    async def run(
        self,
        fn: Workflow[Any, T] | str,
        *args: Any,
        workflow_id: str | None = None,
        **kwargs: Any,
    ) -> T:
        """Run a workflow to completion and return its result.

        If ``workflow_id`` already exists, nothing starts again: a finished execution returns its
        stored result (or raises its stored error) without running anything, and an unfinished
        one is resumed from its history (or awaited, if another live executor holds it).

        :raises SerializationError: the arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: ``fn`` is not a workflow, or the id belongs to another one.
        :raises WorkflowCancelledError: the execution was cancelled.
        :raises ClaimLostError: this executor lost the lease mid-run (another one took over).
        :raises Exception: the workflow's own exception when it failed (rebuilt from the record
            when it failed earlier; :class:`WorkflowFailedError` when it cannot be rebuilt).
        """
        self._require_started()
        wf = self.resolve(fn)
        instance_id = workflow_id or str(uuid.uuid4())
        await self._create(wf, instance_id, args, kwargs)
        return await self._drive(wf, instance_id)  # type: ignore[no-any-return]

    def run_sync(
        self,
        fn: Workflow[Any, T] | str,
        *args: Any,
        workflow_id: str | None = None,
        **kwargs: Any,
    ) -> T:
        """:meth:`run` for code that is not async (inside ``with runtime:``, or from any thread
        other than the one running the runtime's event loop)."""
        return self.blocking(self.run(fn, *args, workflow_id=workflow_id, **kwargs))

    def blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one of this runtime's coroutines from sync code and wait for its result."""
        if self._portal is not None:
            return self._portal.call(coro)
        if self._loop is None or threading.get_ident() == self._loop_thread:
            coro.close()
            raise DurableError(
                "blocking calls need `with runtime:` (or a runtime started on another thread's "
                "event loop); in async code, await the async method instead"
            )
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _create(
        self,
        wf: Workflow[Any, Any] | str,
        instance_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        parent_id: str | None = None,
        options: EnqueueOptions | None = None,
    ) -> WorkflowInfo:
        name = wf if isinstance(wf, str) else wf.name
        opts = options or EnqueueOptions()
        queue = opts.queue or (wf.queue if isinstance(wf, Workflow) else "default")
        payload = {"args": list(args), "kwargs": kwargs}
        try:
            self.backend.serializer.dumps(payload)
        except SerializationError as exc:
            raise SerializationError(
                f"the arguments of workflow {name!r} (id {instance_id!r}) cannot be "
                f"serialized: {exc}"
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
        info, created = await self.backend.create_workflow(snapshot, task=task)
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

    async def _drive(self, wf: Workflow[Any, Any], instance_id: str) -> Any:
        """Run the execution here, or wait for whoever runs it; return its outcome.

        Within this runtime one coroutine at a time drives a given execution (the others wait
        for it and then find it finished); across executors the lease decides.
        """
        while True:
            async with self._locks.hold(instance_id):
                info = await self.backend.get_workflow(instance_id)
                if info.status.is_terminal:
                    return self.outcome(info)
                try:
                    claim = await self.backend.claim_task(
                        instance_id,
                        WORKFLOW_TASK,
                        self.executor_id,
                        self.claim_ttl,
                        due_only=True,
                    )
                except TaskNotFoundError:
                    claim = None  # it finished (or was cancelled) since we looked: look again
                if claim is not None:
                    try:
                        return await self._execute(wf, instance_id)
                    except (Rescheduled, WorkflowSuspended):
                        pass  # it goes on when due (a retry) or when woken (its steps done)
            await self.sleep(self.poll_interval)

    async def _execute(self, wf: Workflow[Any, Any], instance_id: str) -> Any:
        """Run the body under this executor's lease (already claimed) and record the outcome."""
        leased_at = time.monotonic()  # the claim was taken before this: a safe lower bound
        snapshot = await self.backend.begin_execution(instance_id, self.executor_id)
        if snapshot.max_attempts is not None and snapshot.attempts > snapshot.max_attempts:
            # every allowed attempt started and none finished: its executors kept dying
            last_error = snapshot.error or ErrorInfo(
                type="durable.errors.AttemptsExhaustedError",
                message=f"{snapshot.max_attempts} attempt(s) were interrupted before finishing "
                "(their executors stopped or lost their leases)",
            )
            info = await self.backend.finish_workflow(
                instance_id,
                worker_id=self.executor_id,
                status=WorkflowStatus.DEAD_LETTER,
                error=last_error,
            )
            raise self.outcome_error(info)
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
            lease_deadline=leased_at + self.claim_ttl.total_seconds(),
        )
        payload = snapshot.input or {}
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat(instance_id, context=ctx)
        )
        try:
            try:
                output = await self._invoke(ctx, wf, args, kwargs)
                ctx.check_history_consumed()
                output = self._roundtrip_output(wf, instance_id, output)
            except (ClaimLostError, asyncio.CancelledError):
                raise
            except Exception as exc:
                error = ctx.divergence or exc
                if await self._record_failure(wf, snapshot, error, retryable=error is exc):
                    raise Rescheduled(instance_id) from exc
                if error is exc:
                    raise
                raise error from exc
            await self.backend.finish_workflow(
                instance_id,
                worker_id=self.executor_id,
                status=WorkflowStatus.SUCCEEDED,
                output=output,
            )
            return output
        except ClaimLostError:
            info = await self.backend.get_workflow(instance_id)
            if info.status is WorkflowStatus.CANCELLED:
                raise self.outcome_error(info) from None
            raise
        except asyncio.CancelledError:
            await self._release_quietly(instance_id)
            raise
        finally:
            heartbeat.cancel()

    async def _invoke(
        self, ctx: ExecutionContext, wf: Workflow[Any, Any], args: Sequence[Any], kwargs: Any
    ) -> Any:
        scope = contextvars.copy_context()
        scope.run(_context.enter, ctx)
        if wf.is_async:
            task = asyncio.get_running_loop().create_task(wf.fn(*args, **kwargs), context=scope)
            return await task
        assert self._threads is not None
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, lambda: scope.run(wf.fn, *args, **kwargs)
        )

    def _roundtrip_output(self, wf: Workflow[Any, Any], instance_id: str, output: Any) -> Any:
        serializer = self.backend.serializer
        try:
            return serializer.loads(serializer.dumps(output))
        except SerializationError as exc:
            raise SerializationError(
                f"workflow {wf.name!r} (id {instance_id!r}) returned a value of type "
                f"{type(output).__qualname__} that cannot be stored: {exc}"
            ) from exc

    async def _record_failure(
        self,
        wf: Workflow[Any, Any],
        snapshot: WorkflowSnapshot,
        error: BaseException,
        *,
        retryable: bool,
    ) -> bool:
        """Record a failed attempt: schedule the next attempt (returns True), or record the
        final failure: dead-lettered when retries ran out, failed when the error is not worth
        retrying or the execution allows no retries."""
        info = ErrorInfo.from_exception(error)
        limit = snapshot.max_attempts
        policy = wf.retry
        worth_retrying = (
            retryable
            and limit is not None
            and not isinstance(error, (NonRetryableError, *policy.non_retryable))
            and isinstance(error, policy.retry_on)
        )
        if worth_retrying and limit is not None and snapshot.attempts < limit:
            delay = policy.delay(snapshot.attempts)
            await self.backend.reschedule_workflow(
                snapshot.id,
                worker_id=self.executor_id,
                run_after=timedelta(seconds=delay),
                error=info,
            )
            log.info(
                "workflow %s failed attempt %d of %d, retrying in %.1fs: %s",
                snapshot.id,
                snapshot.attempts,
                limit,
                delay,
                info.message,
                extra={"action": "workflow.retry", "workflow_id": snapshot.id},
            )
            return True
        status = WorkflowStatus.DEAD_LETTER if worth_retrying else WorkflowStatus.FAILED
        await self.backend.finish_workflow(
            snapshot.id, worker_id=self.executor_id, status=status, error=info
        )
        return False

    async def _node_heartbeat(self) -> None:
        await self.backend.record_executor_heartbeat(
            self.executor_id, hostname=socket.gethostname(), pid=os.getpid()
        )

    async def _node_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._node_heartbeat()
            except Exception as exc:  # the database may come back: keep trying
                log.warning("node heartbeat failed: %s", exc, extra={"action": "node.heartbeat"})

    async def _heartbeat(
        self,
        instance_id: str,
        task_id: str = WORKFLOW_TASK,
        *,
        context: ExecutionContext | None = None,
    ) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            before = time.monotonic()
            try:
                await self.backend.extend_task_claim(
                    instance_id, task_id, self.executor_id, self.claim_ttl
                )
                if context is not None:
                    context.lease_deadline = before + self.claim_ttl.total_seconds()
            except (ClaimLostError, TaskNotFoundError) as exc:
                if context is not None:
                    context.lease_lost = ClaimLostError(
                        instance_id, task_id, self.executor_id, getattr(exc, "holder", None)
                    )
                log.warning(
                    "lost the lease on workflow %s: %s",
                    instance_id,
                    exc,
                    extra={"action": "heartbeat.lost", "workflow_id": instance_id},
                )
                return
            except Exception as exc:  # the database may come back: keep trying
                log.warning(
                    "heartbeat for workflow %s failed: %s",
                    instance_id,
                    exc,
                    extra={"action": "heartbeat.error", "workflow_id": instance_id},
                )

    async def _release_quietly(self, instance_id: str) -> None:
        """Hand an interrupted execution back at once, without counting the attempt."""
        with contextlib.suppress(DurableError, asyncio.CancelledError):
            await asyncio.shield(
                self.backend.reschedule_workflow(
                    instance_id,
                    worker_id=self.executor_id,
                    run_after=timedelta(0),
                    consume_attempt=False,
                )
            )

    async def run_child(
        self,
        ctx: ExecutionContext,
        guard: StepGuard,
        wf: Workflow[Any, Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run ``wf`` as a child of ``ctx``'s workflow at ``guard``'s position.

        The child's id is ``<parent id>/<position>``; the parent's step records it, pending,
        before the child runs, so a replay awaits the same child instead of starting another.
        """
        if guard.replayed:
            return guard.replay()
        await ctx.ensure_lease()
        pending = guard.pending
        child_id = pending.child_workflow_id if pending else None
        if child_id is None:
            child_id = f"{ctx.workflow_id}/{guard.position}"
            await self._create(wf, child_id, args, kwargs, parent_id=ctx.workflow_id)
            await guard.mark_pending(child_id)
        try:
            value = await self._drive(wf, child_id)
        except (ClaimLostError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await guard.fail(exc, child_workflow_id=child_id)
            raise
        return await guard.succeed(value, child_workflow_id=child_id)

    # -- intents ------------------------------------------------------------------------------

    async def enqueue(
        self,
        fn: Workflow[Any, Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        run_after: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        queue: str | None = None,
        served_elsewhere: bool = False,
        **kwargs: Any,
    ) -> str:
        """Record that a workflow must run, and return its id at once; any worker runs it.

        Once this returns, the execution is stored and will happen: a worker that serves its
        name claims it when it is due, and it is retried until it succeeds, fails for good, or
        runs out of attempts. A producer can enqueue by name, with JSON arguments, without
        importing the workflow's code.

        :param idempotency_key: a duplicate enqueue with the same key creates nothing and
            returns the existing execution's id.
        :param priority: lower runs first; FIFO within a priority.
        :param run_after: not before this (timezone-aware) time.
        :param delay: or not before this many seconds (or this timedelta) from now, by the
            backend's clock (the database's on PostgreSQL).
        :param max_attempts: attempts before dead-lettering (default: the workflow's policy,
            3 attempts: at once, +1 minute, +4 minutes).
        :param queue: the queue (default: the workflow's, else ``"default"``).
        :param served_elsewhere: allow a name that is not registered in this process.

        Called inside a workflow, enqueueing is a step: it is recorded with the workflow's
        progress, so a replay after a crash neither loses nor duplicates it. The child's default
        id is then ``<workflow id>/<position>``.

        :raises UnknownWorkflowError: the name is not registered here and not ``served_elsewhere``.
        :raises SerializationError: the arguments cannot be serialized (nothing is written).
        """
        self._require_started()
        target: Workflow[Any, Any] | str
        if isinstance(fn, str) and fn in self.registry:
            target = self.registry.get(fn)
        elif isinstance(fn, str) and (served_elsewhere or await self._served_by_others(fn)):
            target = fn
        else:
            target = self.resolve(fn)
        name = target if isinstance(target, str) else target.name
        wait: timedelta | None = None
        if delay is not None:
            if run_after is not None:
                raise InvalidArgumentError("give run_after or delay, not both")
            wait = delay if isinstance(delay, timedelta) else timedelta(seconds=float(delay))
        if run_after is not None and run_after.tzinfo is None:
            raise InvalidArgumentError(f"run_after must be timezone-aware, got {run_after!r}")
        if max_attempts is None:
            max_attempts = target.retry.max_attempts if isinstance(target, Workflow) else 3
        options = EnqueueOptions(
            idempotency_key=idempotency_key,
            priority=priority,
            run_after=run_after,
            delay=wait,
            max_attempts=max_attempts,
            queue=queue,
        )
        ctx = _context.current()
        if ctx is None:
            info = await self._create(
                target, workflow_id or str(uuid.uuid4()), args, kwargs, options=options
            )
            return info.id
        guard = ctx.guard(f"enqueue:{name}")
        if guard.replayed:
            return guard.replay()  # type: ignore[no-any-return]
        await ctx.ensure_lease()
        instance_id = workflow_id or f"{ctx.workflow_id}/{guard.position}"
        info = await self._create(
            target, instance_id, args, kwargs, parent_id=ctx.workflow_id, options=options
        )
        return await guard.succeed(info.id)  # type: ignore[no-any-return]

    async def _served_by_others(self, name: str) -> bool:
        return any(w.name == name for w in await self.backend.list_registered_workflows())

    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        """Enable or disable a workflow name for every worker sharing this database: workers
        stop claiming a disabled name within their poll interval (running executions go on).

        :raises UnknownWorkflowError: no runtime ever registered the name.
        """
        return await self.backend.set_workflow_enabled(name, enabled)

    async def registered_workflows(self) -> list[RegisteredWorkflow]:
        """Every workflow name any runtime on this database registered, enabled or not."""
        return await self.backend.list_registered_workflows()

    async def list_executors(self, *, stale_after: float | None = None) -> list[ExecutorInfo]:
        """Runtimes known by their heartbeats; ``stale`` marks those silent for longer than
        ``stale_after`` seconds (default: twice the lease duration)."""
        seconds = stale_after if stale_after is not None else 2 * self.claim_ttl.total_seconds()
        return await self.backend.list_executors(stale_after=timedelta(seconds=seconds))

    async def retry(self, workflow_id: str) -> WorkflowInfo:
        """Run a failed, dead-lettered or cancelled execution again from its history: completed
        steps are not run again; the failed ones are.

        :raises WorkflowNotFoundError: no such workflow.
        :raises InvalidArgumentError: it is not failed, dead-lettered or cancelled.
        """
        return await self.backend.requeue_workflow(workflow_id)

    async def start_worker(
        self,
        *,
        concurrency: int = 10,
        queues: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        poll_interval: float = 1.0,
    ) -> Worker:
        """Start claiming and running enqueued work in the background of this runtime.

        The worker runs up to ``concurrency`` executions at once, claims only the workflow names
        registered here (or ``names``) from ``queues`` (default: all), wakes when work is
        enqueued (LISTEN/NOTIFY on PostgreSQL; in-process elsewhere) and polls every
        ``poll_interval`` seconds as a backstop. It stops with :meth:`Worker.stop` or when the
        runtime closes. It logs its start at INFO, with what it serves.

        :raises NothingToServeError: no workflow to serve: none is registered here, or
            ``names`` is empty.
        """
        self._require_started()
        if not (self.registry.names() if names is None else list(names)):
            raise NothingToServeError(
                f"executor {self.executor_id!r} cannot start a worker: "
                + (
                    "no workflow is registered in its registry (import the modules that define "
                    "the workflows before starting it, or pass the registry they are in)"
                    if names is None
                    else "names is empty (give the workflow names to serve, or None for all)"
                )
            )
        worker = Worker(
            self, concurrency=concurrency, queues=queues, names=names, poll_interval=poll_interval
        )
        self._workers.append(worker)
        await worker.start()
        return worker

    def _worker_died(self, worker: Worker) -> None:
        """A worker's loop died: stop the node heartbeat, so that this process no longer looks
        alive to :meth:`list_executors` (it turns stale) while it claims nothing."""
        task, self._node_heartbeats_task = self._node_heartbeats_task, None
        if task is not None:
            task.cancel()

    async def execute_step_task(self, claim: TaskClaim) -> None:
        """Run a step a workflow handed out (see :func:`durable.map`) under ``claim``, and
        record its outcome; the last one to finish wakes the workflow."""
        step = self.registry.get_step(claim.name)
        position = int(claim.task_id.removeprefix(STEP_TASK_PREFIX))
        record = next(
            (r for r in await self.backend.list_steps(claim.instance_id) if r.position == position),
            None,
        )
        if record is None or record.status is not StepStatus.PENDING:
            await self.backend.complete_task(claim.instance_id, claim.task_id, self.executor_id)
            return
        payload = record.input or {}
        started = datetime.now(UTC)
        heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat(claim.instance_id, claim.task_id)
        )
        try:
            ok, value, attempts = await step.attempt(
                payload.get("args", []), payload.get("kwargs", {}), self.sleep
            )
        finally:
            heartbeat.cancel()
        outcome: dict[str, Any] = {"status": StepStatus.SUCCEEDED, "output": value}
        if ok:
            try:
                outcome["output"] = self.backend.serializer.loads(
                    self.backend.serializer.dumps(value)
                )
            except SerializationError as exc:
                ok, value = False, exc
        if not ok:
            outcome = {"status": StepStatus.FAILED, "error": ErrorInfo.from_exception(value)}
        await self.backend.complete_step_task(
            claim.instance_id,
            claim.task_id,
            worker_id=self.executor_id,
            step=StepRecord(
                position=position,
                name=step.name,
                input=record.input,
                attempts=attempts,
                executor_id=self.executor_id,
                started_at=started,
                **outcome,
            ),
        )

    async def execute_claimed(self, wf: Workflow[Any, Any], instance_id: str) -> Any:
        """Run an execution whose workflow task this executor has just claimed."""
        async with self._locks.hold(instance_id):
            return await self._execute(wf, instance_id)

    # -- outcomes -----------------------------------------------------------------------------

    def outcome(self, info: WorkflowInfo) -> Any:
        """The stored result of a finished execution, or its error raised."""
        if info.status is WorkflowStatus.SUCCEEDED:
            return info.output
        raise self.outcome_error(info)

    @staticmethod
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
            return WorkflowFailedError(
                info.id, f"workflow {info.id!r} failed: {detail}", info.error
            )
        return rebuilt

    async def result(self, workflow_id: str, *, timeout: float | None = None) -> Any:
        """Wait until the execution finishes (wherever it runs) and return its result.

        :raises WorkflowNotFoundError: no such workflow.
        :raises TimeoutError: it did not finish within ``timeout`` seconds.
        :raises Exception: as :meth:`run` does when the execution did not succeed.
        """
        self._require_started()

        async def wait() -> Any:
            while True:
                info = await self.backend.get_workflow(workflow_id)
                if info.status.is_terminal:
                    return self.outcome(info)
                await self.sleep(self.poll_interval)

        return await asyncio.wait_for(wait(), timeout)

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self, *, limit: int = 1000) -> list[str]:
        """Resume, in the background, executions of the workflows registered here that were
        started and not finished: this executor's own at once, others' once their leases have
        expired. Returns their ids. Work that never started is left to workers.
        """
        self._require_started()
        names = self.registry.names()
        if not names:
            return []
        found = await self.backend.find_available_tasks(self.executor_id, limit, names=names)
        resumed = []
        for task in found:
            if task.task_id != WORKFLOW_TASK or task.attempts == 0:
                continue
            claim = await self.backend.claim_task(
                task.instance_id, WORKFLOW_TASK, self.executor_id, self.claim_ttl, due_only=True
            )
            if claim is None:
                continue
            wf = self.registry.get(claim.name)
            resumed.append(claim.instance_id)
            self.spawn(self._drive(wf, claim.instance_id), name=f"durable:{claim.instance_id}")
        if resumed:
            log.info(
                "resuming %d workflow(s)",
                len(resumed),
                extra={"action": "recover", "workflow_ids": resumed},
            )
        return resumed

    # -- inspection and control ----------------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        """The execution's status, input, output or error, attempts and timestamps.

        :raises WorkflowNotFoundError: no such workflow.
        """
        return await self.backend.get_workflow(workflow_id)

    async def list_workflows(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowInfo]:
        """Executions, newest first, filtered by status (one or several), name or parent."""
        return await self.backend.list_snapshots(
            status=status, name=name, parent_id=parent_id, limit=limit, cursor=cursor
        )

    async def list_steps(self, workflow_id: str) -> list[StepRecord]:
        """The execution's steps by position: name, status, output or error, attempts, timings,
        executor and child workflow id.

        :raises WorkflowNotFoundError: no such workflow.
        """
        return await self.backend.list_steps(workflow_id)

    async def cancel(self, workflow_id: str) -> WorkflowInfo:
        """Cancel an unfinished execution: it stops at its next step boundary (its next write is
        refused) and is never picked up again. Cancelling a finished one changes nothing.

        :raises WorkflowNotFoundError: no such workflow.
        """
        return await self.backend.cancel_workflow(workflow_id)


class KeyedLock:
    """One asyncio lock per key, forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, DurableError | asyncio.CancelledError):
        log.error(
            "background task %s failed: %r",
            task.get_name(),
            exc,
            exc_info=exc,
            extra={"action": "background.failed"},
        )
