"""The change feed (``Client.events``): reading the positions the writes carry (:mod:`.feed`).

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from durable.backends.base import check_changes_args, step_change_kind
from durable.backends.sql import feed
from durable.backends.sql.core import SQLCore
from durable.backends.sql.runners import AsyncRunner
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
_MYSQL_NEXT = sa.text(f"SELECT NEXTVAL({feed.SEQUENCE})")
#: The transactions InnoDB runs that may write durable's rows: not the reader's own, nor those
#: of sessions using another database or none (InnoDB's list is the server's; durable's
#: sessions use the URL's database). A transaction is known by its connection and start (a
#: new one on the same connection in the same second looks the same: it is waited for too,
#: which only delays); one whose session is not listed (a prepared XA transaction) is kept.
_MYSQL_OPEN = sa.text(
    "SELECT t.trx_mysql_thread_id, t.trx_started, t.trx_id, "
    "t.trx_mysql_thread_id = CONNECTION_ID() AS own "
    "FROM information_schema.innodb_trx t "
    "LEFT JOIN information_schema.processlist p ON p.ID = t.trx_mysql_thread_id "
    "WHERE p.ID IS NULL OR p.DB = DATABASE()"
)
#: Begins the reader's own transaction at once (InnoDB lists it from then on).
_MYSQL_WITNESS = sa.text("START TRANSACTION WITH CONSISTENT SNAPSHOT")
#: Seconds between two reads of InnoDB's transaction list (it is refreshed only when it has not
#: been read for 0.1 s).
MYSQL_REFRESH = 0.12


class Changes(SQLCore):
    """The change feed."""

    async def list_changes(self, *, after: int = 0, limit: int = 100) -> list[ChangeEvent]:
        check_changes_args(after, limit)
        horizon: sa.ColumnElement[Any] | None = None
        params: dict[str, Any] = {"p_after": after}
        if self.dialect.name in ("postgresql", "mysql"):
            horizon = sa.bindparam("p_horizon", type_=feed.POSITION)
            if self.dialect.name == "postgresql":
                params["p_horizon"] = await self._pg_horizon()
            else:
                params["p_horizon"] = await self._mysql_horizon()
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

        return await self._run(fn, what="read the change feed")

    async def _pg_horizon(self) -> int:
        """PostgreSQL: the position below which every change is final (see :mod:`.feed`).

        The snapshot taken now says which transactions were still open (``xip``); every other
        transaction below its ``xmax`` has ended. Those of them that may write durable's rows
        (:data:`_STILL_OPEN`) are waited for (up to :data:`PG_WAIT` seconds), so the feed shows
        every change committed before this call, the caller's own included; one still open
        after that holds the horizon at its id (the feed lags behind the oldest write
        transaction open in this database)."""
        snapshot = await self._run(
            lambda conn: str(conn.execute(_SNAPSHOT).scalar_one()), what="read the change feed"
        )
        xmin, xmax, listed = snapshot.split(":")
        open_ids = [int(x) for x in listed.split(",") if x]
        deadline = time.monotonic() + PG_WAIT
        delay = 0.001
        while open_ids:
            still = open_ids

            def fn(conn: sa.Connection, still: list[int] = still) -> list[int]:
                return [int(x) for x in conn.execute(_STILL_OPEN, {"p_xids": still}).scalars()]

            open_ids = await self._run(fn, what="read the change feed")
            if not open_ids or time.monotonic() > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        top = min(open_ids) if open_ids else int(xmax)
        return max(top, int(xmin)) * feed.XID_SHIFT

    async def _mysql_horizon(self) -> int:
        """MariaDB: the position below which every change is final (see :mod:`.feed`); run to
        its end even when the caller is cancelled (it holds a transaction open meanwhile)."""
        return await asyncio.shield(asyncio.ensure_future(self._mysql_final_below()))

    async def _mysql_final_below(self) -> int:
        """The reader takes the sequence's next value itself: every position below it was taken
        before, by a transaction that InnoDB had started by then (it opens the table it writes
        before the statement computes its values), so it is in ``information_schema.innodb_trx``
        now, or has ended. InnoDB refreshes that list at most every 0.1 s, and not while it is
        read more often than that: a list is trusted only once it shows a transaction the
        reader began after taking the value (a list at least that fresh). Then it waits (up to
        :data:`MYSQL_WAIT` seconds) for the listed transactions to end (a transaction gone from
        the list has ended); if one is still open, nothing new is final yet (the feed lags
        behind the oldest open transaction; needs the PROCESS privilege)."""
        value = await self._run(
            lambda conn: int(conn.execute(_MYSQL_NEXT).scalar_one()), what="read the change feed"
        )
        runner = self._runner
        assert isinstance(runner, AsyncRunner)  # MySQL runs on its async drivers

        async def witnessed(conn: AsyncConnection) -> set[tuple[Any, ...]] | None:
            await conn.execute(_MYSQL_WITNESS)  # begins now: after the value was taken
            deadline = time.monotonic() + MYSQL_WAIT
            while True:
                listed = (await conn.execute(_MYSQL_OPEN)).all()
                if any(row[3] for row in listed):  # the reader's own: the list is fresh
                    return {tuple(row[:3]) for row in listed if not row[3]}
                if time.monotonic() > deadline:
                    return None
                await asyncio.sleep(MYSQL_REFRESH)

        with self._errors("read the change feed"):
            open_ones = await runner.async_transaction(witnessed)
        if open_ones is None:
            return 0  # the list never refreshed: nothing new is known final
        deadline = time.monotonic() + MYSQL_WAIT
        while open_ones:
            if time.monotonic() > deadline:
                return 0  # nothing new is final yet
            await asyncio.sleep(MYSQL_REFRESH)
            now_open = await self._run(
                lambda conn: {tuple(r[:3]) for r in conn.execute(_MYSQL_OPEN) if not r[3]},
                what="read the change feed",
            )
            open_ones &= now_open
        return value

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
