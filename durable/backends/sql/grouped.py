"""Group commit on PostgreSQL: the hot path's writes that executions in one process make at the
same moment, as one statement each (see :mod:`.batch`): step records, finishes, and the starts
of executions (each with its history).

Each kind of write has a multi-row statement: every column's values as one array parameter,
``unnest``-ed into rows, each row fenced by its own lease (a row whose fence fails is skipped,
not the batch), ``RETURNING`` the rows written, so each caller learns its own outcome. Built once
in SQLAlchemy Core, compiled by the engine's dialect and run prepared on the direct psycopg path,
like the single statements. A batch of one runs the single statement. If a batch statement
fails, a database that cannot be reached fails the whole batch; any other error (a row the
database rejects, a key twice in one batch, a deadlock) sends each write on its own, so the
faulty one fails alone.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`), under
:class:`~durable.backends.sql.execution.Execution`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from durable.backends.sql.batch import GroupCommit
from durable.backends.sql.core import STEP_COLUMNS, WORKFLOW_COLUMNS, SQLCore
from durable.backends.sql.direct import CompiledStatement, DirectResult
from durable.backends.sql.schema import steps, tasks, workflows
from durable.errors import BackendUnavailableError
from durable.models import WORKFLOW_TASK, StepStatus


def array_param(name: str, type_: Any) -> sa.ColumnElement[Any]:
    """A parameter bound to a list, as a PostgreSQL array of ``type_`` (for ``unnest``)."""
    return sa.cast(sa.bindparam(name, type_=pg.ARRAY(type_)), pg.ARRAY(type_))


class GroupedWrites(SQLCore):
    """Step records, finishes and starts in batches (PostgreSQL's direct path only)."""

    _record_step: Any
    _record_step_direct: CompiledStatement | None
    _finish_direct: CompiledStatement | None
    _begin_direct: CompiledStatement | None
    _begin_many_direct: CompiledStatement

    def _build_grouped_statements(self) -> None:
        dialect = self.engine.dialect
        self._record_steps_direct = CompiledStatement(self._record_steps_statement(), dialect)
        self._finish_many_direct = CompiledStatement(self._finish_many_statement(), dialect)
        # one batch in flight: the writes that arrive meanwhile wait for it and go together
        # (measured: more flushes in flight spend more CPU per step for no more throughput)
        self._record_group: GroupCommit[dict[str, Any], int] | None = GroupCommit(
            self._flush_step_records, inline_when_idle=True
        )
        self._finish_group: GroupCommit[dict[str, Any], DirectResult | None] | None = GroupCommit(
            self._flush_finishes, inline_when_idle=True
        )
        self._begin_group: GroupCommit[dict[str, Any], DirectResult | None] | None = GroupCommit(
            self._flush_begins, inline_when_idle=True
        )

    def _record_steps_statement(self) -> sa.Insert:
        types = {c: steps.c[c].type for c in STEP_COLUMNS}
        arrays = [array_param(f"a_{c}", t) for c, t in types.items()]
        keys = [array_param(f"a_{k}", sa.String()) for k in ("tid", "wid")]
        rows = (
            sa.func.unnest(*arrays, *keys)
            .table_valued(*[sa.column(c, t) for c, t in types.items()], "tid", "wid", name="u")
            .render_derived()
        )
        held = sa.exists(
            self.dialect.lock_for_fence(
                sa.select(sa.literal(1)).where(
                    tasks.c.instance_id == rows.c.workflow_id,
                    tasks.c.task_id == rows.c.tid,
                    tasks.c.claimed_by == rows.c.wid,
                    tasks.c.claim_expires_at > self.dialect.now(),
                )
            )
        )
        # each row's change feed position (see .feed): nextval per row
        position = self.dialect.next_position().label("change_seq")
        recorded = [*STEP_COLUMNS, "change_seq"]
        insert = pg.insert(steps).from_select(
            recorded, sa.select(*[rows.c[c] for c in STEP_COLUMNS], position).where(held)
        )
        return insert.on_conflict_do_update(
            index_elements=[steps.c.workflow_id, steps.c.position],
            set_={c: insert.excluded[c] for c in recorded if c != "workflow_id"},
            where=steps.c.status == StepStatus.PENDING.value,
        ).returning(steps.c.workflow_id, steps.c.position)

    def _finish_many_statement(self) -> sa.Update:
        """Finishes: take each row's claimed workflow task (a DELETE in a CTE, fenced by that
        row's lease), then write the outcome of the workflows whose task was taken."""
        types = {
            "iid": workflows.c.id.type,
            "wid": sa.String(),
            "status": workflows.c.status.type,
            "output": workflows.c.output.type,
            "error": workflows.c.error.type,
            "ts": workflows.c.updated_at.type,
        }

        def rows(name: str) -> Any:
            return (
                sa.func.unnest(*[array_param(f"f_{k}", t) for k, t in types.items()])
                .table_valued(*[sa.column(k, t) for k, t in types.items()], name=name)
                .render_derived()
            )

        mine = rows("mine")
        taken = (
            sa.delete(tasks)
            .where(
                tasks.c.instance_id == mine.c.iid,
                tasks.c.task_id == WORKFLOW_TASK,
                tasks.c.claimed_by == mine.c.wid,
                tasks.c.claim_expires_at > self.dialect.now(),
            )
            .returning(tasks.c.instance_id)
            .cte("taken")
        )
        done = rows("done")
        return (
            sa.update(workflows)
            .where(
                workflows.c.id == done.c.iid,
                sa.exists(sa.select(taken.c.instance_id).where(taken.c.instance_id == done.c.iid)),
            )
            .values(
                status=done.c.status,
                output=done.c.output,
                error=done.c.error,
                updated_at=done.c.ts,
                completed_at=done.c.ts,
                version=workflows.c.version + 1,
                finished_seq=self.dialect.next_position(),
            )
            .returning(*WORKFLOW_COLUMNS)
        )

    async def _flush_step_records(self, batch: list[dict[str, Any]]) -> list[int | BaseException]:
        """For each record: 1 if written, 0 if its fence refused it (or its own error)."""

        def arrays() -> dict[str, Any]:
            values = {f"a_{c}": [p[f"s_{c}"] for p in batch] for c in STEP_COLUMNS}
            values["a_tid"] = [p["p_tid"] for p in batch]
            values["a_wid"] = [p["p_wid"] for p in batch]
            return values

        def key(p: dict[str, Any]) -> Hashable:
            return (p["s_workflow_id"], p["s_position"])

        def one(params: dict[str, Any]) -> Callable[[sa.Connection], DirectResult]:
            def record(conn: sa.Connection) -> DirectResult:
                return DirectResult(conn.execute(self._record_step, params).rowcount, [])

            return record

        assert self._record_step_direct is not None
        written = await self._many(
            batch,
            key,
            arrays,
            self._record_steps_direct,
            "record steps",
            lambda r: (r["workflow_id"], r["position"]),
        )
        if written is not None:
            return [int(key(p) in written) for p in batch]
        outcomes: list[int | BaseException] = []
        for params in batch:
            try:
                done = await self._runner.direct(self._record_step_direct, params)
                if done is None:  # not on the driver here: the ordinary way
                    done = await self._runner.transaction(one(params))
                outcomes.append(done.rowcount)
            except Exception as exc:  # that caller's own error
                outcomes.append(exc)
        return outcomes

    async def _flush_finishes(
        self, batch: list[dict[str, Any]]
    ) -> list[DirectResult | BaseException | None]:
        """For each finish: the workflow's row written (no row: its fence refused it), or None
        where the direct path does not apply (the caller then runs it in a transaction)."""

        def arrays() -> dict[str, Any]:
            names = {
                "iid": "p_iid",
                "wid": "p_wid",
                "status": "p_status",
                "output": "p_output",
                "error": "p_error",
                "ts": "p_ts",
            }
            return {f"f_{k}": [p[name] for p in batch] for k, name in names.items()}

        written = await self._many(
            batch,
            lambda p: p["p_iid"],
            arrays,
            self._finish_many_direct,
            "finish workflows",
            None,
        )
        if written is not None:
            return [
                DirectResult(1, [written[p["p_iid"]]])
                if p["p_iid"] in written
                else DirectResult(0, [])
                for p in batch
            ]
        assert self._finish_direct is not None
        outcomes: list[DirectResult | BaseException | None] = []
        for params in batch:
            try:
                outcomes.append(await self._runner.direct(self._finish_direct, params))
            except Exception as exc:  # that caller's own error
                outcomes.append(exc)
        return outcomes

    async def _flush_begins(
        self, batch: list[dict[str, Any]]
    ) -> list[DirectResult | BaseException | None]:
        """For each start: the workflow's row then its steps' rows (no row: its fence refused
        it, or the workflow is gone), or None where the direct path does not apply."""
        keys = {p["p_iid"] for p in batch}
        assert self._begin_direct is not None
        if len(batch) >= 2 and len(keys) == len(batch):
            arrays = {f"b_{k}": [p[k] for p in batch] for k in ("p_iid", "p_tid", "p_wid", "p_ts")}
            if self.dialect.binds_clock:  # a test's clock: its time is a parameter
                arrays.update(self.dialect.clock_params())
            try:
                done = await self._runner.direct(self._begin_many_direct, arrays)
            except Exception as exc:
                if isinstance(self._translated(exc, "begin workflows"), BackendUnavailableError):
                    raise
                done = None  # one row's problem: each on its own
            if done is not None:
                began: dict[str, list[dict[str, Any]]] = {}
                for row in done.rows:  # the workflows' rows come first
                    if row["part"] == 0:
                        began[row["id"]] = [row]
                    else:
                        began[row["id"]].append(row)
                return [DirectResult(1, began.get(p["p_iid"], [])) for p in batch]
        outcomes: list[DirectResult | BaseException | None] = []
        for params in batch:
            try:
                outcomes.append(await self._runner.direct(self._begin_direct, params))
            except Exception as exc:  # that caller's own error
                outcomes.append(exc)
        return outcomes

    async def _many(
        self,
        batch: list[dict[str, Any]],
        key: Callable[[dict[str, Any]], Hashable],
        arrays: Callable[[], dict[str, Any]],
        statement: CompiledStatement,
        what: str,
        row_key: Callable[[dict[str, Any]], Hashable] | None,
    ) -> dict[Hashable, dict[str, Any]] | None:
        """Run a batch of two or more (distinct keys) as one statement; the rows it wrote by
        key, or None when each write must go on its own. Raises when the database cannot be
        reached (the whole batch fails)."""
        if len(batch) < 2 or len({key(p) for p in batch}) != len(batch):
            return None
        values = arrays()
        if self.dialect.binds_clock:  # a test's clock: its time is a parameter
            values.update(self.dialect.clock_params())
        try:
            done = await self._runner.direct(statement, values)
        except Exception as exc:
            if isinstance(self._translated(exc, what), BackendUnavailableError):
                raise
            return None  # one row's problem: each on its own
        if done is None:
            return None
        return {(row_key(r) if row_key else r["id"]): r for r in done.rows}
