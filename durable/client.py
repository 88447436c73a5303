"""``durable.Client``: enqueue, wait for, inspect and control workflow executions, without
running any.

A client is what a producer (a web view that starts work) or an operator (a script, the
``durable workflows`` commands) needs: it records executions for workers to run, reads their
outcomes and controls them, and never executes workflow code. It has no registry, no executor
identity, no heartbeat, no recovery and no worker; it starts its backend (which migrates it, as
the backend does) and closes it, nothing else. A producer never needs a
:class:`~durable.Runtime`, nor the code of the workflows it starts: it enqueues them by name::

    async with durable.Client("postgresql://app@db/app") as client:
        workflow_id = await client.enqueue("billing.charge.v1", order_id=42)
        receipt = await client.result(workflow_id, timeout=60)

From code that is not async (Flask, Django, a script), the same operations end in ``_sync``::

    with durable.Client("sqlite:///app.db") as client:
        workflow_id = client.enqueue_sync("billing.charge.v1", order_id=42)
        receipt = client.result_sync(workflow_id, timeout=60)

:class:`~durable.Runtime` owns a client over its own backend and exposes the same operations,
so code written against a runtime keeps working.

This module imports neither :mod:`durable.runtime` nor :mod:`durable.worker`.

It is over ~500 lines for one reason: it is one class, whose every operation has an async form
and a ``_sync`` twin side by side; the checks and records behind them live in
:mod:`durable.executions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from durable import telemetry
from durable.backends.base import PersistentBackend
from durable.connect import connect
from durable.errors import (
    BackendUnavailableError,
    DurableError,
    InvalidArgumentError,
    WorkflowNotFoundError,
)
from durable.executions import DEFAULT_MAX_ATTEMPTS as DEFAULT_MAX_ATTEMPTS
from durable.executions import (
    CheckedEnqueue,
    create_execution,
    create_executions,
    execution_rows,
)
from durable.executions import Enqueue as Enqueue
from durable.executions import EnqueueOptions as EnqueueOptions
from durable.executions import not_a_workflow as not_a_workflow
from durable.executions import outcome as outcome
from durable.executions import outcome_error as outcome_error
from durable.executions import plan_enqueue_many as plan_enqueue_many
from durable.models import (
    ChangeEvent,
    ExecutorInfo,
    Page,
    QueueDepth,
    RegisteredWorkflow,
    StepRecord,
    WorkflowInfo,
    WorkflowStatus,
)
from durable.polling import UNANSWERED_LOOK, pauses, within
from durable.portal import SyncStartable
from durable.queues import Queue, QueueOperations, queue_name
from durable.registry import Registry
from durable.retention import RetentionOperations
from durable.scheduling import ScheduleOperations
from durable.validation import (
    check_bool,
    check_id,
    check_int,
    check_labels,
    check_name,
    check_optional_id,
    check_positive_float,
    check_positive_int,
    check_timeout,
)
from durable.versioning import check_version
from durable.workflow import Workflow
from durable.workflow_io import WorkflowIO

log = logging.getLogger(__name__)
T = TypeVar("T")


class Client(ScheduleOperations, RetentionOperations, QueueOperations, WorkflowIO, SyncStartable):
    """Enqueue, wait for, inspect and control workflow executions stored in a database, without
    running any (see the module docstring).

    :param target: a database URL (given to :func:`durable.connect` with ``options``) or a
        :class:`~durable.backends.PersistentBackend`. The client starts the backend on entry
        (which creates or upgrades durable's tables, unless the backend was made with
        ``auto_migrate=False``) and closes it on exit; a backend belongs to one client or
        runtime.
    :param poll_interval: the longest pause between two looks at an execution :meth:`result`
        waits for (the first looks come sooner: see :meth:`result`).
    :param app_version: the code version the executions it starts record when their workflow
        has no ``version`` of its own, as :class:`~durable.Runtime`'s ``app_version`` (default:
        a hash of the workflow's source, for a workflow given as a function; nothing for one
        given by name). Give the workers' own when they serve only their versions.
    :param options: for a URL, what :func:`durable.connect` takes (``serializer``,
        ``auto_migrate``, ...).

    Use it as ``async with durable.Client(url) as client:`` from async code, or
    ``with durable.Client(url) as client:`` from sync code, where every operation has a
    blocking twin whose name ends in ``_sync`` (:meth:`enqueue_sync`, :meth:`result_sync`, ...),
    but :meth:`follow_events` (an async iterator: :meth:`events_sync` pages the same feed).
    Sync use is reference-counted and thread-safe, as for a runtime (:meth:`start_sync`).

    :raises InvalidArgumentError: ``target`` is neither a str nor a backend, options are given
        with a backend, ``poll_interval`` is not a finite positive number, or ``app_version``
        not a non-empty string of at most 64 characters.
    :raises ConfigurationError: a malformed URL, or options :func:`durable.connect` refuses.
    """

    _noun = "client"
    _portal_name = "durable-client"
    _sync_calls = "its _sync methods"

    def __init__(
        self,
        target: str | PersistentBackend,
        *,
        poll_interval: float = 0.5,
        app_version: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        check_positive_float(poll_interval, "poll_interval")
        version = check_version(app_version, "app_version")
        if isinstance(target, PersistentBackend):
            if options:
                raise InvalidArgumentError(
                    f"options {sorted(options)} are for a URL: configure the backend itself"
                )
            backend = target
        elif isinstance(target, str):
            backend = connect(target, **options)
        else:
            raise InvalidArgumentError(
                f"Client needs a database URL or a PersistentBackend (e.g. durable.connect(url)), "
                f"got {type(target).__qualname__}"
            )
        self.backend = backend
        self.poll_interval = poll_interval
        self.sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep
        self.poll_sleep: Callable[[float], Coroutine[Any, Any, None]] | None = None
        """How a wait for an outcome pauses between two looks (:meth:`result`, and a runtime's
        ``run`` waiting for an execution); None: :attr:`sleep`. It may return early (the caller
        looks again): the time-skipping clock of :mod:`durable.testing.clock` skips time there."""
        # set (and replaced) when an execution this process ran finishes: wakes the waits of
        # result() at once instead of at their next look (see note_finished)
        self._finished: tuple[asyncio.Event, asyncio.AbstractEventLoop] | None = None
        # set for a runtime's client: the runtime starts and closes the backend and runs the
        # _sync methods on its own loop
        self._owner: SyncStartable | None = None
        self.app_version: str | None = version
        """The code version executions started here record when their workflow has no
        ``version`` of its own (see :mod:`durable.versioning`); a runtime sets its own."""

    @classmethod
    def _for_runtime(
        cls,
        backend: PersistentBackend,
        poll_interval: float,
        owner: SyncStartable,
    ) -> Client:
        """The client a runtime (``owner``) owns: the runtime starts and closes the backend,
        checks that it is started where it needs to, and runs the ``_sync`` methods (its
        :meth:`~SyncStartable.blocking`)."""
        client = cls(backend, poll_interval=poll_interval)
        client._owner = owner
        return client

    def __repr__(self) -> str:
        return f"Client({self.backend!r})"

    def _policies(self) -> Registry | None:
        """Where the workflows' timeouts and retry policies are: the registry of the runtime
        that owns this client; None for a client of its own (it has no code)."""
        registry = getattr(self._owner, "registry", None)
        return registry if isinstance(registry, Registry) else None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend (connect, and migrate unless it was made with
        ``auto_migrate=False``). Starts nothing else: no executor, no heartbeat, no worker.

        :raises BackendUnavailableError: the database cannot be reached.
        :raises SchemaVersionError: the schema is not at this durable's revision and the backend
            does not migrate it.
        """
        if self._started:
            return
        try:
            await self.backend.start()
            await telemetry.prepare()  # not later, in the middle of an operation
        except BaseException:
            with contextlib.suppress(Exception):  # the start's error is the one to see
                await self.backend.close()
            raise
        self._on_this_loop()
        self._started = True

    async def close(self) -> None:
        """Interrupt the waits still running (:meth:`result`, :meth:`get_event`,
        :meth:`read_stream`, in any task, and the ``_sync`` calls of other threads: they raise
        :class:`DurableError`), then close the backend."""
        if not self._started:
            return
        await self._interrupt()
        self._started = False
        await self.backend.close()

    def blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one of this client's coroutines from sync code (see
        :meth:`SyncStartable.blocking <durable.portal.SyncStartable.blocking>`); a runtime's
        client runs them on the runtime's loop."""
        if self._owner is not None:
            return self._owner.blocking(coro)
        return super().blocking(coro)

    async def _until_closed(
        self,
        wait: Coroutine[Any, Any, T],
        timeout: float | None = None,
        late: Callable[[], BaseException] | None = None,
    ) -> T:
        """``await wait`` as a wait that closing the client, or the runtime that owns it,
        interrupts (:meth:`~SyncStartable._interruptible`); with a ``timeout`` (and its
        ``late``), for at most that long, as :func:`~durable.polling.within`.

        :raises DurableError: the client (its runtime) was closed while it waited, or is closed.
        """
        holder = self._owner if self._owner is not None else self
        task = holder._interruptible(wait)
        try:
            if timeout is None or late is None:
                return await task
            return await within(task, timeout, late)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise holder._closed_error() from None
            raise

    def started_elsewhere(self) -> bool:
        """See :meth:`SyncStartable.started_elsewhere`; a runtime's client answers for its
        runtime."""
        if self._owner is not None:
            return self._owner.started_elsewhere()
        return super().started_elsewhere()

    def _require_started(self) -> None:
        if self._owner is not None:
            return
        if not self._started:
            raise DurableError(
                "the client is not started: use `async with client:` (or `with client:` from "
                "sync code)"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if running is not self._loop:  # its connections belong to that loop
            raise DurableError(
                "the client was started on another event loop"
                + (" (closed since)" if self._loop is not None and self._loop.is_closed() else "")
                + ": use a client on the loop that started it, or close it and start one here "
                "(`async with client:` on this loop)"
            )

    # -- enqueueing ---------------------------------------------------------------------------

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
        queue: str | Queue | None = None,
        timeout: float | timedelta | None = None,
        deadline: datetime | None = None,
        labels: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        debounce: float | timedelta | None = None,
        debounce_key: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Record that a workflow must run, and return its id at once; any worker that serves
        its name runs it when it is due, retrying it until it succeeds, fails for good, or runs
        out of attempts.

        :param fn: a workflow name (its code need not be importable here), or a decorated
            workflow (its name, queue and retry policy are used; it is not run here). A name is
            not checked against the workflows workers have registered: an execution of a name no
            worker serves waits until one does.
        :param workflow_id: the execution's id (default: a new random one). An id that exists
            already creates nothing: its id is returned, whatever the arguments (they are not
            compared: the first enqueue's arguments are the ones that run).
        :param idempotency_key: a duplicate enqueue with the same key creates nothing and
            returns the existing execution's id, whatever the arguments. A key belongs to one
            workflow: reusing it for another workflow name raises :class:`InvalidArgumentError`.
        :param priority: lower runs first; FIFO within a priority. A 32-bit signed int.
        :param run_after: not before this (timezone-aware) time.
        :param delay: or not before this many seconds (or this timedelta) from now, by the
            backend's clock (the database's on PostgreSQL).
        :param max_attempts: failed attempts before dead-lettering, at least 1 (default: the
            workflow's policy; 3 for a name).
        :param queue: the queue (default: the workflow's, else ``"default"``).
        :param timeout: cancel the execution if it has not finished this long (a
            ``timedelta`` or seconds) after it is recorded, on the store's clock; replaces the
            workflow's own ``timeout`` (see :func:`durable.workflow`).
        :param deadline: or cancel it if it has not finished by this timezone-aware time; with
            a timeout too (the start's or the workflow's), the earlier of the two.
        :param labels: labels to find the execution by (``{"customer": "c-42"}``;
            ``list_workflows(labels=...)``): keys of letters, digits, ``_ . - /`` (at most 64),
            str values (at most 255); a child workflow (or an enqueue inside a workflow)
            inherits its parent's labels, its own winning.
        :param partition_key: the execution's partition within a queue that has a
            ``partition_concurrency`` (see :class:`durable.Queue`): at most that many of one
            partition's executions run at once, the earliest enqueued first.
        :param debounce: with ``debounce_key``, debounce the enqueue: the first call of a burst
            records an execution due ``debounce`` (a ``timedelta`` or seconds) from now; each
            later call with the same workflow and key, while that execution has not started,
            replaces its arguments with its own and pushes its start back to ``debounce`` from
            now, and returns the same id. Once it has started (claimed), the next call starts a
            new burst. One execution per burst, however many callers race, in however many
            processes. Not with ``workflow_id``, ``idempotency_key``, ``run_after`` or
            ``delay``.
        :param debounce_key: which calls form a burst (per workflow name), e.g. a customer id.

        ``args`` and ``kwargs`` are the workflow's arguments; they must be serializable by the
        backend's serializer (JSON by default). Ids, keys, names and queues are non-empty str of
        at most 255 characters, valid Unicode, without NUL.

        :raises SerializationError: the arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: an argument of the wrong type or out of range, ``fn``
            neither a name nor a workflow, or the id or key belongs to another workflow
            (nothing is written).
        """
        self._require_started()
        checked = CheckedEnqueue.check(
            fn,
            workflow_id=workflow_id,
            idempotency_key=idempotency_key,
            priority=priority,
            run_after=run_after,
            delay=delay,
            max_attempts=max_attempts,
            queue=queue_name(queue),
            timeout=timeout,
            deadline=deadline,
            labels=labels,
            partition_key=partition_key,
            debounce=debounce,
            debounce_key=debounce_key,
        )
        if not isinstance(fn, str | Workflow):
            raise not_a_workflow(fn)
        options = checked.options(fn)
        info = await self._create(
            fn, workflow_id or str(uuid.uuid4()), args, kwargs, options=options
        )
        return info.id

    def enqueue_sync(
        self,
        fn: Workflow[Any, Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        run_after: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        queue: str | Queue | None = None,
        timeout: float | timedelta | None = None,
        deadline: datetime | None = None,
        labels: Mapping[str, str] | None = None,
        partition_key: str | None = None,
        debounce: float | timedelta | None = None,
        debounce_key: str | None = None,
        **kwargs: Any,
    ) -> str:
        """:meth:`enqueue` for code that is not async (see :meth:`blocking`)."""
        return self.blocking(
            self.enqueue(
                fn,
                *args,
                workflow_id=workflow_id,
                idempotency_key=idempotency_key,
                priority=priority,
                run_after=run_after,
                delay=delay,
                max_attempts=max_attempts,
                queue=queue,
                timeout=timeout,
                deadline=deadline,
                labels=labels,
                partition_key=partition_key,
                debounce=debounce,
                debounce_key=debounce_key,
                **kwargs,
            )
        )

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
        """Record an execution of ``wf`` and its task (the arguments and options are checked);
        an existing id or idempotency key records nothing and returns what exists.

        :raises SerializationError: the arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: the id or idempotency key belongs to another workflow.
        """
        return await create_execution(
            self.backend,
            wf,
            instance_id,
            args,
            kwargs,
            parent_id=parent_id,
            options=options,
            app_version=self.app_version,
        )

    async def enqueue_many(
        self,
        fn: Workflow[Any, Any] | str | None,
        inputs: Iterable[Enqueue | tuple[Any, ...] | list[Any]],
        *,
        priority: int = 0,
        run_after: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        queue: str | Queue | None = None,
        timeout: float | timedelta | None = None,
        deadline: datetime | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Record many executions at once, in one transaction (a few statements, however many
        rows), and return their ids in the order of ``inputs``::

            ids = await client.enqueue_many(charge, [(order,) for order in orders])
            ids = await client.enqueue_many(
                charge, [durable.Enqueue(args=(o,), idempotency_key=f"charge-{o}") for o in orders]
            )
            ids = await client.enqueue_many(
                None, [durable.Enqueue(fn=charge, args=(1,)), durable.Enqueue(fn="mail.v1")]
            )

        :param fn: the workflow of every row that does not name its own (a name or a decorated
            workflow, as for :meth:`enqueue`), or None when every row names its own.
        :param inputs: the rows: a tuple or list is the positional arguments of ``fn``; an
            :class:`Enqueue` gives arguments, keyword arguments and, optionally, its own
            workflow, ``workflow_id``, ``idempotency_key`` and options.
        :param priority: ``run_after``, ``delay``, ``max_attempts``, ``queue``, ``timeout``,
            ``deadline``: as for :meth:`enqueue`, for every row that does not give its own (a
            row that gives ``run_after`` or ``delay`` takes neither from the batch).
        :param labels: every row's labels, as for :meth:`enqueue`; a row's own
            (``Enqueue(labels=...)``) are merged over them.

        Each row behaves as one :meth:`enqueue`: a row whose id or idempotency key exists
        creates nothing and gets the existing execution's id; two rows of the batch with the
        same id or key are one execution (the first row's arguments run, both get its id). The
        batch is all or nothing: every row is checked before anything is written, and a row
        that is refused refuses the whole batch, naming the row (``inputs[3]: ...``). An empty
        batch writes nothing and returns ``[]``.

        :raises SerializationError: a row's arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: a row or an option of the wrong type or out of range, a
            row without a workflow, or an id or key that belongs to another workflow, in the
            database or in the batch (nothing is written).
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
            timeout=timeout,
            deadline=deadline,
            labels=labels,
            queue_name=queue_name,
        )
        rows = execution_rows(planned, [row.fn for row in planned])
        infos = await create_executions(self.backend, app_version=self.app_version, rows=rows)
        return [info.id for info in infos]

    def enqueue_many_sync(
        self,
        fn: Workflow[Any, Any] | str | None,
        inputs: Iterable[Enqueue | tuple[Any, ...] | list[Any]],
        *,
        priority: int = 0,
        run_after: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        queue: str | Queue | None = None,
        timeout: float | timedelta | None = None,
        deadline: datetime | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> list[str]:
        """:meth:`enqueue_many` for code that is not async (see :meth:`blocking`)."""
        return self.blocking(
            self.enqueue_many(
                fn,
                inputs,
                priority=priority,
                run_after=run_after,
                delay=delay,
                max_attempts=max_attempts,
                queue=queue,
                timeout=timeout,
                deadline=deadline,
                labels=labels,
            )
        )

    # -- outcomes -----------------------------------------------------------------------------

    async def result(self, workflow_id: str, *, timeout: float | timedelta | None = None) -> Any:
        """Wait until the execution finishes (wherever it runs) and return its result.

        It is looked at again 10 ms after the first look, then after pauses that double, up
        to ``poll_interval`` seconds apart (:mod:`durable.polling`): a short job that a worker
        in another process runs is seen done within about as long again as it took, a long one
        costs a look every ``poll_interval``. An execution that this client's runtime runs
        wakes the wait as soon as it finishes.

        A database that cannot be reached meanwhile (a restart) is waited out: the wait looks
        again as above until it answers, or until ``timeout``. Closing the client (or its
        runtime) ends the wait: it raises :class:`DurableError` and looks no more.

        :raises WorkflowNotFoundError: no such workflow.
        :raises DurableError: the client (or its runtime) was closed while it waited.
        :raises TimeoutError: it did not finish within ``timeout`` (seconds, or a ``timedelta``;
            default: no limit).
        :raises BackendUnavailableError: ``timeout`` passed while the database could not be
            reached (whether the execution finished is not known).
        :raises InvalidArgumentError: ``timeout`` is negative or not finite, or the id is not one.
        :raises WorkflowCancelledError: the execution was cancelled.
        :raises WorkflowDeadLetteredError: it ran out of attempts.
        :raises Exception: the workflow's own exception when it failed (rebuilt from the record;
            :class:`WorkflowFailedError` when it cannot be rebuilt).
        """
        self._require_started()
        check_id(workflow_id, "workflow_id")
        timeout = check_timeout(timeout)
        unanswered: list[BackendUnavailableError] = []  # the last look's, while it fails
        looking: list[float] = []  # when the look in flight began

        async def wait() -> Any:
            looks = pauses(self.poll_interval)
            while True:
                woken = self._wake_up()  # before the look: a finish after it wakes the pause
                looking[:] = [time.monotonic()]
                try:
                    info = await self.backend.get_workflow(workflow_id)
                except BackendUnavailableError as exc:
                    unanswered[:] = [exc]
                    await self.pause(next(looks), woken)
                    continue
                finally:
                    looking.clear()
                unanswered.clear()
                if info.status.is_terminal:
                    return outcome(info)
                await self.pause(next(looks), woken)

        def late() -> BaseException:
            if unanswered:
                return unanswered[0]
            if looking and time.monotonic() - looking[0] >= UNANSWERED_LOOK:
                return BackendUnavailableError(
                    f"the database did not answer while waiting for workflow {workflow_id!r} "
                    f"({timeout:g} s): whether it finished is not known"
                )
            return TimeoutError(f"workflow {workflow_id!r} did not finish within {timeout:g} s")

        return await self._until_closed(wait(), timeout, late)

    async def pause(self, seconds: float, woken: asyncio.Event | None = None) -> None:
        """A pause of a wait for an outcome between two looks: :attr:`poll_sleep` where set,
        else up to ``seconds``, cut short when an execution that a runtime of this client ran
        finishes (:meth:`note_finished`): a workflow run by a worker in this process is seen
        done at once, not at the next look. ``woken``: the event :meth:`_wake_up` gave before
        the look that found nothing (so a finish in between is not missed)."""
        if self.poll_sleep is not None:
            await self.poll_sleep(seconds)
        elif self.sleep is not asyncio.sleep:  # a test's own pace
            await self.sleep(seconds)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((woken or self._wake_up()).wait(), seconds)

    def _wake_up(self) -> asyncio.Event:
        """The event the next :meth:`note_finished` sets, on the running loop."""
        loop = asyncio.get_running_loop()
        if self._finished is None or self._finished[1] is not loop:
            self._finished = (asyncio.Event(), loop)
        return self._finished[0]

    def note_finished(self) -> None:
        """An execution run in this process has finished (its outcome committed), or one that
        a runtime of this client drives (a child run by its parent, ``runtime.run``) is due
        again: the waits of :meth:`result`, and the drives, look again now. Called by the
        runtime that ran or claimed it (from any thread)."""
        finished, self._finished = self._finished, None
        if finished is None:
            return
        event, loop = finished
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(event.set)

    def result_sync(self, workflow_id: str, *, timeout: float | timedelta | None = None) -> Any:
        """:meth:`result` for code that is not async (see :meth:`blocking`)."""
        return self.blocking(self.result(workflow_id, timeout=timeout))

    # -- inspection and control ---------------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        """The execution's status, input, output or error, attempts (and interrupted ones)
        and timestamps.

        :raises WorkflowNotFoundError: no such workflow.
        """
        self._require_started()
        return await self.backend.get_workflow(check_id(workflow_id, "workflow_id"))

    def get_workflow_sync(self, workflow_id: str) -> WorkflowInfo:
        """:meth:`get_workflow` for code that is not async."""
        return self.blocking(self.get_workflow(workflow_id))

    async def list_workflows(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Page[WorkflowInfo]:
        """Executions, newest first, filtered by status (one or several), name, parent or
        labels (those carrying every ``key: value`` given, by an index); a page of at most
        ``limit``, whose ``next_cursor`` (given as ``cursor``) reads the next."""
        self._require_started()
        if name is not None:
            check_name(name, "name")
        check_optional_id(parent_id, "parent_id")
        check_positive_int(limit, "limit")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidArgumentError(f"cursor must be a str (a next_cursor), got {cursor!r}")
        if labels:
            return await self.backend.list_snapshots(
                status=status,
                name=name,
                parent_id=parent_id,
                limit=limit,
                cursor=cursor,
                labels=check_labels(labels, "labels filter"),
            )
        return await self.backend.list_snapshots(
            status=status, name=name, parent_id=parent_id, limit=limit, cursor=cursor
        )

    async def count_workflows(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[WorkflowStatus, int]:
        """How many executions :meth:`list_workflows` would list with the same filters, by
        status (every status a key), exactly: one aggregate query, however many there are."""
        self._require_started()
        if name is not None:
            check_name(name, "name")
        check_optional_id(parent_id, "parent_id")
        return await self.backend.count_workflows(
            status=status,
            name=name,
            parent_id=parent_id,
            labels=check_labels(labels, "labels filter"),
        )

    def count_workflows_sync(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[WorkflowStatus, int]:
        """:meth:`count_workflows` for code that is not async."""
        return self.blocking(
            self.count_workflows(status=status, name=name, parent_id=parent_id, labels=labels)
        )

    async def queue_depths(self) -> list[QueueDepth]:
        """The queues that hold pending or running executions, by name: how many of each
        (exactly, one aggregate query) and when the oldest pending one was created."""
        self._require_started()
        return await self.backend.queue_depths()

    def queue_depths_sync(self) -> list[QueueDepth]:
        """:meth:`queue_depths` for code that is not async."""
        return self.blocking(self.queue_depths())

    async def get_labels(self, workflow_id: str) -> dict[str, str]:
        """The execution's labels: those it was started with, over those it inherited from its
        parent (``{}`` when it has none).

        :raises WorkflowNotFoundError: no such workflow.
        """
        self._require_started()
        check_id(workflow_id, "workflow_id")
        found = await self.backend.get_labels([workflow_id])
        if workflow_id not in found:
            raise WorkflowNotFoundError(workflow_id)
        return found[workflow_id]

    def get_labels_sync(self, workflow_id: str) -> dict[str, str]:
        """:meth:`get_labels` for code that is not async."""
        return self.blocking(self.get_labels(workflow_id))

    def list_workflows_sync(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Page[WorkflowInfo]:
        """:meth:`list_workflows` for code that is not async."""
        return self.blocking(
            self.list_workflows(
                status=status,
                name=name,
                parent_id=parent_id,
                limit=limit,
                cursor=cursor,
                labels=labels,
            )
        )

    async def list_steps(self, workflow_id: str) -> list[StepRecord]:
        """The execution's steps by position: name, status, output or error, attempts, timings,
        executor and child workflow id.

        :raises WorkflowNotFoundError: no such workflow.
        """
        self._require_started()
        return await self.backend.list_steps(check_id(workflow_id, "workflow_id"))

    def list_steps_sync(self, workflow_id: str) -> list[StepRecord]:
        """:meth:`list_steps` for code that is not async."""
        return self.blocking(self.list_steps(workflow_id))

    async def cancel(self, workflow_id: str) -> WorkflowInfo:
        """Cancel an unfinished execution: it stops at its next step boundary (its next write is
        refused) and is never picked up again. Its descendants (child workflows, executions it
        enqueued, and theirs) are cancelled with it, in the same transaction. Cancelling a
        finished one changes nothing (its unfinished descendants are still cancelled).

        :raises WorkflowNotFoundError: no such workflow.
        """
        self._require_started()
        info = await self.backend.cancel_workflow(check_id(workflow_id, "workflow_id"))
        self.note_finished()
        return info

    def cancel_sync(self, workflow_id: str) -> WorkflowInfo:
        """:meth:`cancel` for code that is not async."""
        return self.blocking(self.cancel(workflow_id))

    async def cancel_expired(self, *, limit: int = 100) -> list[WorkflowInfo]:
        """Cancel up to ``limit`` unfinished executions whose deadline (their ``timeout`` or
        ``deadline``) has passed, with their descendants, recording a
        :class:`~durable.errors.DeadlineExceededError`; return them. Workers do this by
        themselves every :attr:`Runtime.deadline_sweep_interval
        <durable.Runtime.deadline_sweep_interval>` seconds: call it where no worker runs (a
        cron job, a test).

        :raises InvalidArgumentError: ``limit`` is not a positive int.
        """
        self._require_started()
        return await self.backend.cancel_expired_workflows(limit=check_positive_int(limit, "limit"))

    def cancel_expired_sync(self, *, limit: int = 100) -> list[WorkflowInfo]:
        """:meth:`cancel_expired` for code that is not async."""
        return self.blocking(self.cancel_expired(limit=limit))

    async def retry(self, workflow_id: str) -> WorkflowInfo:
        """Run a failed, dead-lettered or cancelled execution again from its history (a
        *redrive*), with its attempt and interruption counts cleared: completed steps are not
        run again, the failed steps that ended its last attempt are (see
        :meth:`Runtime.retry <durable.Runtime.retry>`).

        :raises WorkflowNotFoundError: no such workflow.
        :raises InvalidArgumentError: it is not failed, dead-lettered or cancelled.
        """
        self._require_started()
        return await self.backend.requeue_workflow(check_id(workflow_id, "workflow_id"))

    def retry_sync(self, workflow_id: str) -> WorkflowInfo:
        """:meth:`retry` for code that is not async."""
        return self.blocking(self.retry(workflow_id))

    async def resume(self, workflow_id: str) -> WorkflowInfo:
        """Resume a cancelled, dead-lettered or failed execution where it stopped: the same
        operation as :meth:`retry` (a redrive), under the name operators look for. Its recorded
        steps are replayed, not run again (a step that completed before the cancellation
        returns its recorded output); the failed steps that ended its last attempt run again,
        then everything after them. Its id, input and history are kept; its attempt and
        interruption counts start again. To run it again from an earlier step instead (after
        fixing a bug in a step that completed), see :meth:`fork`.

        :raises WorkflowNotFoundError: no such workflow.
        :raises InvalidArgumentError: it is not failed, dead-lettered or cancelled.
        """
        return await self.retry(workflow_id)

    def resume_sync(self, workflow_id: str) -> WorkflowInfo:
        """:meth:`resume` for code that is not async."""
        return self.blocking(self.resume(workflow_id))

    async def fork(
        self, workflow_id: str, *, from_step: int, new_workflow_id: str | None = None
    ) -> str:
        """Start a new execution of ``workflow_id``'s workflow, with the same input, whose first
        ``from_step`` steps are copied from ``workflow_id``'s history; return its id. A worker
        runs it as any other: the copied steps replay their recorded outputs, and the steps
        from position ``from_step`` on run for real. Use it to run a workflow again after
        fixing a bug in a later step, with the earlier steps' work (a payment, an e-mail) not
        done twice. The original execution is not changed, whatever its status.

        **Step numbers** are the positions of :meth:`list_steps` (``durable workflows show``):
        every step, child workflow, sleep, message receive, event, ``enqueue`` inside the
        workflow takes the next position, from 0, in call order. ``from_step=0`` copies
        nothing (the workflow runs again from its start); one more than the last recorded
        position copies every step.

        What is copied, below ``from_step``: each step's recorded outcome (output, or the
        error it replays), so a child workflow started there is not started again (its
        recorded result is replayed and the step still names the original's child), a sleep
        that ended is not slept again, and a message received there is received again from
        the record; the events the workflow set there (:func:`durable.set_event`; an event
        whose latest value was set at ``from_step`` or later is absent until the fork sets it
        again); and, whatever ``from_step``, its labels, so that a search by label finds the
        fork beside the original (the children the fork starts inherit them). Not copied:
        messages waiting for the original (a message or timer received at ``from_step`` or
        later must be sent to the fork), streams, the original's children themselves, its id,
        idempotency key, deadline, attempts and parent.

        :param from_step: the position of the first step that runs again (an ``int`` >= 0).
        :param new_workflow_id: the fork's id (default: a new random one).
        :raises WorkflowNotFoundError: no execution ``workflow_id``.
        :raises WorkflowAlreadyExistsError: ``new_workflow_id`` exists.
        :raises InvalidArgumentError: ``from_step`` is not an int, is negative or past one
            after the last recorded step, or a step before it has not finished (a child
            workflow or a :func:`durable.map` call still running); nothing is written.
        """
        self._require_started()
        check_id(workflow_id, "workflow_id")
        check_int(from_step, "from_step", minimum=0)
        new_id = (
            str(uuid.uuid4())
            if new_workflow_id is None
            else check_id(new_workflow_id, "new_workflow_id")
        )
        info = await self.backend.fork_workflow(
            workflow_id,
            new_id,
            from_position=from_step,
            trace_context=telemetry.current_trace_context(),
        )
        log.info(
            "workflow %s forked from step %d as %s",
            workflow_id,
            from_step,
            info.id,
            extra={"action": "workflow.forked", "workflow_id": info.id, "step": from_step,
                   "source_id": workflow_id},
        )  # fmt: skip
        return info.id

    def fork_sync(
        self, workflow_id: str, *, from_step: int, new_workflow_id: str | None = None
    ) -> str:
        """:meth:`fork` for code that is not async."""
        return self.blocking(
            self.fork(workflow_id, from_step=from_step, new_workflow_id=new_workflow_id)
        )

    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        """Enable or disable a workflow name for every worker sharing this database, at once:
        from the moment this returns no worker claims a disabled name. Executions already
        claimed or running go on. Re-enabled work waits for the workers' next claim.

        :raises UnknownWorkflowError: no runtime ever registered the name.
        """
        self._require_started()
        check_name(name, "name")
        check_bool(enabled, "enabled")
        return await self.backend.set_workflow_enabled(name, enabled)

    def set_workflow_enabled_sync(self, name: str, enabled: bool) -> RegisteredWorkflow:
        """:meth:`set_workflow_enabled` for code that is not async."""
        return self.blocking(self.set_workflow_enabled(name, enabled))

    async def registered_workflows(self) -> list[RegisteredWorkflow]:
        """Every workflow name any runtime on this database registered, enabled or not."""
        self._require_started()
        return await self.backend.list_registered_workflows()

    def registered_workflows_sync(self) -> list[RegisteredWorkflow]:
        """:meth:`registered_workflows` for code that is not async."""
        return self.blocking(self.registered_workflows())

    async def list_executors(self, *, stale_after: float | None = None) -> list[ExecutorInfo]:
        """Runtimes known by their heartbeats; ``stale`` marks running ones silent for longer
        than ``stale_after`` seconds (default: each judged by its own heartbeat interval,
        :data:`~durable.models.STALE_AFTER_HEARTBEATS` of them).

        :raises InvalidArgumentError: ``stale_after`` is not positive.
        """
        self._require_started()
        limit = (
            None
            if stale_after is None
            else timedelta(seconds=check_positive_float(stale_after, "stale_after"))
        )
        return await self.backend.list_executors(stale_after=limit)

    def list_executors_sync(self, *, stale_after: float | None = None) -> list[ExecutorInfo]:
        """:meth:`list_executors` for code that is not async."""
        return self.blocking(self.list_executors(stale_after=stale_after))

    # -- the change feed -------------------------------------------------------------------

    async def events(self, *, after: int = 0, limit: int = 100) -> list[ChangeEvent]:
        """The state changes after position ``after``, in one global order: executions
        created, started, finished; steps recorded (or pending, sleeping, waiting for a
        message); messages sent. For projections and audit logs: keep the last event's
        ``position`` and pass it as ``after`` to read on; an event that commits later is never
        placed before it (see :class:`~durable.models.ChangeEvent` for what the feed keeps).

        At most ``limit`` events, or a few more when the limit falls inside a group of events
        at one position (a group is never split).

        :raises InvalidArgumentError: ``after`` negative, ``limit`` below 1.
        :raises NotSupportedError: the backend keeps no change feed (a custom backend without
            ``list_changes``).
        """
        self._require_started()
        return await self.backend.list_changes(after=after, limit=limit)

    def events_sync(self, *, after: int = 0, limit: int = 100) -> list[ChangeEvent]:
        """:meth:`events` for code that is not async."""
        return self.blocking(self.events(after=after, limit=limit))

    async def follow_events(
        self, *, after: int = 0, poll_interval: float = 0.5, batch: int = 100
    ) -> AsyncIterator[ChangeEvent]:
        """Every change after ``after``, as it appears, forever: :meth:`events` read again
        every ``poll_interval`` seconds once it has nothing new (the caller stops iterating).
        While the database cannot be reached it waits and reads again (logged as a warning
        once per outage): an outage delays events, it never skips one.

        :raises InvalidArgumentError: as :meth:`events`, or ``poll_interval`` not positive.
        """
        interval = check_positive_float(poll_interval, "poll_interval")
        unreachable = False
        while True:
            try:
                found = await self.events(after=after, limit=batch)
            except BackendUnavailableError as exc:
                if not unreachable:
                    log.warning(
                        "the change feed cannot be read, reading again every %ss: %s",
                        interval,
                        exc,
                        extra={"action": "retry"},
                    )
                unreachable = True
                await asyncio.sleep(interval)
                continue
            unreachable = False
            for event in found:
                yield event
                after = event.position
            if not found:
                await asyncio.sleep(interval)
