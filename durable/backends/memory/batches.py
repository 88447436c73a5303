"""The memory backend's enqueueing of many workflows at once (``create_workflows``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from durable.backends.base import batch_owners, check_aware, clash_error
from durable.backends.memory.core import MemoryCore
from durable.errors import InvalidArgumentError, SerializationError
from durable.models import StepRecord, TaskSpec, WorkflowInfo, WorkflowSnapshot


class Batches(MemoryCore):
    """Many workflows created under one lock: every row checked before any is stored."""

    async def create_workflows(
        self, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
    ) -> list[tuple[WorkflowInfo, bool]]:
        owners = batch_owners(batch)
        prepared: dict[int, tuple[WorkflowInfo, dict[int, StepRecord]]] = {}
        labels: dict[int, dict[str, str]] = {}
        with self._lock:
            now = self.clock()
            existing: dict[int, str] = {}
            # every row checked before anything is stored: all or nothing
            for index, (snapshot, task) in enumerate(batch):
                if owners[index] != index:
                    continue
                found = snapshot.id if snapshot.id in self._workflows else None
                if found is None and snapshot.idempotency_key is not None:
                    found = self._idempotency.get(snapshot.idempotency_key)
                if found is not None:
                    stored_name = self._workflows[found].name
                    if stored_name != snapshot.name:
                        raise clash_error(index, snapshot, found, stored_name)
                    existing[index] = found
                    continue
                header = snapshot.header()
                try:
                    stored = self._store_info(
                        dataclasses.replace(
                            header,
                            version=1,
                            created_at=header.created_at or now,
                            updated_at=now,
                        )
                    )
                    steps = {s.position: self._store_step(s, now) for s in snapshot.steps}
                    check_aware(task.run_after if task is not None else None)
                    labels[index] = self._merged_labels(snapshot)
                except InvalidArgumentError as exc:
                    raise InvalidArgumentError(f"inputs[{index}]: {exc}") from exc
                except SerializationError as exc:
                    raise SerializationError(f"inputs[{index}]: {exc}") from exc
                prepared[index] = (stored, steps)
            tasks = False
            for index, (stored, steps) in prepared.items():
                snapshot, task = batch[index]
                self._workflows[snapshot.id] = stored
                self._steps[snapshot.id] = steps
                if labels[index]:
                    self._labels[snapshot.id] = labels[index]
                if snapshot.idempotency_key is not None:
                    self._idempotency[snapshot.idempotency_key] = snapshot.id
                if task is not None:
                    self._add_task(task, now)
                    tasks = True
            results = []
            for index, owner in enumerate(owners):
                if owner in prepared:
                    info = self._load_info(prepared[owner][0], lenient=True)
                    results.append((info, owner == index))
                else:
                    results.append(
                        (self._load_info(self._workflows[existing[owner]], lenient=True), False)
                    )
        if tasks:
            self.notify_work()
        return results
