"""MySQL / MariaDB: the URLs durable.connect() takes, and what the dialect does differently.

The contract suite, the runtime and the crash tests run on MariaDB through ``backend_url``; these
check what is MySQL's own: the URL aliases, the server's clock with microseconds in UTC whatever
the session's time zone, SET clauses in MySQL's order, emulated upserts that keep their fence,
long values, and errors translated (deadlocks run again: ``test_deadlocks``).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql as mysql_dialect
from test_enqueue_many import (  # the scenario, run here on MariaDB (a name pytest skips)
    test_concurrent_batches_with_the_same_keys_in_other_orders as same_keys_at_once,
)

import durable
from durable import BackendUnavailableError, SQLAlchemyBackend
from durable.backends.sql.dialects import MySQLDialect, mysql_thread_engine, normalize_url
from durable.backends.sql.mysql import PICK_ROUNDS, Pick, in_mysql_order
from durable.backends.sql.schema import tasks, workflows
from durable.models import StepRecord, StepStatus
from durable.testing.contract._support import create, running

W = "worker-1"
TTL = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("mysql://u@h/db", "mysql+aiomysql"),
        ("mariadb://u@h/db", "mysql+aiomysql"),
        ("mysql+pymysql://u:secret@h:3307/db", "mysql+aiomysql"),
        ("mariadb+pymysql://u@h/db", "mysql+aiomysql"),
        ("mysql+aiomysql://u@h/db", "mysql+aiomysql"),
        ("mysql+asyncmy://u@h/db", "mysql+asyncmy"),
    ],
)
def test_mysql_urls_pick_an_async_driver(url: str, driver: str) -> None:
    parsed = normalize_url(url)
    assert parsed.drivername == driver
    assert (parsed.host, parsed.database) == ("h", "db")


def test_set_clauses_are_ordered_for_mysql() -> None:
    """MySQL assigns left to right: a column is assigned after every expression that reads it."""
    c = workflows.c
    stmt = sa.update(workflows).values(
        status="running",
        attempts=c.attempts + sa.case((c.status == "running", 0), else_=1),
        version=c.version + 1,
    )
    sql = str(in_mysql_order(stmt).compile(dialect=mysql_dialect.dialect()))
    assert sql.index("attempts=") < sql.index("status=")
    assert in_mysql_order(stmt) is in_mysql_order(stmt)  # built once per statement
    swap = sa.update(workflows).values(status=c.queue, queue=c.status)
    with pytest.raises(NotImplementedError, match="queue"):
        in_mysql_order(swap)


def test_lease_durations_are_microseconds() -> None:
    assert MySQLDialect().clock_params(ttl=1.5, delay=0.000001) == {
        "c_ttl": 1_500_000,
        "c_delay": 1,
    }


@pytest.mark.mysql
async def test_the_clock_is_the_servers_in_utc_with_microseconds(mysql_backend_url: str) -> None:
    # the session's time zone does not move the clock (UTC_TIMESTAMP), nor stored times
    backend = durable.connect(
        mysql_backend_url.replace("mysql+aiomysql://", "mariadb://"),
        engine_options={"connect_args": {"init_command": "SET time_zone = '+05:00'"}},
    )
    async with backend:
        assert isinstance(backend, SQLAlchemyBackend)
        stamps = [await backend.now() for _ in range(3)]
        host = datetime.now(UTC)
        assert all(abs(stamp - host) < timedelta(seconds=5) for stamp in stamps)
        assert any(stamp.microsecond for stamp in stamps)
        info = await create(backend, "wf")
        assert info.created_at.tzinfo is not None
        again = await backend.get_workflow("wf")
        assert again.created_at == info.created_at  # microseconds kept


@pytest.mark.mysql
async def test_values_beyond_64_kib_round_trip(mysql_backend_url: str) -> None:
    big = "x" * 200_000  # TEXT would hold 64 KiB: these columns are LONGTEXT
    async with durable.connect(mysql_backend_url) as backend:
        await create(backend, "wf", input=big)
        snapshot = await backend.load_snapshot("wf")
        assert snapshot.input == big


BIG_REG = durable.Registry()
big_runs: list[int] = []


@durable.step(name="tests.mysql.big_step")
async def big_step(size: int, fill: str) -> str:
    big_runs.append(size)
    return fill * size


@durable.workflow(name="tests.mysql.big.v1", registry=BIG_REG, max_attempts=3)
async def big_workflow(size: int, fill: str = "y") -> int:
    return len(await big_step(size, fill))


@pytest.mark.mysql
@pytest.mark.parametrize(
    ("fill", "share"),
    [
        # over the limit as it is
        ("y", None),
        # under it as JSON (each quote two bytes: 0.8 of the limit), over it on the wire: the
        # driver sends values escaped in the statement's text (four bytes: 1.6 of it)
        ('"', 0.4),
    ],
)
async def test_values_beyond_max_allowed_packet_are_refused_not_an_outage(
    mysql_backend_url: str, fill: str, share: float | None
) -> None:
    """The server drops a connection whose packet passes its max_allowed_packet, and the driver
    reports a lost connection: durable took that for an outage, so an enqueue raised
    BackendUnavailableError (which producers retry), and a step's too large result was handed
    back and run again for ever, uncounted. Such values are refused before they are sent,
    counted as they go on the wire (escaped), not as stored."""
    async with durable.Runtime(
        durable.connect(mysql_backend_url), registry=BIG_REG, recover=False
    ) as rt:
        backend = rt.backend
        assert isinstance(backend, SQLAlchemyBackend)
        limit = backend.dialect.max_packet  # type: ignore[attr-defined]
        assert isinstance(limit, int) and limit > 0
        size = limit + 1 if share is None else int(limit * share)
        with pytest.raises(durable.SerializationError, match="max_allowed_packet"):
            await rt.client.enqueue(big_workflow, 0, fill * size)
        with pytest.raises(durable.SerializationError, match="max_allowed_packet"):
            await rt.client.enqueue_many(big_workflow, [(0, fill * size)])
        assert (await rt.client.list_workflows()).items == []  # nothing written
        big_runs.clear()
        wid = await rt.enqueue(big_workflow, size, fill)
        await rt.start_worker(poll_interval=0.05)
        deadline = asyncio.get_running_loop().time() + 30
        while (info := await rt.get_workflow(wid)).attempts < 1 or info.error is None:
            assert asyncio.get_running_loop().time() < deadline, (info, len(big_runs))
            await asyncio.sleep(0.05)
        # a failed attempt, counted, with the reason: not an outage handed back uncounted
        assert (info.attempts, info.interruptions) == (1, 0)
        assert "max_allowed_packet" in info.error.message
        assert big_runs == [size]
        assert await rt.run(big_workflow, 10) == 10  # the backend is fine after it


outcome_runs: list[str] = []


@durable.workflow(
    name="tests.mysql.big_outcome.v1",
    registry=BIG_REG,
    max_attempts=3,
    retry=durable.RetryPolicy(initial_delay=0.1),
)
async def big_outcome(how: str, size: int) -> str:
    outcome_runs.append(how)
    if how == "output":
        return "o" * size
    if how == "error":
        raise ValueError("e" * size)
    durable.continue_as_new("c" * size, 0)
    return "unreachable"


@pytest.mark.mysql
@pytest.mark.parametrize(
    ("how", "status", "message"),
    [
        ("output", durable.WorkflowStatus.FAILED, "max_allowed_packet"),
        ("continue", durable.WorkflowStatus.FAILED, "max_allowed_packet"),
        # its retries go on with the error cut down, which says why
        ("error", durable.WorkflowStatus.DEAD_LETTER, "eeee... (cut: the database refused"),
    ],
)
async def test_an_outcome_beyond_max_allowed_packet_ends_the_attempt(
    mysql_backend_url: str, how: str, status: durable.WorkflowStatus, message: str
) -> None:
    """A workflow's own outcome (its output, the input it continues with, its error) larger
    than the server's max_allowed_packet was refused at its write and never recorded: the
    lease lapsed and the body ran again each claim_ttl, counted as an interruption, until
    recovery gave up. The attempt now ends recorded: failed at once for an output or a
    continuation (the same outcome would be refused again), and an error too large is stored
    cut down, so the retries run as they would for a small one."""
    async with durable.Runtime(
        durable.connect(mysql_backend_url), registry=BIG_REG, recover=False, claim_ttl=2
    ) as rt:
        backend = rt.backend
        assert isinstance(backend, SQLAlchemyBackend)
        size = backend.dialect.max_packet + 1  # type: ignore[attr-defined]
        outcome_runs.clear()
        wid = await rt.enqueue(big_outcome, how, size)
        await rt.start_worker(poll_interval=0.05)
        deadline = asyncio.get_running_loop().time() + 30
        while not (info := await rt.get_workflow(wid)).status.is_terminal:
            assert asyncio.get_running_loop().time() < deadline, (info, outcome_runs)
            await asyncio.sleep(0.05)
        assert info.status is status
        assert info.interruptions == 0
        assert info.error is not None and message in info.error.message
        assert len(info.error.message) < 3000
        assert outcome_runs == [how] * (3 if how == "error" else 1)


@pytest.mark.mysql
async def test_the_emulated_upsert_keeps_its_fence(mysql_backend_url: str) -> None:
    """record_step is INSERT ... SELECT ... WHERE <lease held> ON CONFLICT DO UPDATE: on MySQL
    the conflict's UPDATE carries the fence too, so a pending row is not overwritten by a
    worker that lost the lease."""
    async with durable.connect(mysql_backend_url) as backend:
        await running(backend, "wf", W)
        now = await backend.now()
        pending = StepRecord(position=0, name="s", status=StepStatus.PENDING, started_at=now)
        await backend.record_step("wf", pending, worker_id=W)
        await backend.release_task_claim("wf", "workflow", W)
        done = StepRecord(position=0, name="s", output=1, completed_at=now)
        with pytest.raises(durable.ClaimLostError):
            await backend.record_step("wf", done, worker_id=W)
        (step,) = await backend.list_steps("wf")
        assert step.status is StepStatus.PENDING


@pytest.mark.mysql
async def test_concurrent_batches_with_the_same_keys(mysql_backend_url: str) -> None:
    """A bulk enqueue on MariaDB looks its rows up, then inserts them: a concurrent batch may
    insert one of its keys in between (InnoDB makes the insert wait for that batch, then
    refuses the key as a duplicate). The batch runs again and finds the key (it used to fail
    with "Duplicate entry")."""
    await same_keys_at_once(mysql_backend_url)


def _held_by_another_transaction(url: str, instance_ids: list[str]) -> sa.Connection:
    """A connection of its own holding the task rows of ``instance_ids`` locked (``FOR
    UPDATE``) until it is closed: as a claim that has not committed yet."""
    sync = url.replace("mysql+aiomysql://", "mysql+pymysql://", 1) + "?charset=utf8mb4"
    conn = sa.create_engine(sync, poolclass=sa.pool.NullPool).connect()
    if instance_ids:
        held = sa.select(tasks.c.id).where(tasks.c.instance_id.in_(instance_ids))
        assert len(conn.execute(held.with_for_update()).all()) == len(instance_ids)
    return conn


#: Tasks t0, t1, ... in the claims' order; enough that the rounds of plain reads see only some.
TASKS = [f"t{i}" for i in range(2 * PICK_ROUNDS + 4)]


@pytest.mark.mysql
@pytest.mark.parametrize(
    ("held", "limit", "claimed"),
    [
        ([], 2, TASKS[:2]),
        (TASKS[:2], 1, TASKS[2:3]),  # found in the rounds of plain reads
        (["t0", "t2"], 3, ["t1", "t3", "t4"]),
        # more held than the rounds look at: the locking walk of the index finds the rest
        (TASKS[: 2 * PICK_ROUNDS], 2, TASKS[2 * PICK_ROUNDS : 2 * PICK_ROUNDS + 2]),
        (TASKS[: PICK_ROUNDS + 1], 1, [TASKS[PICK_ROUNDS + 1]]),
    ],
)
async def test_a_batch_claim_passes_over_the_rows_another_claim_holds(
    mysql_backend_url: str, held: list[str], limit: int, claimed: list[str]
) -> None:
    """The batch claim picks its rows by a plain read, then locks them (``SKIP LOCKED``): the
    rows another transaction holds are passed over, and the next available ones in the claim's
    order are taken instead, as many as the limit asks; the held ones are claimable once free."""
    async with durable.connect(mysql_backend_url) as backend:
        for i, instance_id in enumerate(TASKS):
            await create(backend, instance_id, priority=i)
        other = _held_by_another_transaction(mysql_backend_url, held)
        try:
            got = await backend.claim_available_tasks(W, limit, TTL)
        finally:
            other.close()
        assert [c.instance_id for c in got] == claimed
        assert {c.worker_id for c in got} == {W}
        rest = await backend.claim_available_tasks("worker-2", len(TASKS), TTL)
        assert {c.instance_id for c in rest} == set(TASKS) - set(claimed)


@pytest.mark.mysql
async def test_a_batch_claim_takes_no_row_another_claim_took_since_it_read(
    mysql_backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate that another worker claims (and commits) between the pick's plain read and
    its lock no longer qualifies once locked: it stays with that worker, and the claim takes
    the next one."""
    async with durable.connect(mysql_backend_url) as backend:
        for i in range(3):
            await create(backend, f"t{i}", priority=i)
        pick = Pick.run

        def claimed_after_the_plain_read(self: Pick, conn: sa.Connection, params: Any) -> Any:
            execute = conn.execute

            def then_claim_t0(statement: Any, *args: Any, **kwargs: Any) -> Any:
                result = execute(statement, *args, **kwargs)
                if statement is self.first:
                    other = _held_by_another_transaction(mysql_backend_url, [])
                    with other.begin():
                        other.execute(
                            sa.update(tasks)
                            .where(tasks.c.instance_id == "t0")
                            .values(claimed_by="worker-2", claim_expires_at=datetime.now(UTC) + TTL)
                        )
                    other.close()
                return result

            monkeypatch.setattr(conn, "execute", then_claim_t0)
            return pick(self, conn, params)

        monkeypatch.setattr(Pick, "run", claimed_after_the_plain_read)
        got = await backend.claim_available_tasks(W, 1, TTL)
        assert [c.instance_id for c in got] == ["t1"]
        assert (await backend.get_task("t0", "workflow")).claimed_by == "worker-2"


def _kill_query_waiting_on(url: str, table: str) -> threading.Thread:
    """A thread that waits (up to 10 s) for a statement of another session on ``table`` to
    wait for a lock, and stops it with ``KILL QUERY``, as a DBA would."""
    import pymysql

    parsed = sa.engine.make_url(url)
    database = parsed.database

    def kill() -> None:
        admin = pymysql.connect(
            host=parsed.host, port=parsed.port or 3306, user=parsed.username, autocommit=True
        )
        try:
            with admin.cursor() as cursor:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    cursor.execute(
                        "SELECT id FROM information_schema.processlist WHERE db = %s AND "
                        "info LIKE %s AND info NOT LIKE %s AND id <> CONNECTION_ID()",
                        (database, f"%{table}%", "%processlist%"),
                    )
                    found = [row[0] for row in cursor.fetchall()]
                    if found:
                        time.sleep(0.1)  # waiting on the lock by now
                        for session in found:
                            cursor.execute(f"KILL QUERY {int(session)}")
                        return
                    time.sleep(0.01)
        finally:
            admin.close()

    thread = threading.Thread(target=kill)
    thread.start()
    return thread


@pytest.mark.mysql
@pytest.mark.parametrize("stop", ["kill query", "max_statement_time", "lock_wait_timeout"])
async def test_a_statement_the_server_stopped_is_unavailable_not_refused(
    mysql_backend_url: str, stop: str
) -> None:
    """A statement of durable's that the server stopped while it waited for a lock, by ``KILL
    QUERY`` (1317) or at ``max_statement_time`` (1969), was a BackendError, which a worker
    counted as the workflow's failed attempt (dead-lettered with max_attempts=1), where a
    ``KILL CONNECTION`` at the same point was handed back uncounted. It is an outage too:
    BackendUnavailableError, and the backend goes on once the lock is free. So is a lock held
    past ``innodb_lock_wait_timeout`` (1205), which was run again eight times, each waiting
    the timeout out again (50 s by default), then counted as the attempt's failure."""
    options: dict[str, Any] = {}
    if stop == "max_statement_time":
        options["connect_args"] = {
            "init_command": "SET time_zone = '+00:00', max_statement_time = 0.5"
        }
    if stop == "lock_wait_timeout":
        options["connect_args"] = {
            "init_command": "SET time_zone = '+00:00', innodb_lock_wait_timeout = 1"
        }
    async with durable.connect(mysql_backend_url, engine_options=options) as backend:
        await running(backend, "wf", W)
        now = await backend.now()
        pending = StepRecord(position=0, name="s", status=StepStatus.PENDING, started_at=now)
        other = _held_by_another_transaction(mysql_backend_url, ["wf"])
        killer = (
            _kill_query_waiting_on(mysql_backend_url, "durable_steps")
            if stop == "kill query"
            else None
        )
        try:
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError):
                await backend.record_step("wf", pending, worker_id=W)
            assert time.monotonic() - started < 5  # waited out once, not run again
        finally:
            other.close()
            if killer is not None:
                killer.join()
        await backend.record_step("wf", pending, worker_id=W)  # the lock is free: it goes on
        (step,) = await backend.list_steps("wf")
        assert step.status is StepStatus.PENDING


IDLE_REG = durable.Registry()


@durable.workflow(name="tests.mysql.idle.v1", registry=IDLE_REG)
async def idle_workflow(n: int) -> int:
    return n + 1


@pytest.mark.mysql
async def test_connections_the_server_closed_while_idle_are_replaced(
    mysql_backend_url: str,
) -> None:
    """MariaDB ends a session idle past its ``wait_timeout`` (or one a DBA kills): the pool's
    connection was taken as it was, and the next call failed with BackendUnavailableError
    (2013) though the server answers. It is found at checkout, before anything is sent on it,
    and replaced: on aiomysql's pool, and on PyMySQL's (sync transactional steps)."""
    init = "SET time_zone = '+00:00', wait_timeout = 1"
    options: dict[str, Any] = {"connect_args": {"init_command": init}}
    async with durable.Client(durable.connect(mysql_backend_url, engine_options=options)) as c:
        await c.enqueue(idle_workflow, 0)
        for n in range(2):
            await asyncio.sleep(2)  # idle past wait_timeout: the server ends the sessions
            await c.enqueue(idle_workflow, n)  # no error
            assert (await c.list_workflows(limit=1)).items
    sync = mysql_thread_engine(normalize_url(mysql_backend_url), options)
    assert sync is not None
    try:
        for _ in range(2):
            with sync.connect() as conn:
                assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            await asyncio.sleep(2)
    finally:
        sync.dispose()


def _tcp(sock: Any) -> tuple[int, ...]:
    """A socket's keepalive switch, idle, interval and count, and its user timeout (ms)."""
    tcp = socket.IPPROTO_TCP
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(tcp, socket.TCP_KEEPIDLE),
        sock.getsockopt(tcp, socket.TCP_KEEPINTVL),
        sock.getsockopt(tcp, socket.TCP_KEEPCNT),
        sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT),
    )


async def _connection_settings(url: str, options: dict[str, Any] | None) -> list[tuple[Any, ...]]:
    """The TCP settings and connect timeout of a connection of aiomysql's pool and of PyMySQL's
    (sync transactional steps), for a backend on ``url`` with ``engine_options``."""
    seen = []
    async with durable.connect(url, engine_options=options) as backend:
        assert isinstance(backend, SQLAlchemyBackend)
        engine = backend.engine
        assert isinstance(engine, sa.ext.asyncio.AsyncEngine)
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            aiomysql = raw.driver_connection
            sock = aiomysql._writer.get_extra_info("socket")
            seen.append((*_tcp(sock), aiomysql.connect_timeout))
    sync = mysql_thread_engine(normalize_url(url), options)
    assert sync is not None
    try:
        with sync.connect() as conn:
            pymysql = conn.connection.dbapi_connection
            seen.append((*_tcp(pymysql._sock), pymysql.connect_timeout))
    finally:
        sync.dispose()
    return seen


@pytest.mark.mysql
async def test_connections_give_up_on_a_peer_that_vanished(mysql_backend_url: str) -> None:
    """A MariaDB host gone without a word held the connections to it, and whoever awaited
    them, for the operating system's hours (the drivers turn keepalives on with two hours of
    idle, and aiomysql's connection attempt had no timeout). Now, as on PostgreSQL, every
    connection's socket probes a silent peer after 30 s and fails once its data goes
    unacknowledged for 60 s, and an attempt gives up after 10 s, unless ``connect_args`` (or,
    for the timeout, the URL) say otherwise."""
    url = mysql_backend_url
    assert await _connection_settings(url, None) == [(1, 30, 10, 3, 60_000, 10)] * 2
    given = {"keepalives_idle": 5, "keepalives_count": 2, "tcp_user_timeout": 7000}
    options = {"connect_args": {**given, "connect_timeout": 3}}
    assert await _connection_settings(url, options) == [(1, 5, 10, 2, 7000, 3)] * 2
    seen = await _connection_settings(f"{url}?connect_timeout=4", None)
    assert [timeout for *_, timeout in seen] == [4, 4]
    off = {"connect_args": {"keepalives": 0}}
    assert [keepalive for keepalive, *_ in await _connection_settings(url, off)] == [0, 0]
    for bad in (-1, "x", 1.5):
        with pytest.raises(durable.ConfigurationError, match="keepalives_idle"):
            durable.connect(url, engine_options={"connect_args": {"keepalives_idle": bad}})


@pytest.mark.parametrize(
    ("number", "unavailable"),
    [
        (1021, True),
        (1114, True),
        (1290, True),
        (1792, True),
        (2013, True),
        (1317, True),
        (1969, True),
        (3024, True),
        (1062, False),
        (1213, False),
    ],
)
def test_a_full_disk_is_unavailable_not_a_refused_statement(number: int, unavailable: bool) -> None:
    """Disk full (1021) and a table that cannot grow (1114) pass once there is room, and a
    server made read-only (1290, 1792) once it takes writes again: a worker hands its attempt
    back uncounted; a duplicate key or a deadlock is the statement's own."""
    import pymysql

    error = sa.exc.OperationalError("INSERT", {}, pymysql.err.OperationalError(number, "..."))
    assert MySQLDialect().unavailable(error) is unavailable


@pytest.mark.mysql
async def test_an_unreachable_server_is_unavailable_on_start() -> None:
    backend = durable.connect("mysql://root@127.0.0.1:1/durable")
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        await backend.start()
    await backend.close()


def _admin(url: str) -> Any:
    """A PyMySQL connection (autocommit) to the database at ``url``."""
    import pymysql

    parsed = sa.engine.make_url(url)
    return pymysql.connect(
        host=parsed.host,
        port=parsed.port or 3306,
        user=parsed.username,
        database=parsed.database,
        autocommit=True,
    )


@pytest.mark.mysql
@pytest.mark.parametrize("charset", ["latin1", "utf8mb3"])
async def test_a_database_that_holds_no_4_byte_character_is_refused_at_start(
    mysql_url: str, charset: str
) -> None:
    """A database whose default character set is latin1 (MariaDB's own default) or utf8mb3
    was taken: durable's tables were created in it, and the first 4-byte character (an emoji)
    a value carried failed at run time with a raw "Incorrect string value". Start refuses it,
    naming the character set and the fix, before creating anything; so do durable's tables
    created in such a database, once its default is utf8mb4."""
    database = sa.engine.make_url(mysql_url).database
    admin = _admin(mysql_url)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"ALTER DATABASE `{database}` CHARACTER SET {charset}")
        backend = durable.connect(mysql_url)
        with pytest.raises(durable.ConfigurationError, match=f"{charset}.*utf8mb4"):
            await backend.start()
        await backend.close()
        with admin.cursor() as cursor:
            cursor.execute("SHOW TABLES")
            assert cursor.fetchall() == ()  # nothing created
            cursor.execute("CREATE TABLE durable_workflows (id VARCHAR(255) PRIMARY KEY)")
            cursor.execute(f"ALTER DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        backend = durable.connect(mysql_url)
        with pytest.raises(durable.ConfigurationError, match=f"durable_workflows.id, {charset}"):
            await backend.start()
        await backend.close()
        with admin.cursor() as cursor:
            cursor.execute("DROP TABLE durable_workflows")
    finally:
        admin.close()
    async with durable.connect(mysql_url) as backend:  # utf8mb4: started, and holds an emoji
        await create(backend, "wf-\U0001f389", input="shipped \U0001f389")
        assert (await backend.load_snapshot("wf-\U0001f389")).input == "shipped \U0001f389"


PAD_REG = durable.Registry()


@durable.workflow(name="tests.mysql.pad.v1", registry=PAD_REG)
async def padded(n: int) -> int:
    await durable.set_event("s", n)
    await durable.set_event("s ", -n)
    return n


@pytest.mark.mysql
async def test_a_no_pad_database_keeps_keys_that_differ_by_trailing_spaces_apart(
    mysql_url: str,
) -> None:
    """``utf8mb4_bin`` is PAD SPACE: it compares ``"order-1"`` and ``"order-1 "`` equal, so
    they were one id (and one idempotency key, one event key) on MariaDB, two on SQLite and
    PostgreSQL. A database created as the README says (``utf8mb4_nopad_bin``) keeps them
    apart, as the other databases do."""
    database = sa.engine.make_url(mysql_url).database
    admin = _admin(mysql_url)
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                f"ALTER DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
            )
    finally:
        admin.close()
    async with durable.Runtime(durable.connect(mysql_url), registry=PAD_REG) as rt:
        a = await rt.enqueue(padded, 1, workflow_id="order-1")
        b = await rt.enqueue(padded, 2, workflow_id="order-1 ")
        assert (a, b) == ("order-1", "order-1 ")
        k1 = await rt.enqueue(padded, 3, idempotency_key="key")
        k2 = await rt.enqueue(padded, 4, idempotency_key="key ")
        assert k1 != k2
        ids = await rt.client.enqueue_many(
            padded,
            [
                durable.Enqueue(args=(5,), workflow_id="m"),
                durable.Enqueue(args=(6,), workflow_id="m "),
            ],
        )
        assert ids == ["m", "m "]
        await rt.start_worker(poll_interval=0.05)
        assert await rt.result("order-1", timeout=20) == 1
        assert await rt.result("order-1 ", timeout=20) == 2
        assert await rt.client.get_event("order-1", "s", timeout=1) == 1
        assert await rt.client.get_event("order-1", "s ", timeout=1) == -1


@pytest.mark.mysql
async def test_dropped_tables_say_how_to_create_them(mysql_backend_url: str) -> None:
    async with durable.connect(mysql_backend_url) as backend:
        assert isinstance(backend, SQLAlchemyBackend)
        async with backend.engine.connect() as conn:  # type: ignore[union-attr]
            await conn.execute(sa.text("SET FOREIGN_KEY_CHECKS = 0"))
            await conn.execute(sa.text("DROP TABLE durable_steps"))
        with pytest.raises(durable.SchemaVersionError, match="durable migrate"):
            await backend.list_steps("wf")


class _Versioned:
    """Stands for a connection to a server that answers ``SELECT VERSION()`` with ``version``
    (no MySQL 8 server runs here; the MariaDB case runs for real below), its
    ``max_allowed_packet`` with MariaDB's default, and its database's character set with
    utf8mb4 (durable's tables: none yet)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.answers: list[Any] = []

    def execute(self, statement: Any, parameters: Any = None) -> Any:
        text = str(statement)
        answer = {
            "SELECT VERSION()": self.version,
            "SELECT @@max_allowed_packet": 16 * 1024 * 1024,
            "SELECT DATABASE(), @@character_set_database": ("app", "utf8mb4"),
        }.get(text, [])
        self.answers.append(answer)
        return self

    def scalar_one(self) -> Any:
        return self.answers[-1]

    def one(self) -> Any:
        return self.answers[-1]

    def all(self) -> Any:
        return self.answers[-1]


@pytest.mark.parametrize("version", ["8.0.36", "8.4.2-log", "10.5.23-MariaDB", "garbage"])
def test_a_server_durable_cannot_run_on_is_refused_naming_its_version(version: str) -> None:
    with pytest.raises(durable.ConfigurationError, match=r"MariaDB 10\.6 or later") as caught:
        MySQLDialect().check_server(_Versioned(version))  # type: ignore[arg-type]
    assert repr(version) in str(caught.value)


@pytest.mark.parametrize(
    "version", ["10.6.18-MariaDB", "10.11.6-MariaDB-0+deb12u1", "11.4.2-MariaDB"]
)
def test_mariadb_from_10_6_is_accepted(version: str) -> None:
    dialect = MySQLDialect()
    dialect.check_server(_Versioned(version))  # type: ignore[arg-type]
    assert dialect.max_packet == 16 * 1024 * 1024  # what its statements' values are held to


@pytest.mark.mysql
async def test_a_committed_transaction_is_not_rolled_back_again_on_its_return(
    mysql_backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's reset sends no ROLLBACK after the runner's commit (a round trip saved per
    transaction); a connection coming back with its transaction open is still rolled back, so
    the locks it took are released."""
    from sqlalchemy.dialects.mysql.aiomysql import AsyncAdapt_aiomysql_connection
    from sqlalchemy.util import greenlet_spawn

    async with durable.connect(mysql_backend_url) as backend:
        assert isinstance(backend, SQLAlchemyBackend)
        await create(backend, "wf")
        rollbacks: list[object] = []
        rollback = AsyncAdapt_aiomysql_connection.rollback

        def counted(self: Any) -> None:
            rollbacks.append(self)
            rollback(self)

        monkeypatch.setattr(AsyncAdapt_aiomysql_connection, "rollback", counted)
        for _ in range(3):
            assert (await backend.get_workflow("wf")).id == "wf"
        assert rollbacks == []

        # a connection used outside the runner, returned with a row locked: rolled back
        def lock_and_return() -> None:
            raw = backend.engine.sync_engine.raw_connection()
            cursor = raw.cursor()
            cursor.execute("SELECT id FROM durable_workflows WHERE id = 'wf' FOR UPDATE")
            cursor.fetchall()
            cursor.close()
            raw.close()

        await greenlet_spawn(lock_and_return)
        assert len(rollbacks) == 1
        other = _held_by_another_transaction(mysql_backend_url, [])
        try:
            locked = other.execute(
                sa.text("SELECT id FROM durable_workflows WHERE id = 'wf' FOR UPDATE NOWAIT")
            )
            assert locked.scalar_one() == "wf"
        finally:
            other.close()


TX_REG = durable.Registry()
TX_META = sa.MetaData()
TX_ROWS = sa.Table("app_tx_rows", TX_META, sa.Column("n", sa.Integer, primary_key=True))
tx_threads: list[str] = []


@durable.transaction(name="tests.mysql.tx_in_a_thread")
def tx_in_a_thread(conn: sa.Connection, n: int) -> str:
    import threading

    tx_threads.append(threading.current_thread().name)
    conn.execute(TX_ROWS.insert().values(n=n))
    level = conn.execute(sa.text("SELECT @@session.tx_isolation")).scalar_one()
    zone = conn.execute(sa.text("SELECT @@session.time_zone")).scalar_one()
    return f"{level} {zone}"


@durable.workflow(name="tests.mysql.tx.v1", registry=TX_REG)
async def tx_workflow(n: int) -> str:
    return await tx_in_a_thread.aio(n)


@pytest.mark.mysql
async def test_a_sync_transactional_step_runs_in_a_thread(mysql_backend_url: str) -> None:
    """On MariaDB a def transactional step ran on the event loop (its body blocked the
    heartbeats while it worked); it runs in a thread now, on a session set as the async
    engine's (READ COMMITTED, the clock in UTC), and its write commits with its record."""
    sync_url = sa.make_url(mysql_backend_url).set(drivername="mysql+pymysql")
    engine = sa.create_engine(sync_url)
    TX_META.create_all(engine)
    tx_threads.clear()
    try:
        backend = durable.connect(mysql_backend_url)
        async with durable.Runtime(backend, registry=TX_REG, recover=False) as rt:
            assert await rt.run(tx_workflow, 3, workflow_id="tx") == "READ-COMMITTED +00:00"
            assert await rt.run(tx_workflow, 3, workflow_id="tx") == "READ-COMMITTED +00:00"
        assert len(tx_threads) == 1 and tx_threads[0] != "MainThread"  # replayed, not run again
        with engine.connect() as conn:
            assert conn.execute(sa.select(TX_ROWS.c.n)).scalars().all() == [3]
    finally:
        engine.dispose()
