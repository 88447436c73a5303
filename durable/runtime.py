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
5. ``finish_execution`` (``finish_workflow`` without the stored header read back): output or
   error recorded, task removed, in one transaction.

:class:`Runtime` is composed of one class per concern, in :mod:`durable.engine`: leases and the
executor's identity (:mod:`~durable.engine.leases`), running an attempt and child workflows
(:mod:`~durable.engine.attempts`), workers, handed-out steps and recovery
(:mod:`~durable.engine.serving`), and the client's operations (:mod:`~durable.engine.operations`),
on a shared base (:mod:`~durable.engine.core`). This module holds the class itself: its
configuration, its start and close, and :meth:`Runtime.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

from durable import telemetry
from durable.backends.base import PersistentBackend
from durable.client import Client
from durable.context import Rescheduled as Rescheduled
from durable.context import WorkflowSuspended as WorkflowSuspended
from durable.engine.core import KeyedLock as KeyedLock
from durable.engine.core import stored_arguments as stored_arguments
from durable.engine.leases import RELEASE_TIMEOUT as RELEASE_TIMEOUT
from durable.engine.operations import Operations
from durable.engine.serving import Serving
from durable.engine.watchdog import LoopWatchdog
from durable.errors import DurableError, InvalidArgumentError
from durable.executions import EnqueueOptions, check_timeouts
from durable.models import RegisteredWorkflow
from durable.queues import Queue, store_declared_queues
from durable.registry import Registry, default_registry
from durable.retention import Retention, retention_policies
from durable.scheduling import store_declared_schedules
from durable.validation import (
    check_bool,
    check_id,
    check_instance,
    check_labels,
    check_optional_id,
    check_positive_float,
    check_positive_int,
)
from durable.versioning import check_version
from durable.worker import STEP_THREAD_PREFIX, Worker
from durable.workflow import Workflow

log = logging.getLogger(__name__)
T = TypeVar("T")


#: How long an attempt handed back because the database could not be reached waits before it is
#: due again, from the moment the hand-back reached the database (a short pause, so that workers
#: do not spin on a database that only just came back).
OUTAGE_BACKOFF = timedelta(seconds=2)

#: The most threads sync workflows' bodies run in at once: in practice no bound (threads are
#: made as bodies need them and reused); a bound as small as the steps' pool deadlocked sync
#: parents waiting for their sync children.
BODY_THREADS_MAX = 4096


def default_executor_id() -> str:
    """``host-pid-random``: unique per process. Pass a stable id to recover your own work at once
    after a restart."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Runtime(Operations, Serving):
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
    :param max_threads: worker threads for the sync steps of async workflows. A sync
        workflow's body runs in a thread of its own (reused once it ends): a parent waiting for
        its child holds its thread, so bodies drawn from a bounded pool deadlocked once that
        many parents waited at once.
    :param retention: delete finished executions once they are this old (a ``timedelta``), or
        as :class:`~durable.Retention` policies say (one, or a list: per workflow name or
        queue), in small batches in the background while this runtime has a worker (see
        :mod:`durable.retention`). Default None: keep everything.
    :param app_version: the code version the executions started here record when their
        workflow has no ``version`` of its own (default: a hash of the workflow's source; see
        :mod:`durable.versioning`). At most 64 characters.
    :param serve_versions: what this runtime's workers claim, by the code version that started
        an execution: None (default: everything), an iterable of versions, or True (the
        versions of the workflows this runtime has, and the hashes of their sources, which a
        producer with the same code and no ``app_version`` records: :meth:`claim_versions`).
        Executions of other versions are left to workers that have their code, so that a rolling
        deploy does not replay old executions on new code; executions of unknown version
        (started by name by a client without the code) are claimed by every worker.
    :param queues: the :class:`~durable.Queue` objects this runtime declares: each is stored
        on start unless a queue of its name is stored already (the stored limits win: see
        :class:`~durable.Queue`). Every worker of the database obeys the stored limits,
        declared here or not.

    The operations that execute nothing (:meth:`enqueue` outside a workflow, :meth:`result`,
    :meth:`get_workflow`, :meth:`list_workflows`, :meth:`list_steps`, :meth:`cancel`,
    :meth:`retry`, :meth:`set_workflow_enabled`, :meth:`registered_workflows`,
    :meth:`list_executors`) go through the :class:`~durable.Client` the runtime owns on its
    backend (:attr:`client`). A process that only starts and inspects work needs no runtime: a
    :class:`~durable.Client` of its own does it.

    :raises InvalidArgumentError: an argument of the wrong type or out of range: an empty or
        overlong ``executor_id``, a ``claim_ttl``, ``heartbeat_interval`` or ``poll_interval``
        that is not a finite positive number, a heartbeat interval not below ``claim_ttl``, a
        ``max_threads`` that is not a positive int, a ``retention`` that is not a ``timedelta``,
        a :class:`~durable.Retention` or a list of them, an ``app_version`` that is not a
        non-empty string of at most 64 characters, a ``serve_versions`` that is a bare string.
    """

    _noun = "runtime"
    _portal_name = "durable-portal"
    _sync_calls = "blocking calls such as run_sync()"

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
        retention: timedelta | Retention | list[Retention] | None = None,
        app_version: str | None = None,
        serve_versions: Iterable[str] | bool | None = None,
        queues: Sequence[Queue] = (),
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
        self.client = Client._for_runtime(backend, poll_interval, self)
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
        self.retention = retention_policies(retention)
        """The retention policies this runtime applies while it has a worker."""
        if isinstance(queues, Queue | str) or not all(isinstance(q, Queue) for q in queues):
            raise InvalidArgumentError(f"queues must be a list of durable.Queue, got {queues!r}")
        self.queues = list(queues)
        """The queues this runtime declares (stored on start unless stored already)."""
        self._threads: ThreadPoolExecutor | None = None
        self._body_threads: ThreadPoolExecutor | None = None
        self._locks = KeyedLock()
        self._workers: list[Worker] = []
        self._background: set[asyncio.Task[Any]] = set()
        self.recovering = set()
        self._node_heartbeats_task: asyncio.Task[Any] | None = None
        self._watchdog: LoopWatchdog | None = None
        self._incarnation = ""
        self._superseded = False
        self.client.app_version = check_version(app_version, "app_version")
        self.serve_versions = _served_versions(serve_versions)

    def __repr__(self) -> str:
        return f"Runtime({self.backend!r}, executor_id={self.executor_id!r})"

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
            await telemetry.prepare()  # not later, under a lease
            await self._take_executor_id()
        except BaseException:
            await self.backend.close()
            raise
        self._on_this_loop()
        self._threads = ThreadPoolExecutor(self._max_threads, thread_name_prefix=STEP_THREAD_PREFIX)
        self._body_threads = ThreadPoolExecutor(
            BODY_THREADS_MAX, thread_name_prefix=STEP_THREAD_PREFIX
        )
        self._started = True
        await self.backend.register_workflows(
            [
                RegisteredWorkflow(name=name, enabled=True, description=description)
                for name, _enabled, description in self.registry.describe()
            ]
        )
        await store_declared_schedules(self.backend, self.registry)  # @durable.scheduled
        await store_declared_queues(self.backend, self.queues)  # Runtime(queues=[...])
        self._node_heartbeats_task = self.spawn(
            self._node_heartbeats(), name="durable-node-heartbeat"
        )
        self._watchdog = LoopWatchdog(
            asyncio.get_running_loop(),
            self._loop_thread,
            executor_id=self.executor_id,
            claim_ttl=self.claim_ttl.total_seconds(),
        )
        self._watchdog.start()
        if self.recover_on_start:
            self.spawn(self.recover(), name="durable-recover")

    async def close(self) -> None:
        """Interrupt the waits still running (``result``, ``get_event``, ``read_stream``, in any
        task, and the blocking calls of other threads: they raise :class:`DurableError`), stop
        background work (its leases are released so others resume it at once), then close the
        backend."""
        if not self._started:
            return
        await self._interrupt()
        workers, self._workers = self._workers, []
        for worker in workers:
            await worker.stop()
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(DurableError):
            await self.backend.mark_executor_stopped(
                self.executor_id, incarnation=self._incarnation
            )
        self._started = False
        for pool in (self._threads, self._body_threads):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        await self.backend.close()

    # -- running workflows --------------------------------------------------------------------

    async def run(
        self,
        fn: Workflow[Any, T] | str,
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | timedelta | None = None,
        deadline: datetime | None = None,
        labels: Mapping[str, str] | None = None,
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
        :param timeout: cancel the execution if it has not finished this long after it is
            recorded (replaces the workflow's own ``timeout``); ``deadline``: or by this
            timezone-aware time (see :meth:`enqueue`). Used when the execution is created,
            not when an existing id is resumed.
        :param labels: the execution's labels (``{"customer": "c-42"}``), as for
            :meth:`enqueue`.

        :raises SerializationError: the arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: ``fn`` is not a workflow, ``workflow_id`` is not a valid
            id, or the id belongs to another workflow (nothing is written).
        :raises WorkflowCancelledError: the execution was cancelled (or passed its deadline).
        :raises ClaimLostError: this executor lost the lease mid-run (another one took over).
        :raises Exception: the workflow's own exception when it failed (rebuilt from the record
            when it failed earlier; :class:`WorkflowFailedError` when it cannot be rebuilt).
        """
        self._require_started()
        wf = self.resolve(fn)
        instance_id = (
            str(uuid.uuid4()) if workflow_id is None else check_id(workflow_id, "workflow_id")
        )
        limit = check_timeouts(timeout, deadline)
        own_labels = check_labels(labels)
        options = None
        if limit is not None or deadline is not None or own_labels:
            options = EnqueueOptions(timeout=limit, deadline=deadline, labels=own_labels)
        await self._create(wf, instance_id, args, kwargs, options=options)
        return await self._drive(wf, instance_id)  # type: ignore[no-any-return]

    def run_sync(
        self,
        fn: Workflow[Any, T] | str,
        *args: Any,
        workflow_id: str | None = None,
        timeout: float | timedelta | None = None,
        deadline: datetime | None = None,
        labels: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> T:
        """:meth:`run` for code that is not async, from any thread, while the runtime is
        started (see :meth:`start_sync` and :meth:`blocking`)."""
        return self.blocking(
            self.run(
                fn,
                *args,
                workflow_id=workflow_id,
                timeout=timeout,
                deadline=deadline,
                labels=labels,
                **kwargs,
            )
        )

    def _outage_backoff(self) -> timedelta:
        return OUTAGE_BACKOFF  # read each time: it may be changed (tests shorten it)


def _served_versions(value: Iterable[str] | bool | None) -> frozenset[str] | bool | None:
    """``serve_versions`` checked: None, True/False, or a set of versions."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"serve_versions must be None, True or a list of versions, got {value!r}"
        )
    return frozenset(check_version(v, "each of serve_versions") or "" for v in value)
