"""``@durable.transaction``: a step's writes commit with its record, fenced by the lease; on
every backend kind (memory refuses with a clear error)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.orm import Session

import durable
from durable.models import WORKFLOW_TASK, StepRecord, StepStatus, TaskSpec, WorkflowSnapshot

META = sa.MetaData()
LEDGER = sa.Table(
    "app_ledger",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entry", sa.String(100), nullable=False),
)
CALLS: list[str] = []


def sync_url(url: str) -> str:
    """The application's own (sync) URL for durable's database."""
    return url.replace("sqlite+aiosqlite", "sqlite")


def ledger(url: str) -> list[str]:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(LEDGER.c.entry).order_by(LEDGER.c.id))]
    finally:
        engine.dispose()


def create_ledger(url: str) -> None:
    engine = sa.create_engine(sync_url(url))
    META.create_all(engine)
    engine.dispose()


@durable.transaction(name="test.tx.write")
def write(conn: sa.Connection, entry: str) -> int:
    CALLS.append(entry)
    conn.execute(LEDGER.insert().values(entry=entry))
    return int(conn.execute(sa.select(sa.func.count()).select_from(LEDGER)).scalar_one())


@durable.transaction(name="test.tx.write_async")
async def write_async(conn: AsyncConnection, entry: str) -> int:
    CALLS.append(entry)
    await conn.execute(LEDGER.insert().values(entry=entry))
    return int((await conn.execute(sa.select(sa.func.count()).select_from(LEDGER))).scalar_one())


@durable.transaction(name="test.tx.flaky", max_attempts=3, initial_delay=0.01)
def flaky(conn: sa.Connection, entry: str) -> str:
    CALLS.append(entry)
    conn.execute(LEDGER.insert().values(entry=f"{entry}#{len(CALLS)}"))
    if len(CALLS) < 3:
        raise RuntimeError("not yet")
    return entry


@durable.workflow(name="test.tx.sync_flow")
def sync_flow(entry: str) -> list[int]:
    return [write(entry), write(entry + "-2")]


@durable.workflow(name="test.tx.async_flow")
async def async_flow(entry: str, use_async: bool) -> list[int]:
    first = await write.aio(entry)
    second = await (write_async(entry + "-2") if use_async else write.aio(entry + "-2"))
    return [first, second]


@durable.transaction(name="test.tx.orm")
def orm_write(conn: sa.Connection, entry: str) -> int:
    with Session(bind=conn) as session:  # the ORM, in the step's transaction: flush, no commit
        session.execute(LEDGER.insert().values(entry=entry))
        session.flush()
        return int(session.scalar(sa.select(sa.func.count()).select_from(LEDGER)) or 0)


@durable.workflow(name="test.tx.orm_flow")
def orm_flow(entry: str) -> int:
    return orm_write(entry)


@durable.workflow(name="test.tx.flaky_flow")
def flaky_flow(entry: str) -> str:
    return flaky(entry)


@durable.transaction(name="test.tx.commits_itself", max_attempts=1)
def commits_itself(conn: sa.Connection, entry: str) -> str:
    conn.execute(LEDGER.insert().values(entry=entry))
    conn.commit()  # misuse: durable commits the body's writes with the step's record
    return entry


@durable.transaction(name="test.tx.commits_itself_async", max_attempts=1)
async def commits_itself_async(conn: AsyncConnection, entry: str) -> str:
    await conn.execute(LEDGER.insert().values(entry=entry))
    await conn.rollback()
    return entry


@durable.transaction(name="test.tx.commits_then_goes_on", max_attempts=3, initial_delay=0.01)
def commits_then_goes_on(conn: sa.Connection, entry: str) -> str:
    CALLS.append(entry)
    conn.execute(LEDGER.insert().values(entry=entry))
    conn.commit()
    conn.execute(sa.select(1))  # SQLAlchemy refuses the closed transaction's next statement
    return entry


@durable.transaction(name="test.tx.commits_then_goes_on_async", max_attempts=3, initial_delay=0.01)
async def commits_then_goes_on_async(conn: AsyncConnection, entry: str) -> str:
    CALLS.append(entry)
    await conn.execute(LEDGER.insert().values(entry=entry))
    await conn.commit()
    await conn.execute(sa.select(1))
    return entry


@durable.workflow(name="test.tx.commits_flow")
async def commits_flow(entry: str, use_async: bool, go_on: bool = False) -> str:
    """The misusing step (then using the connection again, with ``go_on``), or what durable
    said of it."""
    try:
        if go_on:
            if use_async:
                return await commits_then_goes_on_async(entry)
            return await commits_then_goes_on.aio(entry)
        if use_async:
            return await commits_itself_async(entry)
        return await commits_itself.aio(entry)
    except durable.ConfigurationError as exc:
        return str(exc)


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


def test_sync_workflow_writes_commit_with_the_steps(backend_url: str) -> None:
    rt = durable.Runtime(durable.connect(backend_url), recover=False)
    with rt:
        if backend_url == "memory://":
            with pytest.raises(durable.ConfigurationError, match="supports_transactions"):
                rt.run_sync(sync_flow, "a", workflow_id="w1")
            return
        create_ledger(backend_url)
        assert rt.run_sync(sync_flow, "a", workflow_id="w1") == [1, 2]
        # a second run of the same id replays: the bodies do not run again
        assert rt.run_sync(sync_flow, "a", workflow_id="w1") == [1, 2]
        steps = rt.client.list_steps_sync("w1")
    assert CALLS == ["a", "a-2"]
    assert ledger(backend_url) == ["a", "a-2"]
    assert [s.output for s in steps] == [1, 2]


async def test_async_workflow_with_sync_and_async_bodies(backend_url: str) -> None:
    if backend_url == "memory://":
        pytest.skip("refused: see the sync test")
    create_ledger(backend_url)
    use_async = not backend_url.startswith("sqlite:")
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        assert await rt.run(async_flow, "b", use_async, workflow_id="w2") == [1, 2]
    assert ledger(backend_url) == ["b", "b-2"]


async def test_a_body_that_ends_its_transaction_is_refused(backend_url: str) -> None:
    """A body that committed made PostgreSQL report the step done with no record (the record
    went into a transaction nothing committed, so a replay ran the body again), MariaDB fail
    on a closed transaction after the write committed; now every backend says so."""
    if backend_url == "memory://":
        pytest.skip("refused: see the sync test")
    create_ledger(backend_url)
    use_async = not backend_url.startswith("sqlite:")
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        said = await rt.run(commits_flow, "c", use_async, workflow_id="w-commits")
    assert "ended its transaction" in said


async def test_a_body_that_ends_its_transaction_and_goes_on_is_not_retried(
    backend_url: str,
) -> None:
    """The common shape of the misuse: commit, then another statement, which SQLAlchemy
    refuses. Retried as the body's failure, each attempt committed its row again; it is the
    same refusal as above, once."""
    if backend_url == "memory://":
        pytest.skip("refused: see the sync test")
    create_ledger(backend_url)
    use_async = not backend_url.startswith("sqlite:")
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        said = await rt.run(commits_flow, "g", use_async, True, workflow_id="w-goes-on")
    assert "ended its transaction" in said
    assert CALLS == ["g"] and ledger(backend_url) == ["g"]


@durable.workflow(
    name="test.tx.commits_uncaught", retry=durable.RetryPolicy(max_attempts=3, initial_delay=0.01)
)
async def commits_uncaught(entry: str, use_async: bool) -> str:
    if use_async:
        return await commits_itself_async(entry)
    return await commits_itself.aio(entry)


async def test_a_body_that_ends_its_transaction_fails_its_workflow_at_once(
    backend_url: str,
) -> None:
    """The refusal is not retried by the workflow either: with the workflow's default three
    attempts, the body ran (and committed its row) three times before it was dead-lettered."""
    if backend_url == "memory://":
        pytest.skip("refused: see the sync test")
    create_ledger(backend_url)
    use_async = not backend_url.startswith("sqlite:")
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        with pytest.raises(durable.TransactionEndedError, match="ended its transaction"):
            await rt.run(commits_uncaught, "u", use_async, workflow_id="w-uncaught")
        info = await rt.client.get_workflow("w-uncaught")
    assert (info.status, info.attempts) == (durable.WorkflowStatus.FAILED, 1)
    assert len(ledger(backend_url)) <= 1  # the rollback's variant wrote none


@durable.transaction(name="test.tx.swallows", max_attempts=2, initial_delay=0.01)
def swallows(conn: sa.Connection, entry: str) -> str:
    CALLS.append(entry)
    conn.execute(LEDGER.insert().values(entry=entry))
    try:
        conn.execute(LEDGER.insert().values(id=-1, entry=entry))  # the second one clashes
        conn.execute(LEDGER.insert().values(id=-1, entry=entry))
    except sa.exc.IntegrityError:
        return "swallowed"  # without a savepoint: PostgreSQL aborted the transaction
    return "not reached"


@durable.workflow(name="test.tx.swallows_flow")
async def swallows_flow(entry: str) -> str:
    try:
        return await swallows.aio(entry)
    except durable.ConfigurationError as exc:
        return str(exc)


async def test_a_body_that_swallows_an_error_postgres_aborted_is_told_to_use_a_savepoint(
    pg_url: str,
) -> None:
    """The record then failed on the aborted transaction, which the worker logged as the
    database interrupting the attempt, and nothing told the user why."""
    create_ledger(pg_url)
    async with durable.Runtime(durable.connect(pg_url), recover=False) as rt:
        said = await rt.run(swallows_flow, "s", workflow_id="w-swallows")
    assert "conn.begin_nested()" in said and "aborted" in said
    assert CALLS[:1] == ["s"]
    assert ledger(pg_url) == []


async def test_an_async_body_on_a_sync_driver_is_refused_clearly(sqlite_url: str) -> None:
    create_ledger(sqlite_url)
    async with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        with pytest.raises(durable.ConfigurationError, match="async engine"):
            await rt.run(async_flow, "c", True, workflow_id="w3")
    assert ledger(sqlite_url) == ["c"]


def test_retries_roll_back_the_failed_attempts(sqlite_url: str) -> None:
    create_ledger(sqlite_url)
    with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        assert rt.run_sync(flaky_flow, "f", workflow_id="w4") == "f"
        [step] = rt.client.list_steps_sync("w4")
    assert CALLS == ["f", "f", "f"]
    assert ledger(sqlite_url) == ["f#3"]  # the two failed attempts left nothing
    assert step.attempts == 3


APP: dict[str, Any] = {}


@durable.transaction(name="test.tx.named", engine=None)
def named_write(conn: sa.Connection, entry: str) -> str:
    CALLS.append(entry)
    conn.execute(LEDGER.insert().values(entry=entry))
    return entry


@durable.transaction(name="test.tx.named_async")
async def named_write_async(conn: AsyncConnection, entry: str) -> str:
    CALLS.append(entry)
    await conn.execute(LEDGER.insert().values(entry=entry))
    return entry


@durable.workflow(name="test.tx.named_flow")
async def named_flow(entry: str) -> list[str]:
    return [await named_write.aio(entry), await named_write_async(entry + "-async")]


async def test_an_engine_the_user_names_must_be_durables_database(
    backend_url: str, tmp_path: Path
) -> None:
    if not backend_url.startswith(("sqlite:", "postgresql")):
        pytest.skip("a SQLite file through the stdlib driver, and PostgreSQL, are enough here")
    create_ledger(backend_url)
    same = backend_url.replace("sqlite:", "sqlite+aiosqlite:")
    app_sync, app_async = sa.create_engine(sync_url(backend_url)), create_async_engine(same)
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    META.create_all(other)
    named_write.engine, named_write_async.engine = app_sync, app_async
    try:
        async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
            assert await rt.run(named_flow, "n", workflow_id="w6") == ["n", "n-async"]
            named_write.engine = other
            with pytest.raises(durable.ConfigurationError, match="database"):
                await rt.run(named_flow, "x", workflow_id="w7")
    finally:
        named_write.engine = named_write_async.engine = None
        app_sync.dispose()
        await app_async.dispose()
        other.dispose()
    assert CALLS == ["n", "n-async"]  # the refused engine's body never ran
    assert ledger(backend_url) == ["n", "n-async"]


@durable.workflow(name="test.tx.named_sync_flow")
def named_sync_flow(entry: str) -> str:
    return named_write(entry)


def test_a_named_engine_from_a_sync_workflow(sqlite_url: str, tmp_path: Path) -> None:
    create_ledger(sqlite_url)
    app, other = sa.create_engine(sqlite_url), sa.create_engine(f"sqlite:///{tmp_path / 'o.db'}")
    named_write.engine = app
    try:
        with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
            assert rt.run_sync(named_sync_flow, "s", workflow_id="w8") == "s"
            named_write.engine = other
            with pytest.raises(durable.ConfigurationError, match="another database"):
                rt.run_sync(named_sync_flow, "t", workflow_id="w9")
    finally:
        named_write.engine = None
        app.dispose()
        other.dispose()
    assert (CALLS, ledger(sqlite_url)) == (["s"], ["s"])


def test_an_orm_session_on_the_steps_connection(sqlite_url: str) -> None:
    create_ledger(sqlite_url)
    with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        assert rt.run_sync(orm_flow, "orm", workflow_id="w5") == 1
    assert ledger(sqlite_url) == ["orm"]


async def test_map_refuses_a_transactional_step() -> None:
    with pytest.raises(durable.InvalidArgumentError, match="transactional"):
        await durable.map(write, ["a"])


def test_called_outside_a_workflow_says_how_to_test_the_body(sqlite_url: str) -> None:
    with pytest.raises(durable.DurableError, match=r"write\.fn\(connection"):
        write("x")
    create_ledger(sqlite_url)
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        assert write.fn(conn, "plain") == 1
    engine.dispose()


async def _claimed(
    backend: durable.PersistentBackend, worker: str, ttl: float = 30
) -> tuple[str, datetime]:
    wid = f"wf-{uuid.uuid4().hex[:8]}"
    snapshot = WorkflowSnapshot(id=wid, name="test.tx.raw", input={"args": [], "kwargs": {}})
    await backend.create_workflow(
        snapshot, task=TaskSpec(instance_id=wid, name="test.tx.raw", queue="default")
    )
    claim = await backend.claim_task(wid, WORKFLOW_TASK, worker, timedelta(seconds=ttl))
    assert claim is not None
    await backend.begin_execution(wid, worker)
    return wid, claim.expires_at


def _record(value: Any) -> StepRecord:
    return StepRecord(position=0, name="raw", status=StepStatus.SUCCEEDED, output=value)


async def test_a_lost_lease_rolls_the_body_back(backend_url: str) -> None:
    if backend_url == "memory://":
        backend = durable.connect(backend_url)
        assert not backend.supports_transactions
        with pytest.raises(durable.ConfigurationError, match="InMemoryBackend"):
            await backend.run_transactional_step("x", lambda c: None, _record, worker_id="w")
        return
    create_ledger(backend_url)
    async with durable.connect(backend_url) as backend:
        assert backend.supports_transactions
        expiring, expires_at = await _claimed(backend, "worker-a", ttl=0.5)
        # the lease runs out, and nobody takes the workflow over
        await asyncio.sleep((expires_at - await backend.now()).total_seconds() + 0.1)
        assert await backend.now() > expires_at

        def late(conn: sa.Connection) -> str:
            conn.execute(LEDGER.insert().values(entry="expired"))
            return "late"

        with pytest.raises(durable.ClaimLostError):
            await backend.run_transactional_step(expiring, late, _record, worker_id="worker-a")
        assert ledger(backend_url) == []
        wid, _ = await _claimed(backend, "worker-a")

        def body(conn: sa.Connection) -> str:
            conn.execute(LEDGER.insert().values(entry="lost"))
            return "done"

        with pytest.raises(durable.ClaimLostError):
            await backend.run_transactional_step(wid, body, _record, worker_id="worker-b")
        assert ledger(backend_url) == []
        made = await backend.run_transactional_step(wid, body, _record, worker_id="worker-a")
        assert made.output == "done"
        assert ledger(backend_url) == ["lost"]
        # recorded already: a second commit of the same position is refused, rolled back
        with pytest.raises(durable.StepAlreadyRecordedError):
            await backend.run_transactional_step(wid, body, _record, worker_id="worker-a")
        assert ledger(backend_url) == ["lost"]
        snapshot = await backend.load_snapshot(wid)
        assert [s.output for s in snapshot.steps] == ["done"]
