"""Retention: finished workflows older than a time deleted in small batches, each batch one short
transaction (see :meth:`~durable.backends.PersistentBackend.delete_finished_workflows`).

A batch selects the ids of the oldest deletable workflows (by the index on ``completed_at``),
on PostgreSQL ``FOR UPDATE SKIP LOCKED`` so that it neither waits for a row a worker or another
deleter holds nor blocks one, then deletes them; their steps, tasks, messages, events and streams
go by ``ON DELETE CASCADE`` (SQLite runs with ``PRAGMA foreign_keys=ON``). On SQLite ``BEGIN
IMMEDIATE`` serializes writers: a batch is short, so claims wait for one batch at most.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). Not on the
hot path: statements are built per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from durable.backends.base import check_aware
from durable.backends.sql.core import SQLCore
from durable.backends.sql.schema import steps, workflows
from durable.errors import InvalidArgumentError
from durable.models import StepStatus, WorkflowStatus

_FINISHED = [s.value for s in WorkflowStatus if s.is_terminal]
#: Spelled out (not ``NOT IN finished``) so that the status indexes find the few unfinished
#: rows instead of a scan of the table for each batch.
_UNFINISHED = [s.value for s in WorkflowStatus if not s.is_terminal]


def _deletable(
    before: datetime, names: Sequence[str] | None, queues: Sequence[str] | None
) -> list[sa.ColumnElement[bool]]:
    """The conditions a deletable workflow meets (the rule in the interface's docstring)."""
    check_aware(before)
    w = workflows.c
    parent = workflows.alias("parent")
    child = workflows.alias("child")
    conditions: list[sa.ColumnElement[bool]] = [
        w.completed_at < before,
        w.status.in_(_FINISHED),
        ~sa.exists().where(parent.c.id == w.parent_id, parent.c.status.in_(_UNFINISHED)),
        # a child its stored parent still awaits (the parent was cancelled or failed while it
        # did, and awaits it again when run again), by the steps' primary key
        ~sa.exists().where(
            steps.c.workflow_id == w.parent_id,
            steps.c.child_workflow_id == w.id,
            steps.c.status == StepStatus.PENDING.value,
        ),
        # not correlated: the parents of unfinished workflows, found once per batch by the
        # status index (a per-row probe of parent_id is planned as a scan by SQLite once
        # ANALYZE has seen a column of mostly NULLs)
        w.id.not_in(
            sa.select(child.c.parent_id).where(
                child.c.status.in_(_UNFINISHED), child.c.parent_id.is_not(None)
            )
        ),
    ]
    if names is not None:
        conditions.append(w.name.in_(list(names)))
    if queues is not None:
        conditions.append(w.queue.in_(list(queues)))
    return conditions


class Retention(SQLCore):
    """Deleting finished workflows past a retention period, and counting them."""

    async def delete_finished_workflows(
        self,
        before: datetime,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        limit: int = 1000,
    ) -> int:
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        select = self.dialect.skip_locked(
            sa.select(workflows.c.id)
            .where(*_deletable(before, names, queues))
            .order_by(workflows.c.completed_at)
            .limit(limit)
        )

        def fn(conn: sa.Connection) -> int:
            ids: list[Any] = list(conn.execute(select).scalars())
            if not ids:
                return 0
            deleted = conn.execute(sa.delete(workflows).where(workflows.c.id.in_(ids)))
            return int(deleted.rowcount)

        return await self._run(fn, what="delete finished workflows")

    async def count_finished_workflows(
        self,
        before: datetime,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
    ) -> int:
        query = sa.select(sa.func.count()).where(*_deletable(before, names, queues))
        query = query.select_from(workflows)

        def fn(conn: sa.Connection) -> int:
            return int(conn.execute(query).scalar_one())

        return await self._run(fn, what="count finished workflows", read_only=True)
