"""The change feed's positions, and the query that reads the feed (``Client.events``).

No history table and no statement of its own: each row a change writes anyway carries the
position of that change, assigned by the same statement (``durable_workflows.created_seq``,
``started_seq``, ``finished_seq``; ``durable_steps.change_seq``; ``durable_messages.sent_seq``),
and the feed is the union of those columns in position order (each one indexed).

How a position is made, so that a reader paging with ``after=`` never misses a change that
commits after it read:

* **PostgreSQL**: the writing transaction's id times 2**64 plus a value of the sequence
  ``durable_feed_seq`` (a NUMERIC: xid8 and bigint do not fit one bigint). The reader returns
  only positions below ``pg_snapshot_xmin(pg_current_snapshot())`` times 2**64: every
  transaction with a smaller id has ended (committed, visible to the reader's statement, or
  rolled back), and every transaction that writes later has an id at least that xmin, so its
  positions are above all those returned. (A transaction that took a sequence value first and
  commits last is held back, not skipped.) The feed lags by the oldest write transaction still
  open in the cluster.
* **SQLite**: writers are serialized (``BEGIN IMMEDIATE``), so one more than the highest position
  there is, computed inside the write statement (each column's maximum is one index lookup), is in
  commit order. In a transaction of the group commit's (``InlineRunner``) only its first write
  computes it; the next position is then read once and the other writes take theirs from a counter
  (nobody else writes meanwhile), instead of each computing it again. A step recorded by the hot
  path (``record_step``, a ``recv``'s record) puts its position in the row's ``rowid``, which
  SQLite keeps ordered anyway, and leaves ``change_seq`` NULL (its index is partial): the step
  pays for the lookups only, not for a second index (a step row's position is its ``change_seq``,
  else its ``rowid``; a pending step recorded later gets a ``change_seq``). A deletion must not
  lower the maximum: triggers (revision 0018) keep the highest deleted position in
  ``durable_feed_floor`` (deletions only, never the step path).
* **MariaDB**: the sequence ``durable_feed_seq`` alone (see :mod:`.changes` for how the reader
  waits for the transactions that may still hold a smaller position).

PostgreSQL and MariaDB also give the columns a DEFAULT (a row inserted by a statement that does
not name them, e.g. ``durable_enqueue()`` in SQL), SQLite a trigger that fills a workflow's or a
message's position left NULL by an insert; durable's own statements compute theirs (every
insert of steps does: SQLite has no trigger there, so that the step path runs none).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from durable.backends.sql.schema import POSITION_COLUMNS, Position, messages, steps, workflows

SEQUENCE = "durable_feed_seq"
#: The type of a position (as schema.py declares the columns).
POSITION = Position()
#: 2**64: a PostgreSQL position is xid * XID_SHIFT + sequence value.
XID_SHIFT = 18446744073709551616

#: PostgreSQL: the function revision 0018 creates to compute a position (a SQL function, which
#: the planner inlines), so that the statements stay short: the writing transaction's id times
#: 2**64 plus the sequence's next value.
PG_NEXT_POSITION = "durable_feed_position()"
MYSQL_NEXT_POSITION = f"NEXTVAL({SEQUENCE})"

#: The position columns' names, which statements copying whole rows leave out.
NAMES = frozenset(name for _table, name in POSITION_COLUMNS)


def _sqlite_highest(table: sa.Table, name: str) -> str:
    # the partial index serves max() only with its condition
    highest = f"SELECT max({name}) AS p FROM {table.name} WHERE {name} IS NOT NULL"
    if table is steps:
        highest += f" UNION ALL SELECT max(rowid) AS p FROM {table.name}"
    return highest


SQLITE_NEXT_POSITION = (
    "(SELECT coalesce(max(p), 0) + 1 FROM ("
    + " UNION ALL ".join(_sqlite_highest(table, name) for table, name in POSITION_COLUMNS)
    + " UNION ALL SELECT position AS p FROM durable_feed_floor))"
)

#: SQLite: the steps table with its ``rowid``, where a step recorded by the hot path puts its
#: position (see the module's docstring).
STEPS_WITH_ROWID = sa.table(
    steps.name, sa.column("rowid", POSITION), *(sa.column(c.name, c.type) for c in steps.c)
)


def feed_query(
    position_filter: Any,
    horizon: sa.ColumnElement[Any] | None,
    limit: Any,
    *,
    step_rowids: bool = False,
) -> sa.Select[Any]:
    """The events whose position passes ``position_filter(column)`` (and is below ``horizon``),
    in position order, at most ``limit`` (each branch uses its column's index). With
    ``step_rowids`` (SQLite), a step row without a ``change_seq`` is at its ``rowid``."""
    name = workflows.c.name
    branches: list[sa.Select[Any]] = []

    def branch(
        column: sa.ColumnElement[Any],
        *selected: Any,
        joined: Any = None,
        only: sa.ColumnElement[bool] | None = None,
    ) -> None:
        query = sa.select(column.label("position"), *selected)
        if joined is not None:
            query = query.select_from(joined)
        query = query.where(position_filter(column))
        if only is not None:
            query = query.where(only)
        if horizon is not None:
            query = query.where(column < horizon)
        inner = query.order_by(column).limit(limit).subquery()
        branches.append(sa.select(*inner.c))

    def workflow_branch(column: str, kind: str, time: sa.ColumnElement[Any]) -> None:
        branch(
            workflows.c[column],
            sa.literal(kind).label("kind"),
            workflows.c.id.label("workflow_id"),
            name.label("workflow_name"),
            sa.type_coerce(time, workflows.c.created_at.type).label("time"),
            workflows.c.status.label("status"),
            sa.cast(sa.null(), sa.Integer()).label("step_position"),
            sa.cast(sa.null(), sa.String()).label("step_name"),
        )

    workflow_branch("created_seq", "created", workflows.c.created_at)
    workflow_branch("started_seq", "started", workflows.c.started_at)
    workflow_branch("finished_seq", "finished", workflows.c.completed_at)
    step_fields = (
        sa.literal("step").label("kind"),
        steps.c.workflow_id.label("workflow_id"),
        name.label("workflow_name"),
        sa.type_coerce(
            sa.func.coalesce(steps.c.completed_at, steps.c.started_at), steps.c.started_at.type
        ).label("time"),
        steps.c.status.label("status"),
        steps.c.position.label("step_position"),
        steps.c.name.label("step_name"),
    )
    joined = steps.join(workflows, workflows.c.id == steps.c.workflow_id)
    branch(steps.c.change_seq, *step_fields, joined=joined, only=steps.c.change_seq.isnot(None))
    if step_rowids:
        rowid = sa.literal_column(f"{steps.name}.rowid", type_=POSITION)
        branch(rowid, *step_fields, joined=joined, only=steps.c.change_seq.is_(None))
    branch(
        messages.c.sent_seq,
        sa.literal("message").label("kind"),
        messages.c.workflow_id.label("workflow_id"),
        name.label("workflow_name"),
        messages.c.sent_at.label("time"),
        sa.cast(sa.null(), sa.String()).label("status"),
        sa.cast(sa.null(), sa.Integer()).label("step_position"),
        messages.c.topic.label("step_name"),
        joined=messages.join(workflows, workflows.c.id == messages.c.workflow_id),
    )
    union = sa.union_all(*branches).subquery("changes")
    return (
        sa.select(*union.c)
        .order_by(union.c.position, union.c.kind, union.c.workflow_id, union.c.step_position)
        .limit(limit)
    )
