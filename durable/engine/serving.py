"""What the runtime runs without being asked: workers claiming enqueued work, steps handed out
by a fan-out, and recovery of unfinished executions on start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

from durable import telemetry
from durable.context import stamp_of
from durable.engine.attempts import Attempts
from durable.engine.core import stored_arguments
from durable.errors import (
    CorruptRowError,
    DurableError,
    NothingToServeError,
    SerializationError,
)
from durable.models import WORKFLOW_TASK, ErrorInfo, StepRecord, StepStatus, TaskClaim
from durable.retention import Retention, run_retention
from durable.step import STEP_TASK_PREFIX, Step
from durable.validation import check_positive_int
from durable.worker import Worker
from durable.workflow import Workflow

#: The runtime's logger: what this module logs, it logs as the runtime.
log = logging.getLogger("durable.runtime")
#: How many workflows' names and trace contexts a runtime remembers for the spans of the steps
#: they hand out (see :meth:`Serving._trace_header`).
_TRACE_HEADERS = 256


class Serving(Attempts):
    """Work this runtime takes on by itself: its workers, the steps a workflow handed out
    (:func:`durable.map`), recovery of started executions, and cancelling executions past
    their deadlines."""

    deadline_sweep_interval: float = 1.0
    """Seconds between two looks, while this runtime has a worker, for executions that passed
    their deadline that no executor is running (sleeping, waiting, queued, or held by a dead
    executor): :meth:`~durable.backends.PersistentBackend.cancel_expired_workflows`. Set it on
    the class or on one runtime."""

    resumed: int = 0
    """How many executions this runtime's recovery took up (:meth:`recover`) and drove (not
    those its worker, or another drive of this runtime, ran instead)."""

    recovering: set[asyncio.Task[Any]]
    """The drives of the executions recovery took up that still run (its workers' graceful
    stop waits for them as for their own, then hands back those still running)."""

    _deadline_sweeper: asyncio.Task[None] | None = None
    _trace_headers: dict[str, tuple[str, str | None]] | None = None  # see _trace_header
    _retention_task: asyncio.Task[None] | None = None
    retention: tuple[Retention, ...] = ()

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
        if self._deadline_sweeper is None or self._deadline_sweeper.done():
            self._deadline_sweeper = self.spawn(
                self._sweep_deadlines(), name=f"durable-deadlines:{self.executor_id}"
            )
        if self.retention and (self._retention_task is None or self._retention_task.done()):
            self._retention_task = self.spawn(
                run_retention(self.backend, self.retention),
                name=f"durable-retention:{self.executor_id}",
            )
        return worker

    def start_worker_sync(
        self,
        *,
        concurrency: int = 10,
        queues: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        poll_interval: float = 1.0,
    ) -> Worker:
        """:meth:`start_worker` for code that is not async, from any thread, while the runtime
        is started (:meth:`start_sync`): the worker runs on the runtime's own event loop until
        the runtime closes. Same arguments and errors."""
        return self.blocking(
            self.start_worker(
                concurrency=concurrency, queues=queues, names=names, poll_interval=poll_interval
            )
        )

    async def _sweep_deadlines(self) -> None:
        """Cancel executions past their deadlines, every :attr:`deadline_sweep_interval`
        seconds, for as long as the runtime runs (every worker process sweeps; each expired
        execution is cancelled once)."""
        batch = 100
        while True:
            try:
                cancelled = await self.backend.cancel_expired_workflows(limit=batch)
            except DurableError as exc:  # the database may be away: look again later
                log.debug(
                    "looking for executions past their deadlines failed: %s",
                    exc,
                    extra={"action": "deadline.sweep_failed"},
                )
                cancelled = []
            for info in cancelled:
                log.info(
                    "workflow %s (%s) passed its deadline %s: cancelled",
                    info.id,
                    info.name,
                    info.deadline.isoformat() if info.deadline else "-",
                    extra={"action": "workflow.deadline", "workflow_id": info.id},
                )
            if len(cancelled) < batch:
                await asyncio.sleep(self.deadline_sweep_interval)

    def _worker_died(self, worker: Worker) -> None:
        """A worker's loop died: stop the node heartbeat, so that this process no longer looks
        alive to :meth:`list_executors` (it turns stale) while it claims nothing."""
        task, self._node_heartbeats_task = self._node_heartbeats_task, None
        if task is not None:
            task.cancel()

    async def execute_step_task(self, claim: TaskClaim) -> None:
        """Run a step a workflow handed out (see :func:`durable.map`) under ``claim``, and
        record its outcome; the last one to finish wakes the workflow."""
        # the decorator registers Steps; the registry, below it, knows only the protocol
        step = cast("Step[Any, Any]", self.registry.get_step(claim.name))
        position = int(claim.task_id.removeprefix(STEP_TASK_PREFIX))
        try:
            record = await self.backend.get_step(claim.instance_id, position)
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
        tel = telemetry.active
        if tel is None or not tel.recording():  # no span to open: nothing would record it
            await self._run_step_task(claim, step, position, record, args, kwargs)
            return
        workflow_name, trace_context = await self._trace_header(tel, claim.instance_id)
        await tel.step_task(
            workflow_name,
            claim.instance_id,
            step.name,
            position,
            trace_context,
            self._run_step_task(claim, step, position, record, args, kwargs),
        )

    async def _run_step_task(
        self,
        claim: TaskClaim,
        step: Step[Any, Any],
        position: int,
        record: StepRecord,
        args: Sequence[Any],
        kwargs: dict[str, Any],
    ) -> BaseException | None:
        """:meth:`execute_step_task` of a pending step: run it and record its outcome. Returns
        what the step failed with (recorded as its failure), or None when it succeeded."""
        started = stamp_of(self.backend)
        heartbeat = asyncio.get_running_loop().create_task(
            self._heartbeat(claim.instance_id, claim.task_id)
        )
        try:
            ok, value, attempts = await step.attempt(args, kwargs, self.sleep, self._threads)
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
        done = StepRecord(
            position=position,
            name=step.name,
            input=record.input,
            attempts=attempts,
            executor_id=self.executor_id,
            started_at=started,
            **outcome,
        )
        # the step ran: its outcome is kept through an outage (tried until the database
        # answers, holding the worker's slot) rather than run again once the lease expires. A
        # try whose commit went through unacknowledged makes the next one refused (the task is
        # gone): ClaimLostError, as for a lease lost. A try is not bounded in time: it may wait
        # for locks, as it always could
        await self._through_outage(
            lambda: self.backend.complete_step_task(
                claim.instance_id, claim.task_id, worker_id=self.executor_id, step=done
            ),
            bounded=False,
        )
        return None if ok else cast(BaseException, value)

    async def _trace_header(
        self, tel: telemetry.Telemetry, instance_id: str
    ) -> tuple[str, str | None]:
        """The name and stored trace context of the workflow whose handed-out step runs here
        (for its span), remembered for the last :data:`_TRACE_HEADERS` workflows (neither
        changes for an execution). A failure to read them is reported
        (:meth:`~durable.telemetry.Telemetry.report`): the step runs with a span in a new
        trace, its workflow's name unknown (empty)."""
        headers = self._trace_headers
        if headers is None:
            headers = self._trace_headers = {}
        header = headers.get(instance_id)
        if header is None:
            try:
                info = await self.backend.get_workflow(instance_id)
            except Exception as exc:  # the step's own reads and writes meet it if it lasts
                tel.report("reading the workflow's trace context", exc)
                return "", None
            header = headers[instance_id] = (info.name, info.trace_context)
            if len(headers) > _TRACE_HEADERS:
                del headers[next(iter(headers))]
        return header

    # -- recovery -----------------------------------------------------------------------------

    async def recover(self, *, limit: int = 1000) -> list[str]:
        """Resume, in the background, executions of the workflows registered here that were
        started and not finished: this executor's own at once, others' once their leases have
        expired; with ``serve_versions``, only those of the versions it serves. Returns their
        ids. Work that never started is left to workers, and an execution a coroutine of this
        runtime drives now (:meth:`~durable.Runtime.run`, a parent running its child) to it.
        """
        self._require_started()
        check_positive_int(limit, "limit")
        names = self.registry.names()
        if not names:
            return []
        found = await self.backend.find_available_tasks(self.executor_id, limit, names=names)
        versions = self.claim_versions()  # Runtime(serve_versions=...): only those, as claims
        resumed = []
        for task in found:
            if task.task_id != WORKFLOW_TASK or task.attempts == 0:
                continue
            if versions is not None:
                recorded = (await self.backend.get_workflow(task.instance_id)).code_version
                if recorded is not None and recorded not in versions:
                    continue
            claim = await self.backend.claim_task(
                task.instance_id,
                WORKFLOW_TASK,
                self.executor_id,
                self.claim_ttl,
                due_only=True,
                keep_limits=True,
            )
            if claim is None:
                continue
            if self._claimed.driven(claim.instance_id):
                # a drive of this runtime runs it (run(), a parent running its child): the
                # claim is its lease too (see ClaimedStarts.driven), due, so it looks now
                self.client.note_finished()
                continue
            wf = self._workflow(claim.name)
            resumed.append(claim.instance_id)
            drive = self.spawn(
                self._resume(wf, claim.instance_id), name=f"durable:{claim.instance_id}"
            )
            self.recovering.add(drive)
            drive.add_done_callback(self.recovering.discard)
        if resumed:
            log.info(
                "resuming %d workflow(s)",
                len(resumed),
                extra={"action": "recover", "workflow_ids": resumed},
            )
        return resumed

    async def _resume(self, wf: Workflow[Any, Any], instance_id: str) -> Any:
        """Recovery's drive of an execution it claimed, unless a drive of this runtime began
        since the claim, or this runtime's worker claimed it too and runs it (or has begun it,
        to run next): that one runs it (as in :meth:`recover`), and a second one would only
        find its outcome, and report a failure it did not meet. Counted in :attr:`resumed`
        when it drives."""
        elsewhere = (  # run by a drive, or by this runtime's worker (begun, or running)
            self._claimed.driven(instance_id)
            or self._claimed.started(instance_id)
            or self._locks.held(instance_id)
        )
        if elsewhere:
            return None  # counted by whoever runs it
        self.resumed += 1
        return await self._drive(wf, instance_id)
