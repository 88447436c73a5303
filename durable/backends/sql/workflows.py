"""Workflows as records: create, save, load, list, delete, cancel and requeue them.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`); running a
workflow (begin, steps, finish) is :mod:`.execution`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from durable.backends.base import deadline_error
from durable.backends.cursors import decode_cursor, encode_cursor
from durable.backends.sql.core import (
    P_IID,
    SQLCore,
    has_labels,
    overwrite_steps,
    write_labels,
)
from durable.backends.sql.schema import steps, tasks, workflows
from durable.errors import (
    BackendError,
    ConcurrentUpdateError,
    InvalidArgumentError,
    WorkflowAlreadyExistsError,
    WorkflowNotFoundError,
)
from durable.models import (
    WORKFLOW_TASK,
    ErrorInfo,
    Page,
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
    as_status_set,
)
from durable.validation import check_labels

_TERMINAL = [s.value for s in WorkflowStatus if s.is_terminal]
_UNFINISHED = [s.value for s in WorkflowStatus if not s.is_terminal]
#: Ids per statement when a cancellation walks down to a workflow's descendants.
_PAGE = 500
_REQUEUEABLE = [
    WorkflowStatus.FAILED.value,
    WorkflowStatus.DEAD_LETTER.value,
    WorkflowStatus.CANCELLED.value,
]


class WorkflowRecords(SQLCore):
    """Workflows as records: their snapshots, listings, cancellation and requeueing."""

    def _build_workflow_statements(self) -> None:
        d = self.dialect
        # a new workflow's row (its change feed position computed by the insert, see .feed)
        insert = d.insert(workflows).values(created_seq=d.next_position()).on_conflict_do_nothing()
        self._insert_workflow = insert.execution_options(preserve_rowcount=True)
        self._create_workflow = insert.returning(*workflows.c)
        # a snapshot's steps, written over those stored at their positions
        self._save_steps = overwrite_steps(
            d, d.insert(steps).values(change_seq=d.next_position()), pending_only=False
        )
        self._select_by_idempotency_key = (
            sa.select(workflows)
            .where(
                sa.or_(
                    workflows.c.id == P_IID,
                    workflows.c.idempotency_key == sa.bindparam("p_key", type_=sa.String()),
                )
            )
            .limit(1)
        )

    async def create_workflow(
        self, snapshot: WorkflowSnapshot, *, task: TaskSpec | None = None
    ) -> tuple[WorkflowInfo, bool]:
        now = self.clock()
        labelled = snapshot.labels or snapshot.parent_id is not None
        if snapshot.labels:
            snapshot = dataclasses.replace(snapshot, labels=check_labels(snapshot.labels))
        row = self._workflow_row(snapshot, now, 1)
        step_rows = [self._step_row(snapshot.id, s, now) for s in snapshot.steps]
        task_row = self._task_row(task, now) if task is not None else None
        # "idempotency_key = NULL" matches nothing, so with no key this looks up the id only
        match = {"p_iid": snapshot.id, "p_key": snapshot.idempotency_key}

        def fn(conn: sa.Connection) -> tuple[WorkflowInfo, bool]:
            stored = conn.execute(self._create_workflow, row).first()
            if stored is None:
                existing = conn.execute(self._select_by_idempotency_key, match).one()
                return self._info(existing, lenient=True), False
            if step_rows:
                conn.execute(self._insert_steps, step_rows)
            if labelled:
                write_labels(conn, [snapshot])
            if task_row is not None:
                conn.execute(self._insert_task, task_row)
                self._announce_work(conn)
            return self._info(stored, lenient=True), True

        result = await self._run(fn, what=f"create workflow {snapshot.id!r}")
        if result[1] and task_row is not None:
            self.notify_work()
        return result

    async def save_snapshot(self, snapshot: WorkflowSnapshot) -> WorkflowSnapshot:
        now = self.clock()
        version = snapshot.version
        row = self._workflow_row(snapshot, now, version + 1)
        step_rows = [self._step_row(snapshot.id, s, now) for s in snapshot.steps]
        instance_id = snapshot.id

        def fn(conn: sa.Connection) -> WorkflowSnapshot:
            if version == 0:
                inserted = conn.execute(self._insert_workflow, row)
                if inserted.rowcount == 0:
                    # the id, else the holder of the idempotency key (never "key IS NULL")
                    clash = workflows.c.id == instance_id
                    if snapshot.idempotency_key is not None:
                        clash = sa.or_(
                            clash, workflows.c.idempotency_key == snapshot.idempotency_key
                        )
                    other = conn.execute(
                        sa.select(workflows.c.id)
                        .where(clash)
                        .order_by(sa.case((workflows.c.id == instance_id, 0), else_=1))
                        .limit(1)
                    ).scalar()
                    raise WorkflowAlreadyExistsError(other or instance_id)
            else:
                values = {k: v for k, v in row.items() if k not in ("id", "created_at")}
                updated = conn.execute(
                    sa.update(workflows)
                    .where(workflows.c.id == instance_id, workflows.c.version == version)
                    .values(values)
                )
                if updated.rowcount == 0:
                    actual = conn.execute(
                        sa.select(workflows.c.version).where(workflows.c.id == instance_id)
                    ).scalar()
                    if actual is None:
                        raise WorkflowNotFoundError(instance_id)
                    raise ConcurrentUpdateError(instance_id, version, actual)
            if step_rows:
                conn.execute(self._save_steps, step_rows)
            return self._load_snapshot(conn, instance_id)

        try:
            return await self._run(fn, what=f"save workflow {instance_id!r}")
        except BackendError as exc:
            if isinstance(exc.__cause__, sa.exc.IntegrityError):
                raise WorkflowAlreadyExistsError(instance_id) from exc
            raise

    def _load_snapshot(self, conn: sa.Connection, instance_id: str) -> WorkflowSnapshot:
        row = conn.execute(self._select_workflow, {"p_iid": instance_id}).first()
        if row is None:
            raise WorkflowNotFoundError(instance_id)
        step_rows = conn.execute(self._select_steps, {"p_iid": instance_id}).all()
        return self._snapshot(row, step_rows)

    async def load_snapshot(self, instance_id: str) -> WorkflowSnapshot:
        return await self._run(
            lambda conn: self._load_snapshot(conn, instance_id),
            what=f"load workflow {instance_id!r}",
        )

    async def get_workflow(self, instance_id: str) -> WorkflowInfo:
        def fn(conn: sa.Connection) -> WorkflowInfo:
            row = conn.execute(self._select_workflow, {"p_iid": instance_id}).first()
            if row is None:
                raise WorkflowNotFoundError(instance_id)
            return self._info(row)

        return await self._run(fn, what=f"read workflow {instance_id!r}", read_only=True)

    async def delete_snapshot(self, instance_id: str) -> bool:
        def fn(conn: sa.Connection) -> bool:
            conn.execute(sa.delete(tasks).where(tasks.c.instance_id == instance_id))
            conn.execute(sa.delete(steps).where(steps.c.workflow_id == instance_id))
            return (
                conn.execute(sa.delete(workflows).where(workflows.c.id == instance_id)).rowcount > 0
            )

        return await self._run(fn, what=f"delete workflow {instance_id!r}")

    async def list_snapshots(
        self,
        *,
        status: WorkflowStatus | str | Sequence[WorkflowStatus | str] | None = None,
        name: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Page[WorkflowInfo]:
        statuses = as_status_set(status)
        query = sa.select(workflows).where(*has_labels(labels))
        if statuses is not None:
            query = query.where(workflows.c.status.in_([s.value for s in statuses]))
        if name is not None:
            query = query.where(workflows.c.name == name)
        if parent_id is not None:
            query = query.where(workflows.c.parent_id == parent_id)
        query = newest_first(query, cursor, limit)

        def fn(conn: sa.Connection) -> Page[WorkflowInfo]:
            rows = conn.execute(query).all()
            items = [self._info(r, lenient=True) for r in rows[:limit]]
            return Page(items, encode_cursor(items[-1]) if len(rows) > limit else None)

        return await self._run(fn, what="list workflows", read_only=True)

    async def list_waiting(
        self,
        *,
        step_names: Sequence[str],
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[tuple[WorkflowInfo, StepRecord]]:
        later = steps.alias("later")
        last = sa.and_(
            steps.c.workflow_id == workflows.c.id,
            ~sa.exists().where(
                later.c.workflow_id == steps.c.workflow_id,
                later.c.position > steps.c.position,
            ),
        )
        query = (
            sa.select(workflows, *(c.label(f"s_{c.name}") for c in steps.c))
            .select_from(workflows)
            .join(steps, last)
            .where(
                workflows.c.status == WorkflowStatus.PENDING.value,
                steps.c.status == StepStatus.PENDING.value,
                steps.c.name.in_(list(step_names)),
            )
        )
        query = newest_first(query, cursor, limit)

        def fn(conn: sa.Connection) -> Page[tuple[WorkflowInfo, StepRecord]]:
            if not step_names:
                return Page([], None)
            rows = conn.execute(query).all()
            items = []
            for row in rows[:limit]:
                m = row._mapping
                step = {c.name: m[f"s_{c.name}"] for c in steps.c}
                items.append((self._info(row, lenient=True), self._step(m["id"], step)))
            return Page(items, encode_cursor(items[-1][0]) if len(rows) > limit else None)

        return await self._run(fn, what="list waiting workflows", read_only=True)

    async def list_steps(self, instance_id: str) -> list[StepRecord]:
        def fn(conn: sa.Connection) -> list[StepRecord]:
            rows = conn.execute(self._select_steps, {"p_iid": instance_id}).all()
            if (
                not rows
                and conn.execute(self._select_workflow_id, {"p_iid": instance_id}).first() is None
            ):
                raise WorkflowNotFoundError(instance_id)
            return [self._step(instance_id, r._mapping) for r in rows]

        return await self._run(fn, what=f"list steps of {instance_id!r}", read_only=True)

    async def get_step(self, instance_id: str, position: int) -> StepRecord | None:
        def fn(conn: sa.Connection) -> StepRecord | None:
            row = conn.execute(
                self._select_step, {"p_iid": instance_id, "p_position": position}
            ).first()
            if row is not None:
                return self._step(instance_id, row._mapping)
            if conn.execute(self._select_workflow_id, {"p_iid": instance_id}).first() is None:
                raise WorkflowNotFoundError(instance_id)
            return None

        return await self._run(fn, what=f"read step {position} of {instance_id!r}", read_only=True)

    async def requeue_workflow(self, instance_id: str) -> WorkflowInfo:
        now = self.clock()

        def fn(conn: sa.Connection) -> WorkflowInfo:
            before = conn.execute(self._select_workflow, {"p_iid": instance_id}).first()
            if before is None:
                raise WorkflowNotFoundError(instance_id)
            row = self._requeue_one(conn, instance_id, now)
            if row is None:
                raise InvalidArgumentError(
                    f"workflow {instance_id!r} is {before.status}: only failed, "
                    "dead-lettered or cancelled workflows can be run again"
                )
            if before.status == WorkflowStatus.CANCELLED.value:
                # the descendants its cancel cancelled (stamped with the same time) go on too,
                # those that had started or that their parent awaits (a delayed one that never
                # started would run now, not when it was due: it stays cancelled)
                awaited = sa.exists().where(
                    steps.c.workflow_id == workflows.c.parent_id,
                    steps.c.child_workflow_id == workflows.c.id,
                    steps.c.status == StepStatus.PENDING.value,
                )
                for page in self._descendant_pages(conn, instance_id):
                    for child in conn.execute(
                        sa.select(workflows.c.id).where(
                            workflows.c.id.in_(page),
                            workflows.c.status == WorkflowStatus.CANCELLED.value,
                            workflows.c.completed_at == before.completed_at,
                            sa.or_(workflows.c.started_at.isnot(None), awaited),
                        )
                    ).scalars():
                        self._requeue_one(conn, child, now)
            self._announce_work(conn)
            return self._info(row, lenient=True)

        info = await self._run(fn, what=f"requeue workflow {instance_id!r}")
        self.notify_work()
        return info

    def _requeue_one(
        self, conn: sa.Connection, instance_id: str, now: datetime
    ) -> sa.Row[Any] | None:
        """Make one failed, dead-lettered or cancelled workflow pending again, with a new task
        (see :meth:`requeue_workflow`); None if it is none of those."""
        row = conn.execute(
            sa.update(workflows)
            .where(workflows.c.id == instance_id, workflows.c.status.in_(_REQUEUEABLE))
            .values(
                status=WorkflowStatus.PENDING.value,
                error=None,
                output=None,
                attempts=0,
                interruptions=0,
                completed_at=None,
                updated_at=now,
                version=workflows.c.version + 1,
                # a deadline that has passed would cancel it again at once
                deadline=sa.case(
                    (workflows.c.deadline <= self.dialect.now(), sa.null()),
                    else_=workflows.c.deadline,
                ),
            )
            .returning(*workflows.c),
            self.dialect.clock_params_at(now),
        ).first()
        if row is None:
            return None
        conn.execute(self._drop_failures, {"p_iid": instance_id, "p_rerun": []})
        conn.execute(
            sa.delete(tasks).where(
                tasks.c.instance_id == instance_id, tasks.c.task_id == WORKFLOW_TASK
            )
        )
        spec = TaskSpec(
            instance_id=instance_id,
            name=row.name,
            queue=row.queue,
            priority=row.priority,
            partition_key=row.partition_key,
        )
        conn.execute(self._insert_task, self._task_row(spec, now))
        return row

    async def cancel_workflow(
        self, instance_id: str, *, error: ErrorInfo | None = None
    ) -> WorkflowInfo:
        now = self.clock()
        error_json = error.to_json() if error is not None else None

        def fn(conn: sa.Connection) -> WorkflowInfo:
            row = self._cancel_one(conn, instance_id, now, error_json)
            if row is None:
                row = conn.execute(self._select_workflow, {"p_iid": instance_id}).first()
                if row is None:
                    raise WorkflowNotFoundError(instance_id)
            self._cancel_descendants(conn, instance_id, now, error_json)
            return self._info(row, lenient=True)

        return await self._run(fn, what=f"cancel workflow {instance_id!r}")

    async def cancel_expired_workflows(self, *, limit: int = 100) -> list[WorkflowInfo]:
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        expired = self.dialect.skip_locked(
            sa.select(workflows.c.id, workflows.c.deadline)
            .where(
                workflows.c.status.in_(_UNFINISHED),
                workflows.c.deadline <= self.dialect.now(),
            )
            .order_by(workflows.c.deadline, workflows.c.id)
            .limit(limit)
        )

        def fn(conn: sa.Connection) -> list[WorkflowInfo]:
            found = conn.execute(expired, self.dialect.clock_params()).all()
            cancelled = []
            for instance_id, deadline in found:
                error_json = deadline_error(instance_id, deadline).to_json()
                # read after the statement that found it due, and never before its deadline
                # (the lease clock may be the database's, a little ahead of this host's)
                now = max(self.clock(), deadline)
                row = self._cancel_one(conn, instance_id, now, error_json)
                if row is not None:
                    self._cancel_descendants(conn, instance_id, now, error_json)
                    cancelled.append(self._info(row, lenient=True))
            return cancelled

        return await self._run(fn, what="cancel expired workflows")

    def _cancel_one(
        self, conn: sa.Connection, instance_id: str, now: datetime, error_json: str | None
    ) -> sa.Row[Any] | None:
        """Cancel one unfinished workflow and drop its tasks; None if it had finished (or does
        not exist). Its tasks are locked before its row, in the order a claim takes them (a
        claim locks a task, then starts its workflow): the other order deadlocked with it."""
        conn.execute(
            sa.select(tasks.c.task_id).where(tasks.c.instance_id == instance_id).with_for_update()
        ).all()
        row = conn.execute(
            sa.update(workflows)
            .where(workflows.c.id == instance_id, workflows.c.status.not_in(_TERMINAL))
            .values(self._cancelled(now, error_json))
            .returning(*workflows.c)
        ).first()
        if row is not None:
            conn.execute(sa.delete(tasks).where(tasks.c.instance_id == instance_id))
        return row

    def _cancelled(self, now: datetime, error_json: str | None) -> dict[str, Any]:
        """The values a cancel writes on a workflow's row (its error kept if ``error_json`` is
        None)."""
        values: dict[str, Any] = {
            "status": WorkflowStatus.CANCELLED.value,
            "updated_at": now,
            "completed_at": now,
            "version": workflows.c.version + 1,
            "finished_seq": self.dialect.next_position(),
        }
        if error_json is not None:
            values["error"] = error_json
        return values

    def _cancel_descendants(
        self, conn: sa.Connection, root: str, now: datetime, error_json: str | None
    ) -> None:
        """Cancel the unfinished workflows descending from ``root`` (by ``parent_id``)."""
        for page in self._descendant_pages(conn, root):
            conn.execute(  # the tasks first, as in _cancel_one
                sa.select(tasks.c.task_id).where(tasks.c.instance_id.in_(page)).with_for_update()
            ).all()
            conn.execute(
                sa.update(workflows)
                .where(workflows.c.id.in_(page), workflows.c.status.not_in(_TERMINAL))
                .values(self._cancelled(now, error_json))
            )
            conn.execute(
                sa.delete(tasks).where(
                    tasks.c.instance_id.in_(
                        sa.select(workflows.c.id).where(
                            workflows.c.id.in_(page),
                            workflows.c.status == WorkflowStatus.CANCELLED.value,
                        )
                    )
                )
            )

    def _descendant_pages(self, conn: sa.Connection, root: str) -> Iterator[list[str]]:
        """The ids of the workflows descending from ``root`` (by ``parent_id``), a generation
        at a time, in pages of at most ``_PAGE`` (a statement's parameters are bounded)."""
        seen = {root}
        frontier = [root]
        while frontier:
            children: list[str] = []
            for start in range(0, len(frontier), _PAGE):
                page = frontier[start : start + _PAGE]
                children += conn.execute(
                    sa.select(workflows.c.id).where(workflows.c.parent_id.in_(page))
                ).scalars()
            frontier = [c for c in children if c not in seen]
            seen.update(frontier)
            for start in range(0, len(frontier), _PAGE):
                yield frontier[start : start + _PAGE]


def newest_first(query: sa.Select[Any], cursor: str | None, limit: int) -> sa.Select[Any]:
    """``query`` over ``workflows`` as one page of a newest-first listing: the rows after
    ``cursor`` (keyset: ``created_at`` then ``id``, both descending), ``limit + 1`` of them (the
    extra row says whether a next page exists).

    :raises InvalidArgumentError: ``limit`` below 1, or a malformed cursor.
    """
    if limit < 1:
        raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
    if cursor is not None:
        created, after_id = decode_cursor(cursor)
        query = query.where(
            sa.or_(
                workflows.c.created_at < created,
                sa.and_(workflows.c.created_at == created, workflows.c.id < after_id),
            )
        )
    return query.order_by(workflows.c.created_at.desc(), workflows.c.id.desc()).limit(limit + 1)
