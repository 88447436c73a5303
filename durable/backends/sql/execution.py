"""Running a workflow: the start of an execution with its history, its step records, its end
and its retry. This is the hot path: each of begin, step record and finish is one statement,
built once here, and on PostgreSQL runs prepared straight on the driver (:mod:`.direct`).

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.visitors import replacement_traverse

from durable.backends.sql.core import (
    P_IID,
    P_WID,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    record_steps,
)
from durable.backends.sql.direct import CompiledStatement
from durable.backends.sql.grouped import GroupedWrites, array_param
from durable.backends.sql.runners import HOLD_LOOP, InlineRunner
from durable.backends.sql.schema import steps, tasks, workflows
from durable.errors import (
    ClaimLostError,
    DurableError,
    InvalidArgumentError,
    StepAlreadyRecordedError,
    WorkflowNotFoundError,
)
from durable.models import (
    WORKFLOW_TASK,
    ErrorInfo,
    StepRecord,
    StepStatus,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)


class Execution(GroupedWrites):
    """A workflow's execution: begin, record its steps, finish or reschedule it."""

    def _build_execution_statements(self) -> None:
        d = self.dialect
        now = d.now()
        # record_step: a fenced upsert that only overwrites pending rows
        values = [sa.bindparam(f"s_{c}", type_=steps.c[c].type).label(c) for c in STEP_COLUMNS]
        self._record_step = record_steps(d, values, self._held)
        interrupted = workflows.c.status == WorkflowStatus.RUNNING.value
        # what a start writes (also written by a claim that starts what it claims: claims.py)
        self._begin_values: dict[str, Any] = {
            "status": WorkflowStatus.RUNNING.value,
            "executor_id": P_WID,
            # still running: the attempt's executor died or lost its lease; this resumes it
            "attempts": workflows.c.attempts + sa.case((interrupted, 0), else_=1),
            "interruptions": workflows.c.interruptions + sa.case((interrupted, 1), else_=0),
            "started_at": sa.func.coalesce(workflows.c.started_at, sa.bindparam("p_ts")),
            "updated_at": sa.bindparam("p_ts"),
            "version": workflows.c.version + 1,
            "started_seq": d.next_position(),
        }
        self._begin = (
            sa.update(workflows)
            .where(workflows.c.id == P_IID, self._held)
            .values(**self._begin_values)
            .returning(*WORKFLOW_COLUMNS)
        )
        self._take_workflow_task = sa.delete(tasks).where(
            tasks.c.instance_id == P_IID,
            tasks.c.task_id == WORKFLOW_TASK,
            tasks.c.claimed_by == P_WID,
            tasks.c.claim_expires_at > now,
        )
        self._finish = (
            sa.update(workflows)
            .where(workflows.c.id == P_IID)
            .values(
                status=sa.bindparam("p_status"),
                output=sa.bindparam("p_output"),
                error=sa.bindparam("p_error"),
                updated_at=sa.bindparam("p_ts"),
                completed_at=sa.bindparam("p_ts"),
                version=workflows.c.version + 1,
                finished_seq=d.next_position(),
            )
            .returning(*WORKFLOW_COLUMNS)
        )
        self._reschedule_task = (
            sa.update(tasks)
            .where(self._task_key, tasks.c.claimed_by == P_WID, tasks.c.claim_expires_at > now)
            .values(claimed_by=None, claim_expires_at=None, run_after=d.later("delay"))
        )
        self._mark_rerun = (
            sa.update(steps)
            .where(
                steps.c.workflow_id == P_IID,
                steps.c.status == StepStatus.FAILED.value,
                steps.c.position.in_(sa.bindparam("p_rerun", expanding=True)),
            )
            .values(rerun=True)
        )
        self._build_direct_statements()

    def _build_direct_statements(self) -> None:
        """The hot path's single statements, run straight on the driver (PostgreSQL): a step
        record, and step records in a batch (arrays, one row per step: group commit); the
        start of an execution with its history (an UPDATE in a CTE, then the steps); its end,
        which removes the claimed task and writes the outcome (a DELETE in a CTE, which only
        PostgreSQL allows). Claims are compiled on first use (:meth:`_claim_call`). On the
        standard-library SQLite driver, the step record runs straight on ``sqlite3`` (its
        runner batches the records pending at the same moment in one transaction)."""
        self._record_step_direct = self._begin_direct = self._finish_direct = None
        self._record_group = self._finish_group = self._begin_group = None
        self._begin_chain: tuple[CompiledStatement, ...] | None = None
        self._finish_chain: tuple[CompiledStatement, ...] | None = None
        if isinstance(self._runner, InlineRunner):
            dialect = self.engine.dialect
            self._record_step_direct = CompiledStatement(self._record_step, dialect)
            # the start of an execution and its end, each one unit in the group commit
            self._begin_chain = (
                CompiledStatement(self._begin, dialect),
                CompiledStatement(self._select_steps, dialect),
            )
            self._finish_chain = (
                CompiledStatement(self._take_workflow_task, dialect),
                CompiledStatement(self._finish, dialect),
            )
        if not self._direct:
            return
        dialect = self.engine.dialect
        self._record_step_direct = CompiledStatement(self._record_step, dialect)
        # the workflow's row, then its steps' rows (each row has both sets of columns, the
        # other set NULL: a join would repeat the workflow's input on every step)
        began = self._begin.cte("began")
        step_columns = [c for c in STEP_COLUMNS if c != "workflow_id"]

        def nulls(table: sa.Table, columns: Sequence[str], prefix: str = "") -> list[Any]:
            return [
                sa.type_coerce(sa.null(), table.c[c].type).label(f"{prefix}{c}") for c in columns
            ]

        header = sa.select(
            sa.literal(0).label("part"), *began.c, *nulls(steps, step_columns, "step_")
        )
        history = sa.select(
            sa.literal(1),
            *nulls(workflows, [c.name for c in WORKFLOW_COLUMNS]),
            *[steps.c[c] for c in step_columns],
        ).where(
            steps.c.workflow_id == sa.bindparam("p_iid", type_=sa.String()),
            sa.exists(sa.select(began.c.id)),
        )
        begin = sa.union_all(header, history)
        begin = begin.order_by(begin.selected_columns.part, begin.selected_columns.step_position)
        self._begin_direct = CompiledStatement(begin, dialect)
        self._begin_many_direct = CompiledStatement(self._begin_many_statement(nulls), dialect)
        taken = self._take_workflow_task.returning(tasks.c.id).cte("taken")
        finish = self._finish.where(sa.exists(sa.select(taken.c.id)))
        self._finish_direct = CompiledStatement(finish, dialect)
        self._build_grouped_statements()

    def _begin_many_statement(self, nulls: Callable[..., list[Any]]) -> sa.CompoundSelect[Any]:
        """Starts in a batch (group commit): :attr:`_begin` with its parameters taken from one
        row of arrays each (``unnest``), so each workflow is fenced by its own lease; then the
        steps of the workflows it began. Every row carries its workflow's ``id``."""
        types = {
            "p_iid": workflows.c.id.type,
            "p_tid": sa.String(),
            "p_wid": sa.String(),
            "p_ts": workflows.c.updated_at.type,
        }
        rows = (
            sa.func.unnest(*[array_param(f"b_{k}", t) for k, t in types.items()])
            .table_valued(*[sa.column(k, t) for k, t in types.items()], name="u")
            .render_derived()
        )

        def from_rows(element: Any, **kw: Any) -> Any:
            if isinstance(element, sa.BindParameter) and element.key in types:
                return rows.c[element.key]
            return None

        began = cast(sa.Update, replacement_traverse(cast(Any, self._begin), {}, from_rows)).cte(
            "began_many"
        )
        step_columns = [c for c in STEP_COLUMNS if c != "workflow_id"]
        header = sa.select(
            sa.literal(0).label("part"), *began.c, *nulls(steps, step_columns, "step_")
        )
        history = sa.select(
            sa.literal(1),
            *[
                steps.c.workflow_id if c.name == "id" else nulls(workflows, [c.name])[0]
                for c in WORKFLOW_COLUMNS
            ],
            *[steps.c[c] for c in step_columns],
        ).where(steps.c.workflow_id.in_(sa.select(began.c.id)))
        begin = sa.union_all(header, history)
        return begin.order_by(begin.selected_columns.part, begin.selected_columns.step_position)

    def _joined_snapshot(self, rows: Sequence[Mapping[str, Any]]) -> WorkflowSnapshot:
        """A snapshot from the rows of the direct begin statement: the workflow's row first,
        then one row per step in the ``step_`` columns."""
        return self._snapshot_of(
            rows[0],
            ({c: row[f"step_{c}"] for c in STEP_COLUMNS if c != "workflow_id"} for row in rows[1:]),
        )

    async def begin_execution(
        self, instance_id: str, worker_id: str, *, task_id: str = WORKFLOW_TASK
    ) -> WorkflowSnapshot:
        now = self.clock()
        clock = self.dialect.clock_params_at(now)
        params = {
            "p_iid": instance_id,
            "p_tid": task_id,
            "p_wid": worker_id,
            "p_ts": now,
            **clock,
        }

        what = f"begin workflow {instance_id!r}"

        def explain(conn: sa.Connection) -> DurableError:
            if conn.execute(self._select_workflow, params).first() is None:
                return WorkflowNotFoundError(instance_id)
            return self._refusal(conn, clock, instance_id, task_id, worker_id)

        # one statement, one round trip, with the other starts pending at the same moment
        # (group commit)
        group = self._begin_group
        if self._begin_direct is not None and group is not None and not group.bound_elsewhere():
            with self._errors(what):
                done = await group.submit(params)
        else:
            done = await self._run_direct(self._begin_direct, params, what=what)
        if done is not None:
            if not done.rows:
                raise await self._run(explain, what=what)
            return self._joined_snapshot(done.rows)
        runner = self._runner
        if self._begin_chain is not None and isinstance(runner, InlineRunner):
            with self._errors(what):
                began = await runner.direct_chain(self._begin_chain, params)
            if not began[0].rows:
                raise await self._run(explain, what=what)
            return self._snapshot_of(began[0].rows[0], began[1].rows)

        def fn(conn: sa.Connection) -> WorkflowSnapshot:
            row = conn.execute(self._begin, params).first()
            if row is None:
                raise explain(conn)
            return self._snapshot(row, conn.execute(self._select_steps, params).all())

        return await self._run(fn, what=what)

    async def record_step(
        self,
        instance_id: str,
        step: StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        what = _recording(instance_id, step)
        params, clock = self._record_step_params(instance_id, step, worker_id, task_id)
        # The hot path: one statement that checks the lease and writes the step, atomic by
        # itself, so on PostgreSQL it runs without BEGIN/COMMIT, prepared, on the driver, in
        # one statement with the records of other executions pending at the same moment
        # (group commit); on SQLite straight on sqlite3, in one transaction with them.
        group = self._record_group
        rowcount: int | None = None  # None: no direct path here
        if group is not None and not group.bound_elsewhere():
            with self._errors(what):
                rowcount = await group.submit(params)
        else:
            runner = self._runner
            done = None
            if isinstance(runner, InlineRunner) and self._record_step_direct is not None:
                with self._errors(what):  # a lone write: committed here, no coroutine on the way
                    done = runner.direct_now(self._record_step_direct, params)
                if done is not None and done.rowcount == 1:  # recorded: the workflow goes on
                    await runner.let_loop_turn()
            if done is None:
                done = await self._run_direct(self._record_step_direct, params, what=what)
            if done is not None:
                rowcount = done.rowcount
        if rowcount == 1:
            return
        explain = self._step_refusal(clock, instance_id, step.position, worker_id, task_id)
        held = HOLD_LOOP.set(True)  # a refusal's caller renews the lease before anything else
        try:
            if rowcount is None:  # in a transaction, which explains a refusal itself
                await self._run(self._step_writer(params, explain), what=what)
                return
            raise await self._run(explain, what=what)
        finally:
            HOLD_LOOP.reset(held)

    @property
    def records_steps_blocking(self) -> bool:  # type: ignore[override]
        """True for SQLite files on the standard-library driver (their transactions run inline)
        and for PostgreSQL engines durable created: a sync workflow's thread records its steps
        itself."""
        runner = self._runner
        return self._blocking is not None or (
            isinstance(runner, InlineRunner) and runner.thread_safe
        )

    def record_step_blocking(
        self,
        instance_id: str,
        step: StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        if not self.records_steps_blocking:
            return super().record_step_blocking(
                instance_id, step, worker_id=worker_id, task_id=task_id
            )
        if self._file_lost is not None:
            raise self._file_lost_error(_recording(instance_id, step))
        params, clock = self._record_step_params(instance_id, step, worker_id, task_id)
        statement = self._record_step_direct
        assert statement is not None  # a blocking path implies a direct one
        # what was being done, and why a record was refused, are only built when needed: the
        # hot path formats no message and makes no closure
        blocking = self._blocking
        try:
            if blocking is not None:
                rowcount = blocking.execute(statement, params).rowcount
            else:
                runner = self._runner
                assert isinstance(runner, InlineRunner)
                rowcount = runner.direct_blocking(statement, params).rowcount
        except Exception:
            with self._errors(_recording(instance_id, step)):
                raise
        if rowcount == 1:
            return
        what = _recording(instance_id, step)
        explain = self._step_refusal(clock, instance_id, step.position, worker_id, task_id)
        if blocking is not None:
            # refused: why is worth a hop to the event loop (this is not the hot path)
            assert self._loop is not None
            coro = self._run(explain, what=what)
            raise asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        runner = self._runner
        assert isinstance(runner, InlineRunner)
        with self._errors(what):
            raise runner.run(explain)

    def _record_step_call(
        self, instance_id: str, step: StepRecord, worker_id: str, task_id: str
    ) -> tuple[
        dict[str, Any],
        Callable[[sa.Connection], None],
        Callable[[sa.Connection], DurableError],
    ]:
        """The parameters of the fenced step record, a function that runs it, and one that
        explains why it was refused."""
        params, clock = self._record_step_params(instance_id, step, worker_id, task_id)
        explain = self._step_refusal(clock, instance_id, step.position, worker_id, task_id)
        return params, self._step_writer(params, explain), explain

    def _step_writer(
        self, params: dict[str, Any], explain: Callable[[sa.Connection], DurableError]
    ) -> Callable[[sa.Connection], None]:
        """A function that runs the fenced step record with ``params`` in a transaction, and
        raises what ``explain`` says when it is refused."""

        def record(conn: sa.Connection) -> None:
            if conn.execute(self._record_step, params).rowcount != 1:
                raise explain(conn)

        return record

    def _record_step_params(
        self, instance_id: str, step: StepRecord, worker_id: str, task_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The parameters of the fenced step record, and the clock's among them (for
        :meth:`_step_refusal`): the hot path builds no function it does not call."""
        now = self.clock()
        clock = self.dialect.clock_params_at(now)
        params = self._step_params(instance_id, step, now)
        params["p_iid"] = instance_id
        params["p_tid"] = task_id
        params["p_wid"] = worker_id
        params.update(clock)
        return params, clock

    def _step_refusal(
        self, clock: dict[str, Any], instance_id: str, position: int, worker_id: str, task_id: str
    ) -> Callable[[sa.Connection], DurableError]:
        """A function that explains why the fenced record of the step at ``position`` was
        refused: the lease is not held, or (held by this worker) the step is recorded."""

        def explain(conn: sa.Connection) -> DurableError:
            refusal = self._refusal(conn, clock, instance_id, task_id, worker_id)
            if isinstance(refusal, ClaimLostError) and refusal.holder == worker_id:
                return StepAlreadyRecordedError(instance_id, position)
            return refusal

        return explain

    async def finish_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        status: WorkflowStatus,
        output: Any = None,
        error: ErrorInfo | None = None,
        rerun: Sequence[int] = (),
    ) -> WorkflowInfo:
        info = await self._finish_with(instance_id, worker_id, status, output, error, rerun, True)
        assert info is not None  # the header was asked for
        return info

    async def finish_execution(
        self,
        instance_id: str,
        *,
        worker_id: str,
        status: WorkflowStatus,
        output: Any = None,
        error: ErrorInfo | None = None,
        rerun: Sequence[int] = (),
    ) -> None:
        """The finish's row that the statement returns is not read into a header (its input
        and output decoded: about a tenth of a drained job's CPU on PostgreSQL), unless
        ``finish_workflow`` is not this backend's own: it is called then."""
        if self._replaced("finish_workflow", "Execution.finish_workflow"):
            await super().finish_execution(
                instance_id,
                worker_id=worker_id,
                status=status,
                output=output,
                error=error,
                rerun=rerun,
            )
            return
        await self._finish_with(instance_id, worker_id, status, output, error, rerun, False)

    async def _finish_with(
        self,
        instance_id: str,
        worker_id: str,
        status: WorkflowStatus,
        output: Any,
        error: ErrorInfo | None,
        rerun: Sequence[int],
        header: bool,
    ) -> WorkflowInfo | None:
        """:meth:`finish_workflow`; without ``header``, its one-statement paths return None
        instead of the header (a transaction's still reads it)."""
        if not WorkflowStatus(status).is_terminal:
            raise InvalidArgumentError(f"finish_workflow needs a final status, got {status!r}")
        now = self.clock()
        clock = self.dialect.clock_params_at(now)
        params = {
            "p_iid": instance_id,
            "p_wid": worker_id,
            "p_status": WorkflowStatus(status).value,
            "p_output": self._dump(output),
            "p_error": error.to_json() if error else None,
            "p_ts": now,
            **clock,
        }

        what = f"finish workflow {instance_id!r}"

        def refusal(conn: sa.Connection) -> DurableError:
            return self._refusal(conn, clock, instance_id, WORKFLOW_TASK, worker_id)

        # one statement, one round trip (marking failed steps to run again takes a transaction),
        # with the other finishes pending at the same moment (group commit)
        direct = self._finish_direct if not rerun else None
        group = self._finish_group
        if direct is not None and group is not None and not group.bound_elsewhere():
            with self._errors(what):
                done = await group.submit(params)
        else:
            done = await self._run_direct(direct, params, what=what)
        if done is not None:
            if not done.rows:
                raise await self._run(refusal, what=what)
            if not header:
                return None
            return WorkflowInfo.from_fields(self._info_fields(done.rows[0], lenient=True))
        runner = self._runner
        if self._finish_chain is not None and not rerun and isinstance(runner, InlineRunner):
            with self._errors(what):
                finished = await runner.direct_chain(self._finish_chain, params)
            if len(finished) < 2 or not finished[1].rows:
                raise await self._run(refusal, what=what)
            if not header:
                return None
            return WorkflowInfo.from_fields(self._info_fields(finished[1].rows[0], lenient=True))

        def fn(conn: sa.Connection) -> WorkflowInfo:
            if conn.execute(self._take_workflow_task, params).rowcount == 0:
                raise refusal(conn)
            if rerun:
                conn.execute(self._mark_rerun, {"p_iid": instance_id, "p_rerun": list(rerun)})
            return self._info(conn.execute(self._finish, params).one(), lenient=True)

        return await self._run(fn, what=what)

    async def reschedule_workflow(
        self,
        instance_id: str,
        *,
        worker_id: str,
        run_after: timedelta,
        error: ErrorInfo | None = None,
        consume_attempt: bool = True,
        rerun: Sequence[int] = (),
    ) -> WorkflowInfo:
        delay = max(run_after.total_seconds(), 0.0)
        clock = self.dialect.clock_params(delay=delay)
        params = {
            "p_iid": instance_id,
            "p_tid": WORKFLOW_TASK,
            "p_wid": worker_id,
            "p_rerun": list(rerun),
            **clock,
        }
        values: dict[str, Any] = {
            "status": WorkflowStatus.PENDING.value,
            "error": error.to_json() if error else None,
            "updated_at": self.clock(),
            "version": workflows.c.version + 1,
        }
        if not consume_attempt:
            values["attempts"] = sa.case(
                (workflows.c.attempts > 0, workflows.c.attempts - 1), else_=0
            )

        def fn(conn: sa.Connection) -> WorkflowInfo:
            if conn.execute(self._reschedule_task, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, WORKFLOW_TASK, worker_id)
            if consume_attempt:
                conn.execute(self._drop_failures, params)
            row = conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == instance_id)
                .values(values)
                .returning(*workflows.c)
            ).one()
            if delay == 0:  # due now: wake the workers; one due later is found when it is due
                self._announce_work(conn)
            return self._info(row, lenient=True)

        info = await self._run(fn, what=f"reschedule workflow {instance_id!r}")
        if delay == 0:
            self.notify_work()
        return info


def _recording(instance_id: str, step: StepRecord) -> str:
    """What a step's record is doing, as its errors name it."""
    return f"record step {step.position} of {instance_id!r}"
