"""The runtime's producer and operator operations: enqueue (a recorded step inside a workflow),
result, inspection and control, through the client the runtime owns."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from durable import context as _context
from durable import messages as _messages
from durable.engine.core import RuntimeCore
from durable.errors import InvalidArgumentError
from durable.executions import (
    CheckedEnqueue,
    Enqueue,
    create_executions,
    execution_rows,
    plan_enqueue_many,
)
from durable.models import (
    ExecutorInfo,
    Page,
    RegisteredWorkflow,
    StepRecord,
    WorkflowInfo,
    WorkflowStatus,
)
from durable.queues import Queue, queue_name
from durable.validation import check_bool, derived_id
from durable.workflow import Workflow


class Operations(RuntimeCore):
    """The operations that execute nothing, through the runtime's client; :meth:`enqueue`,
    which inside a workflow is a recorded step."""

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
        queue: str | Queue | None = None,
        timeout: float | timedelta | None = None,
        deadline: datetime | None = None,
        labels: Mapping[str, str] | None = None,
        served_elsewhere: bool = False,
        partition_key: str | None = None,
        debounce: float | timedelta | None = None,
        debounce_key: str | None = None,
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
        :param timeout: cancel the execution if it has not finished this long (a
            ``timedelta`` or seconds) after it is recorded, on the store's clock; replaces the
            workflow's own ``timeout`` (see :func:`durable.workflow`).
        :param deadline: or cancel it if it has not finished by this timezone-aware time; with
            a timeout too (the start's or the workflow's), the earlier of the two.
        :param labels: labels to find the execution by (``{"customer": "c-42"}``;
            ``list_workflows(labels=...)``): keys of letters, digits, ``_ . - /`` (at most 64),
            str values (at most 255); a child workflow (or an enqueue inside a workflow)
            inherits its parent's labels, its own winning.
        :param served_elsewhere: allow a name that is not registered in this process.
        :param partition_key: the execution's partition within a queue that has a
            ``partition_concurrency`` (see :class:`durable.Queue`).
        :param debounce: with ``debounce_key``, debounce the enqueue: the first call of a burst
            records an execution due ``debounce`` (a ``timedelta`` or seconds) from now; each
            later call with the same workflow and key, while that execution has not started,
            replaces its arguments with its own and pushes its start back to ``debounce`` from
            now, and returns the same id. Once it has started (claimed), the next call starts a
            new burst. One execution per burst, however many callers race, in however many
            processes. Not with ``workflow_id``, ``idempotency_key``, ``run_after`` or
            ``delay``.
        :param debounce_key: which calls form a burst (per workflow name), e.g. a customer id.

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
        check_bool(served_elsewhere, "served_elsewhere")
        ctx = _context.current()
        if ctx is not None and ctx.replay_only:  # a replay check: the history answers
            name = fn if isinstance(fn, str) else self.resolve(fn).name
            return ctx.guard(derived_id(f"enqueue:{name}", "")).replay()  # type: ignore[no-any-return]
        self._require_started()
        target: Workflow[Any, Any] | str
        if isinstance(fn, str) and fn in self.registry:
            target = self._workflow(fn)
        elif isinstance(fn, str) and (served_elsewhere or await self._served_by_others(fn)):
            target = fn
        else:
            target = self.resolve(fn)
        name = target if isinstance(target, str) else target.name
        options = checked.options(target)
        if ctx is None:  # a client's enqueue
            info = await self.client._create(
                target, workflow_id or str(uuid.uuid4()), args, kwargs, options=options
            )
            return info.id
        guard = ctx.guard(derived_id(f"enqueue:{name}", ""))
        if guard.replayed:
            return guard.replay()  # type: ignore[no-any-return]
        await ctx.ensure_lease()
        instance_id = workflow_id or derived_id(ctx.workflow_id, ctx.child_suffix(guard.position))
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
        queue: str | Queue | None = None,
        timeout: float | timedelta | None = None,
        deadline: datetime | None = None,
        labels: Mapping[str, str] | None = None,
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
        check_bool(served_elsewhere, "served_elsewhere")
        ctx = _context.current()
        if ctx is not None and ctx.replay_only:  # a replay check: the history answers
            return ctx.guard(derived_id("enqueue_many", "")).replay()  # type: ignore[no-any-return]
        self._require_started()
        resolved: dict[Any, Workflow[Any, Any] | str] = {}
        targets: list[Workflow[Any, Any] | str] = []
        for index, row in enumerate(planned):
            key = row.fn if isinstance(row.fn, str) else id(row.fn)
            if key not in resolved:
                try:
                    if isinstance(row.fn, str) and row.fn in self.registry:
                        resolved[key] = self._workflow(row.fn)
                    elif isinstance(row.fn, str) and (
                        served_elsewhere or await self._served_by_others(row.fn)
                    ):
                        resolved[key] = row.fn
                    else:
                        resolved[key] = self.resolve(row.fn)
                except InvalidArgumentError as exc:
                    raise InvalidArgumentError(f"inputs[{index}]: {exc}") from exc
            targets.append(resolved[key])
        if ctx is None:  # a client's enqueue
            rows = execution_rows(planned, targets)
            infos = await create_executions(self.backend, app_version=self.app_version, rows=rows)
            return [info.id for info in infos]
        guard = ctx.guard(derived_id("enqueue_many", ""))
        if guard.replayed:
            return guard.replay()  # type: ignore[no-any-return]
        await ctx.ensure_lease()
        base = derived_id(ctx.workflow_id, ctx.child_suffix(guard.position))
        rows = [
            (t, row.workflow_id or derived_id(base, f"/{i}"), row.args, row.kwargs, row.options(t))
            for i, (t, row) in enumerate(zip(targets, planned, strict=True))
        ]
        with ctx.checkpoint():
            infos = await create_executions(
                self.backend, rows, parent_id=ctx.workflow_id, app_version=self.app_version
            )
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

    async def resume(self, workflow_id: str) -> WorkflowInfo:
        """:meth:`retry` under the name operators look for (see :meth:`Client.resume
        <durable.Client.resume>`).

        :raises WorkflowNotFoundError: no such workflow.
        :raises InvalidArgumentError: it is not failed, dead-lettered or cancelled.
        """
        return await self.client.resume(workflow_id)

    async def fork(
        self, workflow_id: str, *, from_step: int, new_workflow_id: str | None = None
    ) -> str:
        """Start a new execution that replays ``workflow_id``'s first ``from_step`` steps and
        runs the rest; return its id (see :meth:`Client.fork <durable.Client.fork>`).

        :raises WorkflowNotFoundError: no execution ``workflow_id``.
        :raises WorkflowAlreadyExistsError: ``new_workflow_id`` exists.
        :raises InvalidArgumentError: ``from_step`` out of range, or a step before it not
            finished.
        """
        return await self.client.fork(
            workflow_id, from_step=from_step, new_workflow_id=new_workflow_id
        )

    async def send(
        self,
        workflow_id: str,
        topic: str,
        value: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send ``value`` to the workflow ``workflow_id`` on ``topic`` (see
        :meth:`Client.send <durable.Client.send>`). Called inside an async workflow, it is
        :func:`durable.send`: a recorded step (and returns True).

        :raises WorkflowNotFoundError: no workflow has that id.
        :raises WorkflowFinishedError: that workflow has finished.
        :raises InvalidArgumentError: a bad id, topic or key, or a value that cannot be stored.
        """
        if _context.current() is not None:
            await _messages.send(workflow_id, topic, value, idempotency_key=idempotency_key)
            return True
        return await self.client.send(workflow_id, topic, value, idempotency_key=idempotency_key)

    def send_sync(
        self,
        workflow_id: str,
        topic: str,
        value: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        """:meth:`send` from code that is not async, outside workflows (sync workflows call
        :func:`durable.send_sync`)."""
        return self.client.send_sync(workflow_id, topic, value, idempotency_key=idempotency_key)

    async def result(self, workflow_id: str, *, timeout: float | timedelta | None = None) -> Any:
        """Wait until the execution finishes (wherever it runs) and return its result.

        :raises WorkflowNotFoundError: no such workflow.
        :raises TimeoutError: it did not finish within ``timeout`` seconds.
        :raises InvalidArgumentError: ``timeout`` is negative or not finite, or the id is not one.
        :raises Exception: as :meth:`run` does when the execution did not succeed.
        """
        self._require_started()
        return await self.client.result(workflow_id, timeout=timeout)

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
        labels: Mapping[str, str] | None = None,
    ) -> Page[WorkflowInfo]:
        """Executions, newest first, filtered by status (one or several), name, parent or
        labels (see :meth:`Client.list_workflows`)."""
        return await self.client.list_workflows(
            status=status, name=name, parent_id=parent_id, limit=limit, cursor=cursor, labels=labels
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

    # -- what workflows publish ------------------------------------------------------------------

    async def get_event(
        self,
        workflow_id: str,
        key: str,
        *,
        timeout: float | timedelta | None = 60.0,
        default: Any = None,
    ) -> Any:
        """The execution's event ``key``, waiting until it is set (see
        :meth:`Client.get_event <durable.Client.get_event>`)."""
        return await self.client.get_event(workflow_id, key, timeout=timeout, default=default)

    def read_stream(self, workflow_id: str, key: str, *, offset: int = 0) -> AsyncIterator[Any]:
        """The values of the execution's stream ``key``, in order (see
        :meth:`Client.read_stream <durable.Client.read_stream>`)."""
        return self.client.read_stream(workflow_id, key, offset=offset)
