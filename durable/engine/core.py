"""What the parts of the runtime share: :class:`RuntimeCore`, the base of each part and of
:class:`~durable.runtime.Runtime`, and the helpers several parts use (:func:`stored_arguments`,
:class:`KeyedLock`).

:class:`~durable.runtime.Runtime` is one class, composed of one class per concern, each in a
module of this package: :mod:`.leases` (the executor's identity, heartbeats, hand-backs),
:mod:`.attempts` (one attempt of one execution, and child workflows), :mod:`.serving` (workers,
steps handed out, recovery), :mod:`.operations` (what it does through its client). Their methods
are plain methods of the runtime: a step costs no extra call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, cast

from durable.backends.base import PersistentBackend
from durable.client import Client
from durable.errors import CorruptRowError, DurableError
from durable.executions import EnqueueOptions, not_a_workflow
from durable.executions import outcome as _outcome
from durable.executions import outcome_error as _outcome_error
from durable.models import STALE_AFTER_HEARTBEATS, WorkflowInfo
from durable.portal import SyncStartable
from durable.registry import Registry
from durable.validation import check_name
from durable.worker import Worker
from durable.workflow import Workflow

#: The runtime's logger: what this module logs, it logs as the runtime.
log = logging.getLogger("durable.runtime")


class RuntimeCore(SyncStartable):
    """The base of the runtime's parts: the state :class:`~durable.runtime.Runtime` sets up
    in its constructor (declared here, so that each part can use it), and what several parts
    use: the backend and the client, spawning background work, resolving a workflow."""

    client: Client
    executor_id: str
    claim_ttl: timedelta
    heartbeat_interval: float
    recover_on_start: bool
    registry: Registry
    _max_threads: int
    _threads: ThreadPoolExecutor | None
    _body_threads: ThreadPoolExecutor | None  # sync workflows' bodies (see Runtime)
    _locks: KeyedLock
    _workers: list[Worker]
    _background: set[asyncio.Task[Any]]
    _node_heartbeats_task: asyncio.Task[Any] | None
    _incarnation: str
    _superseded: bool

    fanout_warning_after: float = 60.0
    """Seconds after a :func:`durable.map` fan-out started here at which, if no worker has
    taken the first of its tasks yet, a warning is logged (no worker serves the step or its
    queue, or all of them have been busy). Set it on the class or on one runtime."""

    serve_versions: frozenset[str] | bool | None = None
    """Which executions this runtime's workers claim, by the code version that started them
    (:attr:`WorkflowInfo.code_version <durable.WorkflowInfo.code_version>`): None (all), a
    set of versions, or True (the versions of the workflows in :attr:`registry`, see
    :meth:`claim_versions`). Executions of unknown version (None) are claimed by all."""

    @property
    def app_version(self) -> str | None:
        """The code version executions started here record when their workflow has no
        ``version`` of its own (see :mod:`durable.versioning`)."""
        return self.client.app_version

    def claim_versions(self) -> list[str] | None:
        """The code versions this runtime's workers claim (:attr:`serve_versions`), or None
        for all."""
        if self.serve_versions is None or self.serve_versions is False:
            return None
        if self.serve_versions is True:
            # its own version, and its code's source hashes: what a producer that has the same
            # code records without an app_version of its own (a Client's default)
            found = [self.registry.get(name) for name in self.registry.names()]
            workflows = [wf for wf in found if isinstance(wf, Workflow)]
            return sorted(
                {wf.code_version(self.app_version) for wf in workflows}
                | {wf.code_version() for wf in workflows}
            )
        return sorted(self.serve_versions)

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
    def step_threads(self) -> ThreadPoolExecutor | None:
        """The threads sync steps awaited from async code run in (``max_threads`` of them;
        None before the runtime starts: asyncio's default)."""
        return self._threads

    @property
    def lease_window(self) -> float:
        """Seconds after a renewal of a lease during which this executor takes it for held
        without asking the database (:attr:`ExecutionContext.lease_deadline
        <durable.context.ExecutionContext.lease_deadline>`): the lease's duration, but no
        longer than it takes another process to find this one silent and take its executor id
        over (:data:`~durable.models.STALE_AFTER_HEARTBEATS` heartbeat intervals, one fewer:
        the renewal may come after the last heartbeat). Leases are held by executor id, so a
        process paused past that (``SIGSTOP``, a frozen VM) may have a successor under its
        id: its next write first checks the id is still its own."""
        return min(
            self.claim_ttl.total_seconds(),
            (STALE_AFTER_HEARTBEATS - 1) * self.heartbeat_interval,
        )

    @property
    def superseded(self) -> bool:
        """True once another process took this runtime's executor id over (this one had been
        presumed dead): it then claims nothing and runs no further step."""
        return self._superseded

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

    def resolve(self, fn: Workflow[Any, Any] | str) -> Workflow[Any, Any]:
        """The registered workflow for a decorated function or a name.

        :raises InvalidArgumentError: ``fn`` is not a durable workflow.
        :raises UnknownWorkflowError: no workflow has that name.
        """
        if isinstance(fn, Workflow):
            return fn
        if isinstance(fn, str):
            return self._workflow(check_name(fn, "the workflow name"))
        raise not_a_workflow(fn)

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

    def _workflow(self, name: str) -> Workflow[Any, Any]:
        """The workflow registered under ``name``.

        :raises UnknownWorkflowError: none is.
        """
        # the decorators register Workflows; the registry, below them, knows only the protocol
        return cast("Workflow[Any, Any]", self.registry.get(name))

    def _outage_backoff(self) -> timedelta:
        """How long an attempt handed back during an outage waits before it is due again:
        :data:`durable.runtime.OUTAGE_BACKOFF`, read by :class:`~durable.runtime.Runtime` each
        time (it may be changed)."""
        raise NotImplementedError

    def outcome(self, info: WorkflowInfo) -> Any:
        """The stored result of a finished execution, or its error raised."""
        return _outcome(info)

    @staticmethod
    def outcome_error(info: WorkflowInfo) -> BaseException:
        """The exception a caller sees for an execution that did not succeed."""
        return _outcome_error(info)


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

    def hold(self, key: str) -> _Held:
        """``async with lock.hold(key):`` runs its block while holding ``key``'s lock."""
        return _Held(self._locks, key)

    def held(self, key: str) -> bool:
        """Whether somebody holds ``key``'s lock now."""
        known = self._locks.get(key)
        return known is not None and known[0].locked()


class _Held:
    """The hold of one key of a :class:`KeyedLock` (an async context manager)."""

    __slots__ = ("_key", "_lock", "_locks")

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        locks, key = self._locks, self._key
        lock, users = locks.get(key) or (asyncio.Lock(), 0)
        locks[key] = (lock, users + 1)
        self._lock = lock
        try:
            await lock.acquire()
        except BaseException:
            self._forget()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
        self._forget()

    def _forget(self) -> None:
        locks, key = self._locks, self._key
        lock, users = locks[key]
        if users == 1:
            del locks[key]
        else:
            locks[key] = (lock, users - 1)


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
