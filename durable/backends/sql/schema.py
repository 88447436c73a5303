"""The tables of the SQL backends: the one definition of the schema.

Alembic revisions in ``alembic/versions`` are generated from :data:`metadata`, and
``tests/test_migrations.py`` checks that a database migrated to head matches it exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeEngine

#: Every durable table has this prefix, so durable can share a database with an application.
PREFIX = "durable_"

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


#: SQLAlchemy's names for the MySQL family's dialects.
MYSQL_NAMES = ("mysql", "mariadb")
#: The databases that keep timestamps as naive UTC.
NAIVE_UTC = ("sqlite", *MYSQL_NAMES)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database keeps.

    PostgreSQL stores ``timestamptz``; SQLite stores ISO-8601 text in UTC, which sorts and
    compares correctly as text; MySQL/MariaDB store ``DATETIME(6)`` in UTC (microseconds; no
    time zone conversion). A naive datetime is rejected rather than guessed at.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL_NAMES:
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(self.impl_instance)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _in_utc(value)
        return value.replace(tzinfo=None) if dialect.name in NAIVE_UTC else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return _read_utc(value)

    # SQLite: one function each way instead of this type's step then SQLAlchemy's (its text
    # format, ``YYYY-MM-DD HH:MM:SS.ffffff``, written and read by the C ``isoformat`` and
    # ``fromisoformat``): the same values, at a fraction of the cost on the hot path

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return _sqlite_text
        return super().bind_processor(dialect)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        if dialect.name == "sqlite":
            return _read_utc
        return super().result_processor(dialect, coltype)


def _in_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused (ValueError)."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: durable stores timezone-aware times")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


#: The last timestamp :func:`_sqlite_text` wrote and its text: a step's record binds the same
#: time twice (its ``completed_at`` and the lease check's ``c_now``), and formatting an aware
#: datetime costs a microsecond. Held by reference, so the identity check cannot be fooled by
#: a freed object's address; a datetime is immutable, so its text cannot change.
_last_text: tuple[datetime | None, str | None] = (None, None)


def _sqlite_text(value: datetime | None) -> str | None:
    """A timestamp as SQLite keeps it: naive UTC text with microseconds (SQLAlchemy's format)."""
    global _last_text
    if value is None:
        return None
    last = _last_text  # one read: another thread may replace the pair meanwhile
    if value is last[0]:
        return last[1]
    utc = _in_utc(value)
    # isoformat(" ", "microseconds") without its "+00:00", formatted here: an aware
    # datetime's isoformat costs nearly twice as much (it asks the zone for its offset)
    text = "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 - the fastest way here
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
    )
    _last_text = (value, text)
    return text


def _read_utc(value: Any) -> datetime | None:
    """A timestamp the database returned as aware UTC: a datetime (aware, or naive UTC), or
    the text SQLite keeps or computed itself."""
    if value is None:
        return None
    if type(value) is str:
        # naive UTC text, as SQLite keeps it: parsed with its offset in one call (a parse and
        # a replace(tzinfo=...) cost six times more). Text with an offset of its own fails
        # here, and a date alone parses with the offset dropped (Python 3.11): both are read
        # below
        try:
            parsed = datetime.fromisoformat(value + "+00:00")
        except ValueError:
            pass
        else:
            if parsed.tzinfo is UTC:
                return parsed
    if getattr(value, "tzinfo", None) is UTC:  # as psycopg reads it on a UTC session
        return value  # type: ignore[no-any-return]
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


_ID = sa.String(255)
#: Serialized values: TEXT on MySQL holds 64 KiB only.
_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), *MYSQL_NAMES)
#: Double precision: FLOAT on MySQL is single precision.
_FLOAT = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), *MYSQL_NAMES)

workflows = sa.Table(
    f"{PREFIX}workflows",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("name", _ID, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("input", _TEXT),
    sa.Column("output", _TEXT),
    sa.Column("error", _TEXT),
    sa.Column("parent_id", _ID),
    sa.Column("executor_id", _ID),
    sa.Column("queue", _ID, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("idempotency_key", _ID, unique=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("max_attempts", sa.Integer),
    # attempts interrupted before they ended (executor died, lease lost); see WorkflowInfo
    sa.Column("interruptions", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime),
    sa.Column("completed_at", UTCDateTime),
    # cancelled once passed, unless finished (WorkflowInfo.deadline); the sweep looks for
    # unfinished ones by (status, deadline)
    sa.Column("deadline", UTCDateTime),
    # earlier runs that continued as new (WorkflowInfo.continuations)
    sa.Column("continuations", sa.Integer, nullable=False, server_default=sa.text("0")),
    # the version of the code that started it (WorkflowInfo.code_version; NULL: unknown)
    sa.Column("code_version", sa.String(64)),
    # the enqueuer's trace context (WorkflowInfo.trace_context), for the worker's span
    sa.Column("trace_context", _TEXT),
    # its partition in a queue with limits (WorkflowInfo.partition_key; its task has it too)
    sa.Column("partition_key", _ID),
    sa.Index(None, "created_at", "id"),
    sa.Index(None, "status", "created_at"),
    sa.Index(None, "name", "created_at"),
    # PostgreSQL: the indexes of columns most rows leave NULL (or NULL until the workflow runs
    # or ends) hold only the rows that have a value (every query through them compares the
    # column, which implies it), so that enqueueing and starting a workflow write fewer index
    # entries (migration 0019)
    sa.Index(None, "parent_id", postgresql_where=sa.text("parent_id IS NOT NULL")),
    sa.Index(None, "status", "deadline", postgresql_where=sa.text("deadline IS NOT NULL")),
    # retention: the oldest finished first (unfinished ones have no completed_at)
    sa.Index(None, "completed_at", postgresql_where=sa.text("completed_at IS NOT NULL")),
)

steps = sa.Table(
    f"{PREFIX}steps",
    metadata,
    sa.Column(
        "workflow_id",
        _ID,
        sa.ForeignKey(workflows.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", _ID, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("input", _TEXT),
    sa.Column("output", _TEXT),
    sa.Column("error", _TEXT),
    sa.Column("child_workflow_id", _ID),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("executor_id", _ID),
    sa.Column("started_at", UTCDateTime),
    sa.Column("completed_at", UTCDateTime),
    # a failed step that a redrive runs again (see StepRecord.rerun)
    sa.Column("rerun", sa.Boolean, nullable=False, server_default=sa.false()),
)

tasks = sa.Table(
    f"{PREFIX}tasks",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column(
        "instance_id",
        _ID,
        sa.ForeignKey(workflows.c.id, ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("task_id", _ID, nullable=False),
    sa.Column("name", _ID, nullable=False),
    sa.Column("queue", _ID, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("run_after", UTCDateTime, nullable=False),
    sa.Column("claimed_by", _ID),
    sa.Column("claim_expires_at", UTCDateTime),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("instance_id", "task_id"),
    sa.Index(None, "priority", "run_after", "id"),
    # queues with limits (durable_queues): the partition of the queue (TaskSpec.partition_key),
    # and the running tasks of a queue counted by the limited claim
    sa.Column("partition_key", _ID),
    sa.Index(None, "queue", "claim_expires_at"),
)

workflow_registry = sa.Table(
    f"{PREFIX}workflow_registry",
    metadata,
    sa.Column("name", _ID, primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("description", _TEXT),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

executors = sa.Table(
    f"{PREFIX}executors",
    metadata,
    sa.Column("id", _ID, primary_key=True),
    sa.Column("hostname", _ID, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("stopped_at", UTCDateTime),
    # which start of which process holds the id: heartbeats and stops are fenced by it
    sa.Column("incarnation", _ID, nullable=False),
    # seconds between the executor's heartbeats: its staleness is judged by it
    sa.Column("heartbeat_interval", _FLOAT, nullable=False),
)

messages = sa.Table(
    f"{PREFIX}messages",
    metadata,
    # the order of sending: a topic's messages are received in this order
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column(
        "workflow_id",
        _ID,
        sa.ForeignKey(workflows.c.id, ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("topic", _ID, nullable=False),
    sa.Column("value", _TEXT, nullable=False),
    sa.Column("idempotency_key", _ID),
    # a timer's message (its topic is the timer's key): restarting or cancelling the key finds it
    sa.Column("timer", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("sent_at", UTCDateTime, nullable=False),
    sa.Column("deliver_at", UTCDateTime, nullable=False),
    sa.Column("received_at", UTCDateTime),
    sa.Column("received_position", sa.Integer),
    sa.UniqueConstraint("workflow_id", "idempotency_key"),
    # a topic's messages not received yet, in order (received_at IS NULL first)
    sa.Index(None, "workflow_id", "topic", "received_at", "id"),
)

# -- what workflows publish (durable.set_event, durable.write_stream) ---------------------------

events = sa.Table(
    f"{PREFIX}events",
    metadata,
    sa.Column(
        "workflow_id",
        _ID,
        sa.ForeignKey(workflows.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", _ID, primary_key=True),
    sa.Column("value", _TEXT),
    # the history position of the set_event that wrote the value
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# one row per stream: how many values it has, whether it is closed
streams = sa.Table(
    f"{PREFIX}streams",
    metadata,
    sa.Column(
        "workflow_id",
        _ID,
        sa.ForeignKey(workflows.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", _ID, primary_key=True),
    sa.Column("next_offset", sa.Integer, nullable=False),
    sa.Column("closed", sa.Boolean, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

stream_values = sa.Table(
    f"{PREFIX}stream_values",
    metadata,
    sa.Column(
        "workflow_id",
        _ID,
        sa.ForeignKey(workflows.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("key", _ID, primary_key=True),
    sa.Column("offset", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("value", _TEXT),
    # the history position of the write_stream that wrote the value
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

schedules = sa.Table(
    f"{PREFIX}schedules",
    metadata,
    sa.Column("name", _ID, primary_key=True),
    sa.Column("workflow", _ID, nullable=False),
    sa.Column("cron", _ID, nullable=False),
    sa.Column("timezone", _ID, nullable=False),
    # the arguments every tick's execution gets (serialized), besides its tick
    sa.Column("args", _TEXT, nullable=False),
    sa.Column("kwargs", _TEXT, nullable=False),
    sa.Column("missed", sa.String(16), nullable=False),
    sa.Column("max_catchup", sa.Integer, nullable=False),
    sa.Column("queue", _ID, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("paused", sa.Boolean, nullable=False),
    # declared in code (@durable.scheduled): a runtime serving its workflow that no longer
    # declares it deletes it; a schedule created from a client is kept until deleted
    sa.Column("declared", sa.Boolean, nullable=False, server_default=sa.false()),
    # the next tick: schedulers compare-and-set it when they fire the schedule
    sa.Column("next_run_at", UTCDateTime),
    sa.Column("last_tick_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Index(None, "next_run_at"),
)

# -- labels (WorkflowSnapshot.labels): written once, with their workflow ----------------------

workflow_labels = sa.Table(
    f"{PREFIX}workflow_labels",
    metadata,
    sa.Column(
        "workflow_id",
        _ID,
        sa.ForeignKey(workflows.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    # bounded (durable.validation.MAX_LABEL_*) so that (key, value) fits MySQL's index key limit
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(255), nullable=False),
    # search by label: the workflows carrying key = value
    sa.Index(None, "key", "value"),
)

# -- queues with limits (durable.queues) ---------------------------------------------------------

queues = sa.Table(
    f"{PREFIX}queues",
    metadata,
    sa.Column("name", _ID, primary_key=True),
    # None: no such limit (QueueInfo); the limited claim locks this row
    sa.Column("concurrency", sa.Integer),
    sa.Column("worker_concurrency", sa.Integer),
    sa.Column("rate_limit", sa.Integer),
    sa.Column("rate_period", _FLOAT),
    sa.Column("partition_concurrency", sa.Integer),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# the starts of rate-limited queues in their current window (older ones are pruned by the claim)
queue_starts = sa.Table(
    f"{PREFIX}queue_starts",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("queue", _ID, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Index(None, "queue", "started_at"),
)

# -- debouncing (enqueue(..., debounce=, debounce_key=)) ------------------------------------------

# the execution of each (workflow name, debounce key)'s current burst; the debounce locks this
# row (NULL: no burst yet, or its execution was deleted)
debounces = sa.Table(
    f"{PREFIX}debounces",
    metadata,
    sa.Column("workflow", _ID, primary_key=True),
    sa.Column("key", _ID, primary_key=True),
    sa.Column("workflow_id", _ID, sa.ForeignKey(workflows.c.id, ondelete="SET NULL")),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    # a workflow's deletion clears what points at it
    sa.Index(None, "workflow_id"),
)

# -- the change feed (client.events): positions on the rows the changes already write ------------


#: A change's position in the feed's one global order. PostgreSQL: the writing transaction's id
#: times 2**64 plus a value of the ``durable_feed_seq`` sequence (NUMERIC: xid8 and bigint do
#: not fit one bigint); MariaDB: a value of that sequence; SQLite: one more than the highest
#: position (writers are serialized). See :mod:`durable.backends.sql.feed`.
class Position(sa.TypeDecorator[int]):
    """A change feed position: BIGINT, NUMERIC(39, 0) on PostgreSQL; an int in Python."""

    impl = sa.BigInteger
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.Numeric(39, 0))
        return dialect.type_descriptor(sa.BigInteger())

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        # whatever the driver returns (PostgreSQL: a Decimal), without asking the column's
        # type code (the direct path has none)
        return lambda value: None if value is None else int(value)


_POSITION = Position()

#: Every position column, with its table.
POSITION_COLUMNS: tuple[tuple[sa.Table, str], ...] = (
    (workflows, "created_seq"),
    (workflows, "started_seq"),
    (workflows, "finished_seq"),
    (steps, "change_seq"),
    (messages, "sent_seq"),
)
_LATER = {"started_seq", "finished_seq"}
for _table, _column in POSITION_COLUMNS:
    _table.append_column(sa.Column(_column, _POSITION))
    # SQLite: rows without a position (most steps: theirs is their rowid, see .feed; workflows
    # not started or not finished) have no index entry
    # PostgreSQL: the same for the positions a row gets only later (a workflow's start and end;
    # an insert gives the others theirs)
    _table.append_constraint(
        sa.Index(
            None,
            _column,
            sqlite_where=_table.c[_column].isnot(None),
            postgresql_where=sa.text(f"{_column} IS NOT NULL") if _column in _LATER else None,
        )
    )

#: The highest position a deleted row had (SQLite only: its next position is one more than the
#: highest there is, which a deletion must not lower). One row, id 1.
feed_floor = sa.Table(
    f"{PREFIX}feed_floor",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, nullable=False),
)
