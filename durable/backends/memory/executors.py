"""The memory backend's workflow registry and executors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta

from durable.backends.memory.core import MemoryCore
from durable.errors import UnknownWorkflowError
from durable.models import ExecutorInfo, RegisteredWorkflow, is_stale, ttl_seconds
from durable.validation import check_positive_float


class Executors(MemoryCore):
    """The workflow registry and executors."""

    async def register_workflows(self, entries: Sequence[RegisteredWorkflow]) -> None:
        with self._lock:
            now = self.clock()
            for entry in entries:
                known = self._registry.get(entry.name)
                enabled = known.enabled if known is not None else entry.enabled
                self._registry[entry.name] = dataclasses.replace(
                    entry, enabled=enabled, updated_at=now
                )

    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        with self._lock:
            known = self._registry.get(name)
            if known is None:
                raise UnknownWorkflowError(f"no workflow is registered under the name {name!r}")
            entry = dataclasses.replace(known, enabled=enabled, updated_at=self.clock())
            self._registry[name] = entry
            return entry

    async def list_registered_workflows(self) -> list[RegisteredWorkflow]:
        with self._lock:
            return [self._registry[n] for n in sorted(self._registry)]

    async def get_executor(self, executor_id: str) -> ExecutorInfo | None:
        with self._lock:
            known = self._executors.get(executor_id)
            if known is None:
                return None
            return dataclasses.replace(known, stale=is_stale(known, self.clock()))

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
        check_positive_float(heartbeat_interval, "heartbeat_interval")
        with self._lock:
            known = self._executors.get(executor_id)
            if (known.incarnation if known is not None else None) != replacing:
                return False
            now = self.clock()
            self._executors[executor_id] = ExecutorInfo(
                id=executor_id,
                hostname=hostname,
                pid=pid,
                started_at=now,
                heartbeat_at=now,
                stopped_at=None,
                stale=False,
                heartbeat_interval=heartbeat_interval,
                incarnation=incarnation,
            )
            return True

    async def record_executor_heartbeat(self, executor_id: str, *, incarnation: str) -> bool:
        with self._lock:
            known = self._executors.get(executor_id)
            if known is None or known.incarnation != incarnation or known.stopped_at is not None:
                return False
            self._executors[executor_id] = dataclasses.replace(known, heartbeat_at=self.clock())
            return True

    async def mark_executor_stopped(self, executor_id: str, *, incarnation: str) -> None:
        with self._lock:
            known = self._executors.get(executor_id)
            if known is not None and known.incarnation == incarnation:
                self._executors[executor_id] = dataclasses.replace(known, stopped_at=self.clock())

    async def list_executors(self, *, stale_after: timedelta | None = None) -> list[ExecutorInfo]:
        limit = None if stale_after is None else timedelta(seconds=ttl_seconds(stale_after))
        with self._lock:
            now = self.clock()
            found = [
                dataclasses.replace(e, stale=is_stale(e, now, limit))
                for e in self._executors.values()
            ]
        return sorted(found, key=lambda e: e.heartbeat_at, reverse=True)
