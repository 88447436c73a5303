"""``durable.enqueue_in`` / ``durable.send_in``: an execution (a message) recorded in the
caller's transaction exists if and only if it commits; idempotency as ``enqueue``; sync and
async connections and sessions; clear errors for what cannot work."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import durable
from durable.backends.sql.schema import tasks, workflows

META = sa.MetaData()
ORDERS = sa.Table("app_orders", META, sa.Column("id", sa.String(50), primary_key=True))


@durable.workflow(name="test.outbox.echo.v1")
async def echo(order_id: str) -> str:
    return f"done {order_id}"


@durable.workflow(name="test.outbox.waiter.v1")
async def waiter() -> object:
    return await durable.recv("go")


def app_url(url: str, *, asynchronous: bool = False) -> str:
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        return f"sqlite+aiosqlite:///{path}" if asynchronous else f"sqlite:///{path}"
    return url  # psycopg 3 is both a sync and an async driver


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return (
            conn.execute(sa.select(sa.func.count()).select_from(ORDERS)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(workflows)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one(),
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    fixture = {"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param]
    url = str(request.getfixturevalue(fixture))
    with durable.Client(url):  # durable's tables
        pass
    engine = sa.create_engine(app_url(url))
    META.create_all(engine)
    engine.dispose()
    return url


def test_exists_iff_the_callers_transaction_commits(db_url: str) -> None:
    engine = sa.create_engine(app_url(db_url))
    try:
        with pytest.raises(RuntimeError), engine.begin() as conn:
            conn.execute(ORDERS.insert().values(id="o-0"))
            durable.enqueue_in(conn, "test.outbox.echo.v1", "o-0", idempotency_key="o-0")
            raise RuntimeError("the application fails before its commit")
        assert counts(engine) == (0, 0, 0)
        with engine.begin() as conn:
            conn.execute(ORDERS.insert().values(id="o-1"))
            first = durable.enqueue_in(conn, echo, "o-1", idempotency_key="o-1")
        with engine.begin() as conn:  # the same key again: the same execution, nothing new
            again = durable.enqueue_in(conn, echo, "o-1", idempotency_key="o-1")
        assert again == first
        assert counts(engine) == (1, 1, 1)
        with Session(engine) as session, session.begin():  # an ORM session
            session.execute(ORDERS.insert().values(id="o-2"))
            durable.enqueue_in(
                session, "test.outbox.echo.v1", "o-2", workflow_id="wf-o-2", timeout=600
            )
        assert counts(engine) == (2, 2, 2)
    finally:
        engine.dispose()
    with durable.Client(db_url) as client:
        info = client.get_workflow_sync(first)
        assert (info.name, info.input, info.idempotency_key) == (
            "test.outbox.echo.v1",
            {"args": ["o-1"], "kwargs": {}},
            "o-1",
        )
        timed = client.get_workflow_sync("wf-o-2")
        assert timed.deadline is not None and timed.created_at is not None
        assert 590 < (timed.deadline - timed.created_at).total_seconds() < 610


def test_the_committed_execution_runs(db_url: str) -> None:
    rt = durable.Runtime(durable.connect(db_url), recover=False)
    engine = sa.create_engine(app_url(db_url))
    with rt:
        rt.blocking(rt.start_worker(poll_interval=30))  # woken by the commit, not by polling
        with engine.begin() as conn:
            conn.execute(ORDERS.insert().values(id="o-3"))
            wid = durable.enqueue_in(conn, echo, "o-3", using=rt)
        assert rt.client.result_sync(wid, timeout=10) == "done o-3"
    engine.dispose()


async def test_a_sync_connection_with_using_from_async_code(db_url: str) -> None:
    """An async service that writes through a sync engine: the check of the connection against
    the client's database needs no blocking call on the client's loop (it was refused on
    PostgreSQL, where the database's identity takes a query, until something had read it)."""
    engine = sa.create_engine(app_url(db_url))
    try:
        async with durable.Client(db_url) as client:
            with engine.begin() as conn:
                conn.execute(ORDERS.insert().values(id="s-1"))
                wid = durable.enqueue_in(conn, echo, "s-1", using=client)
            assert (await client.get_workflow(wid)).input == {"args": ["s-1"], "kwargs": {}}
    finally:
        engine.dispose()


async def test_async_connections_and_sessions(db_url: str) -> None:
    engine = create_async_engine(app_url(db_url, asynchronous=True))
    try:
        async with engine.begin() as conn:
            await conn.execute(ORDERS.insert().values(id="a-1"))
            first = await durable.enqueue_in(conn, echo, "a-1", idempotency_key="a-1")
        with pytest.raises(RuntimeError):
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(ORDERS.insert().values(id="a-2"))
                await durable.enqueue_in(session, echo, "a-2", idempotency_key="a-2")
                raise RuntimeError("rolled back")
        async with AsyncSession(engine) as session, session.begin():
            again = await durable.enqueue_in(session, echo, "a-1", idempotency_key="a-1")
        assert again == first
        async with engine.connect() as conn:
            rows = await conn.execute(sa.select(workflows.c.idempotency_key))
            assert [r[0] for r in rows] == ["a-1"]
    finally:
        await engine.dispose()


async def test_send_in_exists_iff_committed(db_url: str) -> None:
    async with durable.Runtime(durable.connect(db_url), recover=False) as rt:
        await rt.start_worker(poll_interval=0.05)
        wid = await rt.client.enqueue(waiter)
        engine = sa.create_engine(app_url(db_url))

        def sends() -> None:  # a sync application's code (a thread: not on the loop)
            with pytest.raises(RuntimeError), engine.begin() as conn:
                assert durable.send_in(conn, wid, "go", "rolled back", using=rt) is True
                raise RuntimeError
            with engine.begin() as conn:
                assert durable.send_in(conn, wid, "go", {"n": 1}, idempotency_key="k") is True
            with engine.begin() as conn:  # the same key: not stored again
                assert durable.send_in(conn, wid, "go", {"n": 2}, idempotency_key="k") is False

        try:
            await asyncio.to_thread(sends)
        finally:
            engine.dispose()
        assert await rt.client.result(wid, timeout=20) == {"n": 1}


def test_clear_errors(db_url: str, tmp_path: Path) -> None:
    engine = sa.create_engine(app_url(db_url))
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with (
            durable.Runtime(durable.InMemoryBackend(), recover=False) as memory,
            pytest.raises(durable.ConfigurationError, match="SQL"),
            engine.begin() as conn,
        ):
            durable.enqueue_in(conn, echo, "x", using=memory)
        with (
            durable.Client(db_url) as client,
            pytest.raises(durable.ConfigurationError),
            other.begin() as conn,
        ):
            durable.enqueue_in(conn, echo, "x", using=client)  # another database
        with (
            pytest.raises(durable.SchemaVersionError, match="durable's tables are missing"),
            other.begin() as conn,
        ):
            durable.enqueue_in(conn, echo, "x")  # no durable tables there
        with pytest.raises(durable.InvalidArgumentError, match="belongs"), engine.begin() as conn:
            durable.enqueue_in(conn, echo, "y", idempotency_key="k1")
            durable.enqueue_in(conn, "test.other.v1", "y", idempotency_key="k1")
        with pytest.raises(durable.InvalidArgumentError, match="Connection"):
            durable.enqueue_in(object(), echo, "x")  # type: ignore[call-overload]
        with pytest.raises(durable.SerializationError), engine.begin() as conn:
            durable.enqueue_in(conn, echo, object())
        assert counts(engine)[1] == 0
    finally:
        engine.dispose()
        other.dispose()


def test_another_database_on_the_same_postgres_server_is_refused(pg_url: str) -> None:
    """Same server, same kind, another database: refused by the identity check (before
    anything is written there)."""
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    other_name = pg_url.rsplit("/", 1)[1] + "_other"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{other_name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{other_name}"'))
    other_url = pg_url.rsplit("/", 1)[0] + "/" + other_name
    other = sa.create_engine(other_url)
    try:
        with (
            durable.Client(pg_url) as client,
            pytest.raises(durable.ConfigurationError, match="another database"),
            other.begin() as conn,
        ):
            durable.enqueue_in(conn, echo, "x", using=client)
    finally:
        other.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{other_name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize(
    "server", [pytest.param("postgres", marks=pytest.mark.postgres), pytest.param("mysql")]
)
def test_concurrent_enqueues_of_one_key_make_one_execution(
    server: str, request: pytest.FixtureRequest
) -> None:
    """Four producers, each in its own transaction with a row of its own, enqueue one key at
    once and hold their transactions open a while. On MariaDB all but one failed with a
    duplicate key, and their transactions (their rows) were lost."""
    url = str(request.getfixturevalue({"postgres": "pg_url", "mysql": "mysql_url"}[server]))
    with durable.Client(url):
        pass
    sync = sa.make_url(url)
    if server == "mysql":
        sync = sync.set(drivername="mysql+pymysql")
    engine = sa.create_engine(sync, pool_size=4)
    META.create_all(engine)
    barrier = threading.Barrier(4)

    def one(n: int) -> str:
        barrier.wait()
        with engine.begin() as conn:
            conn.execute(ORDERS.insert().values(id=f"o-{n}"))
            wid = durable.enqueue_in(conn, echo, "k", idempotency_key="same")
            time.sleep(0.3)  # the others' inserts of the key wait for this commit
            return wid

    async def race() -> list[str]:
        return await asyncio.gather(*(asyncio.to_thread(one, n) for n in range(4)))

    try:
        ids = asyncio.run(race())
        assert len(set(ids)) == 1
        assert counts(engine) == (4, 1, 1)  # every producer's row, one execution, one task
    finally:
        engine.dispose()


def test_the_options_of_client_enqueue_and_the_workflows_signature(db_url: str) -> None:
    """``labels=`` and ``partition_key=`` were taken as the workflow's keyword arguments
    (stored in its input, the execution without them), and a decorated workflow's signature
    was not checked: the execution failed only when a worker ran it."""
    engine = sa.create_engine(app_url(db_url))
    try:
        with durable.Client(db_url) as client:
            with engine.begin() as conn:
                wid = durable.enqueue_in(
                    conn, echo, "o-1", labels={"customer": "c-42"}, partition_key="p1", using=client
                )
            [found] = client.list_workflows_sync(labels={"customer": "c-42"})
            assert (found.id, found.partition_key) == (wid, "p1")
            with engine.begin() as conn:  # a queue given as a durable.Queue, as enqueue takes
                queued = durable.enqueue_in(conn, echo, "o-q", queue=durable.Queue("slow"))
            assert client.get_workflow_sync(queued).queue == "slow"
            assert client.get_workflow_sync(wid).input == {"args": ["o-1"], "kwargs": {}}
            with (
                pytest.raises(durable.InvalidArgumentError, match="cannot take these arguments"),
                engine.begin() as conn,
            ):
                durable.enqueue_in(conn, echo, "o-2", 3, foo=2)
            with (
                pytest.raises(durable.InvalidArgumentError, match="does not debounce"),
                engine.begin() as conn,
            ):
                durable.enqueue_in(conn, echo, "o-3", debounce=5, debounce_key="k")
        assert counts(engine)[1] == 2
    finally:
        engine.dispose()


def test_a_database_of_another_schema_revision_is_refused_without_using(db_url: str) -> None:
    """Without ``using=`` nothing had checked the revision: a database a newer durable had
    migrated was written to, an older one failed on a missing column."""
    engine = sa.create_engine(app_url(db_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE durable_alembic_version SET version_num = '9999_newer'"))
        with pytest.raises(durable.SchemaVersionError, match="newer durable"), engine.begin() as c:
            durable.enqueue_in(c, echo, "o-1")
        with pytest.raises(durable.SchemaVersionError, match="newer durable"), engine.begin() as c:
            durable.send_in(c, "w-1", "go", 1)
        assert counts(engine)[1] == 0
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_search_path_that_finds_durables_tables_is_the_same_database(pg_url: str) -> None:
    """The application's tables in a schema of their own, first in its search_path: refused
    as "another database" (its current_schema() differed), and an error without ``using=``
    named the URL of durable's internal helper (``postgresql+psycopg://enqueue-in/unused``)."""
    admin = sa.create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA app"))
        conn.execute(sa.text("CREATE TABLE app.orders (id text PRIMARY KEY)"))
    admin.dispose()

    def engine(search_path: str) -> sa.Engine:
        return sa.create_engine(pg_url, connect_args={"options": f"-csearch_path={search_path}"})

    both, app_only = engine("app,public"), engine("app")
    try:
        with durable.Client(pg_url) as client:
            with both.begin() as conn:
                conn.execute(sa.text("INSERT INTO orders VALUES ('o-1')"))  # app.orders
                wid = durable.enqueue_in(conn, echo, "o-1", using=client)
            assert client.get_workflow_sync(wid).status == durable.WorkflowStatus.PENDING
            with (
                pytest.raises(durable.ConfigurationError, match="search_path"),
                app_only.begin() as conn,
            ):
                durable.enqueue_in(conn, echo, "o-2", using=client)
            shown = sa.make_url(pg_url).render_as_string(hide_password=True)
            with pytest.raises(durable.SchemaVersionError) as refused, app_only.begin() as conn:
                durable.enqueue_in(conn, echo, "o-3")
            assert "enqueue-in/unused" not in str(refused.value)
            assert "search_path" in str(refused.value)
            assert shown.split("://", 1)[1] in str(refused.value)
    finally:
        both.dispose()
        app_only.dispose()
