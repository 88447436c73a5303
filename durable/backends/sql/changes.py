"""The change feed (``Client.events``): reading the positions the writes carry (:mod:`.feed`).

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import sqlalchemy as sa

from durable.backends.base import check_changes_args, step_change_kind
from durable.backends.sql import feed
from durable.backends.sql.core import SQLCore
from durable.models import ChangeEvent, ChangeKind

#: Seconds the PostgreSQL reader waits for transactions open when it reads to end.
PG_WAIT = 1.0
_SNAPSHOT = sa.text("SELECT CAST(pg_current_snapshot() AS TEXT)")
#: Of the transaction ids listed, those still open that may write durable's rows: those of
#: this database's sessions and prepared transactions (xids are cluster-wide, and another
#: database's transactions cannot write here), or all of them while a session of this database
#: hides its state from this role (then nobody can tell).
_STILL_OPEN = sa.text(
    "SELECT CAST(x AS TEXT) FROM unnest(CAST(:p_xids AS TEXT[])) AS x "
    "WHERE pg_xact_status(CAST(x AS xid8)) = 'in progress' AND ("
    "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() "
    "AND a.query = '<insufficient privilege>') "
    "OR CAST(x AS NUMERIC) % 4294967296 IN (SELECT CAST(CAST(a.backend_xid AS TEXT) AS NUMERIC) "
    "FROM pg_stat_activity a WHERE a.datname = current_database() "
    "AND a.backend_xid IS NOT NULL) "
    "OR CAST(x AS NUMERIC) % 4294967296 IN (SELECT CAST(CAST(p.transaction AS TEXT) AS NUMERIC) "
    "FROM pg_prepared_xacts p WHERE p.database = current_database()))"
)


#: Seconds the MariaDB reader waits for transactions open when it reads to end.
MYSQL_WAIT = 2.0
#: Seconds between two looks at the transactions still open.
MYSQL_POLL = 0.02
_MYSQL_NEXT = sa.text(f"SELECT NEXTVAL({feed.SEQUENCE})")
#: InnoDB's own report, read fresh each time (``information_schema.innodb_trx`` is a cache,
#: refreshed only once nobody on the server has read it for 0.1 s: readers that follow the feed
#: at once, or a monitoring tool, kept it stale for good).
_MYSQL_STATUS = sa.text("SHOW ENGINE INNODB STATUS")
#: The sessions that use another database, or none (InnoDB's list is the server's; durable's
#: sessions use the URL's database), and the reader's own.
_MYSQL_ELSEWHERE = sa.text(
    "SELECT ID FROM information_schema.processlist "
    "WHERE DB IS NULL OR DB <> DATABASE() OR ID = CONNECTION_ID()"
)
_TRANSACTION = re.compile(r"^---TRANSACTION ([^,]+), (.*)$")
_THREAD = re.compile(r"^(?:MySQL|MariaDB) thread id (\d+),")
_LOCKING = re.compile(r"^mysql tables in use \d+, locked (\d+)")
_TRUNCATED = "...truncated..."


def innodb_transactions(status: str) -> set[tuple[str, int | None]] | None:
    """The transactions that InnoDB's status report lists as holding, or maybe holding, a
    position: each as (its id as printed, its session's id, or None for one no session holds: a
    prepared XA transaction recovered); None when the report was cut short (InnoDB truncates it
    past 1 MB, in its list of transactions).

    A transaction is given an id when it first writes. One without an id ("(0x...)", or "not
    started") is left out when it runs no statement that locks a table: it has only read, holds
    no position, and a long one (a report, a backup) would hold the feed back. One without an
    id whose statement locks tables is kept: a writing statement takes its position before its
    first row is written, and only then is its transaction given an id (and listed under it)."""
    if _TRUNCATED in status:
        return None
    found: set[tuple[str, int | None]] = set()
    current: str | None = None  # the listed transaction, while its lines are read
    unwritten: str | None = None  # one without an id, kept if its statement locks tables
    for line in status.splitlines():
        if match := _TRANSACTION.match(line):
            if current is not None:
                found.add((current, None))
            written = not match[1].startswith("(") and not match[2].startswith("not started")
            current, unwritten = (match[1], None) if written else (None, match[1])
        elif unwritten is not None and (match := _LOCKING.match(line)):
            if int(match[1]) > 0:
                current = unwritten
            unwritten = None
        elif current is not None and (match := _THREAD.match(line)):
            found.add((current, int(match[1])))
            current = None
        elif line.startswith("-----"):
            if current is not None:
                found.add((current, None))  # the list ended
            current = unwritten = None
    if current is not None:
        found.add((current, None))
    return found


def still_held(
    held: set[tuple[str, int | None]], listed: set[tuple[str, int | None]]
) -> set[tuple[str, int | None]]:
    """Which of the transactions ``held`` are still open, by InnoDB's new list ``listed``: those
    listed again. When one without an id is gone from the list, it may have been given its id
    since (it is not known which), so every transaction listed with an id is held too: those
    that began after the reader took its position hold later ones, and end soon enough."""
    kept = held & listed
    if any(key.startswith("(") and (key, session) not in listed for key, session in held):
        kept |= {t for t in listed if not t[0].startswith("(")}
    return kept


#: The largest position SQLite and MySQL hold (PostgreSQL's go beyond: see :mod:`.feed`).
_INT64_MAX = 2**63 - 1


class Changes(SQLCore):
    """The change feed."""

    async def list_changes(self, *, after: int = 0, limit: int = 100) -> list[ChangeEvent]:
        check_changes_args(after, limit)
        if after >= _INT64_MAX and self.dialect.name != "postgresql":
            return []  # SQLite's and MySQL's positions are 64-bit integers: none comes after
        horizon: sa.ColumnElement[Any] | None = None
        params: dict[str, Any] = {"p_after": after}
        if self.dialect.name in ("postgresql", "mysql"):
            horizon = sa.bindparam("p_horizon", type_=feed.POSITION)
            if self.dialect.name == "postgresql":
                params["p_horizon"] = await self._pg_horizon()
            else:
                params["p_horizon"] = await self._mysql_final_below()
        position = sa.bindparam("p_after", type_=feed.POSITION)
        rowids = self.dialect.name == "sqlite"
        after_query = feed.feed_query(lambda c: c > position, horizon, limit, step_rowids=rowids)
        at_query = feed.feed_query(lambda c: c == position, horizon, None, step_rowids=rowids)

        def fn(conn: sa.Connection) -> list[ChangeEvent]:
            rows = conn.execute(after_query, params).all()
            if len(rows) == limit:
                # never split the events of one position: the tail's whole group
                last = rows[-1].position
                rows = [r for r in rows if r.position != last]
                rows += conn.execute(at_query, {**params, "p_after": last}).all()
            return [self._change(r._mapping) for r in rows]

        return await self._run(fn, what="read the change feed", read_only=True)

    async def _pg_horizon(self) -> int:
        """PostgreSQL: the position below which every change is final (see :mod:`.feed`).

        The snapshot taken now says which transactions were still open (``xip``); every other
        transaction below its ``xmax`` has ended. Those of them that may write durable's rows
        (:data:`_STILL_OPEN`) are waited for (up to :data:`PG_WAIT` seconds), so the feed shows
        every change committed before this call, the caller's own included; one still open
        after that holds the horizon at its id (the feed lags behind the oldest write
        transaction open in this database)."""
        snapshot = await self._run(
            lambda conn: str(conn.execute(_SNAPSHOT).scalar_one()),
            what="read the change feed",
            read_only=True,
        )
        xmin, xmax, listed = snapshot.split(":")
        open_ids = [int(x) for x in listed.split(",") if x]
        deadline = time.monotonic() + PG_WAIT
        delay = 0.001
        while open_ids:
            still = open_ids

            def fn(conn: sa.Connection, still: list[int] = still) -> list[int]:
                return [int(x) for x in conn.execute(_STILL_OPEN, {"p_xids": still}).scalars()]

            open_ids = await self._run(fn, what="read the change feed", read_only=True)
            if not open_ids or time.monotonic() > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        top = min(open_ids) if open_ids else int(xmax)
        return max(top, int(xmin)) * feed.XID_SHIFT

    async def _mysql_final_below(self) -> int:
        """The reader takes the sequence's next value itself: every position below it was taken
        before, by a transaction that InnoDB had started by then (it opens the table it writes
        before the statement computes its values), so InnoDB's status report lists it now
        (with an id, or before its first row as a statement that locks tables), or it has
        ended. The reader waits (up to :data:`MYSQL_WAIT` seconds) for the listed
        transactions of sessions on this database to end (a transaction is known by its id and
        session; one gone from the list has ended); if one is still open, or the report was cut
        short, nothing new is final yet (the feed lags behind the oldest open transaction;
        needs the PROCESS privilege)."""
        value = await self._run(
            lambda conn: int(conn.execute(_MYSQL_NEXT).scalar_one()),
            what="read the change feed",
            read_only=True,
        )

        def still_open(conn: sa.Connection) -> set[tuple[str, int | None]] | None:
            listed = innodb_transactions(str(conn.execute(_MYSQL_STATUS).one()[2]))
            if listed is None:
                return None
            elsewhere = set(conn.execute(_MYSQL_ELSEWHERE).scalars())
            return {t for t in listed if t[1] is None or t[1] not in elsewhere}

        open_ones = await self._run(still_open, what="read the change feed", read_only=True)
        deadline = time.monotonic() + MYSQL_WAIT
        while open_ones:
            if time.monotonic() > deadline:
                return 0  # nothing new is final yet
            await asyncio.sleep(MYSQL_POLL)
            now_open = await self._run(still_open, what="read the change feed", read_only=True)
            if now_open is not None:
                open_ones = still_held(open_ones, now_open)
        return 0 if open_ones is None else value

    @staticmethod
    def _change(m: Any) -> ChangeEvent:
        kind = m["kind"]
        status = m["status"]
        step_name = m["step_name"]
        change = step_change_kind(status, step_name) if kind == "step" else ChangeKind(kind)
        return ChangeEvent(
            position=int(m["position"]),
            kind=change,
            workflow_id=m["workflow_id"],
            workflow_name=m["workflow_name"],
            time=m["time"],
            status=status,
            step_position=m["step_position"],
            step_name=step_name,
        )
