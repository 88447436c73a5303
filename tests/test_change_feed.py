"""The change feed's order against transactions that commit out of order (PostgreSQL), its
position expression on SQLite after deletions, and MariaDB's reader against an open
transaction. The per-backend
contract is in durable/testing/contract/changes.py."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

import durable
from durable.backends.sql import changes
from durable.models import ChangeKind

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def insert_workflow(conn: sa.Connection, workflow_id: str) -> None:
    """A workflow row as a producer in SQL writes it: its position comes from the default."""
    conn.execute(
        sa.text(
            "INSERT INTO durable_workflows (id, name, status, queue, priority, attempts, "
            "version, created_at, updated_at) VALUES (:id, 'wf', 'pending', 'default', 0, 0, "
            "1, :now, :now)"
        ),
        {"id": workflow_id, "now": NOW},
    )


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.mark.postgres
async def test_a_transaction_that_took_an_earlier_position_and_commits_last_is_read_next(
    pg_url: str, pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "PG_WAIT", 0.05)  # do not wait long for A: it stays open
    async with durable.connect(pg_url) as backend:
        await backend.create_workflow(durable.WorkflowSnapshot(id="seed", name="wf"))
        read = await backend.list_changes()
        assert [e.workflow_id for e in read] == ["seed"]
        cursor = read[-1].position
        with pg_engine.connect() as a, pg_engine.connect() as b:
            insert_workflow(a, "from-a")  # A takes its position first (and its xid)
            insert_workflow(b, "from-b")  # B takes a later one and commits
            b.commit()
            positions = dict(
                b.execute(sa.text("SELECT id, created_seq FROM durable_workflows")).all()
            )
            assert positions["from-b"] > cursor
            # the reader reads while A is open: neither A's event nor B's yet
            assert await backend.list_changes(after=cursor) == []
            a.commit()
        after = await backend.list_changes(after=cursor)
        assert [(e.kind, e.workflow_id) for e in after] == [
            (ChangeKind.CREATED, "from-a"),
            (ChangeKind.CREATED, "from-b"),
        ]
        assert all(e.position > cursor for e in after)


@pytest.mark.postgres
async def test_an_older_transaction_that_writes_after_a_younger_one_commits_is_not_skipped(
    pg_url: str, pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "PG_WAIT", 0.05)
    async with durable.connect(pg_url) as backend:
        with pg_engine.connect() as old, pg_engine.connect() as young:
            old.execute(sa.text("SELECT pg_current_xact_id()"))  # the older transaction id
            insert_workflow(young, "young")
            young.commit()
            # the younger one committed, but an older transaction may still write below it
            assert await backend.list_changes() == []
            insert_workflow(old, "old")
            old.commit()
        found = await backend.list_changes()
        assert [e.workflow_id for e in found] == ["old", "young"]
        # read again from the first: the second is still there (nothing moved behind it)
        assert [e.workflow_id for e in await backend.list_changes(after=found[0].position)] == [
            "young"
        ]


@pytest.mark.postgres
async def test_another_databases_open_transaction_does_not_hold_the_feed(pg_url: str) -> None:
    other = sa.create_engine(pg_url.rsplit("/", 1)[0] + "/postgres")
    try:
        async with durable.connect(pg_url) as backend:
            with other.connect() as elsewhere:
                elsewhere.execute(sa.text("SELECT pg_current_xact_id()"))  # open, older
                await backend.create_workflow(durable.WorkflowSnapshot(id="mine", name="wf"))
                found = await backend.list_changes()
                assert [e.workflow_id for e in found] == ["mine"]
                elsewhere.rollback()
    finally:
        other.dispose()


async def test_sqlite_positions_grow_past_deleted_rows(sqlite_url: str) -> None:
    async with durable.connect(sqlite_url) as backend:
        for name in ("a", "b", "c"):
            await backend.create_workflow(durable.WorkflowSnapshot(id=name, name="wf"))
        highest = (await backend.list_changes())[-1].position
        await backend.delete_snapshot("c")
        await backend.delete_snapshot("b")
        await backend.create_workflow(durable.WorkflowSnapshot(id="d", name="wf"))
        (event,) = await backend.list_changes(after=highest)
        assert event.workflow_id == "d"
        assert event.position == highest + 1


@durable.step(name="feed.add")
def add(a: int, b: int) -> int:
    return a + b


@durable.workflow(name="feed.sum.v1")
def three_sums(n: int) -> int:
    return add(add(n, 1), add(n, 2))


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite"])
async def test_sqlite_steps_of_the_hot_path_are_at_their_rowid(tmp_path: Path, driver: str) -> None:
    """A step recorded by the hot path has its position in its rowid (no index entry): the
    feed lists it in order, and a deletion of the newest steps never lowers the next one."""
    path = tmp_path / "feed.db"
    async with durable.Runtime(durable.connect(f"{driver}:///{path}")) as runtime:
        assert await runtime.run(three_sums, 10, workflow_id="first") == 23
        events = await runtime.client.events()
        assert [(e.kind, e.step_position) for e in events] == [
            (ChangeKind.CREATED, None),
            (ChangeKind.STARTED, None),
            (ChangeKind.STEP_RECORDED, 0),
            (ChangeKind.STEP_RECORDED, 1),
            (ChangeKind.STEP_RECORDED, 2),
            (ChangeKind.FINISHED, None),
        ]
        positions = [e.position for e in events]
        assert positions == sorted(set(positions))
        with sqlite3.connect(path) as raw:  # the steps' positions are their rowids
            rows = raw.execute(
                "SELECT rowid, change_seq FROM durable_steps ORDER BY position"
            ).fetchall()
        assert [(rowid, None) for rowid in positions[2:5]] == rows
        highest = positions[-1]
        assert await runtime.backend.delete_snapshot("first")  # its steps: the highest rowids
        assert await runtime.run(three_sums, 20, workflow_id="second") == 43
        later = await runtime.client.events(after=highest)
        assert [e.workflow_id for e in later] == ["second"] * 6
        assert min(e.position for e in later) > highest


@pytest.mark.mysql
async def test_mariadb_a_transaction_open_when_read_is_not_skipped(
    mysql_backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "MYSQL_WAIT", 0.05)  # do not wait long for A: it stays open
    url = sa.make_url(mysql_backend_url).set(drivername="mysql+pymysql")
    engine = sa.create_engine(url.update_query_dict({"charset": "utf8mb4"}))
    try:
        async with durable.connect(mysql_backend_url) as backend:
            with engine.connect() as a, engine.connect() as b:
                insert_workflow(a, "from-a")  # A takes its position first
                insert_workflow(b, "from-b")  # B takes a later one and commits
                b.commit()
                # A is open and may hold a smaller position: nothing is final yet
                assert await backend.list_changes() == []
                a.commit()
            monkeypatch.setattr(changes, "MYSQL_WAIT", 2.0)
            found = await backend.list_changes()
            assert [e.workflow_id for e in found] == ["from-a", "from-b"]
            assert found[0].position < found[1].position
    finally:
        engine.dispose()


@pytest.mark.mysql
async def test_mariadb_the_feed_moves_while_others_read_innodbs_transaction_list(
    mysql_backend_url: str,
) -> None:
    """``information_schema.innodb_trx`` is refreshed only once nobody has read it for 0.1 s:
    a monitoring tool (or other feed readers) reading it more often kept it stale, and a reader
    that trusted it found nothing new, for good."""
    url = sa.make_url(mysql_backend_url).set(drivername="mysql+pymysql")
    engine = sa.create_engine(url.update_query_dict({"charset": "utf8mb4"}))
    stop = threading.Event()

    def monitor() -> None:
        with engine.connect() as conn:
            while not stop.is_set():
                conn.execute(sa.text("SELECT * FROM information_schema.innodb_trx")).all()
                conn.commit()
                time.sleep(0.01)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    try:
        async with durable.connect(mysql_backend_url) as backend:
            start = (await backend.list_changes(limit=1000))[-1:]
            after = start[0].position if start else 0
            for n in range(3):
                with engine.begin() as conn:
                    insert_workflow(conn, f"while-watched-{n}")
                found = await backend.list_changes(after=after)
                assert [e.workflow_id for e in found] == [f"while-watched-{n}"]
                after = found[-1].position
    finally:
        stop.set()
        watcher.join()
        engine.dispose()


@pytest.mark.mysql
async def test_mariadb_a_prepared_transaction_no_session_holds_is_waited_for(
    mysql_backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An XA transaction prepared, then left by its session, is listed without a session; it
    may hold an earlier position, so the feed waits for it."""
    monkeypatch.setattr(changes, "MYSQL_WAIT", 0.05)
    url = sa.make_url(mysql_backend_url).set(drivername="mysql+pymysql")
    engine = sa.create_engine(
        url.update_query_dict({"charset": "utf8mb4"}),
        poolclass=NullPool,
        isolation_level="AUTOCOMMIT",
    )
    xid = f"durable-test-{uuid.uuid4().hex[:12]}"
    try:
        async with durable.connect(mysql_backend_url) as backend:
            with engine.connect() as a:
                a.exec_driver_sql(f"XA START '{xid}'")
                insert_workflow(a, "prepared")
                a.exec_driver_sql(f"XA END '{xid}'")
                a.exec_driver_sql(f"XA PREPARE '{xid}'")
                a.invalidate()  # its session ends; the transaction stays prepared
            with engine.begin() as b:
                insert_workflow(b, "after-it")
            assert await backend.list_changes() == []
            with engine.connect() as c:
                c.exec_driver_sql(f"XA COMMIT '{xid}'")
            monkeypatch.setattr(changes, "MYSQL_WAIT", 2.0)
            found = await backend.list_changes()
            assert [e.workflow_id for e in found] == ["prepared", "after-it"]
    finally:
        with engine.connect() as c:
            listed = c.exec_driver_sql("XA RECOVER").all()
            if any(row[3] in (xid, xid.encode()) for row in listed):
                c.exec_driver_sql(f"XA ROLLBACK '{xid}'")
        engine.dispose()


STATUS = """------------
TRANSACTIONS
------------
Trx id counter 3173
LIST OF TRANSACTIONS FOR EACH SESSION:
---TRANSACTION 7943, ACTIVE (PREPARED) 3 sec recovered trx
1 lock struct(s), heap size 1128, 0 row lock(s), undo log entries 1
---TRANSACTION (0x7ff6e5588b80), not started
0 lock struct(s), heap size 1128, 0 row lock(s)
MariaDB thread id 12, OS thread handle 140698167981760, query id 5 127.0.0.1 root
---TRANSACTION 3172, ACTIVE 0 sec
1 lock struct(s), heap size 1128, 0 row lock(s), undo log entries 1
MariaDB thread id 176, OS thread handle 140698167981760, query id 5293 127.0.0.1 root
---TRANSACTION 3180, ACTIVE 1 sec
MySQL thread id 9, OS thread handle 1, query id 7 localhost root
---TRANSACTION (0x7ff6e5589000), ACTIVE 14 sec
mysql tables in use 1, locked 0
0 lock struct(s), heap size 1128, 0 row lock(s)
MariaDB thread id 31, OS thread handle 140698167981761, query id 80 127.0.0.1 root
SELECT SLEEP(15), count(*) FROM durable_workflows
---TRANSACTION (0x7ff6e5589400), not started
mysql tables in use 3, locked 3
0 lock struct(s), heap size 1128, 0 row lock(s)
---TRANSACTION (0x7ff6e5589800), ACTIVE 1 sec
mysql tables in use 4, locked 4
1 lock struct(s), heap size 1128, 0 row lock(s)
MariaDB thread id 40, OS thread handle 140698167981762, query id 90 127.0.0.1 root
INSERT INTO durable_messages (workflow_id, topic, value) VALUES ('w', 't', NEXTVAL(...))
--------
FILE I/O
--------
"""


@pytest.mark.mysql
async def test_a_long_read_on_durables_tables_does_not_hold_the_feed_back(
    mysql_backend_url: str,
) -> None:
    """A transaction that only reads (a report, ``mysqldump --single-transaction``) was taken
    for an open write: the feed showed nothing new for as long as it ran."""
    engine = sa.create_engine(sa.make_url(mysql_backend_url).set(drivername="mysql+pymysql"))
    try:
        async with durable.connect(mysql_backend_url) as backend:
            with engine.connect() as reader:
                reader.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                reader.exec_driver_sql("SELECT count(*) FROM durable_workflows").all()
                with engine.begin() as writer:
                    insert_workflow(writer, "while-it-reads")
                found = await backend.list_changes()
                reader.exec_driver_sql("COMMIT")
            assert [e.workflow_id for e in found] == ["while-it-reads"]
    finally:
        engine.dispose()


@pytest.mark.mysql
async def test_mariadb_a_write_before_its_first_row_is_waited_for(mysql_backend_url: str) -> None:
    """A statement takes its position before it writes its first row, and InnoDB gives its
    transaction an id only then: a reader left it out as one that had only read, returned a
    later position, and the earlier one, committed after, was never read by paging on."""
    url = sa.make_url(mysql_backend_url).set(drivername="mysql+pymysql")
    engine = sa.create_engine(url.update_query_dict({"charset": "utf8mb4"}), poolclass=NullPool)

    def slow_writer() -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO durable_workflows (id, name, status, queue, priority, "
                    "attempts, version, created_at, updated_at, created_seq) VALUES ('slow', "
                    "'wf', 'pending', 'default', 0, 0, 1, :now, :now, "
                    "NEXTVAL(durable_feed_seq) + 0 * SLEEP(1))"
                ),
                {"now": NOW},
            )

    try:
        async with durable.connect(mysql_backend_url) as backend:
            before = await backend.list_changes(limit=1000)
            after = before[-1].position if before else 0
            writer = threading.Thread(target=slow_writer)
            writer.start()
            try:
                await asyncio.sleep(0.4)  # the slow statement holds its position
                with engine.begin() as conn:
                    insert_workflow(conn, "quick")
                found = await backend.list_changes(after=after)
            finally:
                writer.join()
            assert [e.workflow_id for e in found] == ["slow", "quick"]
    finally:
        engine.dispose()


def test_innodbs_report_gives_each_started_transaction_and_its_session() -> None:
    assert changes.innodb_transactions(STATUS) == {
        ("7943", None),
        ("3172", 176),
        ("3180", 9),
        ("(0x7ff6e5589400)", None),
        ("(0x7ff6e5589800)", 40),
    }
    cut = STATUS.replace("---TRANSACTION 3172", "...truncated...\n---TRANSACTION 3172")
    assert changes.innodb_transactions(cut) is None
    assert changes.innodb_transactions("") == set()


def test_a_transaction_without_an_id_that_leaves_the_list_may_have_been_given_one() -> None:
    held = {("3172", 176), ("(0x7ff6e5589400)", None)}
    listed = {("3190", 40), ("(0x7ff6e5589800)", None)}
    # the one without an id is gone: it may be 3190 now, so 3190 is held in its place
    assert changes.still_held(held, listed) == {("3190", 40)}
    assert changes.still_held(held, {("(0x7ff6e5589400)", None)}) == {("(0x7ff6e5589400)", None)}
    assert changes.still_held({("3172", 176)}, {("3172", 176), ("3190", 40)}) == {("3172", 176)}
    assert changes.still_held(held, set()) == set()
