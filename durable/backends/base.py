"""The storage interface of durable: every operation the runtime and the workers need, named in
the domain's words.

A backend stores three things:

* **workflows** (:class:`~durable.models.WorkflowInfo`): one header row per execution, with an
  optimistic-lock ``version``;
* **steps** (:class:`~durable.models.StepRecord`): one row per completed (or pending) step,
  appended one at a time so that recording step *k* costs the same at 3 or 3,000 steps;
* **tasks**: claimable units of work, keyed by ``(instance_id, task_id)``. A workflow's own
  execution is the task :data:`~durable.models.WORKFLOW_TASK`; a step handed to other workers is
  another task. A task exists while there is work to do; it is removed when the work is done.

A **claim** on a task gives one worker the right to act on it until the claim expires. Every write
that records progress (:meth:`record_step`, :meth:`finish_workflow`, ...) is *fenced*: it succeeds
only if the writer holds a live claim, and otherwise raises
:class:`~durable.errors.ClaimLostError` having written nothing. Expiry is judged by one clock: the
database's on PostgreSQL, the host's for SQLite and in-memory storage (one machine).

To write a backend of your own, subclass :class:`PersistentBackend`, implement every abstract
method, and run :mod:`durable.testing`'s contract suite against it.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

from durable.errors import InvalidArgumentError
from durable.models import (
    WORKFLOW_TASK,
    AvailableTask,
    ErrorInfo,
    ExecutorInfo,
    Page,
    RegisteredWorkflow,
    StepRecord,
    TaskClaim,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.serialization import Serializer


class WorkSignal:
    """Wakes the coroutines of this process that wait for work, on whatever event loop they run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}

    async def wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            event = self._events.get(loop)
            if event is None:
                event = self._events[loop] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return
        event.clear()

    def set(self) -> None:
        with self._lock:
            for loop in [loop for loop in self._events if loop.is_closed()]:
                del self._events[loop]
            events = list(self._events.items())
        for loop, event in events:
            loop.call_soon_threadsafe(event.set)


class PersistentBackend(ABC):
    """Abstract storage for workflow snapshots, steps, tasks and claims.

    Every method is a coroutine and is safe to call concurrently from many tasks of one event
    loop; backends that share a database are safe to use from many processes. Values (inputs,
    outputs) are serialized with :attr:`serializer`; a value it rejects raises
    :class:`~durable.errors.SerializationError` before anything is written.

    Use a backend as an async context manager, or call :meth:`start` and :meth:`close`.
    """

    serializer: Serializer

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare the backend for use (connect, apply migrations). Idempotent.

        :raises BackendUnavailableError: the storage cannot be reached.
        :raises SchemaVersionError: the stored schema is newer than this code, or is out of date
            and migrations are switched off.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release every resource (connections, threads). Idempotent."""

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

    # -- snapshots --------------------------------------------------------------------------

    @abstractmethod
    async def create_workflow(
        self, snapshot: WorkflowSnapshot, *, task: TaskSpec | None = None
    ) -> tuple[WorkflowInfo, bool]:
        """Insert a new workflow unless one with the same id, or the same non-null
        ``idempotency_key``, exists; in one transaction, also create ``task`` if given.

        Returns ``(stored header, created)``: ``created`` is False when an existing workflow was
        found, and then nothing was written. Steps in ``snapshot`` are stored too. Timestamps left
        None are set by the backend; the stored version is 1.
        """

    @abstractmethod
    async def save_snapshot(self, snapshot: WorkflowSnapshot) -> WorkflowSnapshot:
        """Store a whole snapshot: the header, and every step in ``snapshot.steps`` (upserted by
        position; steps not listed are kept).

        ``snapshot.version`` is the version the caller last read: 0 inserts a new workflow,
        anything else updates the stored one only if its version is still that. Returns the stored
        snapshot, whose version is one more.

        :raises WorkflowAlreadyExistsError: version 0 but the id exists.
        :raises WorkflowNotFoundError: version > 0 but no such workflow.
        :raises ConcurrentUpdateError: the stored version is not ``snapshot.version``.
        """

    @abstractmethod
    async def load_snapshot(self, instance_id: str) -> WorkflowSnapshot:
        """Return the workflow's snapshot with its steps ordered by position.

        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: a stored value of the workflow or of a step cannot be read.
        """

    @abstractmethod
    async def get_workflow(self, instance_id: str) -> WorkflowInfo:
        """Return the workflow's header only (cheap: no steps are read).

        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: a stored value of the header (status, input, output, error)
            cannot be read; the error names the column.
        """

    @abstractmethod
    async def delete_snapshot(self, instance_id: str) -> bool:
        """Delete the workflow with its steps and tasks. Returns False if there was none
        (idempotent)."""

    @abstractmethod
    async def list_snapshots(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowInfo]:
        """List workflow headers, newest first (by creation time, then id descending).

        Filters combine with AND; ``status`` may be one status or several. Pass the returned
        ``next_cursor`` to get the following page; it is None on the last page. Pages are stable
        under concurrent inserts (keyset pagination).

        A row that cannot be read does not fail the listing: it is listed with its unreadable
        values None, an unknown status as failed, and ``error`` a record of type
        ``durable.errors.CorruptRowError`` whose message names the column. Headers returned by
        writes (:meth:`finish_workflow`, :meth:`cancel_workflow`, ...) are read the same way, so
        that an unreadable value never undoes a write.

        :raises InvalidArgumentError: an unknown status, a limit below 1 or a malformed cursor.
        """

    @abstractmethod
    async def list_steps(self, instance_id: str) -> list[StepRecord]:
        """Return the workflow's steps ordered by position.

        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: a stored value of a step cannot be read; the error names the
            step's position and the column.
        """

    async def create_workflows(
        self, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
    ) -> list[tuple[WorkflowInfo, bool]]:
        """Create many workflows (and their tasks) at once: for each ``(snapshot, task)`` of
        ``batch``, what :meth:`create_workflow` does, all in one transaction. Returns
        ``(stored header, created)`` per row, in the order of ``batch`` (a new row's header may
        carry its input as given rather than read back: a bulk enqueue need not deserialize
        what it just wrote).

        * A row whose id, or non-null ``idempotency_key``, exists already creates nothing and
          returns the existing workflow's header, ``created`` False.
        * Rows of the batch with the same id or key are one workflow: the first of them is
          created (or found), and the later ones return its header, ``created`` False.
        * All or nothing: a value the serializer rejects raises
          :class:`~durable.errors.SerializationError`, and a row whose id or key belongs to a
          workflow of another name (stored, or earlier in the batch) raises
          :class:`~durable.errors.InvalidArgumentError`; either names the row (``inputs[3]``)
          and nothing of the batch is written.
        * Workers are told about the new tasks once, after the commit.

        The default implementation calls :meth:`create_workflow` row by row: neither one
        transaction nor all-or-nothing once writing has started. durable's backends override
        it with one transaction of a few multi-row statements; other backends should too.
        """
        batch_owners(batch)  # refuses rows that clash within the batch, before any write
        results = []
        for index, (snapshot, task) in enumerate(batch):
            info, created = await self.create_workflow(snapshot, task=task)
            if info.name != snapshot.name:
                raise InvalidArgumentError(
                    f"inputs[{index}]: workflow id or idempotency key of {snapshot.id!r} "
                    f"belongs to workflow {info.name!r} (id {info.id!r}), not {snapshot.name!r}"
                )
            results.append((info, created))
        return results

    # -- execution (fenced by the claim on the workflow's task) ------------------------------

    @abstractmethod
    async def begin_execution(
        self, instance_id: str, worker_id: str, *, task_id: str = WORKFLOW_TASK
    ) -> WorkflowSnapshot:
        """Mark the workflow running under ``worker_id`` and return its snapshot, in one
        transaction: status becomes running, ``executor_id`` the worker, ``started_at`` is set
        if it was not. A workflow that was not running (pending: new, retried, handed back or
        woken) starts an attempt: ``attempts`` grows by one. A workflow that was still running
        was *interrupted* (its executor died or lost its lease, and this claim took it over):
        ``interruptions`` grows by one and ``attempts`` stays, so that crashes do not use up
        the failure budget.

        :raises ClaimLostError: ``worker_id`` does not hold a live claim on the task.
        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: the workflow's row or its history cannot be read. The claim is
            still held (the start may or may not have been recorded), so the caller can record
            the failure with :meth:`finish_workflow`, as the runtime does.
        """

    @abstractmethod
    async def record_step(
        self,
        instance_id: str,
        step: StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        """Record one step's outcome, fenced by ``worker_id``'s claim on ``(instance_id,
        task_id)``, in one short transaction whose cost does not grow with the number of steps.

        A position that has no row is inserted; a ``pending`` row is overwritten; a final row
        (succeeded or failed) is never changed.

        :raises ClaimLostError: the claim is not held (expired and taken, or released).
        :raises StepAlreadyRecordedError: the position already has a final outcome.
        :raises SerializationError: the output cannot be serialized (nothing is written).
        """

    #: True when :meth:`record_step_blocking` is supported: the backend can record a step from
    #: any thread, without its event loop.
    records_steps_blocking: bool = False

    def record_step_blocking(
        self,
        instance_id: str,
        step: StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        """:meth:`record_step`, run to completion in the calling thread. Optional: the runtime
        calls it from a sync workflow's thread, saving a hop to the event loop and back, only
        when :attr:`records_steps_blocking` is True. Same contract as :meth:`record_step`.

        :raises NotImplementedError: the backend does not support it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot record steps from a thread")

    @abstractmethod
    async def finish_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        status: WorkflowStatus,
        output: Any = None,
        error: ErrorInfo | None = None,
        rerun: Sequence[int] = (),
    ) -> WorkflowInfo:
        """Record the workflow's final status with its output or error and remove its
        workflow task, fenced by ``worker_id``'s claim on it, in one transaction. Returns the
        stored header (version + 1).

        The failed steps at the positions in ``rerun`` (failures that ended the attempt, which
        nothing recorded depends on) are kept, visible in :meth:`list_steps`, and marked
        :attr:`~durable.models.StepRecord.rerun`: :meth:`requeue_workflow` deletes them so
        that a redrive runs them again. Other positions listed are left alone.

        :raises ClaimLostError: the claim is not held.
        :raises InvalidArgumentError: ``status`` is not terminal.
        """

    @abstractmethod
    async def reschedule_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        run_after: timedelta,
        error: ErrorInfo | None = None,
        consume_attempt: bool = True,
        rerun: Sequence[int] = (),
    ) -> WorkflowInfo:
        """Put a running workflow back to pending, to run again ``run_after`` from now, recording
        ``error``, and release the claim, in one transaction fenced like :meth:`finish_workflow`.

        For a retry after a failed attempt, the failed steps the next attempt must run again are
        deleted: those at the positions in ``rerun`` (failures that ended the attempt, which
        nothing recorded depends on, whatever their position), and the *trailing* ones (failed
        steps after the last step that did not fail). Every other step is kept: succeeded and
        pending ones, and failures the workflow handled, which the next attempt replays. With
        ``consume_attempt=False`` (the attempt was handed back: a graceful shutdown, a database
        outage) ``attempts`` goes back down by one and no step is deleted.

        :raises ClaimLostError: the claim is not held.
        """

    @abstractmethod
    async def requeue_workflow(self, instance_id: str) -> WorkflowInfo:
        """Run a failed, dead-lettered or cancelled workflow again (a *redrive*): status
        pending, error, ``attempts`` and ``interruptions`` cleared, its workflow task created,
        in one transaction. The failed steps marked :attr:`~durable.models.StepRecord.rerun`
        (see :meth:`finish_workflow`) and the trailing failed steps are deleted, so they run
        again; every other step is kept, and completed steps will not run again.

        :raises WorkflowNotFoundError: no such workflow.
        :raises InvalidArgumentError: the workflow is not failed, dead-lettered or cancelled.
        """

    @abstractmethod
    async def suspend_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        steps: Sequence[StepRecord],
        tasks: Sequence[TaskSpec],
    ) -> None:
        """Hand steps to other workers and let the workflow wait without holding a claim, in
        one transaction fenced by ``worker_id``'s claim on the workflow task: record ``steps``
        as pending (with their inputs; final rows are left alone), create ``tasks`` (existing
        ones are kept), set the workflow pending and release its task until it is woken. The
        attempt goes on when it is woken, so ``attempts`` goes back down by one (the next
        :meth:`begin_execution` counts it again).

        The workflow task is woken (due at once) by :meth:`complete_step_task` when the last of
        the workflow's step tasks completes, or here if none remains.

        :raises ClaimLostError: the claim on the workflow task is not held.
        """

    @abstractmethod
    async def complete_step_task(
        self, instance_id: str, task_id: str, *, worker_id: str, step: StepRecord
    ) -> None:
        """Record the outcome of a step that ran as task ``task_id`` and remove the task; if it
        was the workflow's last step task, wake the workflow's task. One transaction, fenced by
        ``worker_id``'s claim on the step task.

        :raises ClaimLostError: the claim on the step task is not held.
        :raises StepAlreadyRecordedError: the position already has a final outcome.
        """

    @abstractmethod
    async def cancel_workflow(self, instance_id: str) -> WorkflowInfo:
        """Mark a workflow that has not finished cancelled and remove its tasks, whoever holds
        them (the holder finds out at its next fenced write). A finished workflow is returned
        unchanged (idempotent).

        :raises WorkflowNotFoundError: no such workflow.
        """

    # -- the workflow registry and executors ---------------------------------------------------

    @abstractmethod
    async def register_workflows(self, entries: Sequence[RegisteredWorkflow]) -> None:
        """Record that these names are served. A new name is stored as given; for a known name
        the description is updated and ``enabled`` is kept as stored (an operator's choice
        survives restarts). Idempotent."""

    @abstractmethod
    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        """Enable or disable a registered name for every worker sharing this storage: once
        this returns, :meth:`claim_available_tasks` skips (or claims again) its tasks.
        :meth:`find_available_tasks` and :meth:`claim_task` are not affected.

        :raises UnknownWorkflowError: the name was never registered.
        """

    @abstractmethod
    async def list_registered_workflows(self) -> list[RegisteredWorkflow]:
        """Every registered name, sorted by name."""

    @abstractmethod
    async def get_executor(self, executor_id: str) -> ExecutorInfo | None:
        """The executor's record (None if it never started), ``stale`` judged by its own
        heartbeat interval (see :data:`~durable.models.STALE_AFTER_HEARTBEATS`) on the storage's
        clock."""

    @abstractmethod
    async def start_executor(
        self,
        executor_id: str,
        *,
        hostname: str,
        pid: int,
        incarnation: str,
        heartbeat_interval: float,
        replacing: str | None,
    ) -> bool:
        """Record, atomically, that ``incarnation`` (one start of one process) now runs as
        ``executor_id``, provided the stored record is still the one the caller judged free:
        none at all when ``replacing`` is None, else the one of incarnation ``replacing``.
        ``started_at`` and ``heartbeat_at`` become now (the storage's clock), ``stopped_at``
        None. Returns False, changing nothing, when the record is otherwise (another process
        started under the id since the caller read it).

        :raises InvalidArgumentError: ``heartbeat_interval`` is not positive.
        """

    @abstractmethod
    async def record_executor_heartbeat(self, executor_id: str, *, incarnation: str) -> bool:
        """Record that the executor is alive now (by the storage's clock), fenced by
        ``incarnation``: returns False, changing nothing, when the id is not running under that
        incarnation (another process took it over, it was stopped, or it never started)."""

    @abstractmethod
    async def mark_executor_stopped(self, executor_id: str, *, incarnation: str) -> None:
        """Record that the executor stopped cleanly, fenced by ``incarnation`` like
        :meth:`record_executor_heartbeat`. Unknown ids and other incarnations are ignored."""

    @abstractmethod
    async def list_executors(self, *, stale_after: timedelta | None = None) -> list[ExecutorInfo]:
        """Every executor that ever started, most recent heartbeat first, with ``stale`` set for
        running ones silent for longer than ``stale_after`` (default: by each executor's own
        heartbeat interval, as :meth:`get_executor` judges it), on the storage's clock.

        :raises InvalidArgumentError: ``stale_after`` is not positive.
        """

    # -- wake-ups ------------------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when work may have become available (a task was added, rescheduled or
        released), or after ``timeout`` seconds. It may return early for no reason; callers
        re-check. The default implementation hears about work created through this backend
        object only (other processes are found by polling); PostgreSQL hears every process
        through LISTEN/NOTIFY.
        """
        await self._signal().wait(timeout)

    def notify_work(self) -> None:
        """Wake this process's :meth:`wait_for_work` callers (backends call it after a commit
        that made work available). Safe to call from any thread."""
        self._signal().set()

    def _signal(self) -> WorkSignal:
        signal: WorkSignal | None = self.__dict__.get("_durable_signal")
        if signal is None:
            signal = self.__dict__.setdefault("_durable_signal", WorkSignal())
        return signal

    # -- tasks and claims ---------------------------------------------------------------------

    @abstractmethod
    async def add_task(self, spec: TaskSpec) -> bool:
        """Create a task unless one with the same key exists. Returns whether it was created.

        :raises WorkflowNotFoundError: ``spec.instance_id`` names no workflow.
        """

    @abstractmethod
    async def claim_task(
        self,
        instance_id: str,
        task_id: str,
        worker_id: str,
        ttl: timedelta,
        *,
        due_only: bool = False,
    ) -> TaskClaim | None:
        """Claim one task for ``ttl``, atomically.

        Succeeds when the task is unclaimed, its claim has expired (a holder without an expiry
        counts as expired), or ``worker_id`` already holds it (re-entrant: the claim is renewed
        and ``attempts`` is not counted again). Returns None
        when another worker holds a live claim, or, with ``due_only``, when the task's
        ``run_after`` has not come yet (otherwise an explicit claim by id may run a task early).

        :raises TaskNotFoundError: no such task.
        """

    @abstractmethod
    async def get_task(self, instance_id: str, task_id: str) -> AvailableTask:
        """The task as it is stored: who holds it (``claimed_by``) and until when
        (``claim_expires_at``; the holder may have let it expire).

        :raises TaskNotFoundError: no such task.
        """

    @abstractmethod
    async def extend_task_claim(
        self, instance_id: str, task_id: str, worker_id: str, ttl: timedelta
    ) -> TaskClaim:
        """Make ``worker_id``'s claim expire ``ttl`` from now (a heartbeat). A claim that
        expired but that nobody took over in the meantime is still ``worker_id``'s, and is
        renewed.

        :raises ClaimLostError: another worker holds the task, or nobody does (it was released).
        :raises TaskNotFoundError: no such task.
        """

    @abstractmethod
    async def release_task_claim(self, instance_id: str, task_id: str, worker_id: str) -> None:
        """Give up ``worker_id``'s claim so that any worker may claim the task at once.

        :raises ClaimLostError: ``worker_id`` does not hold the claim.
        :raises TaskNotFoundError: no such task.
        """

    @abstractmethod
    async def complete_task(self, instance_id: str, task_id: str, worker_id: str) -> None:
        """Remove a task whose work is done, fenced by ``worker_id``'s claim on it.

        :raises ClaimLostError: ``worker_id`` does not hold a live claim.
        """

    @abstractmethod
    async def find_available_tasks(
        self,
        worker_id: str,
        limit: int,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        include_own: bool = True,
    ) -> list[AvailableTask]:
        """Return up to ``limit`` tasks that ``worker_id`` could claim now, without claiming them:
        tasks due (``run_after`` passed) that nobody holds, whose claim expired (or, written by
        hand, has a holder but no expiry: such a claim is repaired, not held forever), or, unless
        ``include_own`` is False, that ``worker_id`` itself holds (so a restarted worker finds its
        own work at once; a running worker passes False so as not to take its work twice).

        Ordered by priority (lower first), then ``run_after``, then creation order. ``names`` and
        ``queues`` restrict the result when given.

        :raises InvalidArgumentError: ``limit`` is below 1.
        """

    @abstractmethod
    async def claim_available_tasks(
        self,
        worker_id: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        include_own: bool = True,
    ) -> list[TaskClaim]:
        """Claim, in one atomic operation, up to ``limit`` of the tasks
        :meth:`find_available_tasks` would return, in the same order, less those whose name is
        disabled (:meth:`set_workflow_enabled`): the operation reads the registry itself, so a
        name disabled before it starts is never claimed, whoever asks. Under any concurrency, a
        task is claimed by at most one worker at a time.

        :raises InvalidArgumentError: ``limit`` is below 1.
        """


def batch_owners(batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]) -> list[int]:
    """For each row of a :meth:`PersistentBackend.create_workflows` batch, the index of the
    row that creates its workflow: its own, or that of the first earlier row with the same id
    or the same non-null idempotency key.

    :raises InvalidArgumentError: such an earlier row is of another workflow name (the message
        names the row).
    """
    by_id: dict[str, int] = {}
    by_key: dict[str, int] = {}
    owners: list[int] = []
    for index, (snapshot, _task) in enumerate(batch):
        key = snapshot.idempotency_key
        owner = by_id.get(snapshot.id)
        if owner is None and key is not None:
            owner = by_key.get(key)
        if owner is None:
            owner = index
            by_id[snapshot.id] = index
            if key is not None:
                by_key[key] = index
        else:
            first = batch[owner][0]
            if first.name != snapshot.name:
                clash = (
                    f"workflow id {snapshot.id!r}"
                    if first.id == snapshot.id
                    else f"idempotency key {key!r}"
                )
                raise InvalidArgumentError(
                    f"inputs[{index}]: {clash} is already used in this batch by inputs[{owner}], "
                    f"an execution of workflow {first.name!r}, not {snapshot.name!r}"
                )
        owners.append(owner)
    return owners
