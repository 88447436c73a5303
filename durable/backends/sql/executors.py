"""The workflow registry (which workflow names exist, and whether workers may claim them) and
executors (the processes that run workflows, with their heartbeats).

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). These are
not on the hot path: their statements are built per call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import timedelta

import sqlalchemy as sa

from durable.backends.sql.core import SQLCore, aware
from durable.backends.sql.schema import executors, workflow_registry
from durable.errors import UnknownWorkflowError
from durable.models import ExecutorInfo, RegisteredWorkflow, is_stale, ttl_seconds
from durable.validation import check_positive_float


class Executors(SQLCore):
    """The workflow registry, and executors with their heartbeats."""

    async def register_workflows(self, entries: Sequence[RegisteredWorkflow]) -> None:
        now = self.clock()
        rows = [
            {
                "name": e.name,
                "enabled": e.enabled,
                "description": e.description,
                "updated_at": now,
            }
            for e in entries
        ]
        if not rows:
            return
        ins = self.dialect.insert(workflow_registry)
        stmt = ins.on_conflict_do_update(
            index_elements=[workflow_registry.c.name],
            set_={
                "description": ins.excluded.description,
                "updated_at": ins.excluded.updated_at,
            },
        )
        await self._run(lambda conn: conn.execute(stmt, rows), what="register workflows")

    async def set_workflow_enabled(self, name: str, enabled: bool) -> RegisteredWorkflow:
        stmt = (
            sa.update(workflow_registry)
            .where(workflow_registry.c.name == name)
            .values(enabled=enabled, updated_at=self.clock())
            .returning(*workflow_registry.c)
        )

        def fn(conn: sa.Connection) -> RegisteredWorkflow:
            row = conn.execute(stmt).first()
            if row is None:
                raise UnknownWorkflowError(f"no workflow is registered under the name {name!r}")
            return RegisteredWorkflow(**row._mapping)

        return await self._run(fn, what=f"enable or disable workflow {name!r}")

    async def list_registered_workflows(self) -> list[RegisteredWorkflow]:
        stmt = sa.select(workflow_registry).order_by(workflow_registry.c.name)
        return await self._run(
            lambda conn: [RegisteredWorkflow(**r._mapping) for r in conn.execute(stmt)],
            what="list registered workflows",
            read_only=True,
        )

    def _executor_rows(
        self, where: sa.ColumnElement[bool] | None, stale_after: timedelta | None
    ) -> Callable[[sa.Connection], list[ExecutorInfo]]:
        """Read executors with the storage's current time, and judge staleness by it."""
        stmt = sa.select(executors, self.dialect.now().label("db_now")).order_by(
            executors.c.heartbeat_at.desc()
        )
        if where is not None:
            stmt = stmt.where(where)
        clock = self.dialect.clock_params()

        def fn(conn: sa.Connection) -> list[ExecutorInfo]:
            found = []
            for r in conn.execute(stmt, clock):
                values = dict(r._mapping)
                now = aware(values.pop("db_now"))
                assert now is not None
                info = ExecutorInfo(**values, stale=False)
                found.append(dataclasses.replace(info, stale=is_stale(info, now, stale_after)))
            return found

        return fn

    async def get_executor(self, executor_id: str) -> ExecutorInfo | None:
        fn = self._executor_rows(executors.c.id == executor_id, None)
        found = await self._run(fn, what=f"read executor {executor_id!r}", read_only=True)
        return found[0] if found else None

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
        clock = self.dialect.clock_params()
        now = self.dialect.now()
        values = {
            "hostname": hostname,
            "pid": pid,
            "incarnation": incarnation,
            "heartbeat_interval": heartbeat_interval,
            "started_at": now,
            "heartbeat_at": now,
            "stopped_at": None,
        }
        stmt: sa.Executable
        if replacing is None:
            stmt = (
                self.dialect.insert(executors)
                .values(id=executor_id, **values)
                .on_conflict_do_nothing(index_elements=[executors.c.id])
            )
        else:
            stmt = (
                sa.update(executors)
                .where(executors.c.id == executor_id, executors.c.incarnation == replacing)
                .values(**values)
            )
        stmt = stmt.execution_options(preserve_rowcount=True)
        return await self._run(
            lambda conn: conn.execute(stmt, clock).rowcount == 1,
            what=f"start executor {executor_id!r}",
        )

    async def record_executor_heartbeat(self, executor_id: str, *, incarnation: str) -> bool:
        clock = self.dialect.clock_params()
        stmt = (
            sa.update(executors)
            .where(
                executors.c.id == executor_id,
                executors.c.incarnation == incarnation,
                executors.c.stopped_at.is_(None),
            )
            .values(heartbeat_at=self.dialect.now())
            .execution_options(preserve_rowcount=True)
        )
        return await self._run(
            lambda conn: conn.execute(stmt, clock).rowcount == 1, what="record a heartbeat"
        )

    async def mark_executor_stopped(self, executor_id: str, *, incarnation: str) -> None:
        clock = self.dialect.clock_params()
        stmt = (
            sa.update(executors)
            .where(executors.c.id == executor_id, executors.c.incarnation == incarnation)
            .values(stopped_at=self.dialect.now())
        )
        await self._run(lambda conn: conn.execute(stmt, clock), what="mark an executor stopped")

    async def list_executors(self, *, stale_after: timedelta | None = None) -> list[ExecutorInfo]:
        limit = None if stale_after is None else timedelta(seconds=ttl_seconds(stale_after))
        return await self._run(
            self._executor_rows(None, limit), what="list executors", read_only=True
        )
