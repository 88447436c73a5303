"""What differs between SQLite, PostgreSQL and MySQL/MariaDB, and nothing else.

* **Engines.** SQLite files are opened in WAL mode with ``BEGIN IMMEDIATE`` transactions (one
  writer at a time, no lock upgrades mid-transaction). ``sqlite:///`` URLs use the standard
  library driver and run each short transaction inline on the caller's thread: a local write
  commits in tens of microseconds, less than handing it to a thread would cost.
  ``sqlite+aiosqlite:///`` uses aiosqlite's thread, which never blocks the event loop but costs
  about a millisecond per transaction. PostgreSQL uses psycopg 3's async driver.
* **The clock.** Lease expiry on PostgreSQL is judged by the database's ``now()``, so workers'
  clocks need not agree. SQLite is one file on one host: the host's clock is passed in.
  :meth:`SQLDialect.host_now` says which, for the backend's ``now()``. A backend given a
  ``clock`` (a test's time-skipping clock) has its time bound as a parameter on PostgreSQL too
  (:class:`PostgresBoundClockDialect`, never the default: the database's clock stays the truth
  in production).
* **Fencing.** On PostgreSQL the claim row is locked ``FOR SHARE`` while a step is recorded, so a
  concurrent takeover waits and re-checks; SQLite's write lock already serializes them.
* **Lists.** Name and queue filters bind one array on PostgreSQL (``= ANY(:names)``), so the claim
  statement is prepared once; SQLite expands ``IN (...)``.
* **Missing tables.** SQLite says ``no such table: NAME``; PostgreSQL raises SQLSTATE 42P01
  (``relation "NAME" does not exist``): :meth:`SQLDialect.missing_table` reads either.
* **Batch claims.** PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` in a CTE feeding
  ``UPDATE ... RETURNING``. SQLite: ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING``
  inside one write transaction. Never SELECT-then-UPDATE (SQLAlchemy renders ``FOR UPDATE`` as
  nothing on SQLite, and every worker would get the same task).
* **MySQL / MariaDB** (10.6+, through aiomysql): the clock is the server's ``UTC_TIMESTAMP(6)``
  (UTC whatever the session's time zone), timestamps are ``DATETIME(6)``, serialized values
  ``LONGTEXT``; transactions run at READ COMMITTED (no gap locks between claimers), and one that
  lost a deadlock is run again (:meth:`SQLDialect.retryable`). MariaDB has no ``ON CONFLICT``
  and no ``UPDATE ... RETURNING``: :mod:`.mysql` runs those statements as a few plain ones in
  the same transaction (a batch claim: a plain ``SELECT ... ORDER BY ... LIMIT n``, then
  ``SELECT ... WHERE id IN (...) AND available FOR UPDATE SKIP LOCKED``, then the UPDATE by
  primary key: see :class:`.mysql.Pick`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from durable.backends.sql import feed, locking, mysql
from durable.backends.sql.checkpoints import WRITER_AUTOCHECKPOINT
from durable.backends.sql.direct import KEY_DRIVEN_PLANS
from durable.backends.sql.locking import (
    SQLITE_LOOP_WAIT,
    SQLITE_READING,
    SQLiteLockHeld,
    is_sqlite_busy,
)
from durable.backends.sql.schema import PREFIX, UTCDateTime, steps
from durable.backends.sql.stale import discard_stale_at_checkout
from durable.backends.sql.urls import shown_url
from durable.errors import ConfigurationError

SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")


def utcnow() -> datetime:
    """This host's clock, in UTC (the default ``clock`` of a backend)."""
    return datetime.now(UTC)


#: PostgreSQL: the direct path's planner settings, for the current transaction only.
_PLAN_BY_KEYS = "SELECT " + ", ".join(
    f"set_config('{name}', '{value}', true)" for name, value in KEY_DRIVEN_PLANS.items()
)


class SQLDialect:
    """The dialect-specific pieces of SQL the backend composes its statements from.

    :param clock: the time a dialect that binds the lease clock as a parameter (SQLite, or
        :class:`PostgresBoundClockDialect`) passes in, and that :meth:`current_params` reads
        (default: this host's clock).
    """

    name: str
    #: Whether the lease clock's time is a parameter of the statements (:meth:`now` is a
    #: bindparam), rather than the database's own clock.
    binds_clock = False

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock: Callable[[], datetime] = clock or utcnow

    def now(self) -> sa.ColumnElement[datetime]:
        """The current time, as the lease clock sees it."""
        raise NotImplementedError

    def later(self, param: str) -> sa.ColumnElement[datetime]:
        """The time ``param`` (a duration passed to :meth:`clock_params`) from now."""
        raise NotImplementedError

    def host_now(self) -> datetime | None:
        """The lease clock's current time when this host keeps it (no query needed), or None
        when only the database can tell it: then the backend selects :meth:`now`."""
        raise NotImplementedError

    def clock_params(self, **durations: float) -> dict[str, Any]:
        """The parameters :meth:`now` and :meth:`later` need, for one execution."""
        raise NotImplementedError

    def clock_params_at(self, now: datetime, **durations: float) -> dict[str, Any]:
        """:meth:`clock_params`, where ``now`` was just read from :attr:`clock` to stamp the
        same statement's rows: a clock bound as a parameter passes that reading in (one
        reading, not two); a database's own clock ignores it."""
        return self.clock_params(**durations)

    def insert(self, table: sa.Table) -> Any:
        """An INSERT construct that supports ``on_conflict_do_*``."""
        raise NotImplementedError

    def lock_for_fence(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        """Lock the claim row a fenced write depends on, where the database needs it."""
        return stmt

    def skip_locked(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        """Lock the rows ``stmt`` selects for this transaction, skipping rows another one has
        locked, where the database needs it (SQLite has one writer at a time)."""
        return stmt

    def in_list(self, column: sa.ColumnElement[str], param: str) -> sa.ColumnElement[bool]:
        """``column`` is one of the strings in the list bound to ``param``."""
        return column.in_(sa.bindparam(param, expanding=True))

    def claim_batch(
        self, tasks: sa.Table, available: sa.ColumnElement[bool], order: list[Any]
    ) -> sa.Update:
        """UPDATE the first ``:p_limit`` available tasks; the caller adds SET and RETURNING."""
        raise NotImplementedError

    def missing_table(self, exc: sa.exc.DBAPIError) -> str | None:
        """The table ``exc`` says does not exist, or None if it says something else."""
        raise NotImplementedError

    def database_identity(self) -> sa.Select[Any]:
        """One row that identifies the server and database a connection is connected to (two
        connections to the same database return the same row)."""
        raise NotImplementedError

    def identity_of(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """The identity :meth:`database_identity`'s row stands for (normalized)."""
        return row

    def identity_from_url(self, url: URL) -> tuple[Any, ...] | None:
        """The identity of the database at ``url`` when the URL alone tells it (no query: a
        query could wait on a lock the caller's transaction holds), else None."""
        return None

    def current_time(self) -> sa.ColumnElement[datetime]:
        """The lease clock's time at the moment the expression is evaluated (not the
        transaction's start): when a rate-limited claim records its starts, after it waited
        for its queue's lock. SQLite: the host's clock, bound as ``c_current``."""
        return sa.bindparam("c_current", type_=UTCDateTime())

    def current_params(self) -> dict[str, Any]:
        """The parameters :meth:`current_time` needs, computed now."""
        return {"c_current": self.clock()}

    def connection(self, conn: sa.Connection) -> sa.Connection:
        """The connection a transaction's function gets (MySQL: one that emulates what the
        database lacks)."""
        return conn

    def check_server(self, conn: sa.Connection) -> None:
        """Refuse, at start, a server durable cannot run on (MySQL: not MariaDB 10.6+).

        :raises ConfigurationError: naming the server's version and what durable needs.
        """

    def plan_by_keys(self, conn: sa.Connection) -> None:
        """In durable's own transaction on ``conn``, whose statements reach their rows through
        keys: have the planner use the indexes whatever statistics it has (PostgreSQL: the
        direct path's settings, for this transaction only)."""

    def lock_for_writing(self, conn: sa.Connection) -> None:
        """In a caller's transaction (``enqueue_in``, ``send_in``), before durable reads what
        it then writes on: take the database's write lock where reads do not (SQLite: the
        stdlib driver begins a transaction at the first write only, so a read before it would
        see a state that another commit changes before the write)."""

    def retryable(self, exc: BaseException) -> bool:
        """Whether the transaction that raised ``exc`` was rolled back by the database for a
        reason that running it again may not meet (a deadlock's victim)."""
        return False

    def duplicate_key(self, exc: sa.exc.DBAPIError) -> bool:
        """Whether ``exc`` is a plain INSERT's duplicate key, on a database where a bulk
        enqueue inserts without ``ON CONFLICT`` after looking its rows up (MySQL: nothing holds
        the keys between the two, so a concurrent batch may insert one in between)."""
        return False

    def unavailable(self, exc: sa.exc.DBAPIError) -> bool | None:
        """Whether ``exc`` (no SQLSTATE attached) says the database cannot be reached; None
        when the dialect does not know (the backend decides)."""
        return None

    def next_position(self) -> sa.ColumnElement[Any]:
        """The change feed's next position, computed by the statement that writes the change
        (no statement of its own): see :mod:`durable.backends.sql.feed`."""
        raise NotImplementedError

    def recorded_steps(self) -> tuple[Any, str]:
        """Where the hot path's insert of a step record goes, and the column its feed position
        goes in: the steps table and ``change_seq``; SQLite: the table with its ``rowid``, and
        the ``rowid`` (no second index to keep on the step path, see :mod:`.feed`)."""
        return steps, "change_seq"


class BoundClock(SQLDialect):
    """The lease clock as parameters: :meth:`now` is ``c_now``, bound to :attr:`clock`'s time
    for each execution, and a time ``param`` from now is ``c_<param>``, computed here."""

    binds_clock = True

    def now(self) -> sa.ColumnElement[datetime]:
        return sa.bindparam("c_now", type_=UTCDateTime())

    def later(self, param: str) -> sa.ColumnElement[datetime]:
        return sa.bindparam(f"c_{param}", type_=UTCDateTime())

    def host_now(self) -> datetime | None:
        return self.clock()  # the clock clock_params passes in

    def clock_params(self, **durations: float) -> dict[str, Any]:
        return self.clock_params_at(self.clock(), **durations)

    def clock_params_at(self, now: datetime, **durations: float) -> dict[str, Any]:
        params: dict[str, Any] = {"c_now": now}
        for key, seconds in durations.items():
            params[f"c_{key}"] = now + timedelta(seconds=seconds)
        return params


class JSONList(sa.TypeDecorator[list[str]]):
    """SQLite: a list of strings bound as one JSON array (read back with ``json_each``)."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else json.dumps(list(value))


class SQLiteDialect(BoundClock):
    name = "sqlite"

    def in_list(self, column: sa.ColumnElement[str], param: str) -> sa.ColumnElement[bool]:
        # one JSON array parameter: the statement's text does not depend on the list's length,
        # so it is compiled once and runs straight on sqlite3 (an expanding IN is rendered anew
        # for each length)
        values = sa.func.json_each(sa.bindparam(param, type_=JSONList())).table_valued(
            sa.column("value", sa.String())
        )
        return column.in_(sa.select(values.c.value).scalar_subquery())

    def next_position(self) -> sa.ColumnElement[Any]:
        return sa.literal_column(feed.SQLITE_NEXT_POSITION, type_=feed.POSITION)

    def recorded_steps(self) -> tuple[Any, str]:
        return feed.STEPS_WITH_ROWID, "rowid"

    def insert(self, table: sa.Table) -> Any:
        return sqlite.insert(table)

    def lock_for_writing(self, conn: sa.Connection) -> None:
        # a write statement takes SQLite's write lock (and begins the driver's transaction),
        # even when it changes no row
        conn.execute(sa.text("UPDATE durable_tasks SET priority = priority WHERE 0"))

    def claim_batch(
        self, tasks: sa.Table, available: sa.ColumnElement[bool], order: list[Any]
    ) -> sa.Update:
        picked = (
            sa.select(tasks.c.id)
            .where(available)
            .order_by(*order)
            .limit(sa.bindparam("p_limit", type_=sa.Integer()))
        )
        return sa.update(tasks).where(tasks.c.id.in_(picked.scalar_subquery()))

    def missing_table(self, exc: sa.exc.DBAPIError) -> str | None:
        found = re.search(r"no such table: (\S+)", str(exc.orig))
        return found.group(1) if found else None

    def database_identity(self) -> sa.Select[Any]:
        # the main database's file ('' for an in-memory database)
        return (
            sa.select(sa.column("file", sa.String()))
            .select_from(sa.table("pragma_database_list"))
            .where(sa.column("name", sa.String()) == "main")
        )

    def identity_of(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        return (os.path.realpath(row[0]) if row[0] else "",)

    def identity_from_url(self, url: URL) -> tuple[Any, ...] | None:
        return ("" if _is_memory(url) else os.path.realpath(url.database or ""),)

    def unavailable(self, exc: sa.exc.DBAPIError) -> bool | None:
        # the file stayed locked by another connection past the busy timeout (a backup, a
        # long transaction of another program), or its disk is full: unavailable now, as a
        # server that does not answer, not a statement refused (a worker hands its attempt
        # back uncounted, instead of failing healthy workflows for good)
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in SQLITE_UNAVAILABLE or None
        message = str(exc.orig)
        return "database is locked" in message or "disk is full" in message or None


#: SQLite's primary result codes that mean "not now": a file locked by another connection
#: (SQLITE_BUSY), a table locked within one (SQLITE_LOCKED), the disk full (SQLITE_FULL).
SQLITE_UNAVAILABLE = frozenset({5, 6, 13})

#: PostgreSQL's SQLSTATE of a write the database refuses because it takes none: made read-only
#: (``default_transaction_read_only``), or a standby (psycopg raises it as an InternalError).
PG_READ_ONLY = "25006"

#: PostgreSQL's SQLSTATEs of a transaction rolled back to break a deadlock, or at a
#: serialization failure: running it again may succeed.
PG_RETRYABLE = frozenset({"40P01", "40001"})


class PostgresDialect(SQLDialect):
    name = "postgresql"

    def retryable(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, sa.exc.DBAPIError)
            and getattr(exc.orig, "sqlstate", None) in PG_RETRYABLE
        )

    def next_position(self) -> sa.ColumnElement[Any]:
        return sa.literal_column(feed.PG_NEXT_POSITION, type_=feed.POSITION)

    def now(self) -> sa.ColumnElement[datetime]:
        return sa.func.now(type_=UTCDateTime())

    def later(self, param: str) -> sa.ColumnElement[datetime]:
        return sa.type_coerce(
            sa.func.now() + sa.bindparam(f"c_{param}", type_=sa.Interval()), UTCDateTime()
        )

    def clock_params(self, **durations: float) -> dict[str, Any]:
        return {f"c_{key}": timedelta(seconds=seconds) for key, seconds in durations.items()}

    def host_now(self) -> datetime | None:
        return None  # the database's now(), which no host's clock may stand in for

    def insert(self, table: sa.Table) -> Any:
        return pg.insert(table)

    def lock_for_fence(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        return stmt.with_for_update(read=True)

    def skip_locked(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        return stmt.with_for_update(skip_locked=True)

    def plan_by_keys(self, conn: sa.Connection) -> None:
        conn.exec_driver_sql(_PLAN_BY_KEYS)

    def in_list(self, column: sa.ColumnElement[str], param: str) -> sa.ColumnElement[bool]:
        # one array parameter: the statement's text does not depend on the list's length, so
        # it is compiled and prepared once (an expanding IN is rendered anew for each length)
        return column == sa.any_(sa.bindparam(param, type_=pg.ARRAY(sa.String())))

    def claim_batch(
        self, tasks: sa.Table, available: sa.ColumnElement[bool], order: list[Any]
    ) -> sa.Update:
        picked = (
            sa.select(tasks.c.id)
            .where(available)
            .order_by(*order)
            .limit(sa.bindparam("p_limit", type_=sa.Integer()))
            .with_for_update(skip_locked=True)
            .cte("picked")
        )
        return sa.update(tasks).where(tasks.c.id == picked.c.id)

    def current_time(self) -> sa.ColumnElement[datetime]:
        # now() is the transaction's start, which a claim waiting for its queue's lock passed
        return sa.func.clock_timestamp(type_=UTCDateTime())

    def current_params(self) -> dict[str, Any]:
        return {}

    def missing_table(self, exc: sa.exc.DBAPIError) -> str | None:
        if getattr(exc.orig, "sqlstate", None) != "42P01":  # undefined_table
            return None
        found = re.search(r'relation "([^"]+)" does not exist', str(exc.orig))
        return found.group(1) if found else None

    def database_identity(self) -> sa.Select[Any]:
        # the database's name; the schema in which the connection's search_path finds
        # durable's tables (NULL: none), which need not be its first; the server's cluster
        # (its system identifier, set once by initdb) and the time its postmaster started (to
        # the microsecond): a copy of the cluster (a base backup, a restored one) has the
        # same identifier but started at another time. A restart changes that time: a caller
        # whose identity differs by it alone is compared again with the identity read anew
        # (SQLAlchemyBackend.reread_database_identity_blocking)
        schema = (
            "(SELECT n.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
            f" ON n.oid = c.relnamespace WHERE c.oid = to_regclass('{PREFIX}workflows'))"
        )
        cluster = "(SELECT system_identifier FROM pg_catalog.pg_control_system())"
        return sa.select(
            sa.func.current_database(),
            sa.literal_column(schema),
            sa.literal_column(cluster),
            sa.cast(sa.func.pg_postmaster_start_time(), sa.Text()),
        )


class PostgresBoundClockDialect(BoundClock, PostgresDialect):
    """PostgreSQL judging leases and due times by a clock bound as a parameter (a test's
    time-skipping clock) instead of the server's ``now()`` and ``clock_timestamp()``. Only for a
    backend given a ``clock``: its time is this process's alone, which no other process sees."""

    def current_time(self) -> sa.ColumnElement[datetime]:
        return sa.bindparam("c_current", type_=UTCDateTime())

    def current_params(self) -> dict[str, Any]:
        return {"c_current": self.clock()}


#: MySQL error numbers that mean the server cannot be reached now: too many connections,
#: shutting down, connection killed, can't connect, gone away, lost, and the like; its disk
#: full (a table that cannot grow); a server that takes no writes (``read_only``: 1290, and
#: 1792 in a read-only transaction); and a statement of durable's stopped by the server, not
#: refused: ``KILL QUERY`` (1317, as ``KILL CONNECTION`` is 1927 or a lost connection),
#: MariaDB's ``max_statement_time`` (1969) and MySQL's ``max_execution_time`` (3024), which a
#: statement waiting for a lock meets; and a lock another transaction held past
#: ``innodb_lock_wait_timeout`` (1205: a long transaction of another client, a backup's
#: lock), which running the transaction again at once would wait out again (up to 50 s each
#: time by default): busy now, as SQLite's file locked past its busy timeout. (A transactional
#: step's own statements are the step's: their errors are raised to its code as they are.)
MYSQL_UNAVAILABLE = frozenset(
    {
        1021,
        1040,
        1053,
        1077,
        1114,
        1205,
        1290,
        1317,
        1792,
        1927,
        1969,
        2002,
        2003,
        2006,
        2013,
        2055,
        3024,
        4031,
    }
)
#: Deadlock (the transaction was rolled back: run again at once, it takes its locks anew).
MYSQL_RETRYABLE = frozenset({1213})


class MySQLDialect(SQLDialect):
    """MariaDB 10.6+ (``FOR UPDATE SKIP LOCKED``, ``INSERT``/``DELETE ... RETURNING``)."""

    name = "mysql"

    def next_position(self) -> sa.ColumnElement[Any]:
        return sa.literal_column(feed.MYSQL_NEXT_POSITION, type_=feed.POSITION)

    def now(self) -> sa.ColumnElement[datetime]:
        return sa.func.utc_timestamp(sa.literal_column("6"), type_=UTCDateTime())

    def later(self, param: str) -> sa.ColumnElement[datetime]:
        return sa.func.timestampadd(
            sa.literal_column("MICROSECOND"),
            sa.bindparam(f"c_{param}", type_=sa.BigInteger()),
            sa.func.utc_timestamp(sa.literal_column("6")),
            type_=UTCDateTime(),
        )

    def clock_params(self, **durations: float) -> dict[str, Any]:
        return {f"c_{key}": round(seconds * 1_000_000) for key, seconds in durations.items()}

    def host_now(self) -> datetime | None:
        return None  # the server's clock

    def database_identity(self) -> sa.Select[Any]:
        # the database's name, and the server: its host name, port and server id
        return sa.select(
            sa.func.database(),
            sa.literal_column("@@hostname"),
            sa.literal_column("@@port"),
            sa.literal_column("@@server_id"),
        )

    def insert(self, table: sa.Table) -> Any:
        # PostgreSQL's construct, for its ON CONFLICT clauses: MySQLConnection runs them
        return pg.insert(table)

    def lock_for_fence(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        return stmt.with_for_update(read=True)

    def skip_locked(self, stmt: sa.Select[Any]) -> sa.Select[Any]:
        # Not SKIP LOCKED: a sweep's ORDER BY that no index gives sorts every matching row, and
        # InnoDB keeps all of them locked, not only the LIMIT it returns; a concurrent sweep
        # would skip them all and find nothing. Waiting for the lock, it re-reads the rows
        # (READ COMMITTED) and takes the next ones. (A claim's order is its index's.)
        return stmt.with_for_update()

    def claim_batch(
        self, tasks: sa.Table, available: sa.ColumnElement[bool], order: list[Any]
    ) -> sa.Update:
        # MariaDB takes no LIMIT in an IN subquery: MySQLConnection picks the rows first
        picked = mysql.Pick(tasks, available, order)
        return sa.update(tasks).where(available).execution_options(**{mysql.PICK: picked})

    def missing_table(self, exc: sa.exc.DBAPIError) -> str | None:
        if mysql.errno(exc) != 1146:  # ER_NO_SUCH_TABLE
            return None
        found = re.search(r"Table '(?:[^'.]*\.)?([^'.]+)' doesn't exist", str(exc.orig))
        return found.group(1) if found else None

    #: The server's ``max_allowed_packet`` in bytes, read by :meth:`check_server` when the
    #: backend starts (None before): a statement whose values pass it is refused here.
    max_packet: int | None = None

    def connection(self, conn: sa.Connection) -> sa.Connection:
        return cast(sa.Connection, mysql.MySQLConnection(conn, self.max_packet))

    def check_server(self, conn: sa.Connection) -> None:
        self.max_packet = int(conn.execute(sa.text("SELECT @@max_allowed_packet")).scalar_one())
        version = str(conn.execute(sa.text("SELECT VERSION()")).scalar_one())
        found = re.match(r"(\d+)\.(\d+)", version)
        numbers = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        if "mariadb" not in version.lower() or numbers < (10, 6):
            raise ConfigurationError(
                f"durable needs MariaDB 10.6 or later (FOR UPDATE SKIP LOCKED, INSERT ... "
                f"RETURNING); this server is {version!r}. MySQL itself has no INSERT ... "
                "RETURNING and is not supported yet."
            )
        self._check_charset(conn)

    def _check_charset(self, conn: sa.Connection) -> None:
        """Refuse a database whose default character set is not utf8mb4 (MariaDB's own default
        for ``CREATE DATABASE`` is latin1), or whose durable tables have columns in another:
        it holds no 4-byte character (an emoji), and the first one a value, an id or a key
        carried failed at run time with "Incorrect string value"."""
        database, charset = conn.execute(
            sa.text("SELECT DATABASE(), @@character_set_database")
        ).one()
        if charset != "utf8mb4":
            raise ConfigurationError(
                f"the MariaDB database {database!r} stores text as {charset}, which holds no "
                "4-byte character (an emoji): durable needs utf8mb4. Create the database with "
                f"CREATE DATABASE {database} CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin, "
                f"or, before durable's tables are in it, ALTER DATABASE {database} CHARACTER "
                "SET utf8mb4 COLLATE utf8mb4_nopad_bin"
            )
        columns = conn.execute(
            sa.text(
                "SELECT table_name, column_name, character_set_name "
                "FROM information_schema.columns WHERE table_schema = DATABASE() "
                "AND table_name LIKE :durable AND table_name <> :version "
                "AND character_set_name <> 'utf8mb4' ORDER BY table_name, column_name"
            ),
            {"durable": "durable\\_%", "version": "durable_alembic_version"},
        ).all()
        if columns:
            table, column, other = columns[0]
            raise ConfigurationError(
                f"{len(columns)} column(s) of durable's tables in the MariaDB database "
                f"{database!r} store text in another character set than utf8mb4 (the first: "
                f"{table}.{column}, {other}), which holds no 4-byte character (an emoji): "
                "the tables were created while the database's default was another. Dump "
                "durable's tables and load them into a database created with CHARACTER SET "
                "utf8mb4 COLLATE utf8mb4_nopad_bin (or convert each table, its foreign keys "
                "dropped and added again around it)"
            )

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, sa.exc.DBAPIError) and mysql.errno(exc) in MYSQL_RETRYABLE

    def duplicate_key(self, exc: sa.exc.DBAPIError) -> bool:
        return mysql.errno(exc) == mysql.DUPLICATE_KEY

    def unavailable(self, exc: sa.exc.DBAPIError) -> bool | None:
        return mysql.errno(exc) in MYSQL_UNAVAILABLE


def dialect_for(name: str, clock: Callable[[], datetime] | None = None) -> SQLDialect:
    """The dialect for the database ``name``; with ``clock``, one that judges time by it.

    :raises ConfigurationError: a database durable does not run on, or a ``clock`` on
        MySQL/MariaDB (whose statements read the server's clock).
    """
    if name == "sqlite":
        return SQLiteDialect(clock)
    if name == "postgresql":
        return PostgresDialect() if clock is None else PostgresBoundClockDialect(clock)
    if name in ("mysql", "mariadb"):
        if clock is not None:
            raise ConfigurationError(
                "a backend's clock (a time-skipping clock) works on SQLite and PostgreSQL, not "
                f"on {name}: its statements read the server's UTC_TIMESTAMP"
            )
        return MySQLDialect()
    raise ConfigurationError(
        f"durable supports SQLite, PostgreSQL and MySQL/MariaDB databases, not {name!r}"
    )


def normalize_url(url: str | URL) -> URL:
    """Pick durable's driver for a URL: ``postgresql://`` (or ``postgres://``) means psycopg 3;
    ``sqlite://`` the standard library driver, ``sqlite+aiosqlite://`` aiosqlite.

    :raises ConfigurationError: a malformed URL, or a database or driver durable does not run on.
    """
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is no number
        raise ConfigurationError(f"malformed database URL {str(url)!r}: {exc}") from None
    scheme, plus, driver_name = parsed.drivername.partition("+")
    if scheme == "postgres":  # the common alias (Heroku, libpq-style URLs)
        parsed = parsed.set(drivername=f"postgresql{plus}{driver_name}")
    try:
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    except sa.exc.NoSuchModuleError:  # a scheme SQLAlchemy has no dialect for
        backend = driver = ""
    if backend == "sqlite" and driver in ("pysqlite", "aiosqlite"):
        if parsed.host or parsed.port or parsed.username:
            raise ConfigurationError(
                f"malformed SQLite URL {shown_url(parsed)!r}: it "
                "names a host, not a file; write "
                f"{parsed.drivername}:///{parsed.host or ''}{'/' if parsed.database else ''}"
                f"{parsed.database or ''} (three slashes: a relative path; four: an absolute one)"
            )
        return parsed
    if backend in ("postgresql", "postgres") and driver in ("psycopg", "psycopg_async", "psycopg2"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend in ("mysql", "mariadb") and driver in MYSQL_DRIVERS:
        # aiomysql is PyMySQL under asyncio: the sync driver's URL means it
        return parsed.set(drivername=f"mysql+{MYSQL_DRIVERS[driver]}")
    raise ConfigurationError(
        f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:///path, "
        "sqlite+aiosqlite:///path, postgresql+psycopg://user@host/db or mysql://user@host/db "
        "(also mariadb://, mysql+aiomysql://, mysql+asyncmy://)"
    )


#: The MySQL drivers a URL may name, and the async driver durable runs it on (``mysql://``
#: alone names mysqldb, SQLAlchemy's default).
MYSQL_DRIVERS = {
    "mysqldb": "aiomysql",
    "pymysql": "aiomysql",
    "aiomysql": "aiomysql",
    "asyncmy": "asyncmy",
}


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


#: PostgreSQL connection pool bounds, unless ``engine_options`` say otherwise.
PG_POOL_SIZE = 20
PG_MAX_OVERFLOW = 10
#: libpq settings every PostgreSQL connection gets unless the URL's query or ``connect_args``
#: set them: a connection attempt gives up after 10 s (without it, a server that accepts and
#: never answers, or a host that drops packets, held durable's start and every reconnect for
#: good); a peer that went away without a word (a host gone, a NAT entry dropped) is found by
#: TCP keepalives after about a minute of silence, and data it does not acknowledge fails the
#: connection after 60 s, instead of the operating system's hours.
#: The TCP settings are :data:`.mysql.TCP_DEFAULTS`, which MySQL/MariaDB connections get too.
PG_CONNECT_DEFAULTS: dict[str, Any] = {"connect_timeout": 10, **mysql.TCP_DEFAULTS}
#: Seconds a MySQL/MariaDB connection attempt is given (the driver's ``connect_timeout``),
#: unless the URL's query or ``connect_args`` say otherwise: a host that vanished, or drops
#: packets, fails the attempt instead of holding durable's start and every reconnect (aiomysql
#: waited for ever by default). Its TCP settings: :data:`.mysql.TCP_DEFAULTS`.
MYSQL_CONNECT_TIMEOUT = PG_CONNECT_DEFAULTS["connect_timeout"]
#: Seconds after which a pooled MySQL connection is replaced (the server drops idle ones after
#: its wait_timeout, 8 hours by default).
MYSQL_POOL_RECYCLE = 3600


def _switch_to_wal(cursor: Any) -> None:
    """Put the file in WAL mode. Switching needs a moment alone with the file, and SQLite does
    not always wait for it (busy_timeout is not consulted while another process is creating the
    file), so retry for as long as busy_timeout would have waited."""
    deadline = time.monotonic() + locking.BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError, or aiosqlite's wrapper of it
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _configure_sqlite(sync_engine: sa.Engine, synchronous: str, memory: bool) -> None:
    @sa.event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={locking.BUSY_TIMEOUT_MS}")
        if not memory:
            _switch_to_wal(cursor)
            # the log is checkpointed by a thread of the backend's (see .checkpoints): a
            # commit checkpoints by itself only when that falls far behind
            cursor.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT}")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @sa.event.listens_for(sync_engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        if SQLITE_READING.get():
            conn.exec_driver_sql("BEGIN")
            return
        short = SQLITE_LOOP_WAIT.get()
        if short is None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            return
        # on an event loop's thread: a short wait, then the pooled connection's own again (it
        # serves threads too, which wait inside SQLite)
        conn.exec_driver_sql(f"PRAGMA busy_timeout={short}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except sa.exc.OperationalError as exc:
            if is_sqlite_busy(exc):
                raise SQLiteLockHeld(exc) from exc
            raise
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={locking.BUSY_TIMEOUT_MS}")


def connect_args_for(url: URL, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The driver's connect arguments for ``url``: ``given`` (``engine_options``'
    ``connect_args``), and on PostgreSQL the :data:`PG_CONNECT_DEFAULTS` that neither they nor
    the URL's query set. Used by the engine, and by the connections durable opens beside its
    pool (the workers' listener, the sync direct path)."""
    args = dict(given or {})
    if url.get_backend_name() == "postgresql":
        for key, value in PG_CONNECT_DEFAULTS.items():
            if key not in url.query:
                args.setdefault(key, value)
    return args


def create_engine(
    url: URL,
    *,
    sqlite_synchronous: str = "NORMAL",
    engine_options: dict[str, Any] | None = None,
) -> sa.Engine | AsyncEngine:
    """Create the engine durable runs on for ``url`` (normalized by :func:`normalize_url`)."""
    try:
        return _create_engine(url, sqlite_synchronous, dict(engine_options or {}))
    except (sa.exc.ArgumentError, TypeError, ValueError) as exc:  # an option it does not take
        raise ConfigurationError(f"cannot create the engine for {url!r}: {exc}") from None


def _create_engine(
    url: URL, sqlite_synchronous: str, options: dict[str, Any]
) -> sa.Engine | AsyncEngine:
    if url.get_backend_name() == "sqlite":
        synchronous = str(sqlite_synchronous).upper()
        if synchronous not in SQLITE_SYNCHRONOUS:
            raise ConfigurationError(
                f"sqlite_synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}, "
                f"got {sqlite_synchronous!r}"
            )
        memory = _is_memory(url)
        connect_args = options.pop("connect_args", {})
        if url.get_driver_name() == "aiosqlite":
            if memory:
                options.setdefault("poolclass", StaticPool)
            async_engine = create_async_engine(url, connect_args=connect_args, **options)
            _configure_sqlite(async_engine.sync_engine, synchronous, memory)
            return async_engine
        connect_args.setdefault("check_same_thread", False)
        if memory:
            options.setdefault("poolclass", StaticPool)
        engine = sa.create_engine(url, connect_args=connect_args, **options)
        _configure_sqlite(engine, synchronous, memory)
        return engine
    tcp_settings = _mysql_sessions(url, options) if url.get_backend_name() == "mysql" else None
    # the pool's reset of a connection coming back: see mysql.rollback_unless_ended
    reset_by_durable = url.get_backend_name() == "mysql" and "pool_reset_on_return" not in options
    if reset_by_durable:
        options["pool_reset_on_return"] = None
    # A worker runs many workflows at once, each taking a connection per transaction: a pool
    # smaller than that churns (SQLAlchemy closes overflow connections as they come back, so
    # every burst reconnects). Connections are opened on demand, so a larger bound costs
    # nothing until it is used.
    options.setdefault("pool_size", PG_POOL_SIZE)
    options.setdefault("max_overflow", PG_MAX_OVERFLOW)
    options["connect_args"] = connect_args_for(url, options.get("connect_args"))
    try:
        async_engine = create_async_engine(url, **options)
    except ModuleNotFoundError as exc:  # the driver is an extra: say which
        package = (exc.name or "").partition(".")[0]
        if url.get_backend_name() == "mysql" and package in ("aiomysql", "pymysql"):
            hint = "pip install 'durable-sqla[mysql]'"
        else:
            hint = f"pip install {package}"
        raise ConfigurationError(
            f"{url.drivername} URLs need the {package} driver, which is not installed: {hint}"
        ) from exc
    if tcp_settings is not None:
        sa.event.listen(
            async_engine.sync_engine, "connect", mysql.tcp_settings_on_connect(tcp_settings)
        )
    if reset_by_durable:
        sa.event.listen(async_engine.sync_engine, "reset", mysql.rollback_unless_ended)
    sa.event.listen(async_engine.sync_engine, "checkout", discard_stale_at_checkout)
    if url.get_backend_name() == "postgresql":
        sa.event.listen(async_engine.sync_engine, "handle_error", _read_only_session_is_lost)
    return async_engine


def _mysql_sessions(url: URL, options: dict[str, Any]) -> dict[str, int]:
    """MySQL/MariaDB: the sessions durable's engines open, set in ``options`` unless given
    (:data:`MYSQL_CONNECT_TIMEOUT` among them). Returns the TCP settings for the sockets of the
    engine's connections (:func:`.mysql.take_tcp_settings`: taken out of ``connect_args``), to
    be set by a ``connect`` listener (:func:`.mysql.tcp_settings_on_connect`).

    :raises ValueError: a TCP setting in ``connect_args`` that is no whole number >= 0.
    """
    # no gap locks between claimers; the session's clock in UTC (UTC_TIMESTAMP is anyway)
    options.setdefault("isolation_level", "READ COMMITTED")
    options.setdefault("pool_recycle", MYSQL_POOL_RECYCLE)
    connect_args = options["connect_args"] = dict(options.get("connect_args", {}))
    connect_args.setdefault("init_command", "SET time_zone = '+00:00'")
    if "charset" not in url.query:
        connect_args.setdefault("charset", "utf8mb4")
    if "connect_timeout" not in url.query:
        connect_args.setdefault("connect_timeout", MYSQL_CONNECT_TIMEOUT)
    return mysql.take_tcp_settings(connect_args)


def mysql_thread_engine(url: URL, engine_options: dict[str, Any] | None) -> sa.Engine | None:
    """MySQL/MariaDB: a sync engine (PyMySQL) on ``url``'s database, its sessions as those of
    :func:`create_engine`'s async one, for the bodies of sync transactional steps, which run
    in threads (on the async engine they ran on the event loop, which stopped the heartbeats
    while they worked). None without PyMySQL (asyncmy's users)."""
    if importlib.util.find_spec("pymysql") is None:
        return None
    options = dict(engine_options or {})
    tcp_settings = _mysql_sessions(url, options)
    engine = sa.create_engine(url.set(drivername="mysql+pymysql"), **options)
    sa.event.listen(engine, "connect", mysql.tcp_settings_on_connect(tcp_settings))
    sa.event.listen(engine, "checkout", discard_stale_at_checkout)
    return engine


def _read_only_session_is_lost(context: sa.engine.ExceptionContext) -> None:
    """PostgreSQL: a session that finds the database taking no writes (:data:`PG_READ_ONLY`:
    made read-only, or a standby a failover left it on) is dropped, with the pool's other
    connections, as after a disconnect. Such a session stays read-only for its life (the
    setting is read when it starts), so kept in the pool it would refuse every write after
    the database takes writes again; new connections get the database as it is now (a
    failover's new primary, through ``target_session_attrs=read-write``)."""
    if getattr(context.original_exception, "sqlstate", None) == PG_READ_ONLY:
        context.is_disconnect = True


def configure_engine(engine: sa.Engine | AsyncEngine) -> None:
    """Apply durable's SQLite settings to an engine the caller created."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if sync_engine.dialect.name == "sqlite":
        _configure_sqlite(sync_engine, "NORMAL", _is_memory(sync_engine.url))
