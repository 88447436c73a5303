"""Tasks and claims: adding tasks, and workers claiming them with leases (one task, or a batch
of available ones), extending, releasing and completing their claims.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). A batch
claim is one statement per combination of filters, built on first use and kept; on PostgreSQL it
runs prepared straight on the driver (:mod:`.direct`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.util import ClauseAdapter

from durable.backends.sql.core import P_WID, STEP_COLUMNS, WORKFLOW_COLUMNS, SQLCore, aware
from durable.backends.sql.direct import CompiledStatement, DirectResult
from durable.backends.sql.runners import InlineRunner
from durable.backends.sql.schema import queues as queue_table
from durable.backends.sql.schema import steps, tasks, workflow_registry, workflows
from durable.errors import (
    CorruptRowError,
    InvalidArgumentError,
    TaskNotFoundError,
    WorkflowNotFoundError,
)
from durable.models import (
    WORKFLOW_TASK,
    AvailableTask,
    TaskClaim,
    TaskSpec,
    WorkflowSnapshot,
    ttl_seconds,
)


class Claims(SQLCore):
    """Tasks, and the claims workers take on them."""

    def _build_claim_statements(self) -> None:
        d = self.dialect
        now = d.now()
        claim_columns = (
            tasks.c.instance_id,
            tasks.c.task_id,
            tasks.c.claimed_by,
            tasks.c.claim_expires_at,
            tasks.c.attempts,
            tasks.c.name,
        )
        claim_values = {
            "claimed_by": P_WID,
            "claim_expires_at": d.later("ttl"),
            "attempts": tasks.c.attempts
            + sa.case(
                (sa.and_(tasks.c.claimed_by == P_WID, tasks.c.claim_expires_at > now), 0),
                else_=1,
            ),
        }
        self._claim_one = (
            sa.update(tasks)
            .where(
                self._task_key,
                sa.or_(
                    tasks.c.claimed_by.is_(None),
                    tasks.c.claimed_by == P_WID,
                    tasks.c.claim_expires_at <= now,
                    tasks.c.claim_expires_at.is_(None),  # a holder without expiry: repaired
                ),
            )
            .values(**claim_values)
            .returning(*claim_columns)
        )
        self._claim_one_due = self._claim_one.where(tasks.c.run_after <= now)
        # an explicit claim that keeps to the queues' limits: a limited queue's workflow task
        # only for the worker that holds it already, and still holds (a lapsed claim no longer
        # counts toward the limit, so others filled its slot; claim_queue_tasks hands it out)
        keeping = sa.or_(
            _not_limited(), sa.and_(tasks.c.claimed_by == P_WID, tasks.c.claim_expires_at > now)
        )
        self._claim_one_keeping = self._claim_one.where(keeping)
        self._claim_one_due_keeping = self._claim_one_due.where(keeping)
        self._extend = (
            sa.update(tasks)
            .where(self._task_key, tasks.c.claimed_by == P_WID)
            .values(claim_expires_at=d.later("ttl"))
            .returning(*claim_columns)
        )
        # PostgreSQL: a lease extension is one autocommitted statement, which holds the task's
        # row lock only while the server runs it. In a transaction, a process frozen (stopped,
        # paused) between the UPDATE and the COMMIT kept the row locked, so that no other
        # worker could take the task over when the lease ran out: it skips locked tasks.
        self._extend_direct = (
            CompiledStatement(self._extend, self.engine.dialect) if self._direct else None
        )
        self._release = (
            sa.update(tasks)
            .where(self._task_key, tasks.c.claimed_by == P_WID)
            .values(claimed_by=None, claim_expires_at=None)
        )
        self._complete = sa.delete(tasks).where(
            self._task_key, tasks.c.claimed_by == P_WID, tasks.c.claim_expires_at > now
        )
        self._available_order = [tasks.c.priority, tasks.c.run_after, tasks.c.id]
        self._claim_values = claim_values
        self._claim_columns = claim_columns
        # keys: the filters given; the code-version filter adds a last True only when given, so
        # that unfiltered claims keep their keys and statements
        self._claim_statements: dict[tuple[bool, ...], Any] = {}
        self._compiled_claims: dict[tuple[bool, ...], CompiledStatement] = {}
        self._claim_begins: dict[tuple[bool, ...], CompiledStatement] = {}

    def _claim_call(
        self,
        worker_id: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None,
        queues: Sequence[str] | None,
        include_own: bool,
        versions: Sequence[str] | None,
    ) -> tuple[Any, CompiledStatement | None, dict[str, Any]]:
        """A claim's statement, the same compiled to run straight on the driver (once per
        combination of filters; None where there is no such path: neither PostgreSQL's direct
        path nor SQLite's standard-library driver), and its parameters."""
        params = self._filter_params(worker_id, limit, names, queues, versions)
        params.update(self.dialect.clock_params(ttl=ttl_seconds(ttl)))
        key: tuple[bool, ...] = (names is not None, queues is not None, include_own)
        stmt = self._claim_statement(*key, versions=versions is not None)
        key += (True,) if versions is not None else ()
        if not (self._direct or isinstance(self._runner, InlineRunner)):
            return stmt, None, params
        compiled = self._compiled_claims.get(key)
        if compiled is None:
            compiled = self._compiled_claims[key] = CompiledStatement(stmt, self.engine.dialect)
        return stmt, compiled, params

    def _claim_statement(
        self,
        names: bool,
        queues: bool,
        include_own: bool,
        *,
        find: bool = False,
        versions: bool = False,
    ) -> Any:
        """The statement that claims (or with ``find``, lists) available tasks, built once per
        combination of filters: building one costs more than running it."""
        key = (names, queues, include_own, find) + ((True,) if versions else ())
        stmt = self._claim_statements.get(key)
        if stmt is not None:
            return stmt
        available = self._available(names, queues, include_own, enabled_only=not find)
        if versions:
            available = sa.and_(available, self._started_by_versions())
        if find:
            now = self.dialect.now()
            live = sa.and_(tasks.c.claimed_by.is_not(None), tasks.c.claim_expires_at > now)
            stmt = (
                sa.select(
                    tasks.c.instance_id,
                    tasks.c.task_id,
                    tasks.c.name,
                    tasks.c.queue,
                    tasks.c.priority,
                    tasks.c.run_after,
                    sa.case((live, tasks.c.claimed_by), else_=None).label("claimed_by"),
                    sa.case((live, tasks.c.claim_expires_at), else_=None).label("claim_expires_at"),
                    tasks.c.attempts,
                )
                .where(available)
                .order_by(*self._available_order)
                .limit(sa.bindparam("p_limit", type_=sa.Integer()))
            )
        else:
            stmt = (
                self.dialect.claim_batch(tasks, available, self._available_order)
                .values(**self._claim_values)
                .returning(*self._claim_columns, tasks.c.priority, tasks.c.run_after, tasks.c.id)
            )
        self._claim_statements[key] = stmt
        return stmt

    def _available(
        self, names: bool, queues: bool, include_own: bool, *, enabled_only: bool = False
    ) -> sa.ColumnElement[bool]:
        """Due tasks that are free (or the worker's own), filtered by name and queue; with
        ``enabled_only`` (claims) also less the names disabled in the registry, read by the same
        statement, so a change is seen by the next claim. The few disabled names are read once
        per statement (a hashed subplan on PostgreSQL), and the claim stays a walk of the
        ``(priority, run_after, id)`` index."""
        now = self.dialect.now()
        p_wid = sa.bindparam("p_wid", type_=sa.String())
        # a claim that has a holder but no expiry (written by hand, or by a bug) is free: it
        # would otherwise be held forever
        free = [
            tasks.c.claimed_by.is_(None),
            tasks.c.claim_expires_at <= now,
            tasks.c.claim_expires_at.is_(None),
        ]
        if include_own:
            free.append(tasks.c.claimed_by == p_wid)
        clauses = [tasks.c.run_after <= now, sa.or_(*free)]
        if names:
            clauses.append(self.dialect.in_list(tasks.c.name, "p_names"))
        if queues:
            clauses.append(self.dialect.in_list(tasks.c.queue, "p_queues"))
        if enabled_only:
            disabled = sa.select(workflow_registry.c.name).where(
                workflow_registry.c.enabled.is_(sa.false())
            )
            clauses.append(tasks.c.name.not_in(disabled))
            clauses.append(_not_limited())
        return sa.and_(*clauses)

    def _started_by_versions(self) -> sa.ColumnElement[bool]:
        """The code-version filter of a claim (``Runtime(serve_versions=...)``), added to the
        claim statements only when a worker asks for it (unfiltered claims are unchanged):
        a workflow task passes if its execution was started by one of the versions bound to
        ``p_versions``, or by an unknown one (NULL); step tasks (:func:`durable.map` items,
        which run a step's body, not a replay) always pass. A correlated EXISTS on the
        workflow's primary key: one index probe per candidate task, portable SQL."""
        started_by = (
            sa.select(workflows.c.id)
            .where(
                workflows.c.id == tasks.c.instance_id,
                sa.or_(
                    workflows.c.code_version.is_(None),
                    self.dialect.in_list(workflows.c.code_version, "p_versions"),
                ),
            )
            .correlate(tasks)
        )
        return sa.or_(tasks.c.task_id != WORKFLOW_TASK, sa.exists(started_by))

    def _claim(self, m: Mapping[Any, Any]) -> TaskClaim:
        return TaskClaim(
            instance_id=m["instance_id"],
            task_id=m["task_id"],
            worker_id=m["claimed_by"],
            expires_at=m["claim_expires_at"],
            attempts=m["attempts"],
            name=m["name"],
        )

    async def add_task(self, spec: TaskSpec) -> bool:
        row = self._task_row(spec, self.clock())

        def fn(conn: sa.Connection) -> bool:
            if conn.execute(self._select_workflow, {"p_iid": spec.instance_id}).first() is None:
                raise WorkflowNotFoundError(spec.instance_id)
            created = conn.execute(self._add_task_if_absent, row).rowcount == 1
            if created:
                self._announce_work(conn)
            return created

        created = await self._run(fn, what=f"add task {spec.task_id!r} of {spec.instance_id!r}")
        if created:
            self.notify_work()
        return created

    async def claim_task(
        self,
        instance_id: str,
        task_id: str,
        worker_id: str,
        ttl: timedelta,
        *,
        due_only: bool = False,
        keep_limits: bool = False,
    ) -> TaskClaim | None:
        clock = self.dialect.clock_params(ttl=ttl_seconds(ttl))
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}
        if keep_limits:
            stmt = self._claim_one_due_keeping if due_only else self._claim_one_keeping
        else:
            stmt = self._claim_one_due if due_only else self._claim_one

        def fn(conn: sa.Connection) -> TaskClaim | None:
            row = conn.execute(stmt, params).first()
            if row is not None:
                return self._claim(row._mapping)
            if conn.execute(self._claim_state, params).first() is None:
                raise TaskNotFoundError(instance_id, task_id)
            return None

        return await self._run(fn, what=f"claim task {task_id!r} of {instance_id!r}")

    async def get_task(self, instance_id: str, task_id: str) -> AvailableTask:
        stmt = sa.select(tasks).where(
            tasks.c.instance_id == instance_id, tasks.c.task_id == task_id
        )

        def fn(conn: sa.Connection) -> AvailableTask:
            r = conn.execute(stmt).first()
            if r is None:
                raise TaskNotFoundError(instance_id, task_id)
            return _available_task(r)

        return await self._run(fn, what=f"read task {task_id!r} of {instance_id!r}", read_only=True)

    async def extend_task_claim(
        self, instance_id: str, task_id: str, worker_id: str, ttl: timedelta
    ) -> TaskClaim:
        clock = self.dialect.clock_params(ttl=ttl_seconds(ttl))
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}
        what = f"extend the claim on {task_id!r} of {instance_id!r}"

        def refusal(conn: sa.Connection) -> Exception:
            return self._refusal(conn, clock, instance_id, task_id, worker_id, missing_task=True)

        done = await self._run_direct(self._extend_direct, params, what=what)
        if done is not None:
            if done.rows:
                return self._claim(done.rows[0])
            raise await self._run(refusal, what=what)  # why, read in a transaction of its own

        def fn(conn: sa.Connection) -> TaskClaim:
            row = conn.execute(self._extend, params).first()
            if row is None:
                raise refusal(conn)
            return self._claim(row._mapping)

        return await self._run(fn, what=what)

    async def release_task_claim(self, instance_id: str, task_id: str, worker_id: str) -> None:
        clock = self.dialect.clock_params()
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> None:
            if conn.execute(self._release, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, task_id, worker_id, missing_task=True)
            self._announce_work(conn)

        await self._run(fn, what=f"release the claim on {task_id!r} of {instance_id!r}")
        self.notify_work()

    async def complete_task(self, instance_id: str, task_id: str, worker_id: str) -> None:
        clock = self.dialect.clock_params()
        params = {"p_iid": instance_id, "p_tid": task_id, "p_wid": worker_id, **clock}

        def fn(conn: sa.Connection) -> None:
            if conn.execute(self._complete, params).rowcount == 0:
                raise self._refusal(conn, clock, instance_id, task_id, worker_id)

        await self._run(fn, what=f"complete task {task_id!r} of {instance_id!r}")

    def _filter_params(
        self,
        worker_id: str,
        limit: int,
        names: Sequence[str] | None,
        queues: Sequence[str] | None,
        versions: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        params: dict[str, Any] = {"p_wid": worker_id, "p_limit": limit}
        if names is not None:
            params["p_names"] = list(names)
        if queues is not None:
            params["p_queues"] = list(queues)
        if versions is not None:
            params["p_versions"] = list(versions)
        return params

    async def find_available_tasks(
        self,
        worker_id: str,
        limit: int,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        include_own: bool = True,
    ) -> list[AvailableTask]:
        params = self._filter_params(worker_id, limit, names, queues)
        params.update(self.dialect.clock_params())
        query = self._claim_statement(names is not None, queues is not None, include_own, find=True)

        def fn(conn: sa.Connection) -> list[AvailableTask]:
            return [_available_task(r) for r in conn.execute(query, params)]

        return await self._run(fn, what="find available tasks", read_only=True)

    async def claim_available_tasks(
        self,
        worker_id: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        include_own: bool = True,
        versions: Sequence[str] | None = None,
    ) -> list[TaskClaim]:
        stmt, compiled, params = self._claim_call(
            worker_id,
            limit,
            ttl,
            names=names,
            queues=queues,
            include_own=include_own,
            versions=versions,
        )
        what = "claim available tasks"

        def in_order(rows: Iterable[Mapping[Any, Any]]) -> list[TaskClaim]:
            return [self._claim(r) for r in _in_claim_order(rows)]

        runner = self._runner
        if compiled is not None and isinstance(runner, InlineRunner):
            # SQLite: straight on sqlite3, in a transaction of its own, at once (measured: a
            # claim in the group commit's next batch drained 15% slower than this); its clock
            # read again if it waits for another process's write lock
            sqlite_compiled = compiled

            def claim() -> list[TaskClaim]:
                params.update(self.dialect.clock_params(ttl=ttl_seconds(ttl)))
                return in_order(runner.run_alone(sqlite_compiled, params).rows)

            with self._errors(what):
                return await runner.waiting_for_lock(claim)
        # PostgreSQL: one statement, autocommitted
        done = await self._run_direct(compiled, params, what=what)
        if done is not None:
            return in_order(done.rows)

        def fn(conn: sa.Connection) -> list[TaskClaim]:
            return in_order([r._mapping for r in conn.execute(stmt, params)])

        return await self._run(fn, what=what)

    def _claim_begin_statement(
        self, names: bool, queues: bool, versions: bool = False
    ) -> CompiledStatement:
        """The batch claim (``include_own=False``) that also starts the workflows whose task it
        claims, compiled for the direct path (once per combination of filters): the claim's
        UPDATE in a CTE; the start (:attr:`_begin_values`, as :meth:`begin_execution` writes
        it) of those workflows, an UPDATE in a CTE driven by the claimed rows (the claim is
        their fence: it took their leases in this very statement); then one row per claim with
        its workflow's row beside it (NULL for a step task), and the steps of the workflows it
        started (``part`` 1)."""
        key = (names, queues) + ((True,) if versions else ())
        compiled = self._claim_begins.get(key)
        if compiled is not None:
            return compiled
        claimed = self._claim_statement(names, queues, False, versions=versions).cte("c")
        is_workflow_task = claimed.c.task_id == WORKFLOW_TASK
        # the tables under one-letter aliases: the statement stays short enough for psycopg to
        # cache its parsing (4,096 characters), which the full names in RETURNING would exceed
        w: Any = workflows.alias("w")
        s = steps.alias("s")
        to_w = ClauseAdapter(w).traverse
        begin_values = self._begin_values  # type: ignore[attr-defined]  # Execution's
        began = (
            sa.update(w)
            .where(w.c.id == claimed.c.instance_id, is_workflow_task)
            .values(
                **{
                    k: to_w(v) if isinstance(v, sa.ClauseElement) else v
                    for k, v in begin_values.items()
                }
            )
            .returning(*[w.c[c.name] for c in WORKFLOW_COLUMNS])
            .cte("b")
        )

        def nulls(columns: Any, prefix: str) -> list[Any]:
            return [sa.type_coerce(sa.null(), c.type).label(f"{prefix}{c.name}") for c in columns]

        step_columns = [s.c[c] for c in STEP_COLUMNS]
        head = sa.select(
            sa.literal(0).label("part"),
            *[c.label(f"t_{c.name}") for c in claimed.c],
            *began.c,  # under the workflow's column names (no label: a shorter statement)
            *nulls(step_columns, "s_"),
        ).select_from(
            claimed.outerjoin(began, sa.and_(began.c.id == claimed.c.instance_id, is_workflow_task))
        )
        # the names and types of the columns are the first SELECT's: a bare NULL will do here
        # (and keeps the statement short enough for psycopg to cache its parsing)
        blank: list[Any] = [sa.literal_column("NULL")] * (len(claimed.c) + len(began.c))
        history = sa.select(sa.literal(1), *blank, *step_columns).where(
            s.c.workflow_id.in_(sa.select(began.c.id))
        )
        both = sa.union_all(head, history)
        both = both.order_by(
            both.selected_columns.part,
            both.selected_columns.s_workflow_id,
            both.selected_columns.s_position,
        )
        compiled = self._claim_begins[key] = CompiledStatement(both, self.engine.dialect)
        return compiled

    async def claim_and_begin_tasks(
        self,
        worker_id: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        versions: Sequence[str] | None = None,
    ) -> list[tuple[TaskClaim, WorkflowSnapshot | None]]:
        """On PostgreSQL's direct path, one statement claims and starts the claimed workflows
        (:meth:`_claim_begin_statement`); on SQLite, one transaction straight on ``sqlite3``
        (:meth:`_claim_and_begin_inline`); elsewhere it only claims, and so it does where a
        subclass or a wrapper replaced :meth:`claim_available_tasks` or
        :meth:`begin_execution` (the claims and starts then go through them)."""
        runner = self._runner
        if isinstance(runner, InlineRunner) and not self._claims_replaced():
            with self._errors("claim and start available tasks"):
                return await runner.waiting_for_lock(
                    lambda: self._claim_and_begin_inline(
                        runner, worker_id, limit, ttl, names=names, queues=queues, versions=versions
                    )
                )
        if not self._direct or self._claims_replaced():
            return await super().claim_and_begin_tasks(
                worker_id, limit, ttl, names=names, queues=queues, versions=versions
            )
        params = self._filter_params(worker_id, limit, names, queues, versions)
        params.update(self.dialect.clock_params(ttl=ttl_seconds(ttl)))
        params["p_ts"] = self.clock()
        statement = self._claim_begin_statement(
            names is not None, queues is not None, versions is not None
        )
        done = await self._run_direct(statement, params, what="claim and start available tasks")
        if done is None:  # not on the driver here
            return await super().claim_and_begin_tasks(
                worker_id, limit, ttl, names=names, queues=queues, versions=versions
            )
        heads: list[Mapping[str, Any]] = []
        history: dict[str, list[Mapping[str, Any]]] = {}
        for row in done.rows:
            if row["part"] == 0:
                heads.append(row)
            else:
                history.setdefault(row["s_workflow_id"], []).append(row)
        heads.sort(key=lambda r: (r["t_priority"], r["t_run_after"], r["t_id"]))
        return [
            (
                TaskClaim(
                    instance_id=r["t_instance_id"],
                    task_id=r["t_task_id"],
                    worker_id=r["t_claimed_by"],
                    expires_at=r["t_claim_expires_at"],
                    attempts=r["t_attempts"],
                    name=r["t_name"],
                ),
                self._began(r, history),
            )
            for r in heads
        ]

    def _claim_and_begin_inline(
        self,
        runner: InlineRunner,
        worker_id: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None,
        queues: Sequence[str] | None,
        versions: Sequence[str] | None,
    ) -> list[tuple[TaskClaim, WorkflowSnapshot | None]]:
        """SQLite: the claim (``include_own=False``), then the start of each workflow it
        claimed (:meth:`begin_execution`'s statements, fenced by the claim just made), in one
        write transaction straight on ``sqlite3``, at once. A start that fails or whose rows
        cannot be read pairs its claim with None (its caller begins it as usual, which says
        why); a failed claim fails the whole."""
        _, claim, params = self._claim_call(
            worker_id,
            limit,
            ttl,
            names=names,
            queues=queues,
            include_own=False,
            versions=versions,
        )
        assert claim is not None  # compiled for SQLite's standard-library driver
        begin_chain = self._begin_chain  # type: ignore[attr-defined]  # Execution's
        now = self.clock()
        start = {"p_tid": WORKFLOW_TASK, "p_wid": worker_id, "p_ts": now}
        start.update(self.dialect.clock_params_at(now))

        def started(claimed: DirectResult) -> list[str]:
            return [r["instance_id"] for r in claimed.rows if r["task_id"] == WORKFLOW_TASK]

        def starts(claimed: DirectResult) -> list[tuple[tuple[CompiledStatement, ...], Any]]:
            return [(begin_chain, {**start, "p_iid": iid}) for iid in started(claimed)]

        with self._errors("claim and start available tasks"):
            claimed, outcomes = runner.run_alone_then(claim, params, starts)
        began: dict[str, WorkflowSnapshot] = {}
        for instance_id, outcome in zip(started(claimed), outcomes, strict=True):
            results = outcome.outcome
            if isinstance(results, BaseException) or not results[0].rows:
                continue
            with contextlib.suppress(CorruptRowError):
                began[instance_id] = self._snapshot_of(results[0].rows[0], results[1].rows)
        return [
            (self._claim(r), began.get(r["instance_id"])) for r in _in_claim_order(claimed.rows)
        ]

    def _claims_replaced(self) -> bool:
        """Whether claims or starts are not this backend's own (overridden, or wrapped on the
        instance)."""
        return self._replaced("claim_available_tasks", "Claims.claim_available_tasks") or (
            self._replaced("begin_execution", "Execution.begin_execution")
        )

    def _began(
        self, head: Mapping[str, Any], history: Mapping[str, list[Mapping[str, Any]]]
    ) -> WorkflowSnapshot | None:
        """The snapshot of a workflow a claim started, from its row and its steps' rows; None
        for a step task, or a workflow whose rows cannot be read (begin_execution says why)."""
        instance_id = head["id"]
        if instance_id is None:
            return None
        try:
            return self._snapshot_of(
                head,
                ({c: r[f"s_{c}"] for c in STEP_COLUMNS} for r in history.get(instance_id, ())),
            )
        except CorruptRowError:
            return None


def _in_claim_order(rows: Iterable[Mapping[Any, Any]]) -> list[Mapping[Any, Any]]:
    """Claimed task rows in the order the claim took them: by priority, due time, id."""
    return sorted(rows, key=lambda r: (r["priority"], r["run_after"], r["id"]))


def _not_limited() -> sa.ColumnElement[bool]:
    """Queues with limits (``durable_queues``): the ordinary claims leave their workflow tasks
    to :meth:`~.queues.Queues.claim_queue_tasks`, which keeps to the limits. Read by the claim
    itself (like the disabled names: a hashed subplan of a tiny table on PostgreSQL), so a
    queue is left alone from the moment its limit is stored; a queue without limits keeps this
    fast claim."""
    q = queue_table.c
    limited = sa.select(q.name).where(
        sa.or_(
            q.concurrency.is_not(None),
            q.worker_concurrency.is_not(None),
            q.rate_limit.is_not(None),
            q.partition_concurrency.is_not(None),
        )
    )
    return sa.or_(tasks.c.task_id != WORKFLOW_TASK, tasks.c.queue.not_in(limited))


def _available_task(r: Any) -> AvailableTask:
    """An :class:`AvailableTask` from a row of the tasks table."""
    return AvailableTask(
        instance_id=r.instance_id,
        task_id=r.task_id,
        name=r.name,
        queue=r.queue,
        priority=r.priority,
        run_after=r.run_after,
        claimed_by=r.claimed_by,
        claim_expires_at=aware(r.claim_expires_at),
        attempts=r.attempts,
    )
