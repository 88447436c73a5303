"""The runtime: runs workflows on a backend, one persisted step at a time.

``Runtime`` is async at heart. Sync workflows run in worker threads and reach the event loop for
each checkpoint; sync callers (a Flask or Django view) start the runtime once per process with
``runtime.start_sync()`` (or ``with runtime:``, reference-counted) and call
``runtime.run_sync(...)`` from any thread, which runs the same async machinery on a background
event loop (see :mod:`durable.portal`). There is one implementation of everything, and it is async.

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
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

from durable import context as _context
from durable import identity
from durable.backends.base import PersistentBackend
from durable.client import (
    Client,
    Enqueue,
    EnqueueOptions,
    check_enqueue_arguments,
    enqueue_options,
    not_a_workflow,
    plan_enqueue_many,
)
from durable.client import outcome as _outcome
from durable.client import outcome_error as _outcome_error
from durable.context import ExecutionContext, Rescheduled, StepGuard, WorkflowSuspended
from durable.errors import (
    BackendUnavailableError,
    ClaimLostError,
    CorruptRowError,
    DurableError,
    ExecutorIdInUseError,
    InvalidArgumentError,
    NonRetryableError,
    NothingToServeError,
    RecoveriesExhaustedError,
    SerializationError,
    TaskNotFoundError,
)
from durable.models import (
    STALE_AFTER_HEARTBEATS,
    WORKFLOW_TASK,
    ErrorInfo,
    ExecutorInfo,
    Page,
    RegisteredWorkflow,
    StepRecord,
    StepStatus,
    TaskClaim,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.portal import SyncStartable
from durable.registry import Registry, default_registry
from durable.step import STEP_TASK_PREFIX
from durable.validation import (
    check_bool,
    check_id,
    check_instance,
    check_name,
    check_optional_id,
    check_positive_float,
    check_positive_int,
    derived_id,
)
from durable.worker import Worker
from durable.workflow import Workflow

log = logging.getLogger(__name__)
T = TypeVar("T")


#: How long an attempt handed back because the database could not be reached waits before it is
#: due again (a short pause, so that workers do not spin while the database is away).
OUTAGE_BACKOFF = timedelta(seconds=2)
#: The longest a release of a lease is waited for (it is best effort: the lease expires anyway).
RELEASE_TIMEOUT = 5.0


def default_executor_id() -> str:
    """``host-pid-random``: unique per process. Pass a stable id to recover your own work at once
    after a restart."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Runtime(SyncStartable):
    """Runs durable workflows on a backend.

    :param backend: any :class:`~durable.backends.PersistentBackend`; the runtime starts it on
        entry and closes it on exit.
    :param executor_id: this process's identity in leases (default: one of its own for every
        process, see :func:`default_executor_id`). One live process at a time may run under an
        id: starting while another process runs under it raises
        :class:`~durable.errors.ExecutorIdInUseError`. A runtime restarted with the same id
        (after a crash, or on another host once the old one's heartbeats have stopped) takes its
        unfinished work back at once; work of other executors is taken over only after their
        leases expire. Give a stable id (e.g. the host or pod name) to resume at once.
    :param claim_ttl: seconds a lease lasts without a heartbeat.
    :param heartbeat_interval: seconds between heartbeats (default a third of ``claim_ttl``).
    :param recover: on start, resume started, unfinished executions of the workflows this
        process has registered: its own at once, others' whose leases expired (default True).
        Executions that never started are left to workers (:meth:`start_worker`).
    :param poll_interval: seconds between looks at a workflow another executor is running.
    :param registry: where workflow names are looked up (default: the decorators' registry).
    :param max_threads: worker threads for sync workflows and sync steps.

    The operations that execute nothing (:meth:`enqueue` outside a workflow, :meth:`result`,
    :meth:`get_workflow`, :meth:`list_workflows`, :meth:`list_steps`, :meth:`cancel`,
    :meth:`retry`, :meth:`set_workflow_enabled`, :meth:`registered_workflows`,
    :meth:`list_executors`) go through the :class:`~durable.Client` the runtime owns on its
    backend (:attr:`client`). A process that only starts and inspects work needs no runtime: a
    :class:`~durable.Client` of its own does it.

    :raises InvalidArgumentError: an argument of the wrong type or out of range: an empty or
        overlong ``executor_id``, a ``claim_ttl``, ``heartbeat_interval`` or ``poll_interval``
        that is not a finite positive number, a heartbeat interval not below ``claim_ttl``, a
        ``max_threads`` that is not a positive int.
    """

    _noun = "runtime"
    _portal_name = "durable-portal"
    _sync_calls = "blocking calls such as run_sync()"

    fanout_warning_after: float = 60.0
    """Seconds after a :func:`durable.map` fan-out started here at which, if no worker has
    taken the first of its tasks yet, a warning is logged (no worker serves the step or its
    queue, or all of them have been busy). Set it on the class or on one runtime."""

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
        super().__init__()
        if not isinstance(backend, PersistentBackend):
            raise InvalidArgumentError(
                f"Runtime needs a PersistentBackend (e.g. durable.connect(url)), "
                f"got {type(backend).__qualname__}"
            )
        check_optional_id(executor_id, "executor_id")
        ttl = check_positive_float(claim_ttl, "claim_ttl")
        beat = (
            ttl / 3
            if heartbeat_interval is None
            else check_positive_float(heartbeat_interval, "heartbeat_interval")
        )
        if beat >= ttl:
            raise InvalidArgumentError(
                f"heartbeat_interval must be below claim_ttl (a lease must be renewed before it "
                f"expires), got heartbeat_interval={heartbeat_interval!r} with "
                f"claim_ttl={claim_ttl!r}"
            )
        check_bool(recover, "recover")
        check_positive_float(poll_interval, "poll_interval")
        check_positive_int(max_threads, "max_threads")
        check_instance(registry, Registry, "registry")
        if not callable(sleep):
            raise InvalidArgumentError(f"sleep must be a coroutine function, got {sleep!r}")
        self.client = Client._for_runtime(backend, poll_interval, self.blocking)
        """The client operations (enqueue, result, inspection and control) on this runtime's
        backend; the runtime's methods of the same names go through it. Its ``_sync`` methods
        (``runtime.client.result_sync(...)``) run on the runtime's loop, as :meth:`blocking`."""
        self.client.sleep = sleep
        self.executor_id = executor_id or default_executor_id()
        self.claim_ttl = timedelta(seconds=ttl)
        self.heartbeat_interval = beat
        self.recover_on_start = recover
        self.registry = registry or default_registry
        self._max_threads = max_threads
        self._threads: ThreadPoolExecutor | None = None
        self._locks = KeyedLock()
        self._workers: list[Worker] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._node_heartbeats_task: asyncio.Task[Any] | None = None
        self._incarnation = ""
        self._superseded = False

    def __repr__(self) -> str:
        return f"Runtime({self.backend!r}, executor_id={self.executor_id!r})"

    @property
    def backend(self) -> PersistentBackend:
        """The backend this runtime (and its :attr:`client`) works on."""
        return self.client.backend

    @backend.setter
    def backend(self, backend: PersistentBackend) -> None:
        self.client.backend = backend

    @property
    def poll_interval(self) -> float:
        """Seconds between looks at a workflow another executor is running."""
        return self.client.poll_interval

    @poll_interval.setter
    def poll_interval(self, seconds: float) -> None:
        self.client.poll_interval = seconds

    @property
    def sleep(self) -> Callable[[float], Coroutine[Any, Any, None]]:
        """How this runtime waits (``asyncio.sleep``; tests may speed it up)."""
        return self.client.sleep

    @sleep.setter
    def sleep(self, sleep: Callable[[float], Coroutine[Any, Any, None]]) -> None:
        self.client.sleep = sleep

    @property
    def superseded(self) -> bool:
        """True once another process took this runtime's executor id over (this one had been
        presumed dead): it then claims nothing and runs no further step."""
        return self._superseded

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend, take the executor id, and, if ``recover``, resume unfinished work
        in the background.

        :raises ExecutorIdInUseError: another live process runs under this ``executor_id``
            (nothing is started; the backend is closed again).
        """
        if self._started:
            return
        await self.backend.start()
        try:
            await self._take_executor_id()
        except BaseException:
            await self.backend.close()
            raise
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
            await self.backend.mark_executor_stopped(
                self.executor_id, incarnation=self._incarnation
            )
        self._started = False
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        await self.backend.close()

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
            return self.registry.get(check_name(fn, "the workflow name"))
        raise not_a_workflow(fn)

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
        one is resumed from its history (or awaited, if another live executor holds it). This
        holds whatever the arguments: the id is the idempotency key of the call, so a second
        call with the same id and *different* arguments returns the first run's outcome and
        its arguments are ignored (not compared). Use a new id for new input.

        :param workflow_id: the execution's id (default: a new random one); a non-empty str of
            at most 255 characters, valid Unicode, without NUL.

        :raises SerializationError: the arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: ``fn`` is not a workflow, ``workflow_id`` is not a valid
            id, or the id belongs to another workflow (nothing is written).
        :raises WorkflowCancelledError: the execution was cancelled.
        :raises ClaimLostError: this executor lost the lease mid-run (another one took over).
        :raises Exception: the workflow's own exception when it failed (rebuilt from the record
            when it failed earlier; :class:`WorkflowFailedError` when it cannot be rebuilt).
        """
        self._require_started()
        wf = self.resolve(fn)
        instance_id = (
            str(uuid.uuid4()) if workflow_id is None else check_id(workflow_id, "workflow_id")
        )
        await self._create(wf, instance_id, args, kwargs)
        return await self._drive(wf, instance_id)  # type: ignore[no-any-return]

    def run_sync(
        self,
        fn: Workflow[Any, T] | str,
        *args: Any,
        workflow_id: str | None = None,
        **kwargs: Any,
    ) -> T:
        """:meth:`run` for code that is not async, from any thread, while the runtime is
        started (see :meth:`start_sync` and :meth:`blocking`)."""
        return self.blocking(self.run(fn, *args, workflow_id=workflow_id, **kwargs))

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
        return await self.client._create(
            wf, instance_id, args, kwargs, parent_id=parent_id, options=options
        )

    async def _drive(self, wf: Workflow[Any, Any], instance_id: str) -> Any:
        """Run the execution here, or wait for whoever runs it; return its outcome.

        Within this runtime one coroutine at a time drives a given execution (the others wait
        for it and then find it finished); across executors the lease decides.
        """
        noted: set[str] = set()
        while True:
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
                    )
                except TaskNotFoundError:
                    if unreadable is not None:
                        raise unreadable from unreadable.__cause__
                    claim = None  # it finished (or was cancelled) since we looked: look again
                if claim is not None:
                    if self._superseded:
                        raise self._lost(instance_id, WORKFLOW_TASK)
                    try:
                        return await self._execute(wf, instance_id)
                    except (Rescheduled, WorkflowSuspended):
                        pass  # it goes on when due (a retry) or when woken (its steps done)
                else:
                    await self._note_wait(instance_id, noted)
            await self.sleep(self.poll_interval)

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

    async def _execute(self, wf: Workflow[Any, Any], instance_id: str) -> Any:
        """Run the body under this executor's lease (already claimed) and record the outcome.

        How an attempt ends:

        * the body returns: the output is recorded (``succeeded``);
        * the body raises: a *failed* attempt, retried with backoff while ``max_attempts``
          allows (:meth:`_record_failure`), else ``dead_letter``; ``failed`` at once for an
          error not worth retrying (:class:`NonRetryableError`, a diverged replay, an output
          that cannot be stored);
        * a checkpoint cannot reach the database: the attempt is handed back, due again after
          :data:`OUTAGE_BACKOFF`, not counted (if even that cannot reach the database, the lease
          expires and the next executor resumes it);
        * the lease is lost, or this executor dies: an *interrupted* attempt, which the next
          :meth:`~PersistentBackend.begin_execution` counts in ``interruptions``; after more
          than the workflow's ``max_recoveries`` the execution is dead-lettered (a crash loop).
        """
        leased_at = time.monotonic()  # the claim was taken before this: a safe lower bound
        try:
            snapshot = await self.backend.begin_execution(instance_id, self.executor_id)
            args, kwargs = stored_arguments(snapshot.input, instance_id)
        except CorruptRowError as exc:  # fail it once; never leave it to be claimed forever
            await self._fail_unreadable(instance_id, exc)
            raise
        except BackendUnavailableError:
            # nothing ran; whether the start was recorded is unknown: give the claim back
            await self._bounded(
                self.backend.release_task_claim(instance_id, WORKFLOW_TASK, self.executor_id)
            )
            raise
        if snapshot.interruptions > wf.max_recoveries:
            # its executors kept dying (or losing their leases) in the middle of it
            interrupted = (
                f"{snapshot.interruptions} attempt(s) were interrupted before finishing (their "
                f"executors stopped or lost their leases); max_recoveries is {wf.max_recoveries}"
            )
            last = snapshot.error
            info = await self.backend.finish_workflow(
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
        heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat(instance_id, context=ctx)
        )
        try:
            unstorable = False
            try:
                output = await self._invoke(ctx, wf, args, kwargs)
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
                retryable = error is exc and not unstorable
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
                await self.backend.finish_workflow(
                    instance_id,
                    worker_id=self.executor_id,
                    status=WorkflowStatus.SUCCEEDED,
                    output=output,
                )
            except BackendUnavailableError as exc:
                await self._hand_back(instance_id, exc)
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

    async def _fail_unreadable(self, instance_id: str, exc: CorruptRowError) -> None:
        """Record that the execution failed because its stored rows cannot be read (fenced by
        the claim, like any outcome)."""
        log.error(
            "workflow %s failed: %s",
            instance_id,
            exc,
            extra={"action": "workflow.unreadable", "workflow_id": instance_id},
        )
        await self.backend.finish_workflow(
            instance_id,
            worker_id=self.executor_id,
            status=WorkflowStatus.FAILED,
            error=ErrorInfo.from_exception(exc),
        )

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
            await self.backend.reschedule_workflow(
                snapshot.id,
                worker_id=self.executor_id,
                run_after=timedelta(seconds=delay),
                error=info,
                rerun=rerun,
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
            snapshot.id, worker_id=self.executor_id, status=status, error=info, rerun=rerun
        )
        return False

    async def _take_executor_id(self) -> None:
        """Record this start as the one live process under ``executor_id`` (see
        :mod:`durable.identity`), or raise :class:`ExecutorIdInUseError`."""
        incarnation = identity.new_incarnation()
        here = identity.hostname()
        for _ in range(5):  # the record may change between the look and the write: look again
            known = await self.backend.get_executor(self.executor_id)
            if known is not None and identity.in_use(known, here):
                raise ExecutorIdInUseError(
                    self.executor_id, known.hostname, known.pid, known.heartbeat_at
                )
            if await self.backend.start_executor(
                self.executor_id,
                hostname=here,
                pid=os.getpid(),
                incarnation=incarnation,
                heartbeat_interval=self.heartbeat_interval,
                replacing=known.incarnation if known is not None else None,
            ):
                self._incarnation = incarnation
                self._superseded = False
                if known is not None and known.stopped_at is None:
                    log.info(
                        "executor %s took its id over from process %d on %s (gone)",
                        self.executor_id,
                        known.pid,
                        known.hostname,
                        extra={"action": "executor.taken_over", "executor_id": self.executor_id},
                    )
                return
        known = await self.backend.get_executor(self.executor_id)
        assert known is not None  # someone else started under the id each time we tried
        raise ExecutorIdInUseError(self.executor_id, known.hostname, known.pid, known.heartbeat_at)

    async def _node_heartbeat(self) -> bool:
        """Record that this process is alive, fenced by its incarnation. Returns False when
        another process took the executor id over (this one looked dead to it): from then on
        this runtime claims nothing and runs no further step (its leases are the other one's
        now, since leases are held by executor id), and says so once, at ERROR."""
        if not self._superseded and await self.backend.record_executor_heartbeat(
            self.executor_id, incarnation=self._incarnation
        ):
            return True
        if not self._superseded:
            self._superseded = True
            for worker in self._workers:
                worker.request_stop()  # no hand-back: what it runs is not this process's now
            log.error(
                "executor id %s is no longer this process's: another process took it over "
                "(this one was presumed dead: no heartbeat for %d intervals of %.1f s). This "
                "runtime claims nothing more and runs no further step; stop this process",
                self.executor_id,
                STALE_AFTER_HEARTBEATS,
                self.heartbeat_interval,
                extra={"action": "executor.superseded", "executor_id": self.executor_id},
            )
        return False

    async def check_identity(self, instance_id: str, task_id: str = WORKFLOW_TASK) -> None:
        """Before work under a lease whose local deadline has passed (this process may have
        been paused long enough to be presumed dead): make sure the executor id is still this
        process's.

        :raises ClaimLostError: another process took the executor id over.
        """
        if not await self._node_heartbeat():
            raise self._lost(instance_id, task_id)

    def _lost(self, instance_id: str, task_id: str) -> ClaimLostError:
        return ClaimLostError(
            instance_id, task_id, self.executor_id, f"another process under {self.executor_id!r}"
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
            if self._superseded:  # the lease is the other process's now: stop at the next step
                if context is not None:
                    context.lease_lost = self._lost(instance_id, task_id)
                return
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

    async def _release_quietly(self, instance_id: str, run_after: timedelta = timedelta(0)) -> None:
        """Hand an interrupted execution back, due ``run_after`` from now, without counting
        the attempt. Best effort, and bounded in time: if the database cannot be reached, the
        lease expires instead and the next executor resumes the execution. Nothing is done once
        another process took this executor id over: the lease is that process's then."""
        if self._superseded:
            return
        await self._bounded(
            self.backend.reschedule_workflow(
                instance_id,
                worker_id=self.executor_id,
                run_after=run_after,
                consume_attempt=False,
            )
        )

    async def _bounded(self, release: Coroutine[Any, Any, Any]) -> None:
        """Run a best-effort release of a lease: errors are ignored, a cancellation of the
        caller does not interrupt it, and it is given up after :data:`RELEASE_TIMEOUT` seconds
        (at most the lease's duration: after that the lease has expired anyway)."""
        task = asyncio.ensure_future(release)
        task.add_done_callback(_retrieve)
        timeout = min(self.claim_ttl.total_seconds(), RELEASE_TIMEOUT)
        asyncio.get_running_loop().call_later(timeout, task.cancel)
        with contextlib.suppress(DurableError, asyncio.CancelledError):
            await asyncio.shield(task)

    async def _hand_back(self, instance_id: str, outage: BackendUnavailableError) -> NoReturn:
        """A checkpoint could not reach the database: end the attempt without counting it, to
        be resumed after :data:`OUTAGE_BACKOFF` (or once the lease expires)."""
        log.warning(
            "workflow %s: the database could not be reached, handing the attempt back: %s",
            instance_id,
            outage,
            extra={"action": "workflow.outage", "workflow_id": instance_id},
        )
        await self._release_quietly(instance_id, OUTAGE_BACKOFF)
        raise Rescheduled(instance_id) from outage

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
        cancelled child stays cancelled.
        """
        if guard.replayed:
            return guard.replay()
        await ctx.ensure_lease()
        pending = guard.pending
        child_id = pending.child_workflow_id if pending else None
        with ctx.checkpoint():
            if child_id is None:
                child_id = derived_id(ctx.workflow_id, f"/{guard.position}")
                info = await self._create(wf, child_id, args, kwargs, parent_id=ctx.workflow_id)
                await guard.mark_pending(child_id)
            else:
                info = await self.backend.get_workflow(child_id)
            if info.status in (WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTER):
                with contextlib.suppress(InvalidArgumentError):  # someone redrove it already
                    await self.backend.requeue_workflow(child_id)
        try:
            value = await self._drive(wf, child_id)
        except (ClaimLostError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if isinstance(exc, BackendUnavailableError) and not hasattr(exc, "__durable_error__"):
                ctx.outage = ctx.outage or exc  # not the child's recorded error: an outage now
            if ctx.outage is not None:
                raise
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
        importing the workflow's code, and without a runtime: see :class:`~durable.Client`.

        :param workflow_id: the execution's id (default: a new random one). An id that exists
            already creates nothing: its id is returned, whatever the arguments (they are not
            compared: the first enqueue's arguments are the ones that run).
        :param idempotency_key: a duplicate enqueue with the same key creates nothing and
            returns the existing execution's id, whatever the arguments (as for an existing
            ``workflow_id``). A key belongs to one workflow: reusing it for another workflow
            name raises :class:`InvalidArgumentError`.
        :param priority: lower runs first; FIFO within a priority. An int that fits a 32-bit
            signed integer.
        :param run_after: not before this (timezone-aware) time.
        :param delay: or not before this many seconds (or this timedelta) from now, by the
            backend's clock (the database's on PostgreSQL).
        :param max_attempts: failed attempts before dead-lettering, at least 1 (default: the
            workflow's policy, 3 attempts: at once, +1 minute, +4 minutes). Attempts interrupted
            by a crash or a lost lease do not count here (see the workflow's ``max_recoveries``).
        :param queue: the queue (default: the workflow's, else ``"default"``).
        :param served_elsewhere: allow a name that is not registered in this process.

        Called inside a workflow, enqueueing is a step: it is recorded with the workflow's
        progress, so a replay after a crash neither loses nor duplicates it. The child's default
        id is then ``<workflow id>/<position>`` (shortened as for a child workflow when that
        would be longer than 255 characters).

        Ids, keys, names and queues are non-empty str of at most 255 characters, valid Unicode,
        without NUL.

        :raises UnknownWorkflowError: the name is not registered here and not ``served_elsewhere``.
        :raises SerializationError: the arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: an argument of the wrong type or out of range, such as a
            ``max_attempts`` below 1, a ``priority`` that is no 32-bit int, a ``delay`` that is
            not finite, an empty ``queue`` (nothing is written).
        """
        self._require_started()
        wait = check_enqueue_arguments(
            fn,
            workflow_id=workflow_id,
            idempotency_key=idempotency_key,
            priority=priority,
            run_after=run_after,
            delay=delay,
            max_attempts=max_attempts,
            queue=queue,
        )
        check_bool(served_elsewhere, "served_elsewhere")
        target: Workflow[Any, Any] | str
        if isinstance(fn, str) and fn in self.registry:
            target = self.registry.get(fn)
        elif isinstance(fn, str) and (served_elsewhere or await self._served_by_others(fn)):
            target = fn
        else:
            target = self.resolve(fn)
        name = target if isinstance(target, str) else target.name
        options = enqueue_options(
            target,
            idempotency_key=idempotency_key,
            priority=priority,
            run_after=run_after,
            wait=wait,
            max_attempts=max_attempts,
            queue=queue,
        )
        ctx = _context.current()
        if ctx is None:  # a client's enqueue
            info = await self.client._create(
                target, workflow_id or str(uuid.uuid4()), args, kwargs, options=options
            )
            return info.id
        guard = ctx.guard(derived_id(f"enqueue:{name}", ""))
        if guard.replayed:
            return guard.replay()  # type: ignore[no-any-return]
        await ctx.ensure_lease()
        instance_id = workflow_id or derived_id(ctx.workflow_id, f"/{guard.position}")
        with ctx.checkpoint():
            info = await self._create(
                target, instance_id, args, kwargs, parent_id=ctx.workflow_id, options=options
            )
        return await guard.succeed(info.id)  # type: ignore[no-any-return]

    async def enqueue_many(
        self,
        fn: Workflow[Any, Any] | str | None,
        inputs: Iterable[Enqueue | tuple[Any, ...] | list[Any]],
        *,
        priority: int = 0,
        run_after: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        queue: str | None = None,
        served_elsewhere: bool = False,
    ) -> list[str]:
        """Record many executions at once, in one transaction, and return their ids in the
        order of ``inputs``: see :meth:`Client.enqueue_many <durable.Client.enqueue_many>` for
        the rows (tuples of arguments, or :class:`~durable.Enqueue`), the options and the
        all-or-nothing rule. Names are resolved as for :meth:`enqueue` (``served_elsewhere``
        allows names not registered here).

        Called inside a workflow, it is one step: the ids are recorded, so a replay neither
        loses nor duplicates the batch. Rows without a ``workflow_id`` then get
        ``<workflow id>/<position>/<row>`` (shortened as for a child workflow when longer than
        255 characters).

        :raises UnknownWorkflowError: a name is not registered here and not ``served_elsewhere``.
        :raises SerializationError: a row's arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: a row or option of the wrong type or out of range, or an
            id or key that belongs to another workflow (nothing is written; the message names
            the row).
        """
        self._require_started()
        planned = plan_enqueue_many(
            fn,
            inputs,
            priority=priority,
            run_after=run_after,
            delay=delay,
            max_attempts=max_attempts,
            queue=queue,
        )
        check_bool(served_elsewhere, "served_elsewhere")
        resolved: dict[Any, Workflow[Any, Any] | str] = {}
        targets: list[Workflow[Any, Any] | str] = []
        for index, row in enumerate(planned):
            key = row.fn if isinstance(row.fn, str) else id(row.fn)
            if key not in resolved:
                try:
                    if isinstance(row.fn, str) and row.fn in self.registry:
                        resolved[key] = self.registry.get(row.fn)
                    elif isinstance(row.fn, str) and (
                        served_elsewhere or await self._served_by_others(row.fn)
                    ):
                        resolved[key] = row.fn
                    else:
                        resolved[key] = self.resolve(row.fn)
                except InvalidArgumentError as exc:
                    raise InvalidArgumentError(f"inputs[{index}]: {exc}") from exc
            targets.append(resolved[key])
        ctx = _context.current()
        if ctx is None:  # a client's enqueue
            infos = await self.client._create_many(
                [
                    (t, row.workflow_id or str(uuid.uuid4()), row.args, row.kwargs, row.options(t))
                    for t, row in zip(targets, planned, strict=True)
                ]
            )
            return [info.id for info in infos]
        guard = ctx.guard(derived_id("enqueue_many", ""))
        if guard.replayed:
            return guard.replay()  # type: ignore[no-any-return]
        await ctx.ensure_lease()
        base = derived_id(ctx.workflow_id, f"/{guard.position}")
        rows = [
            (t, row.workflow_id or derived_id(base, f"/{i}"), row.args, row.kwargs, row.options(t))
            for i, (t, row) in enumerate(zip(targets, planned, strict=True))
        ]
        with ctx.checkpoint():
            infos = await self.client._create_many(rows, parent_id=ctx.workflow_id)
        return await guard.succeed([info.id for info in infos])  # type: ignore[no-any-return]

    async def _served_by_others(self, name: str) -> bool:
        return any(w.name == name for w in await self.backend.list_registered_workflows())

    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        """Enable or disable a workflow name for every worker sharing this database, at once:
        from the moment this returns no worker claims a disabled name (the claim itself reads
        the registry), whatever the backend. Executions already claimed or running go on, and
        ``run`` and recovery on start still run it explicitly. Re-enabled work waits for the
        workers' next claim (a wake-up or their poll interval).

        :raises UnknownWorkflowError: no runtime ever registered the name.
        """
        return await self.client.set_workflow_enabled(name, enabled)

    async def registered_workflows(self) -> list[RegisteredWorkflow]:
        """Every workflow name any runtime on this database registered, enabled or not."""
        return await self.client.registered_workflows()

    async def list_executors(self, *, stale_after: float | None = None) -> list[ExecutorInfo]:
        """Runtimes known by their heartbeats; ``stale`` marks running ones silent for longer
        than ``stale_after`` seconds (default: each judged by its own heartbeat interval,
        :data:`~durable.models.STALE_AFTER_HEARTBEATS` of them).

        :raises InvalidArgumentError: ``stale_after`` is not positive.
        """
        return await self.client.list_executors(stale_after=stale_after)

    async def retry(self, workflow_id: str) -> WorkflowInfo:
        """Run a failed, dead-lettered or cancelled execution again from its history (a
        *redrive*), with its attempt and interruption counts cleared.

        Completed steps are not run again. The failed steps whose failure ended its last attempt
        (marked ``rerun`` in :meth:`list_steps`), wherever they are, run again; so do failed
        steps after its last step that did not fail. Failures the workflow handled (it went on
        with a fallback step) are replayed, so that it takes the same path. A failed child
        workflow at a position that runs again is redriven in turn.

        :raises WorkflowNotFoundError: no such workflow.
        :raises InvalidArgumentError: it is not failed, dead-lettered or cancelled.
        """
        return await self.client.retry(workflow_id)

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

        :raises InvalidArgumentError: ``concurrency`` is not a positive int, ``poll_interval``
            not a finite positive number, or ``queues`` / ``names`` not lists of valid names.
        :raises NothingToServeError: no workflow to serve: none is registered here, or
            ``names`` is empty.
        """
        self._require_started()
        worker = Worker(  # checks the arguments
            self, concurrency=concurrency, queues=queues, names=names, poll_interval=poll_interval
        )
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
        try:
            record = next(
                (
                    r
                    for r in await self.backend.list_steps(claim.instance_id)
                    if r.position == position
                ),
                None,
            )
            if record is not None and record.status is StepStatus.PENDING:
                args, kwargs = stored_arguments(record.input, claim.instance_id, position)
        except CorruptRowError as exc:  # record the step failed, once, instead of looping
            await self.backend.complete_step_task(
                claim.instance_id,
                claim.task_id,
                worker_id=self.executor_id,
                step=StepRecord(
                    position=position,
                    name=step.name,
                    status=StepStatus.FAILED,
                    error=ErrorInfo.from_exception(exc),
                    executor_id=self.executor_id,
                ),
            )
            return
        if record is None or record.status is not StepStatus.PENDING:
            await self.backend.complete_task(claim.instance_id, claim.task_id, self.executor_id)
            return
        started = datetime.now(UTC)
        heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat(claim.instance_id, claim.task_id)
        )
        try:
            ok, value, attempts = await step.attempt(args, kwargs, self.sleep)
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
        """Run an execution whose workflow task this executor has just claimed.

        :raises ClaimLostError: another process took this executor id over.
        """
        if self._superseded:
            raise self._lost(instance_id, WORKFLOW_TASK)
        async with self._locks.hold(instance_id):
            return await self._execute(wf, instance_id)

    # -- outcomes -----------------------------------------------------------------------------

    def outcome(self, info: WorkflowInfo) -> Any:
        """The stored result of a finished execution, or its error raised."""
        return _outcome(info)

    @staticmethod
    def outcome_error(info: WorkflowInfo) -> BaseException:
        """The exception a caller sees for an execution that did not succeed."""
        return _outcome_error(info)

    async def result(self, workflow_id: str, *, timeout: float | None = None) -> Any:
        """Wait until the execution finishes (wherever it runs) and return its result.

        :raises WorkflowNotFoundError: no such workflow.
        :raises TimeoutError: it did not finish within ``timeout`` seconds.
        :raises InvalidArgumentError: ``timeout`` is negative or not finite, or the id is not one.
        :raises Exception: as :meth:`run` does when the execution did not succeed.
        """
        self._require_started()
        return await self.client.result(workflow_id, timeout=timeout)

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self, *, limit: int = 1000) -> list[str]:
        """Resume, in the background, executions of the workflows registered here that were
        started and not finished: this executor's own at once, others' once their leases have
        expired. Returns their ids. Work that never started is left to workers.
        """
        self._require_started()
        check_positive_int(limit, "limit")
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
        """The execution's status, input, output or error, attempts (and interrupted ones)
        and timestamps.

        :raises WorkflowNotFoundError: no such workflow.
        """
        return await self.client.get_workflow(workflow_id)

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
        return await self.client.list_workflows(
            status=status, name=name, parent_id=parent_id, limit=limit, cursor=cursor
        )

    async def list_steps(self, workflow_id: str) -> list[StepRecord]:
        """The execution's steps by position: name, status, output or error, attempts, timings,
        executor and child workflow id.

        :raises WorkflowNotFoundError: no such workflow.
        """
        return await self.client.list_steps(workflow_id)

    async def cancel(self, workflow_id: str) -> WorkflowInfo:
        """Cancel an unfinished execution: it stops at its next step boundary (its next write is
        refused) and is never picked up again. Cancelling a finished one changes nothing.

        :raises WorkflowNotFoundError: no such workflow.
        """
        return await self.client.cancel(workflow_id)


def stored_arguments(
    payload: Any, workflow_id: str, position: int | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """The ``args`` and ``kwargs`` of a stored input (``{"args": [...], "kwargs": {...}}``).

    :raises CorruptRowError: the input is not of that shape (NULL, or not written by durable).
    """
    if isinstance(payload, dict):
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
        if isinstance(args, list) and isinstance(kwargs, dict):
            return args, kwargs
    shown = repr(payload)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    raise CorruptRowError.at(
        None,
        workflow_id,
        "input",
        f'expected the arguments as {{"args": [...], "kwargs": {{...}}}}, got {shown}',
        position=position,
    )


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


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a best-effort task's outcome as seen (its errors are expected and ignored)."""
    if not task.cancelled():
        task.exception()


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
