# Longer than ~500 lines on purpose: this is the backend interface in one file. Every operation a
# backend implements is here, and its docstring is the specification, so a backend's author reads
# one module to know all there is to implement (CONTRIBUTING.md, "Write a backend").
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
database's on PostgreSQL, the host's for SQLite and in-memory storage (one machine), which
:meth:`PersistentBackend.now` reads. A claim that expired is not held, whether or not another
worker has claimed the task since: fenced writes under it raise ``ClaimLostError`` with ``holder``
None until its holder renews it (:meth:`PersistentBackend.extend_task_claim`, which succeeds as
long as nobody else claimed the task) or another worker takes it over.

To write a backend of your own, subclass :class:`PersistentBackend`, implement every abstract
method, and run :mod:`durable.testing`'s contract suite against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from durable.errors import (
    ConfigurationError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotSupportedError,
    SerializationError,
)
from durable.models import (
    RECV_STEP,
    SLEEP_STEP,
    WORKFLOW_TASK,
    AvailableTask,
    ChangeEvent,
    ChangeKind,
    ErrorInfo,
    EventRecord,
    ExecutorInfo,
    Message,
    Page,
    QueueDepth,
    QueueInfo,
    Receipt,
    RegisteredWorkflow,
    ScheduleInfo,
    StepRecord,
    StepStatus,
    StreamChunk,
    TaskClaim,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.serialization import Serializer
from durable.validation import INT32_MAX


class WorkSignal:
    """Wakes the coroutines of this process that wait for work, on whatever event loop they run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[asyncio.AbstractEventLoop, asyncio.Event] = {}
        self._fired = False  # set() was called at least once

    async def wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            event = self._events.get(loop)
            if event is None:
                event = self._events[loop] = asyncio.Event()
                # a loop's first wait: a set() that came before it had no event of this loop to
                # set (a worker started just before an enqueue): return at once, the caller
                # looks again (an early return is allowed; a lost wake-up is not)
                if self._fired:
                    event.set()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return
        event.clear()

    def set(self) -> None:
        with self._lock:
            self._fired = True
            for loop in [loop for loop in self._events if loop.is_closed()]:
                del self._events[loop]
            events = list(self._events.items())
        for loop, event in events:
            loop.call_soon_threadsafe(event.set)


class OutputWatch:
    """Waits for what one workflow publishes (see :meth:`PersistentBackend.watch_outputs`).

    Fired by :meth:`KeyedSignal.set` from any thread; a firing between two :meth:`wait` calls
    is kept, so a reader that reads after starting the watch and then waits misses nothing.
    """

    def __init__(self, signal: KeyedSignal, key: str) -> None:
        self._signal = signal
        self.key = key
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def fire(self) -> None:
        """Wake :meth:`wait` (safe from any thread)."""
        with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float | None) -> bool:
        """Return True once the watch fired since the last call (at once if it did already), or
        False after ``timeout`` seconds (None: no limit)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        self._event.clear()
        return True

    def close(self) -> None:
        """Stop watching (idempotent)."""
        self._signal.discard(self)

    def __enter__(self) -> OutputWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KeyedSignal:
    """Wakes this process's :class:`OutputWatch` es of one key (a workflow id), on whatever event
    loop they wait. Holds nothing for keys nobody watches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[str, set[OutputWatch]] = {}

    def watch(self, key: str) -> OutputWatch:
        """A new watch of ``key``, fired by every later :meth:`set` of it until it is closed.
        Call it on the event loop the watch will wait on."""
        watch = OutputWatch(self, key)
        with self._lock:
            self._watches.setdefault(key, set()).add(watch)
        return watch

    def discard(self, watch: OutputWatch) -> None:
        with self._lock:
            watches = self._watches.get(watch.key)
            if watches is not None:
                watches.discard(watch)
                if not watches:
                    del self._watches[watch.key]

    def set(self, key: str) -> None:
        """Fire every watch of ``key``."""
        with self._lock:
            watches = list(self._watches.get(key, ()))
        for watch in watches:
            watch.fire()

    def set_all(self) -> None:
        """Fire every watch (after a gap in which announcements may have been missed)."""
        with self._lock:
            watches = [w for ws in self._watches.values() for w in ws]
        for watch in watches:
            watch.fire()


class PersistentBackend(ABC):
    """Abstract storage for workflow snapshots, steps, tasks and claims.

    Every method is a coroutine and is safe to call concurrently from many tasks of one event
    loop: a call never fails for being concurrent (hundreds at once: a connection pool queues
    its callers rather than refusing them), and each has the result it would have had alone.
    Backends that share a database are safe to use from many processes. A backend that holds
    connections gives every one back when a call ends, failed or not (the contract suite checks
    a ``checked_out_connections()`` method where there is one). The cost of an operation does
    not grow with the work stored: not with a workflow's history, nor with finished workflows.

    Rules every method keeps:

    * **Values** (inputs, outputs, error arguments) are serialized with :attr:`serializer` and
      come back equal and of the same types (any value the serializer accepts: big integers,
      deep nesting, NUL characters, megabytes of text). A value it rejects raises
      :class:`~durable.errors.SerializationError` before anything is written; a claim is still
      held afterwards. :class:`~durable.models.ErrorInfo` records come back equal.
    * **Timestamps** given must be timezone-aware, in any zone: a naive one raises
      :class:`~durable.errors.InvalidArgumentError` (saying "naive") and nothing is written.
      Every timestamp returned is aware, the same instant as stored (its zone may differ).
      Timestamps the backend sets itself (``created_at``, ``updated_at``, ``started_at``,
      ``completed_at``, a step's ``completed_at``, registry and executor times) are the current
      time; lease expiries and due times are on :meth:`now`'s clock.
    * **Errors** carry their subject: :class:`~durable.errors.WorkflowNotFoundError` its
      ``workflow_id``, :class:`~durable.errors.TaskNotFoundError` its ``instance_id`` and
      ``task_id``, :class:`~durable.errors.ClaimLostError` ``instance_id``, ``task_id``,
      ``worker_id`` (the caller) and ``holder`` (who holds a live claim now, None if nobody).
      A call refused for one of these reasons (or an invalid argument, a version conflict, a
      value that cannot be serialized) writes nothing.

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

    # -- the clock ------------------------------------------------------------------------------

    @abstractmethod
    async def now(self) -> datetime:
        """The current time, timezone-aware in UTC, by the clock this store judges leases and
        due times by: the database's on PostgreSQL, this host's for SQLite, the injectable
        ``clock`` of the in-memory backend.

        Every time-dependent judgment of the backend follows this clock, whatever the clock of
        the calling host says: a claim is live while ``now() < expires_at`` (and a claim taken
        for ``ttl`` expires ``ttl`` after this clock's now); a task is due once ``run_after <=
        now()``; a task created without ``run_after`` is due at this clock's now, plus its
        ``delay``. A backend whose store keeps its own clock (a database server) must not judge
        leases by the host's.

        :raises BackendUnavailableError: the storage cannot be reached (for a clock it keeps).
        """

    # -- snapshots --------------------------------------------------------------------------

    @abstractmethod
    async def create_workflow(
        self, snapshot: WorkflowSnapshot, *, task: TaskSpec | None = None
    ) -> tuple[WorkflowInfo, bool]:
        """Insert a new workflow unless one with the same id, or the same non-null
        ``idempotency_key``, exists; in one transaction, also create ``task`` if given.

        Returns ``(stored header, created)``, the header a :class:`~durable.models.WorkflowInfo`
        equal to what :meth:`get_workflow` returns. ``created`` is False when an existing
        workflow was found: then it is returned unchanged and nothing was written (not the
        snapshot's steps, nor ``task``, nor its idempotency key). Every field of ``snapshot``
        is stored as given, its steps too (any positions, pending ones included); timestamps
        left None are set by the backend (``created_at`` and ``updated_at`` to now); the stored
        version is 1. The snapshot's ``labels`` are stored with it, merged over the labels of
        its parent (``parent_id``) if that is stored (see :meth:`get_labels`): children inherit
        their parent's labels.

        :raises SerializationError: a value cannot be serialized (nothing is written).
        :raises InvalidArgumentError: a naive timestamp, in the snapshot, a step or ``task``;
            labels that :func:`durable.validation.check_labels` refuses (naming the label), or
            more than it allows once merged with the parent's.
        """

    @abstractmethod
    async def save_snapshot(self, snapshot: WorkflowSnapshot) -> WorkflowSnapshot:
        """Store a whole snapshot: the header, and every step in ``snapshot.steps`` (upserted by
        position, final rows included; steps not listed are kept).

        ``snapshot.version`` is the version the caller last read: 0 inserts a new workflow,
        anything else updates the stored one only if its version is still that. Returns the stored
        snapshot (equal to what :meth:`load_snapshot` returns), whose version is one more;
        ``created_at`` is set on insert (unless given) and kept by updates, ``updated_at`` is
        now. The idempotency key follows the snapshot: a key it drops is free again. Of several
        concurrent saves of one version, exactly one succeeds. On any error nothing is written.

        :raises WorkflowAlreadyExistsError: version 0 but the id exists, or the snapshot's
            ``idempotency_key`` is held by another workflow (on insert or update).
        :raises WorkflowNotFoundError: version > 0 but no such workflow (nothing is created).
        :raises ConcurrentUpdateError: the stored version is not ``snapshot.version`` (older or
            newer); it carries ``expected_version`` and ``actual_version``.
        :raises SerializationError: a value cannot be serialized.
        :raises InvalidArgumentError: a naive timestamp.
        """

    @abstractmethod
    async def load_snapshot(self, instance_id: str) -> WorkflowSnapshot:
        """Return the workflow's snapshot with its steps ordered by position; its header is what
        :meth:`get_workflow` returns.

        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: a stored value of the workflow or of a step cannot be read.
        """

    @abstractmethod
    async def get_workflow(self, instance_id: str) -> WorkflowInfo:
        """Return the workflow's header only (cheap: no steps are read), equal to the header of
        :meth:`load_snapshot`.

        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: a stored value of the header (status, input, output, error)
            cannot be read; the error names the column.
        """

    @abstractmethod
    async def delete_snapshot(self, instance_id: str) -> bool:
        """Delete the workflow with its steps, tasks and messages, in one transaction: its id
        and its idempotency key are free again (a new workflow under them starts from nothing),
        claims on its tasks are gone (their holders' fenced writes raise ``ClaimLostError``), and no
        other workflow is touched. Returns False if there was none (idempotent)."""

    @abstractmethod
    async def delete_finished_workflows(
        self,
        before: datetime,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> int:
        """Retention: delete up to ``limit`` *deletable* workflows, oldest ``completed_at``
        first, each as :meth:`delete_snapshot` does (its steps, tasks, messages, events and
        streams with it), in one short transaction; return how many were deleted (0: none is
        left). Call it again until it returns less than ``limit`` to delete them all.

        A workflow is deletable when all of these hold:

        * it has finished (succeeded, failed, cancelled or dead-lettered) and its
          ``completed_at`` is before ``before``;
        * its name is in ``names`` and its queue in ``queues``, when they are given;
        * its parent, if it has one that is still stored, has finished: a parent that still
          runs may need its children's outcomes, so children of unfinished parents are kept;
        * no step of its parent, if still stored, awaits it (a pending step with its id as
          ``child_workflow_id``): a parent cancelled or failed while it awaited the child
          awaits it again when it is run again (resumed, retried);
        * none of its children (workflows whose ``parent_id`` it is) is unfinished.

        Unfinished workflows are never deleted. Safe to run from many processes at once, and
        beside workers: each workflow is deleted once and counted by one caller, and rows
        another transaction holds are skipped (left to the next call) rather than waited for.

        :raises InvalidArgumentError: ``limit`` below 1, or a naive ``before``.
        """

    @abstractmethod
    async def count_finished_workflows(
        self,
        before: datetime,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
    ) -> int:
        """How many workflows :meth:`delete_finished_workflows` would delete now with the same
        ``before``, ``names`` and ``queues`` and no limit (a dry run; nothing is written).

        :raises InvalidArgumentError: a naive ``before``.
        """

    @abstractmethod
    async def list_snapshots(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Page[WorkflowInfo]:
        """List workflow headers, newest first (by creation time, as instants whatever their
        zones, then id descending).

        Filters combine with AND; ``status`` may be one status or several, as
        :class:`~durable.models.WorkflowStatus` or its value; ``labels`` keeps the workflows that
        carry every one of its ``key: value`` pairs (see :meth:`get_labels`; an empty mapping
        filters nothing), found by an index on (key, value) rather than a scan. At most
        ``limit`` headers per page; every page but the last is full. Pass the returned
        ``next_cursor`` to get the following page; it is None on the last page. Pages are
        stable under concurrent inserts (keyset pagination): a workflow created after the
        first page is listed on a later page only if it sorts after the cursor.

        A row that cannot be read does not fail the listing: it is listed with its unreadable
        values None, an unknown status as failed, and ``error`` a record of type
        ``durable.errors.CorruptRowError`` whose message names the column. Headers returned by
        writes (:meth:`finish_workflow`, :meth:`cancel_workflow`, ...) are read the same way, so
        that an unreadable value never undoes a write.

        :raises InvalidArgumentError: (a ``ValueError``) an unknown status (named in the message),
            a limit below 1 or a malformed cursor (empty, or not one this backend returned).
        """

    @abstractmethod
    async def list_waiting(
        self,
        *,
        step_names: Sequence[str],
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[tuple[WorkflowInfo, StepRecord]]:
        """List the workflows that wait: pending (not running), whose last step (the one at
        the highest position) is pending and named one of ``step_names`` (``durable.sleep``:
        sleeping; ``durable.recv``: waiting for a message), each with that step. Ordered and
        paged as :meth:`list_snapshots` (newest first, its cursors); headers and steps read as
        there (an unreadable header is listed marked unreadable). An empty ``step_names``
        lists nothing.

        :raises InvalidArgumentError: a limit below 1 or a malformed cursor.
        """

    @abstractmethod
    async def list_steps(self, instance_id: str) -> list[StepRecord]:
        """Return the workflow's steps ordered by position.

        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: a stored value of a step cannot be read; the error names the
            step's position and the column.
        """

    async def get_step(self, instance_id: str, position: int) -> StepRecord | None:
        """Return the workflow's step at ``position``, or None if nothing is recorded there
        (a ``durable.map`` item reads its own step this way). This default reads every step
        (:meth:`list_steps`): a backend should read that one step instead, or an item of a map
        over n items costs O(n).

        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: a stored value of the step cannot be read (with this default,
            of any step).
        """
        return next((s for s in await self.list_steps(instance_id) if s.position == position), None)

    @abstractmethod
    async def get_labels(self, instance_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """The labels of the given workflows, by id: the ``labels`` of the snapshot that
        created each (:meth:`create_workflow`, :meth:`create_workflows`), merged over its
        parent's labels as stored when it was created, when its ``parent_id`` named a stored
        workflow (its own value wins for a key both have). Labels never change afterwards, and
        go with their workflow when it is deleted (:meth:`delete_snapshot`, retention). A
        workflow without labels maps to ``{}``; ids of no stored workflow are left out. Reads
        only (no write).

        :raises InvalidArgumentError: more than 1000 ids.
        """

    @abstractmethod
    async def count_workflows(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[WorkflowStatus, int]:
        """How many workflows :meth:`list_snapshots` would list with the same filters, by
        status, exactly (no cap): every :class:`~durable.models.WorkflowStatus` is a key (0
        when none). One aggregate read (``GROUP BY status``); nothing is written.

        :raises InvalidArgumentError: an unknown status.
        """

    @abstractmethod
    async def queue_depths(self) -> list[QueueDepth]:
        """The queues that hold pending or running workflows, by queue name: how many of each,
        exactly, and when the oldest pending one was created. One aggregate read
        (``GROUP BY queue, status``); nothing is written."""

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
            try:
                info, created = await self.create_workflow(snapshot, task=task)
            except SerializationError as exc:  # named by its row, as durable's backends do
                raise SerializationError(f"inputs[{index}]: {exc}") from exc
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"inputs[{index}]: {exc}") from exc
            if info.name != snapshot.name:
                raise clash_error(index, snapshot, info.id, info.name)
            results.append((info, created))
        return results

    # -- execution (fenced by the claim on the workflow's task) ------------------------------

    @abstractmethod
    async def begin_execution(
        self, instance_id: str, worker_id: str, *, task_id: str = WORKFLOW_TASK
    ) -> WorkflowSnapshot:
        """Mark the workflow running under ``worker_id`` and return its snapshot, in one
        transaction: status becomes running, ``executor_id`` the worker, ``started_at`` is set
        if it was not (and kept if it was), the version grows by one; the snapshot returned is
        the one stored. A workflow that was not running (pending: new, retried, handed back or
        woken) starts an attempt: ``attempts`` grows by one. A workflow that was still running was
        *interrupted* (its executor died or lost its lease, and this claim took it over; or the
        same executor restarted): ``interruptions`` grows by one and ``attempts`` stays, so that
        crashes do not use up the failure budget. ``task_id`` names the task whose claim
        fences it (the workflow task by default).

        :raises ClaimLostError: ``worker_id`` does not hold a live claim on the task (nothing
            changes).
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
        task_id)``, in one short transaction whose cost does not grow with the number of steps
        (the contract suite compares it at 10 and 3,000 steps of history).

        A position that has no row is inserted; a ``pending`` row is overwritten (by a pending
        or a final outcome); a final row (succeeded or failed) is never changed. A final
        outcome whose ``completed_at`` is None gets the current time (the backend fills it in);
        a pending one keeps None. Every other field is stored as given. The fence comes first:
        a caller without the claim hears :class:`~durable.errors.ClaimLostError` even for a
        position that is final, and for a workflow that does not exist.

        :raises ClaimLostError: the claim is not held: never taken, released, expired (whether
            or not another worker took the task over since: ``holder`` is None unless one did),
            or the workflow or task is gone.
        :raises StepAlreadyRecordedError: the position already has a final outcome (it carries
            ``workflow_id`` and ``position``).
        :raises SerializationError: the output cannot be serialized (nothing is written).
        :raises InvalidArgumentError: a naive timestamp.
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
        when :attr:`records_steps_blocking` is True. Same contract as :meth:`record_step`, from
        any number of threads at once.

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
        stored header: version + 1, ``completed_at`` now, every other field (input,
        ``started_at``, ``attempts``, ``executor_id``) kept; the steps are kept. Afterwards the
        task does not exist (:meth:`claim_task` raises ``TaskNotFoundError``; a second finish
        raises ``ClaimLostError``).

        The failed steps at the positions in ``rerun`` (failures that ended the attempt, which
        nothing recorded depends on) are kept, visible in :meth:`list_steps`, and marked
        :attr:`~durable.models.StepRecord.rerun`: :meth:`requeue_workflow` deletes them so
        that a redrive runs them again. Other positions listed (steps that did not fail, or
        have no row) are left alone.

        :raises ClaimLostError: the claim is not held (nothing changes; a live claim of the
            holder stays).
        :raises InvalidArgumentError: ``status`` is not terminal.
        :raises SerializationError: the output cannot be serialized (nothing is written, the
            claim is still held).
        """

    async def finish_execution(
        self,
        instance_id: str,
        *,
        worker_id: str,
        status: WorkflowStatus,
        output: Any = None,
        error: ErrorInfo | None = None,
        rerun: Sequence[int] = (),
    ) -> None:
        """:meth:`finish_workflow` for a caller that does not use the stored header (a worker
        recording how an attempt ended): the same write, fence and errors, without the header
        read back. By default it calls :meth:`finish_workflow`; a backend whose header costs
        something to build (its input and output decoded) may override it, and must then still
        call a ``finish_workflow`` that a subclass overrides or that is replaced on the
        instance, so that whatever wraps the finish sees every one.
        """
        await self.finish_workflow(
            instance_id, worker_id=worker_id, status=status, output=output, error=error, rerun=rerun
        )

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
        ``error`` (None clears it), and release the claim, in one transaction fenced like
        :meth:`finish_workflow`. Returns the stored header (version + 1). ``attempts`` is not
        counted here (:meth:`begin_execution` counts the next attempt). Until ``run_after``,
        the task is neither found nor claimed by :meth:`find_available_tasks` and
        :meth:`claim_available_tasks`; an explicit :meth:`claim_task` may run it early. The
        task keeps its claim count, and the old holder's fenced writes raise
        ``ClaimLostError``.

        For a retry after a failed attempt, the failed steps the next attempt must run again are
        deleted: those at the positions in ``rerun`` (failures that ended the attempt, which
        nothing recorded depends on, whatever their position), and the *trailing* ones (failed
        steps after the last step that did not fail). Every other step is kept: succeeded and
        pending ones, and failures the workflow handled, which the next attempt replays. With
        ``consume_attempt=False`` (the attempt was handed back: a graceful shutdown, a database
        outage) ``attempts`` goes back down by one and no step is deleted, ``rerun`` or not.

        :raises ClaimLostError: the claim is not held (nothing changes).
        """

    @abstractmethod
    async def requeue_workflow(self, instance_id: str) -> WorkflowInfo:
        """Run a failed, dead-lettered or cancelled workflow again (a *redrive*): status
        pending, error, ``attempts`` and ``interruptions`` cleared, version + 1, input and
        ``created_at`` kept, and its workflow task created anew (unclaimed, with the workflow's
        name, queue and priority: a former holder's fenced writes raise ``ClaimLostError``), in
        one transaction. The failed steps marked :attr:`~durable.models.StepRecord.rerun` (see
        :meth:`finish_workflow`) and the trailing failed steps are deleted, so they run again;
        every other step is kept, and completed steps will not run again. A deadline that has
        passed (by the lease clock) is dropped: it would cancel the execution again at once.
        A cancelled workflow's descendants that its cancel cancelled with it
        (:meth:`cancel_workflow` stamps them with its ``completed_at``) and that had started,
        or that their parent awaits (a pending step with their id as ``child_workflow_id``),
        are run again the same way, in the same transaction, so that the workflow can await its
        children again; a descendant cancelled by itself stays cancelled, and so does one that
        never started nor is awaited (its due time is not kept: it would run at once).

        :raises WorkflowNotFoundError: no such workflow.
        :raises InvalidArgumentError: the workflow is not failed, dead-lettered or cancelled
            (pending, running, succeeded): nothing changes.
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
        ones are kept), set the workflow pending (its version grows) and release its task until
        it is woken: it is neither found nor claimed with ``due_only``, and the former holder's
        fenced writes raise ``ClaimLostError``. The attempt goes on when it is woken, so
        ``attempts`` goes back down by one (the next :meth:`begin_execution` counts it again,
        and counts no interruption).

        The workflow task is woken (due at once) by :meth:`complete_step_task` when the last of
        the workflow's step tasks completes, or here if none remains.

        :raises ClaimLostError: the claim on the workflow task is not held (nothing is written,
            no task created).
        """

    @abstractmethod
    async def complete_step_task(
        self, instance_id: str, task_id: str, *, worker_id: str, step: StepRecord
    ) -> None:
        """Record the outcome of a step that ran as task ``task_id`` (``step``, stored as given,
        like :meth:`record_step`) and remove the task; if it was the workflow's last step task,
        wake the workflow's task (due at once). One transaction, fenced by ``worker_id``'s claim
        on the step task.

        :raises ClaimLostError: the claim on the step task is not held.
        :raises StepAlreadyRecordedError: the position already has a final outcome (nothing is
            written; the task stays).
        """

    @abstractmethod
    async def cancel_workflow(
        self, instance_id: str, *, error: ErrorInfo | None = None
    ) -> WorkflowInfo:
        """Mark a workflow that has not finished cancelled (version + 1, ``completed_at`` now,
        ``error`` recorded when given, steps kept) and remove its tasks, whoever holds them:
        afterwards they do not exist (``TaskNotFoundError``), and their holders' fenced writes
        (:meth:`record_step`, :meth:`finish_workflow`, :meth:`complete_task`, ...) raise
        ``ClaimLostError``. A finished workflow, cancelled ones included, is returned unchanged
        (idempotent).

        Cancelling cascades, in the same transaction, to its *descendants*: the workflows whose
        ``parent_id`` is this one (child workflows, and executions it enqueued), theirs, and so
        on; each that has not finished is cancelled the same way (with the same ``error``),
        finished ones are left as they are (their unfinished descendants are still cancelled).

        :raises WorkflowNotFoundError: no such workflow.
        """

    @abstractmethod
    async def cancel_expired_workflows(self, *, limit: int = 100) -> list[WorkflowInfo]:
        """Cancel up to ``limit`` workflows that have not finished (pending or running) and
        whose ``deadline`` has passed (``deadline <= now()``, on :meth:`now`'s clock), oldest
        deadline first, each as :meth:`cancel_workflow` does (their tasks removed, whoever
        holds them; their descendants cancelled too), with an ``error`` of type
        ``durable.errors.DeadlineExceededError`` whose message names the workflow and its
        deadline. Returns the cancelled headers (descendants not included); an empty list when
        none has expired. Safe to run from many processes at once: each workflow is cancelled
        once, and returned by one caller. Its cost does not grow with finished workflows.

        :raises InvalidArgumentError: ``limit`` is below 1.
        """

    @abstractmethod
    async def continue_as_new(
        self, instance_id: str, *, worker_id: str, input: Any
    ) -> WorkflowInfo:
        """End the current *run* of a running workflow and start its next one under the same
        id, in one transaction fenced by ``worker_id``'s claim on its workflow task: delete
        its steps (its history) and its step tasks, store ``input`` as its input,
        ``continuations`` + 1, ``error`` and ``output`` cleared, ``attempts`` and
        ``interruptions`` 0, status pending, version + 1; id, name, idempotency key, parent,
        queue, priority, ``max_attempts``, ``deadline``, ``created_at`` and ``started_at`` are
        kept. Its workflow task is released and due at once (the former holder's fenced writes
        raise ``ClaimLostError``; the next :meth:`begin_execution` counts attempt 1, not an
        interruption), and :meth:`wait_for_work` is woken. Returns the stored header.

        :raises ClaimLostError: the claim on the workflow task is not held (nothing changes).
        :raises SerializationError: ``input`` cannot be serialized (nothing is written, the
            claim is still held).
        """

    # -- the workflow registry and executors ---------------------------------------------------

    @abstractmethod
    async def register_workflows(self, entries: Sequence[RegisteredWorkflow]) -> None:
        """Record that these names are served. A new name is stored as given, ``updated_at``
        now; for a known name the description is updated (None clears it) and ``enabled`` is
        kept as stored (an operator's choice survives restarts). Idempotent; an empty list
        changes nothing."""

    @abstractmethod
    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        """Enable or disable a registered name for every worker sharing this storage: once
        this returns, :meth:`claim_available_tasks` skips (or claims again) its tasks, whoever
        asks, with or without a name filter. :meth:`find_available_tasks` and
        :meth:`claim_task` are not affected. Returns the stored entry (its description kept).

        :raises UnknownWorkflowError: the name was never registered (nothing is created).
        """

    @abstractmethod
    async def list_registered_workflows(self) -> list[RegisteredWorkflow]:
        """Every registered name, sorted by name."""

    @abstractmethod
    async def get_executor(self, executor_id: str) -> ExecutorInfo | None:
        """The executor's record (None if it never started), ``stale`` judged by its own
        heartbeat interval (see :data:`~durable.models.STALE_AFTER_HEARTBEATS`) on the storage's
        clock; a stopped executor is never stale. Equal to its entry in
        :meth:`list_executors`."""

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
        None, and hostname, pid, incarnation and heartbeat interval those given. Returns False,
        changing nothing, when the record is otherwise (another process started under the id
        since the caller read it). Of concurrent starts judged on the same record, exactly one
        returns True.

        :raises InvalidArgumentError: ``heartbeat_interval`` is not positive (nothing recorded).
        """

    @abstractmethod
    async def record_executor_heartbeat(self, executor_id: str, *, incarnation: str) -> bool:
        """Record that the executor is alive now (by the storage's clock; ``started_at`` is
        kept), fenced by ``incarnation``: returns False, changing nothing, when the id is not
        running under that incarnation (another process took it over, it was stopped, or it
        never started)."""

    @abstractmethod
    async def mark_executor_stopped(self, executor_id: str, *, incarnation: str) -> None:
        """Record that the executor stopped cleanly (``stopped_at`` now: no longer stale, and
        its heartbeats are refused), fenced by ``incarnation`` like
        :meth:`record_executor_heartbeat`. Unknown ids and other incarnations are ignored."""

    @abstractmethod
    async def list_executors(self, *, stale_after: timedelta | None = None) -> list[ExecutorInfo]:
        """Every executor that ever started, most recent heartbeat first, with ``stale`` set for
        running ones silent for longer than ``stale_after`` (default: by each executor's own
        heartbeat interval, as :meth:`get_executor` judges it), on the storage's clock.

        :raises InvalidArgumentError: ``stale_after`` is not positive.
        """

    # -- what workflows publish: events and streams --------------------------------------------

    @abstractmethod
    async def set_event(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        """Set the workflow's event ``key`` to ``value`` (``durable.set_event``) and record
        ``step`` (the position of the workflow's history that set it, stored as
        :meth:`record_step` stores it), in one transaction fenced by ``worker_id``'s claim on
        ``task_id``: both are written or neither. The latest value set wins; it is kept after
        the workflow finishes, until the workflow is deleted. Wakes this process's watches of
        the workflow (:meth:`watch_outputs`), and on a shared store every process's.

        :raises ClaimLostError: the claim is not held (nothing is written).
        :raises StepAlreadyRecordedError: ``step``'s position already has a final outcome
            (nothing is written: a replay does not set the event again).
        :raises SerializationError: ``value`` cannot be serialized (nothing is written).
        """

    @abstractmethod
    async def get_event(self, instance_id: str, key: str) -> EventRecord | None:
        """The latest value set for the workflow's event ``key`` (with the position that set it
        and when), or None if it was never set. Reads the committed state, while the workflow
        runs and after it finished.

        :raises WorkflowNotFoundError: no such workflow.
        :raises CorruptRowError: the stored value cannot be read.
        """

    @abstractmethod
    async def write_stream(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> int:
        """Append ``value`` to the workflow's stream ``key`` (``durable.write_stream``) and
        record ``step``, in one transaction fenced by ``worker_id``'s claim on ``task_id``;
        return the value's offset (0 for a stream's first value, then 1, 2, ...: in the order
        the writes committed, with no gap and no offset taken twice, even under concurrent
        writes to one stream). A write refused for any reason takes no offset, so a replay that
        finds ``step`` recorded never writes the value twice, and one that does not find it
        (the transaction did not commit) writes it once. Wakes the workflow's watches as
        :meth:`set_event` does.

        :raises ClaimLostError: the claim is not held (nothing is written).
        :raises StepAlreadyRecordedError: ``step``'s position already has a final outcome.
        :raises StreamClosedError: the stream was closed (nothing is written).
        :raises SerializationError: ``value`` cannot be serialized (nothing is written).
        """

    @abstractmethod
    async def close_stream(
        self,
        instance_id: str,
        key: str,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        """Close the workflow's stream ``key`` (``durable.close_stream``: readers end after its
        last value) and record ``step``, in one transaction fenced as :meth:`write_stream`.
        Closing a closed stream, or one never written (it is then closed and empty), succeeds.
        Wakes the workflow's watches.

        :raises ClaimLostError: the claim is not held (nothing is written).
        :raises StepAlreadyRecordedError: ``step``'s position already has a final outcome.
        """

    @abstractmethod
    async def read_stream(
        self, instance_id: str, key: str, *, offset: int = 0, limit: int = 1000
    ) -> StreamChunk:
        """Up to ``limit`` values of the workflow's stream ``key`` from ``offset`` on, in
        offset order (an empty chunk when there are none yet, or the stream was never
        written), reading the committed state. ``ended`` is True when no value will ever come
        at the chunk's ``next_offset`` or after: the stream was closed, or the workflow had
        finished, and the chunk holds every value up to the stream's end. A stream's values
        are kept after the workflow finished, until it is deleted.

        :raises WorkflowNotFoundError: no such workflow.
        :raises InvalidArgumentError: ``offset`` is negative or ``limit`` below 1.
        :raises CorruptRowError: a stored value cannot be read.
        """

    def watch_outputs(self, instance_id: str) -> OutputWatch:
        """Start watching what the workflow publishes: the watch's ``wait(timeout)`` returns
        True once :meth:`set_event`, :meth:`write_stream` or :meth:`close_stream` committed for
        it since the watch started (or since the last ``wait`` returned), else False after
        ``timeout``. Start the watch, read, then wait: nothing committed after the watch started
        is missed. It may fire for no reason; readers re-read. Close it (``with`` block) when
        done. Call it on the event loop that waits.

        The default implementation hears about writes through this backend object only (other
        processes' are found by the reader's polling); PostgreSQL hears every process through
        LISTEN/NOTIFY.
        """
        return self._output_signal().watch(instance_id)

    def notify_outputs(self, instance_id: str) -> None:
        """Fire this process's watches of the workflow (backends call it after a commit that
        published something). Safe to call from any thread."""
        self._output_signal().set(instance_id)

    def _output_signal(self) -> KeyedSignal:
        signal: KeyedSignal | None = self.__dict__.get("_durable_output_signal")
        if signal is None:
            signal = self.__dict__.setdefault("_durable_output_signal", KeyedSignal())
        return signal

    # -- wake-ups ------------------------------------------------------------------------------

    async def wait_for_work(self, timeout: float) -> None:
        """Return when work may have become available (a task was added, alone or with a new
        workflow, rescheduled or released), or after ``timeout`` seconds. It may return early
        for no reason; callers re-check. The default implementation hears about work created
        through this backend object only (other processes are found by polling); PostgreSQL
        hears every process through LISTEN/NOTIFY.
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

    # -- exactly-once work in the application's own database --------------------------------

    #: True when durable's tables live in a SQL database that application code can share, so
    #: that a step's body runs in the transaction that records it
    #: (:meth:`run_transactional_step`) and executions and messages are recorded in the
    #: caller's own transaction (:meth:`enqueue_in_transaction`,
    #: :meth:`send_in_transaction`). False for the memory backend and, unless they say
    #: otherwise, for custom backends: those operations then raise ConfigurationError.
    supports_transactions: bool = False

    def _no_transactions(self, what: str) -> ConfigurationError:
        return ConfigurationError(
            f"{what} needs a backend that stores durable's tables in a SQL database (SQLite, "
            "PostgreSQL or MySQL/MariaDB through durable.connect / SQLAlchemyBackend); "
            f"{type(self).__name__} does not (its supports_transactions is False)"
        )

    async def run_transactional_step(
        self,
        instance_id: str,
        body: Callable[[Any], Any],
        record: Callable[[Any], StepRecord],
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
        is_async: bool = False,
        engine: Any = None,
    ) -> StepRecord:
        """Run ``body(connection)`` and record its step in ONE database transaction, fenced by
        ``worker_id``'s claim on the task, as :meth:`record_step` fences a record.

        ``engine``: an engine the caller names (a SQLAlchemy ``Engine`` for a sync body, an
        ``AsyncEngine`` for an async one) to run the transaction on instead of the backend's;
        it must be connected to the same server and database as the backend's tables (checked
        once per engine: :class:`ConfigurationError` otherwise, before the body runs).

        ``body`` gets a connection in a transaction on durable's own database (a SQLAlchemy
        ``Connection``; an ``AsyncConnection``, awaited, when ``is_async``). Its return value
        goes to ``record``, which returns the succeeded :class:`StepRecord` to write (it
        serializes the value; it may raise). Then the step's row is written with the same
        statement and fence as :meth:`record_step`, and the transaction commits: the body's
        writes and the step's record are visible together or not at all. Returns the record.

        If ``body`` or ``record`` raises, the transaction rolls back and the exception
        propagates as raised (the caller records a failure or retries in a new transaction).
        If the claim is not held (expired, taken over), the transaction rolls back (nothing
        of the body is visible) and :class:`ClaimLostError` is raised;
        :class:`StepAlreadyRecordedError` if the step is recorded already.

        :raises ConfigurationError: the backend cannot (:attr:`supports_transactions` False),
            or an async body on an engine that has no async driver.
        """
        raise self._no_transactions("a @durable.transaction step")

    def run_transactional_step_blocking(
        self,
        instance_id: str,
        body: Callable[[Any], Any],
        record: Callable[[Any], StepRecord],
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
        engine: Any = None,
    ) -> StepRecord | None:
        """:meth:`run_transactional_step` for a sync ``body``, run in the calling thread (a sync
        workflow's), where the backend can; None where it cannot (the caller then runs
        :meth:`run_transactional_step` on the event loop). Same contract otherwise."""
        return None

    def enqueue_in_transaction(
        self, connection: Any, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
    ) -> list[tuple[WorkflowInfo, bool]]:
        """:meth:`create_workflows`, inside the caller's transaction on ``connection`` (a
        SQLAlchemy ``Connection`` to the database holding durable's tables): the same rows
        and the same idempotency (an existing id or key creates nothing and returns what
        exists), the wake-up sent with the caller's commit (NOTIFY on PostgreSQL is
        transactional). Runs on the caller's thread; does not commit. Nothing exists unless
        the caller commits.

        :raises ConfigurationError: the backend cannot (:attr:`supports_transactions` False),
            or ``connection`` is to a database without durable's tables.
        """
        raise self._no_transactions("durable.enqueue_in")

    def send_in_transaction(
        self,
        connection: Any,
        instance_id: str,
        topic: str,
        value: Any,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        """:meth:`send_message`, inside the caller's transaction on ``connection`` (as
        :meth:`enqueue_in_transaction`): the message, and the wake-up of a workflow waiting
        for it, exist if and only if the caller commits. Same return value and errors as
        :meth:`send_message`.

        :raises ConfigurationError: the backend cannot (:attr:`supports_transactions` False).
        """
        raise self._no_transactions("durable.send_in")

    def database_identity(self, connection: Any) -> tuple[Any, ...]:
        """What identifies the database ``connection`` is connected to (the server and the
        database), comparable with the identity of the backend's own database, which a
        connection of the backend's engine returns.

        :raises ConfigurationError: the backend cannot (:attr:`supports_transactions` False).
        """
        raise self._no_transactions("comparing databases")

    async def own_database_identity(self) -> tuple[Any, ...]:
        """:meth:`database_identity` of the backend's own database (read once, then kept).

        :raises ConfigurationError: the backend cannot (:attr:`supports_transactions` False).
        """
        raise self._no_transactions("comparing databases")

    # -- tasks and claims ---------------------------------------------------------------------

    @abstractmethod
    async def add_task(self, spec: TaskSpec) -> bool:
        """Create a task unless one with the same key ``(instance_id, task_id)`` exists (then the
        stored one is kept unchanged). Returns whether it was created. A new task is unclaimed,
        claimed 0 times, and due at ``spec.run_after``, else at :meth:`now` plus ``spec.delay``
        (or at once).

        :raises WorkflowNotFoundError: ``spec.instance_id`` names no workflow.
        :raises InvalidArgumentError: a naive ``run_after``.
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
        keep_limits: bool = False,
    ) -> TaskClaim | None:
        """Claim one task for ``ttl``, atomically: of concurrent claims by different workers, at
        most one succeeds.

        Succeeds when the task is unclaimed, its claim has expired (a holder without an expiry
        counts as expired), or ``worker_id`` already holds it (re-entrant: the claim is renewed
        and ``attempts`` is not counted again). Returns the claim: ``worker_id``, ``attempts``
        (how many times the task was claimed, this claim included), the task's ``name``, and
        ``expires_at`` ``ttl`` after :meth:`now`. Returns None, changing nothing, when another
        worker holds a live claim, or, with ``due_only``, when the task's ``run_after`` has not
        come yet (otherwise an explicit claim by id may run a task early), or, with
        ``keep_limits``, when it is the workflow task of a queue with limits (see
        :meth:`claim_queue_tasks`, which hands those out within the limits) that ``worker_id``
        does not hold already with a live claim (a lapsed one no longer counts toward the
        limits, so others may have filled its slot: a worker restarted under its old id must
        wait for one too): the runtime's explicit claims (``Runtime.run``, recovery) keep to
        the limits this way, judged by the stored queues at the claim.

        :raises TaskNotFoundError: no such task (or no such workflow).
        """

    @abstractmethod
    async def get_task(self, instance_id: str, task_id: str) -> AvailableTask:
        """The task as it is stored: who holds it (``claimed_by``) and until when
        (``claim_expires_at``), even when the holder let the claim expire and nobody took it
        over (unlike :meth:`find_available_tasks`, which shows such a task unclaimed), with
        how many times it was claimed.

        :raises TaskNotFoundError: no such task (or no such workflow).
        """

    @abstractmethod
    async def extend_task_claim(
        self, instance_id: str, task_id: str, worker_id: str, ttl: timedelta
    ) -> TaskClaim:
        """Make ``worker_id``'s claim expire ``ttl`` after :meth:`now` (a heartbeat); returns
        the renewed claim (``attempts`` not counted again). A claim that expired but that nobody
        took over in the meantime is still ``worker_id``'s to renew: until it is renewed it is
        not held, and fenced writes under it raise ``ClaimLostError`` with ``holder`` None.

        :raises ClaimLostError: another worker holds the task (``holder`` names it), or nobody
            does (it was released; ``holder`` None).
        :raises TaskNotFoundError: no such task.
        """

    @abstractmethod
    async def release_task_claim(self, instance_id: str, task_id: str, worker_id: str) -> None:
        """Give up ``worker_id``'s claim so that any worker may claim the task at once (the
        next claim counts in ``attempts``); the task shows unclaimed, and ``worker_id``'s
        fenced writes raise ``ClaimLostError`` with ``holder`` None. Wakes
        :meth:`wait_for_work`.

        :raises ClaimLostError: ``worker_id`` does not hold the claim (``holder``: who does).
        :raises TaskNotFoundError: no such task.
        """

    @abstractmethod
    async def complete_task(self, instance_id: str, task_id: str, worker_id: str) -> None:
        """Remove a task whose work is done, fenced by ``worker_id``'s claim on it; the
        workflow is not changed. A later claim raises ``TaskNotFoundError``, a second completion
        ``ClaimLostError``.

        :raises ClaimLostError: ``worker_id`` does not hold a live claim (the task stays).
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
        """Return up to ``limit`` tasks that ``worker_id`` could claim now, without claiming them
        (finding changes nothing):
        tasks due (``run_after`` passed) that nobody holds, whose claim expired (or, written by
        hand, has a holder but no expiry: such a claim is repaired, not held forever), or, unless
        ``include_own`` is False, that ``worker_id`` itself holds (so a restarted worker finds its
        own work at once; a running worker passes False so as not to take its work twice).

        Ordered by priority (lower first), then ``run_after``, then creation order. ``names`` and
        ``queues`` restrict the result when given (both: AND). Names disabled in the registry
        are still listed. Each :class:`~durable.models.AvailableTask` shows a live claim's
        holder and expiry (``worker_id``'s own), and a task whose claim expired as unclaimed
        (``claimed_by`` and ``claim_expires_at`` None); due times and expiry are judged on
        :meth:`now`'s clock.

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
        versions: Sequence[str] | None = None,
    ) -> list[TaskClaim]:
        """Claim, in one atomic operation, up to ``limit`` of the tasks
        :meth:`find_available_tasks` would return, in the same order, less those whose name is
        disabled (:meth:`set_workflow_enabled`): the operation reads the registry itself, so a
        name disabled before it starts is never claimed, whoever asks. Under any concurrency, a
        task is claimed by at most one worker at a time. Each claim is as :meth:`claim_task`
        makes it: a task taken over after its claim expired counts one more attempt, one the
        worker already held is renewed without counting. Returns an empty list when nothing is
        available.

        ``versions`` (``Runtime(serve_versions=...)``), when given, also leaves out the workflow
        tasks of executions whose :attr:`~durable.models.WorkflowInfo.code_version` is set and
        not in it (unknown versions, None, pass; step tasks pass); None (the default) filters
        nothing, and a backend must then claim exactly as without the parameter.

        :raises InvalidArgumentError: ``limit`` is below 1.
        """

    async def claim_and_begin_tasks(
        self,
        worker_id: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        versions: Sequence[str] | None = None,
    ) -> list[tuple[TaskClaim, WorkflowSnapshot | None]]:
        """Claim as :meth:`claim_available_tasks` (``include_own=False``, the same
        ``versions``), and start the
        executions claimed, each with its snapshot, as :meth:`begin_execution` would right after
        the claim; or not: a claim paired with None is only claimed, and its caller begins it
        as usual (this default begins none; a backend may begin the claimed workflow tasks in
        the same atomic operation, which saves a round trip per batch of starts).

        A claim paired with a snapshot is running under ``worker_id``: its caller runs it, or
        hands it back with :meth:`reschedule_workflow` (``consume_attempt=False``), never with
        :meth:`release_task_claim` (that would leave the workflow running, and the next start
        would count an interruption). A backend may pair None with a claim whose rows it could
        not read (:class:`~durable.errors.CorruptRowError`): :meth:`begin_execution` then
        raises it.

        :raises InvalidArgumentError: ``limit`` is below 1.
        """
        # the code-version filter is passed only when given: claims of backends (and wrappers)
        # that predate it keep working unfiltered
        by_version: dict[str, Any] = {} if versions is None else {"versions": versions}
        claims = await self.claim_available_tasks(
            worker_id, limit, ttl, names=names, queues=queues, include_own=False, **by_version
        )
        return [(claim, None) for claim in claims]

    # -- messages in, and timers by key (fenced where a workflow writes) -----------------------

    @abstractmethod
    async def send_message(
        self, instance_id: str, topic: str, value: Any, *, idempotency_key: str | None = None
    ) -> bool:
        """Store a message for workflow ``instance_id`` on ``topic``, deliverable at once
        (``deliver_at`` and ``sent_at`` :meth:`now`), in one transaction. Returns True when it
        was stored, False when a message with the same non-null ``idempotency_key`` was stored
        for this workflow before (received or not, whatever its topic or value): then nothing
        is written. Keys are per target workflow.

        A stored message is kept until a :meth:`receive_message` of the workflow takes it:
        sent before the workflow waits, or before it started, it is not lost. Messages of a
        topic are received in the order they were stored (``seq``), each exactly once.

        Wake-up: when the workflow waits for a message on ``topic`` (its task is unclaimed,
        and its last step is a pending :data:`~durable.models.RECV_STEP` whose input is
        ``topic``), its task becomes due now in the same transaction, and workers are told
        (:meth:`notify_work`; NOTIFY on PostgreSQL). A workflow that waits on another topic,
        sleeps, runs or has not started is not woken. A send that commits while the workflow
        hands itself back to wait (:meth:`receive_message`) is never missed: either that
        receive takes the message, or this send wakes the workflow.

        :raises WorkflowNotFoundError: no such workflow (nothing is written).
        :raises WorkflowFinishedError: the workflow has finished (nothing is written; a send
            whose key was already stored still returns False).
        :raises SerializationError: ``value`` cannot be serialized (nothing is written).
        """

    @abstractmethod
    async def receive_message(
        self,
        instance_id: str,
        topic: str,
        *,
        worker_id: str,
        step: StepRecord,
        deadline: datetime | None,
    ) -> Receipt:
        """Receive the workflow's next message on ``topic``, or hand the workflow back to wait
        for one, in one transaction fenced by ``worker_id``'s claim on the workflow task.
        ``step`` is the receive's record (name :data:`~durable.models.RECV_STEP`, its position,
        input ``topic``, pending, its output the deadline as the caller shows it). Judged on
        :meth:`now`'s clock:

        * **received**: of the messages on ``topic`` not received yet and deliverable
          (``deliver_at <= now``), the first stored (lowest ``seq``) is marked received
          (``received_at`` now, ``received_position`` ``step.position``) and ``step`` is
          recorded *succeeded* with the message's value as its output (``completed_at`` now).
          Both or neither: a crash cannot separate them, and no message is received twice.
        * **timed out**: there is none and ``deadline`` has passed: ``step`` is recorded
          succeeded with output None.
        * **waiting**: there is none and ``deadline`` is None or to come: ``step`` is recorded
          as given (pending), and the workflow is handed back as
          :meth:`reschedule_workflow` with ``consume_attempt=False`` does it (pending,
          ``attempts`` one less, claim released, no step deleted), its task due at the earliest
          of ``deadline`` and the ``deliver_at`` of the topic's undelivered future messages (a
          timer), or :data:`~durable.models.UNTIL_WOKEN` ahead when there is neither
          (:meth:`send_message` wakes it). ``wake_at`` says when.

        The position is written as :meth:`record_step` writes it (a pending row is
        overwritten, a final one never).

        :raises ClaimLostError: the claim is not held (nothing is written, no message taken).
        :raises StepAlreadyRecordedError: ``step``'s position already has a final outcome.
        """

    @abstractmethod
    async def start_timer(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        delay: timedelta,
        worker_id: str,
        step: StepRecord,
    ) -> datetime:
        """Start the workflow's timer ``key``: a message on topic ``key`` with ``value``,
        deliverable ``delay`` after :meth:`now` (at once if ``delay`` is not positive), with
        ``timer`` True; a timer of the same key whose message was not received yet is deleted
        (restarting replaces it). In the same transaction, fenced by ``worker_id``'s claim on
        the workflow task, ``step`` (:data:`~durable.models.START_TIMER_STEP`) is recorded
        succeeded with the time it fires (ISO 8601) as its output. Returns that time.

        :raises ClaimLostError: the claim is not held (nothing is written).
        :raises StepAlreadyRecordedError: ``step``'s position already has a final outcome.
        :raises SerializationError: ``value`` cannot be serialized (nothing is written).
        """

    @abstractmethod
    async def cancel_timer(
        self, instance_id: str, key: str, *, worker_id: str, step: StepRecord
    ) -> bool:
        """Cancel the workflow's timer ``key``: delete its message if it was not received yet
        (due or not: a cancelled timer is never received). Returns whether one was deleted.
        In the same transaction, fenced by ``worker_id``'s claim on the workflow task, ``step``
        (:data:`~durable.models.CANCEL_TIMER_STEP`) is recorded succeeded with that boolean as
        its output. A timer's message is either received or cancelled, never both.

        :raises ClaimLostError: the claim is not held (nothing is written).
        :raises StepAlreadyRecordedError: ``step``'s position already has a final outcome.
        """

    @abstractmethod
    async def list_messages(
        self, instance_id: str, *, topic: str | None = None, received: bool | None = None
    ) -> list[Message]:
        """The workflow's messages (on ``topic`` if given; only received ones, or only those
        not received yet, if ``received`` is given), in the order they were stored.

        :raises WorkflowNotFoundError: no such workflow.
        """

    # -- cron schedules ------------------------------------------------------------------------
    # The backend stores schedules and fires them atomically; it never reads a cron expression:
    # the caller (durable.scheduling) computes ticks and next run times.

    @abstractmethod
    async def put_schedule(self, schedule: ScheduleInfo) -> tuple[ScheduleInfo, bool]:
        """Create the schedule ``schedule.name``, or update the stored one, in one transaction.
        Returns ``(stored schedule, created)``.

        A new schedule is stored as given (``created_at`` and ``updated_at`` now,
        ``last_tick_at`` None). An existing one takes the given definition (workflow, cron,
        timezone, args, kwargs, missed, max_catchup, queue, priority, declared; ``updated_at``
        now) but keeps its ``paused`` flag (an operator's choice survives restarts),
        ``created_at`` and ``last_tick_at``; its ``next_run_at`` becomes the given one only if
        the cron expression or the timezone changed (a restart that declares the same schedule
        again loses no pending tick). Of concurrent puts of one new name, one creates it.

        :raises SerializationError: ``args`` or ``kwargs`` cannot be serialized (nothing is
            written).
        :raises InvalidArgumentError: a naive ``next_run_at``.
        """

    @abstractmethod
    async def get_schedule(self, name: str) -> ScheduleInfo:
        """The stored schedule.

        :raises ScheduleNotFoundError: no such schedule.
        """

    @abstractmethod
    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule, sorted by name."""

    @abstractmethod
    async def delete_schedule(self, name: str) -> bool:
        """Delete the schedule (executions it started are kept). Returns False if there was
        none (idempotent). A scheduler firing it concurrently either fires it before the delete
        or not at all."""

    @abstractmethod
    async def set_schedule_paused(
        self, name: str, paused: bool, *, next_run_at: datetime | None = None
    ) -> ScheduleInfo:
        """Pause or resume the schedule (``updated_at`` now); a paused schedule is neither
        due (:meth:`due_schedules`) nor fired (:meth:`fire_schedule`). When ``next_run_at`` is
        given it is stored too if the schedule was paused, in the same write (a resume restarts
        from the next tick after now, so ticks passed while paused are not run; a schedule that
        was not paused keeps its next tick, so that its due and missed ticks still run).
        Returns the stored schedule.

        :raises ScheduleNotFoundError: no such schedule (nothing is created).
        :raises InvalidArgumentError: a naive ``next_run_at``.
        """

    @abstractmethod
    async def due_schedules(self, until: datetime, *, limit: int = 100) -> list[ScheduleInfo]:
        """Up to ``limit`` schedules not paused whose ``next_run_at`` is at or before ``until``,
        earliest first (then by name). Reading changes nothing.

        :raises InvalidArgumentError: ``limit`` below 1, or a naive ``until``.
        """

    @abstractmethod
    async def fire_schedule(
        self,
        name: str,
        *,
        expected_next_run_at: datetime,
        next_run_at: datetime | None,
        runs: Sequence[tuple[WorkflowSnapshot, TaskSpec]],
        last_tick_at: datetime | None = None,
    ) -> list[tuple[WorkflowInfo, bool]] | None:
        """Fire a due schedule: in one transaction, compare-and-set its ``next_run_at`` from
        ``expected_next_run_at`` (the value the caller read) to ``next_run_at``, set
        ``last_tick_at`` (when given), and create ``runs`` as :meth:`create_workflows` does
        (each run's idempotency key is its tick's, so a run that exists is found, not created
        again). Returns what :meth:`create_workflows` returns, or None, writing nothing, when
        the schedule is gone, paused, or its ``next_run_at`` is no longer
        ``expected_next_run_at`` (another scheduler fired it first): of concurrent fires of one
        schedule from one read, exactly one wins, so each tick is enqueued once however many
        schedulers race. A crash cannot separate the advance from the enqueue.

        :raises SerializationError: a run's values cannot be serialized (nothing is written).
        :raises InvalidArgumentError: a naive timestamp, or a run's idempotency key belongs to
            a workflow of another name (nothing is written).
        """

    # -- queues with limits (durable.queues) ---------------------------------------------------
    # A stored queue with a limit is claimed only by claim_queue_tasks, which enforces its
    # limits atomically; claim_available_tasks and claim_and_begin_tasks skip its workflow tasks
    # (its step tasks stay theirs: the limits count executions, not the steps they hand out).

    @abstractmethod
    async def put_queue(
        self, queue: QueueInfo, *, replace: bool = True, only: Collection[str] | None = None
    ) -> tuple[QueueInfo, bool]:
        """Create the queue ``queue.name`` with the limits given, or (with ``replace``) set the
        stored one's limits to them, in one transaction. Returns ``(stored queue, created)``.
        Without ``replace`` an existing queue is returned unchanged (a declaration in code
        does not undo an operator's change). With ``only`` (names of limit fields), a stored
        queue gets those limits set and keeps the others as stored, in the same transaction
        (two callers changing different limits at once both take effect); a new one gets all
        of ``queue``'s. ``created_at`` is kept, ``updated_at`` now. Claims that start after it
        returns obey the new limits. Of concurrent puts of one new name, one creates it.

        :raises InvalidArgumentError: a limit below 1, or ``rate_limit`` without
            ``rate_period`` (or the reverse).
        """

    @abstractmethod
    async def get_queue(self, name: str) -> QueueInfo:
        """The stored queue.

        :raises QueueNotFoundError: no such queue.
        """

    @abstractmethod
    async def list_queues(self) -> list[QueueInfo]:
        """Every stored queue, sorted by name."""

    @abstractmethod
    async def delete_queue(self, name: str) -> bool:
        """Forget the queue's limits (its tasks stay, claimed like any queue's from then on).
        Returns False if there was none."""

    @abstractmethod
    async def claim_queue_tasks(
        self,
        worker_id: str,
        queue: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        versions: Sequence[str] | None = None,
    ) -> list[TaskClaim]:
        """Claim up to ``limit`` available *workflow* tasks of the stored queue ``queue``
        (due, free, name in ``names`` when given, started by one of ``versions`` or an unknown
        version when given, as :meth:`claim_available_tasks` filters them, not disabled; in the
        order of
        :meth:`find_available_tasks`), within its limits, atomically: the limits are read, the
        running executions counted and the tasks claimed as one serialized operation per queue,
        so that however many workers in however many processes race, at no moment

        * more than ``concurrency`` of the queue's workflow tasks hold a live claim (a
          suspended execution, sleeping, waiting for a message or for its fanned-out steps,
          holds none, and does not count; a claim whose lease expired does not count either);
        * more than ``worker_concurrency`` of them are held by one ``worker_id``;
        * more than ``rate_limit`` claims were made in any window of ``rate_period`` seconds
          (every claim counts as a start, resumptions included; the backend records them);
        * more than ``partition_concurrency`` of one ``partition_key``'s are held; within a
          partition the oldest task (creation order) is claimed first. Tasks without a
          partition key are not limited by it.

        Claims are made as :meth:`claim_available_tasks` makes them (``include_own`` False).
        Returns an empty list when the queue is not stored, has no limit (the ordinary claims
        take its tasks), is at a limit, or has nothing available; it may also return one at
        once while another claim of the same queue is in progress (rather than wait for it:
        callers poll).

        :raises InvalidArgumentError: ``limit`` is below 1.
        """

    @abstractmethod
    async def fork_workflow(
        self,
        source_id: str,
        new_id: str,
        *,
        from_position: int,
        deadline: datetime | None = None,
        trace_context: str | None = None,
    ) -> WorkflowInfo:
        """Start a new execution ``new_id`` of workflow ``source_id``'s workflow from its
        recorded history (a *fork*), in one transaction:

        * the new workflow has the source's name, input (as stored), queue, priority and
          ``max_attempts``; it is ``pending`` with no output, error, parent, executor,
          idempotency key, attempts, interruptions or continuations, version 1, ``created_at``
          and ``updated_at`` now, ``deadline`` and ``trace_context`` as given;
        * every step of the source at a position below ``from_position`` is copied to it as
          stored (name, status, output or error, child workflow id, attempts, executor, times,
          ``rerun``), so that running it replays them and runs ``from_position`` onward;
        * every event of the source whose value was written at a position below
          ``from_position`` is copied (key, value, position, ``updated_at``); a key whose
          latest value was written at or after it is not (its earlier values are not kept);
        * the source's labels are copied (:meth:`get_labels` of both is the same);
        * its workflow task is created, due at once (unclaimed, with the source's name, queue
          and priority).

        Nothing else is copied: not messages (sent or received), timers, streams, tasks, nor
        child workflows (a copied step that started a child replays the child's recorded
        outcome and names the source's child). The source is not changed, whatever its status
        (it may be running).

        ``from_position`` is valid from 0 (nothing copied: the workflow runs again from its
        start) to one past the source's highest recorded position (everything copied).

        :raises WorkflowNotFoundError: no workflow ``source_id``.
        :raises WorkflowAlreadyExistsError: a workflow ``new_id`` exists (nothing is written).
        :raises InvalidArgumentError: ``from_position`` is negative or past one after the
            highest recorded position, or a step below it is pending (a child workflow or a
            fanned-out call still running; its outcome is not recorded yet), or a naive
            ``deadline``; the message names the position (nothing is written).
        """

    # -- debouncing (enqueue(..., debounce=, debounce_key=)) ----------------------------------

    @abstractmethod
    async def debounce_workflow(
        self, snapshot: WorkflowSnapshot, task: TaskSpec, key: str, delay: timedelta
    ) -> tuple[WorkflowInfo, bool]:
        """Join the burst of ``(snapshot.name, key)`` or start a new one, in one transaction;
        returns ``(stored header, created)``.

        The burst's execution is the one the key points at. While it is still pending, has
        never started (``attempts`` and ``interruptions`` 0) and its workflow task holds no
        claim, the call joins it: the execution's ``input`` and ``deadline`` become
        ``snapshot``'s (its version grows by one), its task is due ``delay`` from now by
        :meth:`now`'s clock, and its header is returned with ``created`` False; nothing else of
        ``snapshot`` or ``task`` is used. Otherwise (no burst yet, or its execution was
        claimed, started, finished, cancelled or deleted) a new burst starts: ``snapshot`` is
        created with ``task`` due ``delay`` from now (``task.run_after`` and ``task.delay``
        are ignored) as :meth:`create_workflow` creates it, and the key points at it;
        ``created`` is True. If ``snapshot.id`` exists already, nothing is created, the key
        points at that execution and it is returned (``created`` False).

        The join is fenced in the same statement by the task being unclaimed: a claim that
        wins the race runs the input it claimed, which never changes afterwards, and this call
        then starts a new burst; so an execution runs the input of the last call that returned
        its id. Of concurrent calls with one key, in one process or several, exactly one
        creates each burst's execution. ``snapshot.idempotency_key`` must be None.

        :raises InvalidArgumentError: ``delay`` not positive, an empty ``key``, an idempotency
            key, or what :meth:`create_workflow` refuses (nothing is written).
        :raises SerializationError: the input cannot be serialized (nothing is written).
        """

    # -- the change feed (Client.events) ------------------------------------------------------

    async def list_changes(self, *, after: int = 0, limit: int = 100) -> list[ChangeEvent]:
        """The state changes at positions greater than ``after``, in the feed's one global
        order, at most ``limit`` of them, or more when the limit falls inside a group of
        events at one position (a group is never split, so reading on from the last
        position misses nothing).

        The order is fixed once an event is returned: an event written by a transaction that
        commits later is never placed before an event already returned (a reader passing the
        last position it read as ``after`` misses nothing). An event may appear only once the
        writes before it have ended (PostgreSQL: every older transaction of the cluster).
        Events are derived from rows the changes write anyway (see :class:`ChangeEvent`).
        Optional: the default raises :class:`NotSupportedError`.

        :raises InvalidArgumentError: ``after`` negative or ``limit`` below 1.
        :raises NotSupportedError: the backend keeps no change feed.
        """
        raise NotSupportedError(
            f"{type(self).__name__} keeps no change feed (client.events needs list_changes)"
        )


def check_changes_args(after: int, limit: int) -> None:
    """Refuse what :meth:`PersistentBackend.list_changes` refuses, as every backend must."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidArgumentError(f"after must be an int of at least 0, got {after!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= INT32_MAX:
        raise InvalidArgumentError(f"limit must be an int from 1 to {INT32_MAX}, got {limit!r}")


def step_change_kind(status: str, name: str) -> ChangeKind:
    """The change a step's row stands for in the change feed, from its status and name."""
    if status != StepStatus.PENDING.value:
        return ChangeKind.STEP_RECORDED
    if name == SLEEP_STEP:
        return ChangeKind.SLEEPING
    if name == RECV_STEP:
        return ChangeKind.WAITING
    return ChangeKind.STEP_PENDING


def check_aware(*stamps: datetime | None) -> None:
    """Refuse naive timestamps (they cannot be compared with the stored ones), as every backend
    must.

    :raises InvalidArgumentError: a stamp has no UTC offset.
    """
    for stamp in stamps:
        if stamp is not None and stamp.utcoffset() is None:
            raise InvalidArgumentError(
                f"naive datetime {stamp!r}: durable stores timezone-aware times"
            )


def deadline_error(instance_id: str, deadline: datetime | None) -> ErrorInfo:
    """The error recorded on a workflow cancelled because it passed its deadline
    (:meth:`PersistentBackend.cancel_expired_workflows`; the runtime records the same)."""
    shown = deadline.isoformat() if deadline is not None else "?"
    return ErrorInfo.from_exception(
        DeadlineExceededError(
            f"workflow {instance_id!r} did not finish by its deadline {shown}: cancelled"
        )
    )


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


#: The limit fields of a :class:`~durable.models.QueueInfo` (``put_queue``'s ``only`` names
#: some of them).
QUEUE_LIMITS = (
    "concurrency",
    "worker_concurrency",
    "rate_limit",
    "rate_period",
    "partition_concurrency",
)


def queue_limits_to_set(only: Collection[str] | None) -> tuple[str, ...]:
    """The limit fields :meth:`PersistentBackend.put_queue` sets on a stored queue: all of
    them, or those ``only`` names (the rate's two go together), as every backend must.

    :raises InvalidArgumentError: a name that is not a limit field.
    """
    if only is None:
        return QUEUE_LIMITS
    chosen = set(only)
    unknown = chosen - set(QUEUE_LIMITS)
    if unknown or isinstance(only, str):
        raise InvalidArgumentError(
            f"only must name limit fields of a queue ({', '.join(QUEUE_LIMITS)}), got {only!r}"
        )
    if chosen & {"rate_limit", "rate_period"}:
        chosen |= {"rate_limit", "rate_period"}
    return tuple(name for name in QUEUE_LIMITS if name in chosen)


#: The longest rate-limit window, in seconds (about 31 years; bounded for the databases'
#: interval arithmetic).
MAX_RATE_PERIOD = 1e9


def clash_error(
    index: int, snapshot: WorkflowSnapshot, stored_id: str, stored_name: str
) -> InvalidArgumentError:
    """The error of a batch's row ``index`` whose id or idempotency key belongs to a stored
    workflow of another name, naming the one of the two that clashed (as every backend's
    :meth:`PersistentBackend.create_workflows` says it)."""
    if stored_id == snapshot.id:
        what = f"workflow id {snapshot.id!r}"
    else:
        what = f"idempotency key {snapshot.idempotency_key!r}"
    return InvalidArgumentError(
        f"inputs[{index}]: {what} belongs to workflow {stored_name!r} (id {stored_id!r}), not "
        f"{snapshot.name!r}"
    )


def check_queue_limits(queue: QueueInfo) -> None:
    """Refuse limits a queue cannot have, as every backend's :meth:`~PersistentBackend.put_queue`
    must.

    :raises InvalidArgumentError: a limit that is not an int of at least 1 (a period not a
        positive number below :data:`MAX_RATE_PERIOD`), or ``rate_limit`` without
        ``rate_period`` (or the reverse).
    """
    for what in ("concurrency", "worker_concurrency", "rate_limit", "partition_concurrency"):
        value = getattr(queue, what)
        if value is not None and (type(value) is not int or value < 1):
            raise InvalidArgumentError(
                f"queue {queue.name!r}: {what} must be an int of at least 1 (or None), "
                f"got {value!r}"
            )
    period = queue.rate_period
    if (queue.rate_limit is None) != (period is None):
        raise InvalidArgumentError(
            f"queue {queue.name!r}: rate_limit and rate_period go together, got "
            f"rate_limit={queue.rate_limit!r}, rate_period={period!r}"
        )
    if period is not None and (
        isinstance(period, bool)
        or not isinstance(period, int | float)
        or not 0 < period < MAX_RATE_PERIOD
    ):
        raise InvalidArgumentError(
            f"queue {queue.name!r}: rate_period must be a positive number of seconds below "
            f"{MAX_RATE_PERIOD:.0f} (about 31 years), got {period!r}"
        )


def fork_refusal(
    source_id: str, from_position: int, steps: Sequence[tuple[int, bool]]
) -> InvalidArgumentError | None:
    """Why :meth:`PersistentBackend.fork_workflow` refuses ``from_position`` for a source whose
    recorded steps are ``steps`` (``(position, pending)`` pairs), or None: the same message on
    every backend."""
    highest = max((p for p, _ in steps), default=-1)
    if from_position < 0 or from_position > highest + 1:
        recorded = (
            f"its recorded steps are at positions 0 to {highest}"
            if highest >= 0
            else "it has no recorded step"
        )
        return InvalidArgumentError(
            f"from_step={from_position} is out of range for workflow {source_id!r}: {recorded}, "
            f"so from_step must be between 0 and {highest + 1}"
        )
    pending = sorted(p for p, is_pending in steps if is_pending and p < from_position)
    if pending:
        return InvalidArgumentError(
            f"from_step={from_position}: step {pending[0]} of workflow {source_id!r} is still "
            f"pending (a child workflow or a fanned-out call that has not finished, a sleep not "
            f"yet over, or a receive still waiting), so it cannot be "
            f"copied; fork from step {pending[0]} or earlier, or wait for it to finish"
        )
    return None


def check_debounce(snapshot: WorkflowSnapshot, key: str, delay: timedelta) -> None:
    """Refuse what :meth:`PersistentBackend.debounce_workflow` refuses before writing: an
    empty or non-str key, a delay that is not a positive ``timedelta``, an idempotency key."""
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError(f"debounce_key must be a non-empty str, got {key!r}")
    if not isinstance(delay, timedelta) or delay <= timedelta(0):
        raise InvalidArgumentError(f"debounce must be a positive timedelta, got {delay!r}")
    if snapshot.idempotency_key is not None:
        raise InvalidArgumentError("debounce_key and idempotency_key cannot be combined")


@dataclasses.dataclass(frozen=True, slots=True)
class IdleView:
    """What a backend's store says, at one moment ``now``, about what could run: what a test's
    time-skipping clock (:class:`~durable.testing.clock.TimeSkippingClock`) reads to decide
    whether everything is idle and how far to skip. A backend that supports the clock returns
    it from ``idle_view(now, horizon)``.

    :param leases: the ``(instance_id, task_id)`` of every task whose claim is live at ``now``.
    :param due: whether a task is due at ``now`` that nobody holds a live claim on (a worker
        could claim it).
    :param next_due: the earliest moment after ``now`` that anything becomes due: the due
        time of an unclaimed task before ``horizon`` (a sleep's wake-up, a ``recv`` timeout, a
        timer, a retry's backoff), or the deadline of an unfinished workflow; None: nothing.
    """

    leases: list[tuple[str, str]]
    due: bool
    next_due: datetime | None
