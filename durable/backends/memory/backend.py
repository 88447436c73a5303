"""The memory backend's composition root: :class:`InMemoryBackend`, assembled from one class
per area (:mod:`.workflows`, :mod:`.execution`, :mod:`.claims`, :mod:`.executors`,
:mod:`.messages`, :mod:`.outputs`, :mod:`.schedules`, :mod:`.retention`, on the shared base
:mod:`.core`), with its stores and the helpers tests use to look inside it."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from durable.backends.base import IdleView
from durable.backends.memory.batches import Batches
from durable.backends.memory.changes import (
    Changes,
    StampedMessageStore,
    StampedStepStore,
    StampedWorkflows,
    Stamps,
)
from durable.backends.memory.claims import Claims
from durable.backends.memory.continuation import Continuation
from durable.backends.memory.core import MemoryCore, StoredTask, TaskOrder, is_live, utcnow
from durable.backends.memory.debounces import Debounces
from durable.backends.memory.execution import Execution
from durable.backends.memory.executors import Executors
from durable.backends.memory.forks import Forks
from durable.backends.memory.labels import Labels
from durable.backends.memory.messages import Messages
from durable.backends.memory.outputs import Outputs, StoredEvent, StoredStream
from durable.backends.memory.queues import Queues
from durable.backends.memory.retention import Retention
from durable.backends.memory.schedules import Schedules
from durable.backends.memory.workflows import Workflows
from durable.models import (
    ExecutorInfo,
    Message,
    QueueInfo,
    RegisteredWorkflow,
    ScheduleInfo,
    StepRecord,
    WorkflowInfo,
)
from durable.serialization import Serializer, get_serializer


class InMemoryBackend(
    Outputs,
    Debounces,
    Workflows,
    Batches,
    Execution,
    Continuation,
    Claims,
    Executors,
    Messages,
    Schedules,
    Queues,
    Retention,
    Labels,
    Forks,
    Changes,
    MemoryCore,
):
    """Thread- and task-safe storage in memory.

    :param serializer: ``"json"`` (default), ``"pickle"`` or a :class:`Serializer`.
    :param clock: returns the current UTC time; tests may pass a fake clock to move time.
    """

    def __init__(
        self,
        *,
        serializer: str | Serializer | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.serializer = get_serializer(serializer)
        self.clock = clock
        self._lock = threading.RLock()
        self._seq = itertools.count(1)
        # stores that stamp each change with its change feed position (.changes)
        self._stamps = Stamps()
        self._workflows: dict[str, WorkflowInfo] = StampedWorkflows(self._stamps)
        self._steps: dict[str, dict[int, StepRecord]] = StampedStepStore(self._stamps)
        self._tasks: dict[tuple[str, str], StoredTask] = {}
        self._task_order = TaskOrder()
        self._idempotency: dict[str, str] = {}
        self._registry: dict[str, RegisteredWorkflow] = {}
        self._executors: dict[str, ExecutorInfo] = {}
        self._messages: dict[str, list[Message]] = StampedMessageStore(self._stamps)
        self._events: dict[str, dict[str, StoredEvent]] = {}
        self._streams: dict[str, dict[str, StoredStream]] = {}
        self._schedules: dict[str, ScheduleInfo] = {}
        self._labels: dict[str, dict[str, str]] = {}
        self._queues: dict[str, QueueInfo] = {}
        self._queue_starts: dict[str, deque[datetime]] = {}
        self._debounces: dict[tuple[str, str], str] = {}

    async def now(self) -> datetime:
        """The time by :attr:`clock`, which judges every lease and due time here."""
        return self.clock().astimezone(UTC)

    async def delete_snapshot(self, instance_id: str) -> bool:
        with self._lock:  # re-entrant: the deletion and forgetting its outputs are one
            deleted = await super().delete_snapshot(instance_id)
            self._forget_outputs(instance_id)
        return deleted

    def __repr__(self) -> str:
        return f"InMemoryBackend(workflows={len(self._workflows)}, tasks={len(self._tasks)})"

    # -- helpers for tests ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything stored."""
        with self._lock:
            self._workflows.clear()
            self._steps.clear()
            self._tasks.clear()
            self._task_order = TaskOrder()
            self._idempotency.clear()
            self._registry.clear()
            self._executors.clear()
            self._messages.clear()
            self._events.clear()
            self._streams.clear()
            self._schedules.clear()
            self._labels.clear()
            self._queues.clear()
            self._queue_starts.clear()
            self._debounces.clear()

    def workflow_ids(self) -> list[str]:
        """The ids of every stored workflow, in insertion order."""
        with self._lock:
            return list(self._workflows)

    def task_keys(self) -> list[tuple[str, str]]:
        """The ``(instance_id, task_id)`` of every live task, in creation order."""
        with self._lock:
            return sorted(self._tasks, key=lambda k: self._tasks[k].seq)

    # -- a test's time-skipping clock (durable.testing.clock) ------------------------------------

    def idle_view_now(self, now: datetime, horizon: datetime) -> IdleView:
        """:meth:`idle_view`, synchronously (the clock holds :attr:`_lock` across the view
        and its skip, so nothing happens in between)."""
        with self._lock:
            leases: list[tuple[str, str]] = []
            due = False
            times: list[datetime] = []
            for key, task in self._tasks.items():
                if is_live(task, now):
                    leases.append(key)
                elif task.run_after <= now:
                    due = True
                elif task.run_after < horizon:
                    times.append(task.run_after)
            times.extend(
                info.deadline
                for info in self._workflows.values()
                if info.deadline is not None and info.deadline > now and not info.status.is_terminal
            )
            return IdleView(leases, due, min(times) if times else None)

    async def idle_view(self, now: datetime, horizon: datetime) -> IdleView:
        """What could run at ``now`` (see :class:`~durable.backends.base.IdleView`)."""
        return self.idle_view_now(now, horizon)

    def skip_idle_now(
        self, now: datetime, horizon: datetime, decide: Callable[[IdleView], datetime | None]
    ) -> datetime | None:
        """:meth:`skip_idle`, synchronously."""
        with self._lock:
            target = decide(self.idle_view_now(now, horizon))
            if target is not None and target > now:
                self.shift_now(now, target - now)
            return target

    async def skip_idle(
        self, now: datetime, horizon: datetime, decide: Callable[[IdleView], datetime | None]
    ) -> datetime | None:
        """At once, nothing else happening in between: the view at ``now``; ``decide`` it (the
        moment to skip to, or None); and if the moment is later, :meth:`shift` to it. Returns
        what ``decide`` returned (the caller moves its clock there)."""
        return self.skip_idle_now(now, horizon, decide)

    def shift_now(self, before: datetime, step: timedelta) -> None:
        """:meth:`shift`, synchronously."""
        with self._lock:
            for task in self._tasks.values():
                if task.claim_expires_at is not None and task.claim_expires_at > before:
                    task.claim_expires_at += step
            for key, executor in list(self._executors.items()):
                if executor.stopped_at is None and not executor.stale:
                    self._executors[key] = dataclasses.replace(
                        executor, heartbeat_at=executor.heartbeat_at + step
                    )

    async def shift(self, before: datetime, step: timedelta) -> None:
        """Carry live holders across a skip of ``step`` from ``before``: the claims live at
        ``before`` and running executors' heartbeats end ``step`` later, as their holders'
        heartbeats (alive: they wait) would have made them."""
        self.shift_now(before, step)

    def claims(self) -> dict[tuple[str, str], str]:
        """Who holds a live claim on which task."""
        with self._lock:
            now = self.clock()
            return {
                key: t.claimed_by
                for key, t in self._tasks.items()
                if t.claimed_by is not None and is_live(t, now)
            }
