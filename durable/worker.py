"""Workers: claim enqueued executions in batches and run them, many processes sharing one database.

A worker loops: it claims up to its free slots in one atomic statement (``SKIP LOCKED`` on
PostgreSQL, one write transaction on SQLite), runs each claimed execution under its lease (kept
alive by heartbeats), and when nothing is available it sleeps until the backend signals new work
(LISTEN/NOTIFY on PostgreSQL) or the poll interval passes. When it drains fast (a claim filled
every slot it asked for: there is a backlog), it claims ahead as many executions as its slots
free up in :data:`PREFETCH_WINDOW` seconds at the pace of its recent executions (at most its
concurrency; none while they run long), and starts them as slots free up, without a round
trip; it claims again only when that reserve runs low, so one claim refills many slots.
Where the backend can, the claim also starts the workflows it claims
(:meth:`~durable.backends.base.PersistentBackend.claim_and_begin_tasks`): a batch of starts
costs no round trip of its own. A reserved claim that waited longer than half its lease is
handed back instead of started (one the claim started goes back to pending, its attempt not
counted), and the reserve is handed back on stop. A dead worker's executions, and the claims
it held in reserve, are taken over by any worker once their leases expire, and resume from
their history.

Stopping is graceful: the worker stops claiming, lets running executions finish within a grace
period, and hands back the rest at once (their leases released, the interrupted attempt not
counted) so that other workers resume them without waiting for expiry.

The loop outlives the database: when claiming fails (the server restarts, refuses connections,
has too many clients) or anything else goes wrong in it, the worker logs it, backs off (0.1 s,
doubling, at most :data:`MAX_BACKOFF`) and tries again, so it claims again within about a second
of the database being back. Should the loop die all the same, the worker does not pass for
healthy: its runtime stops the node heartbeat (the executor turns stale in
:meth:`Runtime.list_executors <durable.Runtime.list_executors>`), :attr:`Worker.failure` says
why, and :func:`serve` (``durable worker``) raises :class:`~durable.errors.WorkerCrashedError`.

What it logs (logger ``durable.worker``): its start, with what it serves, at INFO; an attempt
that failed and will be retried, an execution that failed for good, a lost lease or an execution
interrupted by the database, at WARNING; a dead-lettered execution at ERROR; a dead loop at
CRITICAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Protocol

from durable import telemetry
from durable.backends.base import PersistentBackend
from durable.context import HandedBack, Rescheduled, WorkflowSuspended
from durable.errors import (
    BackendError,
    ClaimLostError,
    DurableError,
    WorkerCrashedError,
    WorkflowCancelledError,
    WorkflowDeadLetteredError,
    logged,
    message_of,
)
from durable.models import WORKFLOW_TASK, TaskClaim, WorkflowInfo, WorkflowStatus
from durable.registry import Registry
from durable.scheduler import Scheduler
from durable.validation import (
    check_names,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
    check_queues,
)

log = logging.getLogger(__name__)

#: The longest pause, in seconds, between two attempts to claim while they fail: a worker claims
#: again at most about this long after the database is back.
MAX_BACKOFF = 1.0


#: How far ahead, in seconds, a worker with a backlog claims: as many executions as its slots
#: free up in this long, at the average time its recent executions took (at most its
#: concurrency). At concurrency 16, executions of a second each leave nothing claimed ahead;
#: no-op ones of a few milliseconds, 16. What it holds ahead is what it would start within about
#: this long, so other workers would have started it at most about this much sooner.
PREFETCH_WINDOW = 0.05
#: The weight of the latest execution in the running average of their durations.
_DURATION_WEIGHT = 0.125


class WorkflowReader(Protocol):
    """How a worker reads a workflow's record (:class:`durable.Client` is one)."""

    async def get_workflow(self, workflow_id: str) -> WorkflowInfo: ...


class WorkerHost(Protocol):
    """What a worker needs from the runtime it belongs to; :class:`durable.Runtime` is one.

    Declared here, below the runtime, so that the worker does not import the runtime (the
    layers in CONTRIBUTING.md)."""

    @property
    def executor_id(self) -> str: ...
    @property
    def registry(self) -> Registry: ...
    @property
    def backend(self) -> PersistentBackend: ...
    @property
    def claim_ttl(self) -> timedelta: ...
    @property
    def client(self) -> WorkflowReader: ...
    @property
    def recovering(self) -> set[asyncio.Task[Any]]: ...

    def _worker_died(self, worker: Worker) -> None: ...
    async def claim_work(
        self, limit: int, *, names: Sequence[str], queues: Sequence[str] | None
    ) -> list[TaskClaim]: ...
    async def hand_back_claim(self, claim: TaskClaim) -> None: ...
    async def run_claimed(self, wf: Any, instance_id: str) -> tuple[bool, Any]: ...
    async def execute_step_task(self, claim: TaskClaim) -> None: ...


class ServedRuntime(WorkerHost, Protocol):
    """What :func:`serve` needs: a runtime to start and close, which starts the worker."""

    @property
    def resumed(self) -> int: ...

    async def __aenter__(self) -> Any: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...
    async def start_worker(
        self,
        *,
        concurrency: int = ...,
        queues: Sequence[str] | None = ...,
        names: Sequence[str] | None = ...,
        poll_interval: float = ...,
    ) -> Worker: ...


class Worker:
    """Claims and runs enqueued executions for a :class:`~durable.Runtime`.

    Create it with :meth:`Runtime.start_worker`.

    :raises InvalidArgumentError: ``concurrency`` is not a positive int (``True`` is not one),
        ``poll_interval`` not a finite positive number, or ``queues`` / ``names`` not lists of
        valid names.
    """

    def __init__(
        self,
        runtime: WorkerHost,
        *,
        concurrency: int,
        queues: Sequence[str] | None,
        names: Sequence[str] | None,
        poll_interval: float,
    ) -> None:
        check_positive_int(concurrency, "concurrency")
        check_positive_float(poll_interval, "poll_interval")
        self.runtime = runtime
        self.concurrency = concurrency
        self.queues = check_queues(queues, "queues")
        self._names = check_names(names, "names")
        self.poll_interval = poll_interval
        self._running: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._failures = 0  # claim rounds that failed in a row
        # claimed ahead, not started yet: (claim, when claimed, monotonic)
        self._reserve: deque[tuple[TaskClaim, float]] = deque()
        self._backlog = False  # the last claim got all it asked for
        # the running average of how long its executions took, in seconds (None: none ended
        # yet): the pace at which its slots free up, which sets how far ahead it claims
        self._duration: float | None = None
        self._releasing: set[asyncio.Task[None]] = set()  # reserved claims being handed back
        self.completed = 0
        """How many executions this worker ran to an end (any outcome)."""
        self.scheduler = Scheduler(runtime.backend, runtime.registry, serves=self._serves)
        """Fires the due cron schedules while the worker runs (every worker runs one; the
        store makes each tick run once however many do)."""
        self._scheduler_task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        """Why the worker's loop died, if it did (None while it runs and after a clean stop). A
        dead worker claims nothing; its runtime stops sending the node heartbeat."""

    def __repr__(self) -> str:
        return (
            f"Worker(executor_id={self.runtime.executor_id!r}, concurrency={self.concurrency}, "
            f"running={len(self._running)})"
        )

    def _serves(self, workflow: str, queue: str) -> bool:
        """Whether this worker claims executions of ``workflow`` in ``queue`` (its
        scheduler fires only such schedules)."""
        return (self.queues is None or queue in self.queues) and workflow in self.names

    @property
    def names(self) -> list[str]:
        """The names this worker claims: the workflow names given, else every one registered
        in this process, less those disabled here (:meth:`Registry.disable`), and the steps of
        its registry. Names disabled for every worker (:meth:`Runtime.set_workflow_enabled`)
        are skipped by the claim itself, in the database, from the moment they are disabled."""
        registry = self.runtime.registry
        workflows = [n for n in (self._names or registry.names()) if registry.is_enabled(n)]
        return workflows + registry.step_names()

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"durable-worker:{self.runtime.executor_id}"
            )
            self._loop_task.add_done_callback(self._loop_ended)
            self._scheduler_task = asyncio.get_running_loop().create_task(
                self.scheduler.run(self._stopping),
                name=f"durable-scheduler:{self.runtime.executor_id}",
            )
            steps = self.runtime.registry.step_names()
            workflows = [n for n in self.names if n not in steps]
            log.info(
                "worker %s started: serving %s%s from %s, %d at a time",
                self.runtime.executor_id,
                ", ".join(workflows) or "no workflow for now (every name is disabled)",
                f" (and {len(steps)} step(s) that durable.map hands out)" if steps else "",
                ", ".join(self.queues) if self.queues is not None else "every queue",
                self.concurrency,
                extra={"action": "worker.started"},
            )

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may come back; nothing may end this loop
                self._failures += 1
                delay = min(0.05 * 2**self._failures, MAX_BACKOFF)
                log.log(
                    logging.WARNING if self._failures == 1 else logging.DEBUG,
                    "worker %s: claiming work failed (%d time(s) in a row), retrying in %.1fs: "
                    "%s: %s",
                    self.runtime.executor_id,
                    self._failures,
                    delay,
                    type(exc).__name__,
                    exc,
                    exc_info=not isinstance(exc, DurableError),  # a bug: show where
                    extra={"action": "worker.claim"},
                )
                await self._pause(delay)

    async def _round(self) -> None:
        """Start reserved claims in the free slots, claim what fits (plus a reserve when there
        is a backlog), start it, and wait for a slot or for work."""
        self._start_reserved()
        free = self.concurrency - len(self._running)
        ahead = self._ahead() if self._backlog else 0
        # with a reserve, claim again only once it is down to half: one claim refills many slots
        want = free + ahead - len(self._reserve)
        if self._reserve and len(self._reserve) > ahead // 2:
            want = 0
        claims: list[TaskClaim] = []
        names = self.names
        if want > 0 and names:
            tel = telemetry.active
            if tel is None:
                claims = await self.runtime.claim_work(want, names=names, queues=self.queues)
            else:
                with tel.claiming() as taken:
                    claims = await self.runtime.claim_work(want, names=names, queues=self.queues)
                    taken.append(len(claims))
            self._backlog = len(claims) == want
            if self._failures:
                log.info(
                    "worker %s claims work again, after %d failed attempt(s)",
                    self.runtime.executor_id,
                    self._failures,
                    extra={"action": "worker.claim_resumed"},
                )
                self._failures = 0
        now = time.monotonic()
        self._reserve.extend((claim, now) for claim in claims)
        self._start_reserved()
        if len(self._running) >= self.concurrency:
            if claims and self._backlog and not self._reserve and self._ahead():
                return  # every slot filled from a backlog: the next round claims ahead
            await self._wait_for_slot()
        elif not claims and not self._reserve:
            await self._wait_for_work()

    def _ahead(self) -> int:
        """How many executions to hold claimed ahead: as many as its slots free up in
        :data:`PREFETCH_WINDOW` seconds when each execution takes the average of the recent
        ones, at most the concurrency (none before one ended)."""
        duration = self._duration
        if duration is None:
            return 0
        if duration <= PREFETCH_WINDOW:
            return self.concurrency
        return int(self.concurrency * PREFETCH_WINDOW / duration)

    def _start_reserved(self) -> None:
        """Start reserved claims in the free slots (one that waited more than half its lease
        is handed back instead: its lease may run out before its heartbeat starts)."""
        loop = asyncio.get_running_loop()
        stale = time.monotonic() - self.runtime.claim_ttl.total_seconds() / 2
        while self._reserve and len(self._running) < self.concurrency:
            claim, claimed_at = self._reserve.popleft()
            if claimed_at < stale:
                self._hand_back(claim)
                continue
            task = loop.create_task(self._process(claim), name=f"durable:{claim.instance_id}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _hand_back(self, claim: TaskClaim) -> None:
        """Release a reserved claim that will not be started (best effort: otherwise its lease
        expires and another worker takes it then)."""

        async def release() -> None:
            with contextlib.suppress(Exception):
                await self.runtime.hand_back_claim(claim)

        task = asyncio.get_running_loop().create_task(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _wait_for_work(self) -> None:
        """Until the backend signals work, ``poll_interval`` passes, a stop is requested, or
        one of this worker's executions ends (a queue with limits may have room again).

        :raises Exception: waiting failed (the loop backs off and claims again).
        """
        waiter = asyncio.ensure_future(self.runtime.backend.wait_for_work(self.poll_interval))
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {waiter, stopper, *self._running}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for f in (waiter, stopper):
                f.cancel()
        if waiter.done() and not waiter.cancelled() and (exc := waiter.exception()) is not None:
            raise exc

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a stop is requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The loop ended: fine after a stop request; otherwise it died, and this worker must
        not look healthy (see the module's docstring)."""
        error = None if task.cancelled() else task.exception()
        if error is None and (task.cancelled() or self._stopping.is_set()):
            self._stopping.set()
            return
        self.failure = error or WorkerCrashedError("the worker's loop ended without a stop")
        self._stopping.set()
        log.critical(
            "worker %s stopped claiming work: its loop died on %s: %s",
            self.runtime.executor_id,
            type(self.failure).__name__,
            self.failure,
            exc_info=self.failure,
            extra={"action": "worker.died"},
        )
        self.runtime._worker_died(self)

    async def _wait_for_slot(self) -> None:
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({stopper, *self._running}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()

    async def _process(self, claim: TaskClaim) -> None:
        runtime = self.runtime
        began = time.monotonic()
        ran = True  # False: a drive of the runtime ran it (the recovery's counts it)
        try:
            if claim.task_id == WORKFLOW_TASK:
                wf = runtime.registry.get(claim.name)
                ran, _ = await runtime.run_claimed(wf, claim.instance_id)
            else:
                await runtime.execute_step_task(claim)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # suspended (waiting for its steps), or its outcome is recorded (failed,
            # rescheduled, dead-lettered), or its lease was lost, or the database went away
            # (it resumes when its lease expires): this worker is done with it
            await self._report(claim, exc)
        finally:
            self.completed += 1 if ran else 0
            took = time.monotonic() - began
            average = self._duration
            self._duration = (
                took if average is None else average + (took - average) * _DURATION_WEIGHT
            )

    async def _report(self, claim: TaskClaim, exc: BaseException) -> None:
        """Log how an execution ended without a result, at the level it deserves."""
        wid = claim.instance_id
        what = f"workflow {wid} ({claim.name})"
        if claim.task_id != WORKFLOW_TASK:
            what = f"step task {claim.task_id} ({claim.name}) of workflow {wid}"
        level, action, how = logging.WARNING, "worker.failed", "failed"
        cause: BaseException = exc
        if isinstance(exc, WorkflowSuspended):
            level, action, how = logging.DEBUG, "worker.suspended", "waits for its steps"
        elif isinstance(exc, WorkflowCancelledError):
            level, action, how = logging.INFO, "worker.cancelled", "was cancelled"
        elif isinstance(exc, HandedBack):
            # why is the cause's: an outage (the runtime said so already, at WARNING), or no
            # thread for a sync body as the interpreter exits
            level, action, how = logging.DEBUG, "worker.outage", "was handed back uncounted"
            cause = exc.__cause__ or exc
        elif isinstance(exc, Rescheduled):
            action, how = "worker.retry", "failed an attempt; the next one is scheduled"
            cause = exc.__cause__ or exc
        elif isinstance(exc, WorkflowDeadLetteredError):
            level, action, how = logging.ERROR, "worker.dead_letter", "was dead-lettered"
        elif isinstance(exc, ClaimLostError):
            action, how = "worker.lease_lost", "lost its lease (another executor may run it)"
        elif isinstance(exc, BackendError):
            action = "worker.interrupted"
            how = "was interrupted by the database; it resumes once its lease expires"
        elif claim.task_id == WORKFLOW_TASK:
            # the workflow's own error, recorded: as a failure, or as a dead letter if it was
            # the last allowed attempt
            try:
                status = (await self.runtime.client.get_workflow(wid)).status
            except Exception:  # the database went away meanwhile: say "failed"
                status = None
            if status is WorkflowStatus.DEAD_LETTER:
                level, action, how = logging.ERROR, "worker.dead_letter", "was dead-lettered"
        log.log(
            level,
            "%s %s: %s: %s",
            what,
            how,
            type(cause).__name__,
            logged(message_of(cause)),
            extra={"action": action, "workflow_id": wid},
        )

    def request_stop(self) -> None:
        """Stop claiming new work (safe to call from a signal handler on the loop)."""
        self._stopping.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop claiming, give running executions ``grace`` seconds to finish, then interrupt
        the rest and hand them back at once. The executions its runtime's recovery resumed
        are running ones too.

        :raises InvalidArgumentError: ``grace`` is negative or not finite."""
        check_non_negative_float(grace, "grace")
        self.request_stop()
        if self._loop_task is not None:
            await asyncio.wait({self._loop_task})  # ended, dead or not (see failure)
        if self._scheduler_task is not None:
            await asyncio.wait({self._scheduler_task})
        while self._reserve:  # claimed ahead, never started: other workers may have them now
            self._hand_back(self._reserve.popleft()[0])
        if self._releasing:
            await asyncio.wait(set(self._releasing), timeout=max(grace, 1.0))
        running = self._running | self.runtime.recovering
        if running:
            _done, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.info(
                    "handed back %d unfinished execution(s)",
                    # by execution (each task is named after its own): a claim of this worker
                    # may wait for the recovery's drive of the same one
                    len({task.get_name() for task in pending}),
                    extra={"action": "worker.handed_back"},
                )

    async def wait_stopped(self) -> None:
        """Wait until :meth:`request_stop` is called."""
        await self._stopping.wait()


#: The ``thread_name_prefix`` of the threads in which a runtime runs sync steps and workflows
#: (its ``ThreadPoolExecutor`` names them ``durable_0``, ``durable_1``, ...).
STEP_THREAD_PREFIX = "durable"


def step_threads_left(wait: float = 1.0) -> list[str]:
    """What the threads that run sync steps and workflows still do once their runtimes have
    closed (idle ones are given ``wait`` seconds to end): for each still running, its name and
    the line it is at. A sync step that never returns keeps its thread, and with it the
    process, alive after :func:`serve` returned (the interpreter waits for such threads when it
    exits); its execution was handed back, so nothing is lost by ending the process."""
    deadline = time.monotonic() + wait
    while True:
        left = [
            t
            for t in threading.enumerate()
            if t.name.startswith(f"{STEP_THREAD_PREFIX}_") and t.is_alive()
        ]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    frames = sys._current_frames()
    described = []
    for thread in left:
        frame = frames.get(thread.ident) if thread.ident is not None else None
        where = ""
        if frame is not None:
            stack = traceback.extract_stack(frame)
            # the innermost line of the application's code, past the standard library's
            # (a wait, a socket) and durable's own
            last = next((f for f in reversed(stack) if not _library_file(f.filename)), stack[-1])
            where = f" at {last.filename}:{last.lineno} in {last.name}"
        described.append(f"{thread.name}{where}")
    return described


#: The standard library's directory and durable's own.
_LIBRARY_DIRS = (
    os.path.join(os.path.dirname(os.__file__), ""),
    os.path.join(os.path.dirname(__file__), ""),
)


def _library_file(filename: str) -> bool:
    """Whether a frame's file is the standard library's or durable's."""
    return filename.startswith(_LIBRARY_DIRS)


def _die_by(sig: signal.Signals) -> None:
    """End the process at once by ``sig``'s default action (for SIGINT too, which Python's
    own handler would turn into a KeyboardInterrupt, whose exit waits for the threads of sync
    steps still running, for good when one never returns)."""
    log.warning(
        "second %s: exiting at once; executions still running are resumed once their leases expire",
        sig.name,
        extra={"action": "worker.killed"},
    )
    for handler in logging.getLogger().handlers + log.handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    signal.signal(sig, signal.SIG_DFL)
    signal.raise_signal(sig)


async def serve(
    runtime: ServedRuntime,
    *,
    concurrency: int = 10,
    queues: Sequence[str] | None = None,
    grace: float = 30.0,
    poll_interval: float = 1.0,
) -> int:
    """Run a worker until SIGTERM or SIGINT, then shut down gracefully. Returns how many
    executions it ran: those its worker claimed, and those the runtime's recovery resumed
    (:attr:`Runtime.resumed`). This is what ``durable worker module:runtime`` does.

    A second SIGTERM or SIGINT, during the shutdown, ends the process at once, as that signal
    does by default (exit status 128 + its number in a shell: 143, 130), without waiting for
    the executions still running, sync steps in their threads included: nothing is handed
    back, other workers resume them once their leases expire.

    It takes the process as its own: it handles the two signals, and once the worker started
    it moves every object the process holds to the collector's permanent generation
    (:func:`gc.freeze`), so that full collections during the drain do not walk them again.

    :raises InvalidArgumentError: as :meth:`Runtime.start_worker`, or ``grace`` is negative or
        not finite (before the runtime starts).
    :raises NothingToServeError: the runtime has no workflow registered.
    :raises WorkerCrashedError: the worker's loop died (after the graceful shutdown).
    """
    check_positive_int(concurrency, "concurrency")
    check_positive_float(poll_interval, "poll_interval")
    check_queues(queues, "queues")
    check_non_negative_float(grace, "grace")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():  # a second signal: stop at once, the default way
            _die_by(sig)
        stop.set()

    # installed before the runtime starts: a signal while it starts stops it once started
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with runtime:
            worker = await runtime.start_worker(
                concurrency=concurrency, queues=queues, poll_interval=poll_interval
            )
            # the process is this worker's: what exists once it started (modules, the
            # backend's compiled statements) lives as long as the process, so the collector
            # need not walk it again in each full collection (a few per cent of a drain)
            gc.freeze()
            waits = {loop.create_task(stop.wait()), loop.create_task(worker.wait_stopped())}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            await worker.stop(grace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if worker.failure is not None:
        raise WorkerCrashedError(
            f"worker {runtime.executor_id} stopped claiming work after "
            f"{worker.completed} execution(s): its loop died on "
            f"{type(worker.failure).__name__}: {worker.failure}"
        ) from worker.failure
    return worker.completed + runtime.resumed
