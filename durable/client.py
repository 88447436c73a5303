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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from durable.backends.base import PersistentBackend
from durable.connect import connect
from durable.context import rebuild_exception
from durable.errors import (
    DurableError,
    InvalidArgumentError,
    SerializationError,
    StepError,
    WorkflowCancelledError,
    WorkflowDeadLetteredError,
    WorkflowFailedError,
)
from durable.models import (
    ExecutorInfo,
    Page,
    RegisteredWorkflow,
    StepRecord,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.portal import SyncStartable
from durable.validation import (
    check_bool,
    check_delay,
    check_id,
    check_int,
    check_name,
    check_optional_id,
    check_positive_float,
    check_positive_int,
    check_run_after,
    check_timeout,
)
from durable.workflow import Workflow

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The attempts an execution enqueued by name gets when ``max_attempts`` is not given (the
#: default :class:`~durable.RetryPolicy`'s; the workflow's own policy is not known by name).
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """How an execution is queued (see :meth:`Client.enqueue`)."""

    idempotency_key: str | None = None
    priority: int = 0
    run_after: datetime | None = None
    delay: timedelta | None = None
    max_attempts: int | None = None
    queue: str | None = None


def check_enqueue_arguments(
    fn: Any,
    *,
    workflow_id: Any,
    idempotency_key: Any,
    priority: Any,
    run_after: Any,
    delay: Any,
    max_attempts: Any,
    queue: Any,
) -> timedelta | None:
    """Check the arguments of an enqueue (in this order; nothing is written before), and return
    the delay as a timedelta.

    :raises InvalidArgumentError: one of them is of the wrong type or out of range.
    """
    if isinstance(fn, str):
        check_name(fn, "the workflow name")
    check_optional_id(workflow_id, "workflow_id")
    check_optional_id(idempotency_key, "idempotency_key")
    check_int(priority, "priority")
    if run_after is not None:
        check_run_after(run_after)
    wait = None if delay is None else check_delay(delay)
    if max_attempts is not None:
        check_positive_int(max_attempts, "max_attempts")
    if queue is not None:
        check_name(queue, "queue")
    return wait


def enqueue_options(
    target: Workflow[Any, Any] | str,
    *,
    idempotency_key: str | None,
    priority: int,
    run_after: datetime | None,
    wait: timedelta | None,
    max_attempts: int | None,
    queue: str | None,
) -> EnqueueOptions:
    """The options of an enqueue whose arguments are checked (:func:`check_enqueue_arguments`);
    ``max_attempts`` defaults to the workflow's policy (3 for a workflow known by name only).

    :raises InvalidArgumentError: both ``run_after`` and a delay are given.
    """
    if wait is not None and run_after is not None:
        raise InvalidArgumentError("give run_after or delay, not both")
    if max_attempts is None:
        max_attempts = (
            target.retry.max_attempts if isinstance(target, Workflow) else DEFAULT_MAX_ATTEMPTS
        )
    return EnqueueOptions(
        idempotency_key=idempotency_key,
        priority=priority,
        run_after=run_after,
        delay=wait,
        max_attempts=max_attempts,
        queue=queue,
    )


def not_a_workflow(fn: Any) -> InvalidArgumentError:
    """The error for something given as a workflow that is neither a workflow nor a name."""
    return InvalidArgumentError(
        f"{getattr(fn, '__qualname__', fn)!r} is not a durable workflow: decorate it with "
        "@durable.workflow"
    )


def outcome(info: WorkflowInfo) -> Any:
    """The stored result of a finished execution, or its error raised."""
    if info.status is WorkflowStatus.SUCCEEDED:
        return info.output
    raise outcome_error(info)


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
        return WorkflowFailedError(info.id, f"workflow {info.id!r} failed: {detail}", info.error)
    return rebuilt


@dataclass(frozen=True, slots=True)
class Enqueue:
    """One execution of a batch given to :meth:`Client.enqueue_many`: its arguments, and
    optionally its own workflow, id, idempotency key and options (those left None take the
    batch's). ``Enqueue(args=(42,), idempotency_key="order-42")``,
    ``Enqueue(fn="mail.send.v1", kwargs={"to": "a@example.com"})``."""

    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    fn: Workflow[Any, Any] | str | None = None
    workflow_id: str | None = None
    idempotency_key: str | None = None
    priority: int | None = None
    run_after: datetime | None = None
    delay: float | timedelta | None = None
    max_attempts: int | None = None
    queue: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedEnqueue:
    """One row of a checked batch (:func:`plan_enqueue_many`): the workflow as given (a name
    is resolved by the caller), its id if given, its arguments and its checked options."""

    fn: Workflow[Any, Any] | str
    workflow_id: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    idempotency_key: str | None
    priority: int
    run_after: datetime | None
    wait: timedelta | None
    max_attempts: int | None
    queue: str | None

    def options(self, target: Workflow[Any, Any] | str) -> EnqueueOptions:
        """The row's options for ``target`` (the resolved workflow, whose policy gives the
        default ``max_attempts``)."""
        return enqueue_options(
            target,
            idempotency_key=self.idempotency_key,
            priority=self.priority,
            run_after=self.run_after,
            wait=self.wait,
            max_attempts=self.max_attempts,
            queue=self.queue,
        )


def plan_enqueue_many(
    fn: Any,
    inputs: Any,
    *,
    priority: Any,
    run_after: Any,
    delay: Any,
    max_attempts: Any,
    queue: Any,
) -> list[PlannedEnqueue]:
    """Check a batch given to ``enqueue_many`` (every row, before anything is written) and
    return its rows in order. Each row is an :class:`Enqueue` or a tuple or list of positional
    arguments for ``fn``; an :class:`Enqueue`'s options left None take the batch's.

    :raises InvalidArgumentError: ``inputs`` is not an iterable of rows, a row is neither an
        :class:`Enqueue` nor a tuple or list, a row has no workflow, or an option of the batch
        or of a row is of the wrong type or out of range; the message names the row
        (``inputs[3]``).
    """
    if isinstance(inputs, str | bytes | Mapping) or not isinstance(inputs, Iterable):
        raise InvalidArgumentError(
            "inputs must be an iterable of rows (tuples of arguments or durable.Enqueue), got "
            f"{type(inputs).__qualname__}"
        )
    if fn is not None and not isinstance(fn, str | Workflow):
        raise not_a_workflow(fn)
    shared_wait = check_enqueue_arguments(
        fn,
        workflow_id=None,
        idempotency_key=None,
        priority=priority,
        run_after=run_after,
        delay=delay,
        max_attempts=max_attempts,
        queue=queue,
    )
    if shared_wait is not None and run_after is not None:
        raise InvalidArgumentError("give run_after or delay, not both")
    planned = []
    for index, row in enumerate(inputs):
        try:
            planned.append(
                _plan_row(row, fn, priority, run_after, shared_wait, max_attempts, queue)
            )
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"inputs[{index}]: {exc}") from exc
    return planned


def _plan_row(
    row: Any,
    fn: Workflow[Any, Any] | str | None,
    priority: int,
    run_after: datetime | None,
    wait: timedelta | None,
    max_attempts: int | None,
    queue: str | None,
) -> PlannedEnqueue:
    if isinstance(row, tuple | list):
        if fn is None:
            raise InvalidArgumentError("no workflow: give enqueue_many's fn, or the row's fn")
        # the batch's options, checked once: nothing of the row's own to check
        return PlannedEnqueue(
            fn=fn,
            workflow_id=None,
            args=tuple(row),
            kwargs={},
            idempotency_key=None,
            priority=priority,
            run_after=run_after,
            wait=wait,
            max_attempts=max_attempts,
            queue=queue,
        )
    if not isinstance(row, Enqueue):
        raise InvalidArgumentError(
            "a row must be a tuple or list of the workflow's positional arguments, or a "
            f"durable.Enqueue, got {type(row).__qualname__}"
        )
    target = row.fn if row.fn is not None else fn
    if target is None:
        raise InvalidArgumentError("no workflow: give enqueue_many's fn, or the row's fn")
    if not isinstance(target, str | Workflow):
        raise not_a_workflow(target)
    if not isinstance(row.args, tuple | list):
        raise InvalidArgumentError(
            f"args must be a tuple or list, got {type(row.args).__qualname__}"
        )
    if not isinstance(row.kwargs, Mapping) or (
        row.kwargs and not all(isinstance(k, str) for k in row.kwargs)
    ):
        raise InvalidArgumentError("kwargs must be a mapping of str to arguments")
    own_wait = check_enqueue_arguments(
        target,
        workflow_id=row.workflow_id,
        idempotency_key=row.idempotency_key,
        priority=0 if row.priority is None else row.priority,
        run_after=row.run_after,
        delay=row.delay,
        max_attempts=row.max_attempts,
        queue=row.queue,
    )
    if own_wait is not None and row.run_after is not None:
        raise InvalidArgumentError("give run_after or delay, not both")
    own_time = row.run_after is not None or own_wait is not None
    return PlannedEnqueue(
        fn=target,
        workflow_id=row.workflow_id,
        args=tuple(row.args),
        kwargs=dict(row.kwargs),
        idempotency_key=row.idempotency_key,
        priority=priority if row.priority is None else row.priority,
        run_after=row.run_after if own_time else run_after,
        wait=own_wait if own_time else wait,
        max_attempts=max_attempts if row.max_attempts is None else row.max_attempts,
        queue=queue if row.queue is None else row.queue,
    )


class Client(SyncStartable):
    """Enqueue, wait for, inspect and control workflow executions stored in a database, without
    running any (see the module docstring).

    :param target: a database URL (given to :func:`durable.connect` with ``options``) or a
        :class:`~durable.backends.PersistentBackend`. The client starts the backend on entry
        (which creates or upgrades durable's tables, unless the backend was made with
        ``auto_migrate=False``) and closes it on exit; a backend belongs to one client or
        runtime.
    :param poll_interval: seconds between looks at an execution :meth:`result` waits for.
    :param options: for a URL, what :func:`durable.connect` takes (``serializer``,
        ``auto_migrate``, ...).

    Use it as ``async with durable.Client(url) as client:`` from async code, or
    ``with durable.Client(url) as client:`` from sync code, where every operation has a
    blocking twin whose name ends in ``_sync`` (:meth:`enqueue_sync`, :meth:`result_sync`, ...).
    Sync use is reference-counted and thread-safe, as for a runtime (:meth:`start_sync`).

    :raises InvalidArgumentError: ``target`` is neither a str nor a backend, options are given
        with a backend, or ``poll_interval`` is not a finite positive number.
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
        **options: Any,
    ) -> None:
        super().__init__()
        check_positive_float(poll_interval, "poll_interval")
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
        # set for a runtime's client: the runtime starts and closes the backend and runs the
        # _sync methods on its own loop
        self._owner_blocking: Callable[[Coroutine[Any, Any, Any]], Any] | None = None

    @classmethod
    def _for_runtime(
        cls,
        backend: PersistentBackend,
        poll_interval: float,
        blocking: Callable[[Coroutine[Any, Any, Any]], Any],
    ) -> Client:
        """The client a runtime owns: the runtime starts and closes the backend, checks that it
        is started where it needs to, and runs the ``_sync`` methods (its ``blocking``)."""
        client = cls(backend, poll_interval=poll_interval)
        client._owner_blocking = blocking
        return client

    def __repr__(self) -> str:
        return f"Client({self.backend!r})"

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
        except BaseException:
            with contextlib.suppress(Exception):  # the start's error is the one to see
                await self.backend.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._started = True

    async def close(self) -> None:
        """Close the backend."""
        if not self._started:
            return
        self._started = False
        await self.backend.close()

    def blocking(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one of this client's coroutines from sync code (see
        :meth:`SyncStartable.blocking <durable.portal.SyncStartable.blocking>`); a runtime's
        client runs them on the runtime's loop."""
        if self._owner_blocking is not None:
            return self._owner_blocking(coro)  # type: ignore[no-any-return]
        return super().blocking(coro)

    def _require_started(self) -> None:
        if self._owner_blocking is None and not self._started:
            raise DurableError(
                "the client is not started: use `async with client:` (or `with client:` from "
                "sync code)"
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
        queue: str | None = None,
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

        ``args`` and ``kwargs`` are the workflow's arguments; they must be serializable by the
        backend's serializer (JSON by default). Ids, keys, names and queues are non-empty str of
        at most 255 characters, valid Unicode, without NUL.

        :raises SerializationError: the arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: an argument of the wrong type or out of range, ``fn``
            neither a name nor a workflow, or the id or key belongs to another workflow
            (nothing is written).
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
        if not isinstance(fn, str | Workflow):
            raise not_a_workflow(fn)
        options = enqueue_options(
            fn,
            idempotency_key=idempotency_key,
            priority=priority,
            run_after=run_after,
            wait=wait,
            max_attempts=max_attempts,
            queue=queue,
        )
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
        queue: str | None = None,
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
        name = wf if isinstance(wf, str) else wf.name
        check_id(instance_id, "workflow_id")  # derived ids are made to fit: this never fails
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
        if info.id != instance_id and info.name != name:  # found by its idempotency key
            raise InvalidArgumentError(
                f"idempotency key {opts.idempotency_key!r} is already used by an execution of "
                f"workflow {info.name!r} (id {info.id!r}), not of {name!r}: an idempotency key "
                "names one execution of one workflow"
            )
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
        :param priority: ``run_after``, ``delay``, ``max_attempts``, ``queue``: as for
            :meth:`enqueue`, for every row that does not give its own (a row that gives
            ``run_after`` or ``delay`` takes neither from the batch).

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
        )
        infos = await self._create_many(
            [
                (
                    row.fn,
                    row.workflow_id or str(uuid.uuid4()),
                    row.args,
                    row.kwargs,
                    row.options(row.fn),
                )
                for row in planned
            ]
        )
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
        queue: str | None = None,
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
            )
        )

    async def _create_many(
        self,
        rows: Sequence[
            tuple[Workflow[Any, Any] | str, str, Sequence[Any], dict[str, Any], EnqueueOptions]
        ],
        *,
        parent_id: str | None = None,
    ) -> list[WorkflowInfo]:
        """Record executions and their tasks in one backend call (the rows' arguments and
        options are checked): ``(workflow, id, args, kwargs, options)`` each; the headers in
        the rows' order (an existing id or key: the existing execution's).

        :raises SerializationError: a row's arguments cannot be serialized (nothing is written).
        :raises InvalidArgumentError: an id or key belongs to another workflow (nothing is
            written).
        """
        batch: list[tuple[WorkflowSnapshot, TaskSpec | None]] = []
        for wf, instance_id, args, kwargs, opts in rows:
            name = wf if isinstance(wf, str) else wf.name
            check_id(instance_id, "workflow_id")
            queue = opts.queue or (wf.queue if isinstance(wf, Workflow) else "default")
            # serialized once, by the backend, which names the row it cannot serialize
            payload = {"args": list(args), "kwargs": kwargs}
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
            batch.append((snapshot, task))
        if not batch:
            return []
        results = await self.backend.create_workflows(batch)
        created = sum(1 for _, was_created in results if was_created)
        if created:
            log.debug(
                "recorded %d workflow(s) in one batch of %d",
                created,
                len(batch),
                extra={"action": "workflow.created_many", "count": created},
            )
        return [info for info, _ in results]

    # -- outcomes -----------------------------------------------------------------------------

    async def result(self, workflow_id: str, *, timeout: float | None = None) -> Any:
        """Wait until the execution finishes (wherever it runs) and return its result; it is
        looked at every ``poll_interval`` seconds.

        :raises WorkflowNotFoundError: no such workflow.
        :raises TimeoutError: it did not finish within ``timeout`` seconds (default: no limit).
        :raises InvalidArgumentError: ``timeout`` is negative or not finite, or the id is not one.
        :raises WorkflowCancelledError: the execution was cancelled.
        :raises WorkflowDeadLetteredError: it ran out of attempts.
        :raises Exception: the workflow's own exception when it failed (rebuilt from the record;
            :class:`WorkflowFailedError` when it cannot be rebuilt).
        """
        self._require_started()
        check_id(workflow_id, "workflow_id")
        timeout = check_timeout(timeout)

        async def wait() -> Any:
            while True:
                info = await self.backend.get_workflow(workflow_id)
                if info.status.is_terminal:
                    return outcome(info)
                await self.sleep(self.poll_interval)

        return await asyncio.wait_for(wait(), timeout)

    def result_sync(self, workflow_id: str, *, timeout: float | None = None) -> Any:
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
    ) -> Page[WorkflowInfo]:
        """Executions, newest first, filtered by status (one or several), name or parent; a
        page of at most ``limit``, whose ``next_cursor`` (given as ``cursor``) reads the next."""
        self._require_started()
        if name is not None:
            check_name(name, "name")
        check_optional_id(parent_id, "parent_id")
        check_positive_int(limit, "limit")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidArgumentError(f"cursor must be a str (a next_cursor), got {cursor!r}")
        return await self.backend.list_snapshots(
            status=status, name=name, parent_id=parent_id, limit=limit, cursor=cursor
        )

    def list_workflows_sync(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[WorkflowInfo]:
        """:meth:`list_workflows` for code that is not async."""
        return self.blocking(
            self.list_workflows(
                status=status, name=name, parent_id=parent_id, limit=limit, cursor=cursor
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
        refused) and is never picked up again. Cancelling a finished one changes nothing.

        :raises WorkflowNotFoundError: no such workflow.
        """
        self._require_started()
        return await self.backend.cancel_workflow(check_id(workflow_id, "workflow_id"))

    def cancel_sync(self, workflow_id: str) -> WorkflowInfo:
        """:meth:`cancel` for code that is not async."""
        return self.blocking(self.cancel(workflow_id))

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
