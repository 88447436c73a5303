"""Enqueueing: many executions in one transaction, and one execution on PostgreSQL in one
statement.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`); the records
themselves are :mod:`.workflows`, which this area sits in front of:

* :meth:`Enqueues.create_workflows` (bulk enqueue), one transaction however many rows, one
  statement per table: on PostgreSQL a ``COPY`` of the rows (:class:`_CopyRows`) in a
  savepoint, as if every row were new (a plain insert costs the server a fifth less than one
  that checks each row for a conflict first); if one exists, the savepoint is rolled back and
  ``INSERT ... SELECT FROM json_to_recordset(:rows) ON CONFLICT DO NOTHING RETURNING id`` (the
  rows as one JSON parameter) runs instead, after which the rows it did not insert (stored
  before, or by a concurrent transaction meanwhile) are looked up (one ``SELECT`` per
  :data:`LOOKUP_PAGE` rows); the new workflows' tasks are one more ``COPY``, each due at its
  ``run_after``, else at the transaction's start plus its delay (read once: ``now()``, as an
  insert would compute it). On SQLite the rows that exist
  are looked up first, then one prepared ``INSERT`` is run by the driver over the others
  (``executemany``; the write lock taken by ``BEGIN IMMEDIATE`` keeps others out); and one
  ``NOTIFY``. MySQL goes the way of SQLite, without a lock that keeps others out between the
  look-up and the insert: a batch that a concurrent one beat to a key runs again (as a
  deadlock's victim does) and finds it.
* :meth:`Enqueues.create_workflow` on PostgreSQL's direct path (:mod:`.direct`): the workflow,
  its task and the ``NOTIFY`` in one statement and one round trip (data-modifying CTEs), instead
  of ``BEGIN``, three statements and ``COMMIT``. When the workflow exists already (nothing was
  inserted) or the direct path does not apply, the transaction of :mod:`.workflows` runs, which
  finds the existing one.
* :meth:`Enqueues.create_workflow` on SQLite: the workflow's insert and its task's (a child's,
  also the copy of its parent's labels) as one unit of the group commit's write transaction,
  straight on ``sqlite3`` (:meth:`InlineRunner.direct_chain`), with the other writes pending at
  the same moment; a workflow that exists goes the way of :mod:`.workflows` as above.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.util import await_only

from durable.backends.base import batch_owners, check_aware, clash_error
from durable.backends.sql.core import WORKFLOW_COLUMNS, Creation, SQLCore, write_labels
from durable.backends.sql.direct import CompiledStatement
from durable.backends.sql.runners import InlineRunner
from durable.backends.sql.schema import UTCDateTime, tasks, workflow_labels, workflows
from durable.errors import InvalidArgumentError, SerializationError
from durable.gcpause import collector_paused
from durable.models import TaskSpec, WorkflowInfo, WorkflowSnapshot
from durable.validation import check_labels

#: Rows per ``SELECT`` looking up the batch's existing workflows (two parameters a row).
LOOKUP_PAGE = 500


class Enqueues(SQLCore):
    """Creating workflows in bulk, and the single create as one statement on PostgreSQL."""

    _notify: sa.Select[Any]  # built by WakeUps (.wakeups)

    def _build_enqueue_statements(self) -> None:
        """Built after :meth:`WakeUps._build_wakeup_statements`: the PostgreSQL statement
        reuses its ``pg_notify`` call."""
        d = self.dialect
        self._first_position: sa.Select[Any] | None = None
        if d.name == "postgresql":
            names = [c.name for c in WORKFLOW_COLUMNS]
            self._bulk_workflows: Any = _recordset_insert(
                workflows, names, conflict="ON CONFLICT DO NOTHING RETURNING id"
            )
            self._bulk_new_workflows: sa.TextClause | None = _recordset_insert(
                workflows, names, conflict=""
            )
            self._bulk_tasks: Any = _recordset_tasks()
            self._copy_workflows: _CopyRows | None = _CopyRows(
                workflows, names, self.engine.dialect
            )
            self._copy_tasks: _CopyRows | None = _CopyRows(
                tasks, [*_TASK_COLUMNS, "attempts"], self.engine.dialect
            )
            self._select_batch_existing: Any = sa.union_all(
                _lookup_each(workflows.c.id, "p_ids"),
                _lookup_each(workflows.c.idempotency_key, "p_keys"),
            )
        else:  # SQLite: one prepared INSERT run over every row (no round trips to save)
            # SQLite: the batch's feed positions are the next one and those after it, read once
            # (its writers are serialized: the batch holds the write lock), not a search of
            # every position column a row; MariaDB: its sequence, a row at a time
            position: Any = d.next_position()
            if d.name == "sqlite":
                self._first_position = sa.select(position)
                position = sa.bindparam("created_seq", type_=workflows.c.created_seq.type)
            self._bulk_workflows = _DriverInsert(
                sa.insert(workflows).values(
                    {c.name: sa.bindparam(c.name, type_=c.type) for c in WORKFLOW_COLUMNS}
                    | {"created_seq": position}
                ),
                self.engine.dialect,
            )
            self._bulk_tasks = _DriverInsert(self._insert_task, self.engine.dialect)
            self._bulk_new_workflows = None
            self._copy_workflows = self._copy_tasks = None
            self._select_batch_existing = sa.select(workflows).where(
                sa.or_(
                    d.in_list(workflows.c.id, "p_ids"),
                    d.in_list(workflows.c.idempotency_key, "p_keys"),
                )
            )
        # MySQL, in a caller's transaction: a locking read sees what a concurrent transaction
        # committed after this one's snapshot (see Transactions.enqueue_in_transaction)
        self._select_batch_locked = self._select_batch_existing
        if d.name == "mysql":
            self._select_batch_locked = self._select_batch_existing.with_for_update(read=True)
        self._create_direct: CompiledStatement | None = None
        self._create_child_direct: CompiledStatement | None = None
        self._create_inline: tuple[CompiledStatement, ...] | None = None
        self._create_child_inline: tuple[CompiledStatement, ...] | None = None
        if isinstance(self._runner, InlineRunner):
            self._create_inline, self._create_child_inline = self._create_chains()
        if self._direct:
            self._create_direct = CompiledStatement(
                self._create_in_one_statement(), self.engine.dialect
            )
            self._create_child_direct = CompiledStatement(
                self._create_in_one_statement(inherit=True), self.engine.dialect
            )

    def _create_in_one_statement(self, *, inherit: bool = False) -> sa.Select[Any]:
        """PostgreSQL: insert the workflow (``w_<column>``), then, only if it was inserted, its
        task (``t_<column>``, as :attr:`_insert_task`) and a notification on the work channel;
        the inserted row's id is returned (no row: it existed; the header of a new one is what
        was written, as in a batch). With ``inherit``, also copy the labels of its parent
        (``w_parent_id``) to it: a child without labels of its own."""
        d = self.dialect
        inserted = (
            pg.insert(workflows)
            .values({c.name: sa.bindparam(f"w_{c.name}", type_=c.type) for c in WORKFLOW_COLUMNS})
            .on_conflict_do_nothing()
            .returning(workflows.c.id)
            .cte("w")
        )
        task_values: dict[str, Any] = {
            "instance_id": inserted.c.id,
            **{
                c: sa.bindparam(f"t_{c}", type_=tasks.c[c].type)
                for c in ("task_id", "name", "queue", "priority", "created_at", "partition_key")
            },
            "run_after": sa.func.coalesce(
                sa.bindparam("t_run_after", type_=UTCDateTime()), d.later("delay")
            ),
            "attempts": sa.literal(0),
        }
        add_task = (
            sa.insert(tasks)
            .from_select(
                list(task_values),
                sa.select(*(sa.cast(v, tasks.c[k].type) for k, v in task_values.items())),
            )
            .cte("t")
        )
        notify = self._notify.selected_columns[0]  # pg_notify(<the work channel>, '')
        ctes = [add_task]
        if inherit:
            parent = sa.bindparam("w_parent_id", type_=workflows.c.parent_id.type)
            ctes.append(
                sa.insert(workflow_labels)
                .from_select(
                    ["workflow_id", "key", "value"],
                    sa.select(inserted.c.id, workflow_labels.c.key, workflow_labels.c.value)
                    .select_from(inserted)
                    .join(workflow_labels, workflow_labels.c.workflow_id == parent),
                )
                .cte("l")
            )
        return sa.select(inserted.c.id, notify.label("notified")).add_cte(*ctes)

    def _create_chains(self) -> tuple[tuple[CompiledStatement, ...], ...]:
        """SQLite: the statements that create a workflow with its task, run in order as one
        unit of the group commit's transaction (:meth:`InlineRunner.direct_chain`) with the
        workflow's row and the task's parameters as their values: the workflow's insert (no
        row when it exists: the chain stops there), its task's; and for a child, a copy of its
        parent's labels."""
        dialect, d = self.engine.dialect, self.dialect
        row = {c.name: sa.bindparam(c.name, type_=c.type) for c in WORKFLOW_COLUMNS}
        insert = CompiledStatement(
            d.insert(workflows)
            .values(row | {"created_seq": d.next_position()})
            .on_conflict_do_nothing(),
            dialect,
        )
        task = CompiledStatement(self._insert_task, dialect)
        inherit = sa.insert(workflow_labels).from_select(
            ["workflow_id", "key", "value"],
            sa.select(
                sa.bindparam("id", type_=workflows.c.id.type),
                workflow_labels.c.key,
                workflow_labels.c.value,
            ).where(
                workflow_labels.c.workflow_id
                == sa.bindparam("parent_id", type_=workflows.c.parent_id.type)
            ),
        )
        return (insert, task), (insert, task, CompiledStatement(inherit, dialect))

    async def create_workflow(
        self, snapshot: WorkflowSnapshot, *, task: TaskSpec | None = None
    ) -> tuple[WorkflowInfo, bool]:
        # one statement on PostgreSQL, one chain of the group commit on SQLite, for a workflow
        # with its task and neither steps nor labels of its own (a child inherits its parent's
        # labels in it; its own, merged over them and counted, go the ordinary way); nothing
        # inserted (it exists: the ordinary way reads it), or neither path here: the ordinary way
        child = snapshot.parent_id is not None
        inline = self._create_child_inline if child else self._create_inline
        direct = self._create_child_direct if child else self._create_direct
        if (inline or direct) and task is not None and not snapshot.steps and not snapshot.labels:
            now = self.clock()
            row = self._workflow_row(snapshot, now, 1)
            task_row = self._task_row(task, now)
            what = f"create workflow {snapshot.id!r}"
            if inline is not None:
                runner = self._runner
                assert isinstance(runner, InlineRunner)
                with self._errors(what):
                    created = len(await runner.direct_chain(inline, row | task_row)) > 1
            else:
                params = {f"w_{k}": v for k, v in row.items()} | task_row
                done = await self._run_direct(direct, params, what=what)
                created = done is not None and bool(done.rows)
            if created:
                self.notify_work()
                return _written(snapshot, row), True
        return await super().create_workflow(snapshot, task=task)  # type: ignore[safe-super]

    async def create_workflows(
        self, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
    ) -> list[tuple[WorkflowInfo, bool]]:
        if not batch:
            return []
        with collector_paused():  # many objects, all kept: see durable.gcpause
            fn, with_tasks = self._creation(batch)
        # MySQL: a duplicate key means a concurrent batch inserted one of these ids or keys
        # between this one's look-up and its insert (and committed: InnoDB made the insert
        # wait for it), and the next run looks it up. SQLite's write lock keeps others out of
        # that gap, and PostgreSQL's insert skips conflicts
        results = await self._run(
            fn, what=f"create {len(batch)} workflow(s)", retry_also=self.dialect.duplicate_key
        )
        if any(created for _, created in results) and with_tasks:
            self.notify_work()
        return results

    def _creation(
        self, batch: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]]
    ) -> tuple[Creation, bool]:
        """What :meth:`create_workflows` runs in its transaction (every value checked here,
        before it runs), for other operations to run in theirs; and whether it adds tasks
        (the caller tells workers after the commit)."""
        owners = batch_owners(batch)
        now = self.clock()
        firsts = [index for index, owner in enumerate(owners) if owner == index]
        rows: dict[int, dict[str, Any]] = {}
        step_rows: dict[int, list[dict[str, Any]]] = {}
        task_rows: dict[int, dict[str, Any]] = {}
        labelled: dict[int, WorkflowSnapshot] = {}
        for index in firsts:  # every value serialized and checked before anything is written
            snapshot, task = batch[index]
            try:
                if snapshot.labels:
                    labelled[index] = dataclasses.replace(
                        snapshot, labels=check_labels(snapshot.labels)
                    )
                elif snapshot.parent_id is not None:
                    labelled[index] = snapshot
                rows[index] = self._workflow_row(snapshot, now, 1)
                step_rows[index] = [self._step_row(snapshot.id, s, now) for s in snapshot.steps]
                if task is not None:
                    check_aware(task.run_after)  # refused here, so that the error names its row
                    task_rows[index] = self._task_row(task, now)
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"inputs[{index}]: {exc}") from exc
            except SerializationError as exc:
                raise SerializationError(f"inputs[{index}]: {exc}") from exc

        def fn(conn: sa.Connection, *, locked: bool = False) -> list[tuple[WorkflowInfo, bool]]:
            # the rows that exist already (a clash with another workflow name refuses the
            # batch): on SQLite looked up first (its INSERT would fail on them); PostgreSQL's
            # skips them (ON CONFLICT DO NOTHING), so only the rows it did not insert are
            # looked up after it, and a batch of new rows costs no lookup at all
            found: dict[int, WorkflowInfo] = {}
            if isinstance(self._bulk_workflows, _DriverInsert):
                found = self._batch_existing(conn, batch, firsts, required=False, locked=locked)
            fresh = [i for i in firsts if i not in found]
            inserted = self._insert_batch(conn, [rows[i] for i in fresh])
            late = [i for i in fresh if batch[i][0].id not in inserted]
            if late:  # PostgreSQL: stored before, or by a concurrent transaction meanwhile
                found.update(self._batch_existing(conn, batch, late, required=True))
            new = [i for i in fresh if batch[i][0].id in inserted]
            for index in new:
                if step_rows[index]:
                    conn.execute(self._insert_steps, step_rows[index])
            if labelled:
                write_labels(conn, [labelled[i] for i in new if i in labelled])
            new_tasks = [task_rows[i] for i in new if i in task_rows]
            if new_tasks:
                self._insert_batch_tasks(conn, new_tasks)
                self._announce_work(conn)
            with collector_paused():
                headers = {i: _written(batch[i][0], rows[i]) for i in new}
                headers.update(found)
                created = set(new)
                return [
                    (headers[owner], owner == index and owner in created)
                    for index, owner in enumerate(owners)
                ]

        return fn, bool(task_rows)

    def _batch_existing(
        self,
        conn: sa.Connection,
        batch_rows: Sequence[tuple[WorkflowSnapshot, TaskSpec | None]],
        indexes: list[int],
        *,
        required: bool,
        locked: bool = False,
    ) -> dict[int, WorkflowInfo]:
        """The stored workflows that the batch's rows at ``indexes`` clash with (same id, else
        same key), by row; refuses the batch (rolled back) when one is of another workflow
        name, or, if ``required``, when a row has none."""
        found: dict[int, WorkflowInfo] = {}
        for start in range(0, len(indexes), LOOKUP_PAGE):
            page = indexes[start : start + LOOKUP_PAGE]
            ids = [batch_rows[i][0].id for i in page]
            keys = [k for i in page if (k := batch_rows[i][0].idempotency_key) is not None]
            lookup = self._select_batch_locked if locked else self._select_batch_existing
            stored = conn.execute(lookup, {"p_ids": ids, "p_keys": keys})
            by_id: dict[str, sa.Row[Any]] = {}
            by_key: dict[str, sa.Row[Any]] = {}
            for row in stored:
                by_id[row.id] = row
                if row.idempotency_key is not None:
                    by_key[row.idempotency_key] = row
            for index in page:
                snapshot = batch_rows[index][0]
                match = by_id.get(snapshot.id)
                if match is None and snapshot.idempotency_key is not None:
                    match = by_key.get(snapshot.idempotency_key)
                if match is None and not required:
                    continue
                if match is None:  # deleted since the insert saw it: nothing to return
                    raise InvalidArgumentError(
                        f"inputs[{index}]: workflow {snapshot.id!r} clashed with a workflow "
                        "that was deleted meanwhile: enqueue the batch again"
                    )
                if match.name != snapshot.name:
                    raise clash_error(index, snapshot, match.id, match.name)
                found[index] = self._info(match, lenient=True)
        return found

    def _insert_batch(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> set[str]:
        """Insert workflow rows (none of which existed when looked up); the ids inserted."""
        if not rows:
            return set()
        if isinstance(self._bulk_workflows, _DriverInsert):  # SQLite: under the write lock
            if self._first_position is not None:
                first = int(conn.execute(self._first_position).scalar_one())
                for offset, row in enumerate(rows):
                    row["created_seq"] = first + offset
            self._bulk_workflows.run(conn, rows)
            return {row["id"] for row in rows}
        assert self._bulk_new_workflows is not None and self._copy_workflows is not None
        payload: dict[str, str] | None = None  # the JSON, built once if an insert needs it
        try:  # the rows as new ones first (COPY: see _CopyRows), else one plain insert
            with conn.begin_nested():
                if not self._copy_workflows.run(conn, map(_WORKFLOW_VALUES, rows)):
                    payload = _recordset(rows)
                    conn.execute(self._bulk_new_workflows, payload)
            return {row["id"] for row in rows}
        except sa.exc.IntegrityError:  # one exists: the insert that skips the rows that do
            payload = payload or _recordset(rows)
            return {r[0] for r in conn.execute(self._bulk_workflows, payload)}

    def _insert_batch_tasks(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        """Insert the tasks of new workflows (parameters as for :attr:`_insert_task`)."""
        if isinstance(self._bulk_tasks, _DriverInsert):
            self._bulk_tasks.run(conn, rows)
            return
        # each task's due time: its own, else now plus its delay (c_delay), now being a test's
        # clock (c_delay holds the sum already) or the database's, which is the transaction's
        # start (now() is that of every statement of a transaction: the same as the insert's)
        due = [row["t_run_after"] for row in rows]
        if None in due:
            now = (
                None if self.dialect.binds_clock else conn.execute(_TRANSACTION_START).scalar_one()
            )
            due = [
                given or (row["c_delay"] if now is None else now + row["c_delay"])
                for given, row in zip(due, rows, strict=True)
            ]
        assert self._copy_tasks is not None
        copied = (
            (*_TASK_VALUES(row), run_after, 0) for row, run_after in zip(rows, due, strict=True)
        )
        if not self._copy_tasks.run(conn, copied):
            rows = [{**row, "t_run_after": d} for row, d in zip(rows, due, strict=True)]
            conn.execute(self._bulk_tasks, _recordset(rows))


#: The task columns the bulk insert takes from its rows (then ``run_after``, ``attempts``).
_TASK_COLUMNS = [
    "instance_id",
    "task_id",
    "name",
    "queue",
    "priority",
    "created_at",
    "partition_key",
    "run_after",
]


#: A workflow row's values, in the order of WORKFLOW_COLUMNS (the COPY's columns).
_WORKFLOW_VALUES = operator.itemgetter(*(c.name for c in WORKFLOW_COLUMNS))
#: A task row's values (:meth:`SQLCore._task_row`), in the order of _TASK_COLUMNS but the last
#: (its due time, computed at the insert).
_TASK_VALUES = operator.itemgetter(*(f"t_{c}" for c in _TASK_COLUMNS[:-1]))


def _written(snapshot: WorkflowSnapshot, row: dict[str, Any]) -> WorkflowInfo:
    """The header of a workflow just inserted from ``row`` (:meth:`SQLCore._workflow_row` of
    ``snapshot``): what was written, its values as given, not read back."""
    return snapshot.header(
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"]
    )


def _lookup_each(column: sa.Column[Any], param: str) -> sa.Select[Any]:
    """PostgreSQL: the workflow row whose ``column`` equals each value of the array bound to
    ``param``, one index probe per value (a LATERAL subquery with a LIMIT, which the planner
    neither flattens nor turns into a scan). ``column = ANY(:param)`` let the planner pick a
    sequential scan of the whole table for each page of a bulk enqueue when the table had no
    statistics yet (right after a bulk enqueue, before autovacuum's analyze): 80 ms a page
    with 10,000 workflows stored, 165 ms with 20,000, so enqueue_many slowed down with every
    row already in the table."""
    values = (
        sa.func.unnest(sa.bindparam(param, type_=pg.ARRAY(sa.String())))
        .table_valued("v")
        .render_derived(name="k")
    )
    match = sa.select(workflows).where(column == values.c.v).limit(1).lateral("w")
    return sa.select(match).select_from(values.join(match, sa.true()))


def _pg_type(column_type: sa.types.TypeEngine[Any]) -> str:
    if isinstance(column_type, sa.Integer):
        return "INTEGER"
    if isinstance(column_type, UTCDateTime):
        return "TIMESTAMPTZ"
    if isinstance(column_type, sa.Boolean):
        return "BOOLEAN"
    return "TEXT"


def _recordset_insert(table: sa.Table, names: list[str], *, conflict: str) -> sa.TextClause:
    """PostgreSQL: one ``INSERT ... SELECT FROM json_to_recordset(:rows)``, whatever the number
    of rows (``:rows`` one JSON array of the rows: serialized by the json module in C, where an
    array parameter per column costs psycopg a Python call per element)."""
    columns = ", ".join(names)
    record = ", ".join(f"{n} {_pg_type(table.c[n].type)}" for n in names)
    return sa.text(
        f"INSERT INTO {table.name} ({columns}) SELECT {columns} "
        f"FROM json_to_recordset(CAST(:rows AS JSON)) AS r({record}) {conflict}"
    )


def _recordset_tasks() -> sa.TextClause:
    """PostgreSQL: the tasks of a batch, from one JSON array of :attr:`_insert_task`'s
    parameters, each with its due time (``t_run_after``) computed."""
    types = {
        "instance_id": "TEXT",
        "task_id": "TEXT",
        "name": "TEXT",
        "queue": "TEXT",
        "priority": "INTEGER",
        "created_at": "TIMESTAMPTZ",
        "partition_key": "TEXT",
        "run_after": "TIMESTAMPTZ",
    }
    record = ", ".join(f"t_{c} {types[c]}" for c in _TASK_COLUMNS)
    selected = ", ".join(f"r.t_{c}" for c in _TASK_COLUMNS)
    return sa.text(
        f"INSERT INTO {tasks.name} ({', '.join(_TASK_COLUMNS)}, attempts) "
        f"SELECT {selected}, 0 FROM json_to_recordset(CAST(:rows AS JSON)) AS r({record})"
    )


def _json_value(value: Any) -> str:
    """What JSON cannot hold, as PostgreSQL reads it: timestamps (aware only) and intervals."""
    if isinstance(value, datetime):
        check_aware(value)
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds()!r} seconds"
    raise TypeError(f"cannot send {type(value).__qualname__} in a bulk insert")


def _recordset(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The ``:rows`` parameter of the recordset statements (a batch's rows share their
    timestamps: each is converted once). A None is left out, not sent as ``null``:
    ``json_to_recordset`` reads a missing key as NULL, and a new workflow's row has about ten
    of them (a third less JSON to write and for the server to parse)."""
    seen: dict[Any, str] = {}

    def convert(value: Any) -> str:
        text = seen.get(value)
        if text is None:
            text = seen[value] = _json_value(value)
        return text

    with collector_paused():  # a dict a row, all kept until the JSON is written
        present = [{k: v for k, v in row.items() if v is not None} for row in rows]
        return {"rows": json.dumps(present, default=convert, separators=(",", ":"))}


class _DriverInsert:
    """An INSERT compiled once for the dialect and run with the driver's ``executemany`` over
    rows converted by the columns' own bind processors (SQLAlchemy's per-row execution
    machinery costs more than SQLite's insert)."""

    def __init__(self, stmt: sa.Insert, dialect: sa.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = str(compiled)
        self._order = list(compiled.positiontup or [])
        # values bound by the statement itself (a literal such as the tasks' attempts = 0)
        self._defaults: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            if self._defaults.get(name) is None:
                self._defaults[name] = bind.value
        processors = {
            compiled.bind_names[bind]: process
            for bind in compiled.bind_names
            if (process := _bind_processor(bind.type, dialect)) is not None
        }
        self._processors = [
            (index, processors[name])
            for index, name in enumerate(self._order)
            if name in processors
        ]

    def run(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        order, defaults = self._order, self._defaults
        values = ([row.get(name, defaults[name]) for name in order] for row in rows)
        with collector_paused():  # a tuple a row, all kept until the insert
            params = list(_converted(values, self._processors))
        conn.exec_driver_sql(self.sql, params)


class _CopyRows:
    """PostgreSQL through psycopg: rows written into a table with one ``COPY ... FROM STDIN``
    in the caller's transaction, each value converted by its column's bind processor first (as
    a statement's parameters are). The server parses COPY's text rows at a fraction of what
    ``json_to_recordset`` costs it, and inserts the first ones while the client still sends
    the last. COPY has no ``ON CONFLICT``: for rows that are all new (the caller's savepoint
    catches a duplicate) and for tasks of workflows just inserted."""

    def __init__(self, table: sa.Table, columns: list[str], dialect: sa.Dialect) -> None:
        self.sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
        self._processors = [
            (index, process)
            for index, column in enumerate(columns)
            if (process := _bind_processor(table.c[column].type, dialect)) is not None
        ]

    def run(self, conn: sa.Connection, rows: Iterable[Sequence[Any]]) -> bool:
        """Write ``rows`` (each a value a column, in the order given); False, nothing written,
        when the driver is not psycopg.

        :raises sa.exc.DBAPIError: as SQLAlchemy raises the driver's errors (a duplicate key as
            :class:`sa.exc.IntegrityError`), so that callers handle them as a statement's.
        :raises InvalidArgumentError: a column's type refused a value (a naive datetime).
        """
        raw = conn.connection.driver_connection
        if not isinstance(raw, psycopg.AsyncConnection | psycopg.Connection):
            return False
        values = _converted(rows, self._processors)
        try:
            if isinstance(raw, psycopg.AsyncConnection):
                await_only(_copy_async(raw, self.sql, values))
            else:
                with raw.cursor() as cursor, cursor.copy(self.sql) as copy:
                    for row in values:
                        copy.write_row(row)
        except psycopg.Error as exc:
            raise sa.exc.DBAPIError.instance(
                self.sql, None, exc, psycopg.Error, dialect=conn.dialect
            ) from exc
        return True


async def _copy_async(
    raw: psycopg.AsyncConnection[Any], sql: str, rows: Iterable[tuple[Any, ...]]
) -> None:
    async with raw.cursor() as cursor, cursor.copy(sql) as copy:
        for row in rows:
            await copy.write_row(row)


def _bind_processor(
    type_: sa.types.TypeEngine[Any], dialect: sa.Dialect
) -> Callable[[Any], Any] | None:
    """What converts a value of ``type_`` into what the dialect's driver is sent (None: the
    value as it is), as SQLAlchemy converts a statement's parameters."""
    return type_.dialect_impl(dialect).bind_processor(dialect)


def _converted(
    rows: Iterable[Sequence[Any]], processors: Sequence[tuple[int, Callable[[Any], Any]]]
) -> Iterator[tuple[Any, ...]]:
    """``rows`` with the value at each index of ``processors`` converted by its processor (a
    column's bind processor); a value that many rows share (a batch's timestamps) once. Lazy:
    a COPY converts each row as it sends it, while the server inserts those before it.

    :raises InvalidArgumentError: a processor refused a value (a naive datetime).
    """
    seen: dict[tuple[int, Any], Any] = {}
    try:
        for row in rows:
            values = list(row)
            for index, process in processors:
                value = values[index]
                if value is not None:
                    key = (index, value)
                    text = seen.get(key)
                    if text is None:
                        text = seen[key] = process(value)
                    values[index] = text
            yield tuple(values)
    except ValueError as exc:  # a type refused a value (a naive datetime)
        raise InvalidArgumentError(str(exc)) from exc


#: PostgreSQL: the start of the transaction, which ``now()`` is in each of its statements.
_TRANSACTION_START = sa.select(sa.func.now())
