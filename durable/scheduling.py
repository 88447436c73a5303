"""Cron schedules: declared in code (:func:`scheduled`), managed from a
:class:`~durable.Client` (:class:`ScheduleOperations`), and fired by every worker whose
runtime registers the schedule's workflow (:class:`durable.scheduler.Scheduler`).

A schedule enqueues one execution of its workflow per *tick* of its cron expression (read in its
time zone, see :mod:`durable.cron`). The execution's id and idempotency key are the tick's
(:func:`~durable.cron.tick_key`: ``schedule:<name>:<tick in UTC>``), and it gets the tick as the
keyword argument ``scheduled_at``, an ISO 8601 string in UTC (``datetime.fromisoformat`` reads
it): the JSON serializer stores no datetime, and a keyword leaves the schedule's own positional
arguments where they are.

Exactly one execution per tick, however many schedulers run: a scheduler reads the due
schedules, computes the ticks to run and the next one, and fires each schedule with
:meth:`~durable.backends.PersistentBackend.fire_schedule`, which advances ``next_run_at`` by
compare-and-set and enqueues the ticks in the same transaction. A racing scheduler's fire finds
``next_run_at`` moved and writes nothing; a crash cannot separate the advance from the enqueue.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from durable.backends.base import PersistentBackend
from durable.cron import (
    MAX_TICKS_PER_FIRING,
    check_cron,
    check_missed,
    check_timezone,
    next_tick,
    tick_key,
)
from durable.errors import (
    ConfigurationError,
    InvalidArgumentError,
)
from durable.executions import (
    DEFAULT_MAX_ATTEMPTS,
    EnqueueOptions,
    create_execution,
    execution_record,
    with_deadline,
)
from durable.models import MissedTicks, ScheduleInfo, TaskSpec, WorkflowInfo, WorkflowSnapshot
from durable.registry import Registry, default_registry
from durable.validation import check_bool, check_int, check_name
from durable.workflow import Workflow

log = logging.getLogger(__name__)
T = TypeVar("T")
W = TypeVar("W", bound=Workflow[Any, Any])

#: The keyword argument that carries a run's tick (ISO 8601, UTC) to the workflow.
SCHEDULED_AT = "scheduled_at"
#: Schedule names are at most this long (the tick's key, which holds the name, must fit 255).
MAX_SCHEDULE_NAME = 200


def check_schedule_name(value: Any, what: str = "name") -> str:
    """:raises InvalidArgumentError: not a valid name of at most 200 characters."""
    name = check_name(value, what)
    if len(name) > MAX_SCHEDULE_NAME:
        raise InvalidArgumentError(
            f"{what} must be at most {MAX_SCHEDULE_NAME} characters, got {len(name)}"
        )
    return name


def build_schedule(
    name: Any,
    cron: Any,
    workflow: Any,
    args: Any = (),
    kwargs: Any = None,
    *,
    timezone: Any = "UTC",
    missed: Any = MissedTicks.SKIP,
    max_catchup: Any = 10,
    queue: Any = None,
    priority: Any = 0,
    paused: Any = False,
    now: datetime,
) -> ScheduleInfo:
    """A schedule's record, every argument checked (in this order), its first tick the first
    after ``now``.

    :raises InvalidArgumentError: a bad argument, named in the message: ``name``, ``cron`` (not
        an expression, or one that never matches), ``timezone`` (not an IANA zone), ``missed``
        (not a :class:`~durable.models.MissedTicks`), ``workflow`` (neither a workflow nor a
        name), ``args``, ``kwargs`` (not a mapping with str keys, or holding ``scheduled_at``),
        ``max_catchup``, ``queue``, ``priority``, ``paused``.
    """
    check_schedule_name(name)
    check_timezone(timezone)
    cron = check_cron(cron, "cron", timezone)
    policy = check_missed(missed)
    if isinstance(workflow, Workflow):
        workflow_name, default_queue = workflow.name, workflow.queue
    elif isinstance(workflow, str):
        workflow_name, default_queue = check_name(workflow, "workflow"), "default"
    else:
        raise InvalidArgumentError(
            f"workflow must be a durable workflow or a workflow name, got {workflow!r}"
        )
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise InvalidArgumentError(f"args must be a list or tuple, got {args!r}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidArgumentError(f"kwargs must be a dict with str keys, got {kwargs!r}")
    if SCHEDULED_AT in kwargs:
        raise InvalidArgumentError(
            f"kwargs must not hold {SCHEDULED_AT!r}: each run gets its tick under that name"
        )
    check_int(max_catchup, "max_catchup", minimum=1, maximum=MAX_TICKS_PER_FIRING)
    if queue is not None:
        check_name(queue, "queue")
    check_int(priority, "priority")
    check_bool(paused, "paused")
    return ScheduleInfo(
        name=name,
        workflow=workflow_name,
        cron=cron,
        timezone=timezone,
        args=list(args),
        kwargs=dict(kwargs),
        missed=policy,
        max_catchup=max_catchup,
        queue=queue if queue is not None else default_queue,
        priority=priority,
        paused=paused,
        next_run_at=next_tick(cron, timezone, now),
    )


@dataclasses.dataclass(frozen=True)
class ScheduleDeclaration:
    """A schedule declared in code with :func:`scheduled`, stored when a runtime starts."""

    name: str
    cron: str
    workflow: Workflow[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    timezone: str
    missed: MissedTicks
    max_catchup: int
    priority: int

    def record(self, now: datetime) -> ScheduleInfo:
        record = build_schedule(
            self.name,
            self.cron,
            self.workflow,
            self.args,
            self.kwargs,
            timezone=self.timezone,
            missed=self.missed,
            max_catchup=self.max_catchup,
            priority=self.priority,
            now=now,
        )
        return dataclasses.replace(record, declared=True)


#: Per registry, the schedules declared for its workflows, by name.
_declared: weakref.WeakKeyDictionary[Registry, dict[str, ScheduleDeclaration]] = (
    weakref.WeakKeyDictionary()
)
_declared_lock = threading.Lock()


def declared_schedules(registry: Registry) -> list[ScheduleDeclaration]:
    """The schedules declared with :func:`scheduled` for ``registry``'s workflows, by name."""
    with _declared_lock:
        found = _declared.get(registry, {})
        return [found[n] for n in sorted(found)]


def scheduled(
    cron: str,
    *,
    timezone: str = "UTC",
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    missed: MissedTicks | str = MissedTicks.SKIP,
    max_catchup: int = 10,
    priority: int = 0,
    registry: Registry | None = None,
) -> Callable[[W], W]:
    """Run a workflow on a cron schedule. Put it *above* ``@durable.workflow``::

        @durable.scheduled("0 2 * * *", timezone="Europe/Paris")
        @durable.workflow(name="reports.nightly.v1")
        async def nightly(*, scheduled_at: str) -> None: ...

    Each tick enqueues one execution, with ``args``, ``kwargs`` and ``scheduled_at`` (the tick,
    ISO 8601 in UTC). The schedule (named ``name``, by default the workflow's name) is stored
    when a runtime on ``registry`` starts (a worker, ``durable worker``), so every worker and
    the CLI see it; a definition changed in code replaces the stored one at the next start,
    while a pause from the CLI or a client is kept. Stacking several ``scheduled`` with
    different names schedules one workflow several times.

    :param missed: ticks missed during downtime: ``"skip"`` (default), ``"latest"`` or ``"all"``
        (at most ``max_catchup``); see :class:`~durable.models.MissedTicks`.
    :param registry: the registry the runtime serving the workflow uses (default: the one
        ``@durable.workflow(registry=...)`` registered it in, so a schedule goes where its
        workflow is served).

    :raises InvalidArgumentError: a bad argument, named (see :func:`build_schedule`), or the
        decorated object is not a durable workflow (put ``@durable.scheduled`` above
        ``@durable.workflow``).
    :raises ConfigurationError: another schedule of the registry has the same name (another
        workflow's, or another ``@durable.scheduled`` of this one: stacked ones need names).
    """
    probe = build_schedule(
        name if name is not None else "probe",
        cron,
        "probe",
        args,
        kwargs,
        timezone=timezone,
        missed=missed,
        max_catchup=max_catchup,
        priority=priority,
        now=datetime.now(UTC),
    )

    def decorate(wf: W) -> W:
        if not isinstance(wf, Workflow):
            raise InvalidArgumentError(
                f"@durable.scheduled applies to a durable workflow, got {wf!r}: put it above "
                "@durable.workflow"
            )
        target = registry or wf.registry or default_registry
        _check_fits(wf, probe.args, probe.kwargs, where=f"@durable.scheduled on {wf.name!r}")
        declaration = ScheduleDeclaration(
            name=check_schedule_name(name if name is not None else wf.name),
            cron=probe.cron,
            workflow=wf,
            args=tuple(probe.args),
            kwargs=dict(probe.kwargs),
            timezone=probe.timezone,
            missed=probe.missed,
            max_catchup=probe.max_catchup,
            priority=probe.priority,
        )
        with _declared_lock:
            found = _declared.setdefault(target, {})
            known = found.get(declaration.name)
            if known is not None and known.workflow.name != wf.name:
                raise ConfigurationError(
                    f"schedule name {declaration.name!r} is already used for workflow "
                    f"{known.workflow.name!r}: give this one another name="
                )
            if known is not None and known.workflow is wf and known != declaration:
                # stacked on one workflow under one name: the later would replace the earlier
                # (a module imported again declares on a new workflow object, and replaces)
                raise ConfigurationError(
                    f"workflow {wf.name!r} is scheduled twice under the name "
                    f"{declaration.name!r} ({known.cron!r} and {declaration.cron!r}): give "
                    "each @durable.scheduled of one workflow its own name="
                )
            found[declaration.name] = declaration
        return wf

    return decorate


def _check_fits(
    wf: Workflow[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any], *, where: str
) -> None:
    """Refuse, where it is declared or created (``where`` says which), a schedule whose every
    run would fail at once: the workflow's function cannot take its ``args``, ``kwargs`` and
    ``scheduled_at``.

    :raises InvalidArgumentError: it cannot (the message says how to fix it).
    """
    problem = wf.cannot_take(args, {**kwargs, SCHEDULED_AT: ""})
    if problem is not None:  # (no signature to read, a builtin: judged when it runs)
        raise InvalidArgumentError(
            f"{where}: each tick calls it with args={tuple(args)!r}, kwargs={dict(kwargs)!r} "
            f"and scheduled_at (the tick, a str), which it cannot take ({problem}): fix the "
            "arguments, or add a scheduled_at parameter (or **kwargs) to the workflow"
        )


async def store_declared_schedules(backend: PersistentBackend, registry: Registry) -> int:
    """Store (create or update) the schedules declared for ``registry``; returns how many.

    Then delete the stored schedules that code declared (:attr:`ScheduleInfo.declared`) for a
    workflow ``registry`` serves but that no code of this process declares any more (the
    ``@durable.scheduled`` was removed, or renamed with ``name=``): this process imported the
    workflow's definition, so it would hold the declaration. Schedules created from a client,
    and those of workflows served elsewhere only, are left alone.
    """
    declarations = declared_schedules(registry)
    if declarations:
        now = await backend.now()
        for declaration in declarations:
            await backend.put_schedule(declaration.record(now))
    with _declared_lock:
        everywhere = {name for found in _declared.values() for name in found}
    for stored in await backend.list_schedules():
        dropped = stored.declared and stored.name not in everywhere
        if dropped and stored.workflow in registry and await backend.delete_schedule(stored.name):
            log.info(
                "schedule %s deleted: its workflow %s is served here and no code declares "
                "the schedule any more",
                stored.name,
                stored.workflow,
                extra={"action": "schedule.deleted", "schedule": stored.name},
            )
    return len(declarations)


def runs_for(
    schedule: ScheduleInfo,
    ticks: Sequence[datetime],
    registry: Registry | None,
    *,
    trigger: bool,
    now: datetime | None = None,
) -> list[tuple[WorkflowSnapshot, TaskSpec]]:
    """The executions (and their tasks) of ``schedule``'s ``ticks``. Where ``registry`` has the
    workflow, its retry policy gives ``max_attempts`` and its ``timeout`` a deadline from
    ``now`` (the store's clock, as for an enqueue of the function); a name gives neither."""
    wf: Workflow[Any, Any] | str = schedule.workflow
    if registry is not None and schedule.workflow in registry:
        known = registry.get(schedule.workflow)
        if isinstance(known, Workflow):
            wf = known
    max_attempts = wf.retry.max_attempts if isinstance(wf, Workflow) else DEFAULT_MAX_ATTEMPTS
    runs = []
    for tick in ticks:
        key = tick_key(schedule.name, tick, trigger=trigger)
        options = EnqueueOptions(
            idempotency_key=key,
            priority=schedule.priority,
            max_attempts=max_attempts,
            queue=schedule.queue,
        )
        if now is not None:
            options = with_deadline(wf, options, now)
        kwargs = {**schedule.kwargs, SCHEDULED_AT: tick.astimezone(UTC).isoformat()}
        runs.append(execution_record(wf, key, schedule.args, kwargs, options))
    return runs


class ScheduleOperations:
    """The schedule operations of :class:`~durable.Client` (each with a ``_sync`` twin)."""

    backend: PersistentBackend

    if TYPE_CHECKING:  # provided by the client

        def blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...
        def _require_started(self) -> None: ...
        def _policies(self) -> Registry | None: ...

    async def create_schedule(
        self,
        name: str,
        cron: str,
        workflow: Workflow[Any, Any] | str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timezone: str = "UTC",
        missed: MissedTicks | str = MissedTicks.SKIP,
        max_catchup: int = 10,
        queue: str | None = None,
        priority: int = 0,
        paused: bool = False,
    ) -> ScheduleInfo:
        """Create the schedule ``name``, or replace its definition (keeping whether it is
        paused; its next run moves only if ``cron`` or ``timezone`` changed). Each tick of
        ``cron`` (read in ``timezone``) enqueues one execution of ``workflow`` with ``args``,
        ``kwargs`` and ``scheduled_at`` (the tick, ISO 8601 in UTC); see :func:`scheduled`.

        :raises InvalidArgumentError: a bad argument, named (see :func:`build_schedule`);
            ``workflow`` is a name no runtime ever registered, or a workflow that cannot take
            ``args``, ``kwargs`` and ``scheduled_at``.
        """
        self._require_started()
        record = build_schedule(
            name,
            cron,
            workflow,
            args,
            kwargs,
            timezone=timezone,
            missed=missed,
            max_catchup=max_catchup,
            queue=queue,
            priority=priority,
            paused=paused,
            now=await self.backend.now(),
        )
        if isinstance(workflow, Workflow):  # as an enqueue of the function, checked first
            _check_fits(workflow, record.args, record.kwargs, where=f"create_schedule({name!r})")
        else:
            known = {w.name for w in await self.backend.list_registered_workflows()}
            if workflow not in known:
                raise InvalidArgumentError(
                    f"workflow: no workflow is registered under the name {workflow!r} (start a "
                    "worker that serves it first, or pass the decorated workflow)"
                )
        stored, _created = await self.backend.put_schedule(record)
        return stored

    def create_schedule_sync(
        self,
        name: str,
        cron: str,
        workflow: Workflow[Any, Any] | str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timezone: str = "UTC",
        missed: MissedTicks | str = MissedTicks.SKIP,
        max_catchup: int = 10,
        queue: str | None = None,
        priority: int = 0,
        paused: bool = False,
    ) -> ScheduleInfo:
        """:meth:`create_schedule` from sync code."""
        return self.blocking(
            self.create_schedule(
                name,
                cron,
                workflow,
                args,
                kwargs,
                timezone=timezone,
                missed=missed,
                max_catchup=max_catchup,
                queue=queue,
                priority=priority,
                paused=paused,
            )
        )

    async def get_schedule(self, name: str) -> ScheduleInfo:
        """:raises ScheduleNotFoundError: no such schedule."""
        self._require_started()
        return await self.backend.get_schedule(check_schedule_name(name))

    def get_schedule_sync(self, name: str) -> ScheduleInfo:
        return self.blocking(self.get_schedule(name))

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule, by name, with its next run time (``next_run_at``)."""
        self._require_started()
        return await self.backend.list_schedules()

    def list_schedules_sync(self) -> list[ScheduleInfo]:
        return self.blocking(self.list_schedules())

    async def pause_schedule(self, name: str) -> ScheduleInfo:
        """Stop the schedule's ticks until :meth:`resume_schedule` (for every scheduler).

        :raises ScheduleNotFoundError: no such schedule."""
        self._require_started()
        return await self.backend.set_schedule_paused(check_schedule_name(name), True)

    def pause_schedule_sync(self, name: str) -> ScheduleInfo:
        return self.blocking(self.pause_schedule(name))

    async def resume_schedule(self, name: str) -> ScheduleInfo:
        """Resume a paused schedule from its next tick after now: the ticks that passed while
        it was paused do not run. A schedule that is not paused is left as it is (its due and
        missed ticks still run).

        :raises ScheduleNotFoundError: no such schedule."""
        self._require_started()
        schedule = await self.backend.get_schedule(check_schedule_name(name))
        following = next_tick(schedule.cron, schedule.timezone, await self.backend.now())
        return await self.backend.set_schedule_paused(name, False, next_run_at=following)

    def resume_schedule_sync(self, name: str) -> ScheduleInfo:
        return self.blocking(self.resume_schedule(name))

    async def trigger_schedule(self, name: str) -> WorkflowInfo:
        """Enqueue one execution of the schedule now (paused or not), its tick the store's
        current time; the schedule's own ticks are not changed. Returns the execution. From a
        runtime's client, it gets the workflow's ``timeout`` and retry policy, as a tick
        does; from a client of its own, which has no code, neither (as an enqueue by name).

        :raises ScheduleNotFoundError: no such schedule."""
        self._require_started()
        schedule = await self.backend.get_schedule(check_schedule_name(name))
        tick = await self.backend.now()
        ((snapshot, task),) = runs_for(schedule, [tick], self._policies(), trigger=True, now=tick)
        options = EnqueueOptions(
            idempotency_key=snapshot.idempotency_key,
            priority=task.priority,
            max_attempts=snapshot.max_attempts,
            queue=task.queue,
            deadline=snapshot.deadline,
        )
        return await create_execution(
            self.backend,
            schedule.workflow,
            snapshot.id,
            snapshot.input["args"],
            snapshot.input["kwargs"],
            options=options,
        )

    def trigger_schedule_sync(self, name: str) -> WorkflowInfo:
        return self.blocking(self.trigger_schedule(name))

    async def delete_schedule(self, name: str) -> bool:
        """Delete the schedule (its executions are kept). Returns False if there was none.
        A schedule still declared in code comes back when a runtime declaring it starts."""
        self._require_started()
        return await self.backend.delete_schedule(check_schedule_name(name))

    def delete_schedule_sync(self, name: str) -> bool:
        return self.blocking(self.delete_schedule(name))
