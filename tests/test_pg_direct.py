"""The PostgreSQL hot path: step records run as prepared statements straight on psycopg
connections opened through the engine's pool (durable/backends/sql/direct.py).

What must hold: the path is really taken; a connection the server drops is discarded, the error
is durable's, nothing is written, and the next record works; a record cancelled mid-statement
leaks no connection; closing the backend closes every connection it opened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from support import claimed_backend, pg_conninfo, terminate_other_sessions

import durable
from durable.backends import SQLAlchemyBackend
from durable.errors import BackendUnavailableError, ClaimLostError
from durable.models import WORKFLOW_TASK, StepRecord, TaskSpec, WorkflowSnapshot

pytestmark = pytest.mark.postgres

WORKER = "w1"


def _step(position: int) -> StepRecord:
    return StepRecord(
        position=position,
        name="s",
        output={"position": position},
        executor_id=WORKER,
        started_at=datetime.now(UTC),
    )


@pytest.fixture
async def claimed(pg_url: str) -> AsyncIterator[SQLAlchemyBackend]:
    """A started backend holding the claim on workflow "wf"."""
    async with claimed_backend(pg_url, WORKER) as backend:
        yield backend


def _engine_statements(backend: SQLAlchemyBackend) -> tuple[list[str], Any]:
    seen: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = backend.engine
    sync_engine = getattr(engine, "sync_engine", engine)
    sa.event.listen(sync_engine, "before_cursor_execute", listener)
    return seen, lambda: sa.event.remove(sync_engine, "before_cursor_execute", listener)


async def test_step_records_bypass_the_engine_and_leak_nothing(
    claimed: SQLAlchemyBackend,
) -> None:
    seen, stop = _engine_statements(claimed)
    try:
        for position in range(20):
            await claimed.record_step("wf", _step(position), worker_id=WORKER)
    finally:
        stop()
    assert not [s for s in seen if "durable_steps" in s]  # none went through SQLAlchemy
    steps = await claimed.list_steps("wf")
    assert [s.output for s in steps] == [{"position": p} for p in range(20)]
    assert claimed.checked_out_connections() == 0


async def test_concurrent_records_share_the_borrowed_connections(
    claimed: SQLAlchemyBackend,
) -> None:
    await asyncio.gather(
        *(claimed.record_step("wf", _step(p), worker_id=WORKER) for p in range(60))
    )
    assert [s.position for s in await claimed.list_steps("wf")] == list(range(60))
    assert claimed.checked_out_connections() == 0


async def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(
    claimed: SQLAlchemyBackend, pg_url: str
) -> None:
    """The server ended the idle connection (idle_session_timeout, a restart that is over,
    pg_terminate_backend): its goodbye is found before anything is sent on it, and a new
    connection records the step; the caller sees no error."""
    await claimed.record_step("wf", _step(0), worker_id=WORKER)  # borrows a connection
    await terminate_other_sessions(pg_url)
    await claimed.record_step("wf", _step(1), worker_id=WORKER)
    assert claimed.checked_out_connections() == 0
    assert await _positions(pg_url) == [0, 1]


async def test_a_connection_dropped_mid_statement_is_unavailable_and_discarded(
    claimed: SQLAlchemyBackend, pg_url: str
) -> None:
    await claimed.record_step("wf", _step(0), worker_id=WORKER)

    locker = await psycopg.AsyncConnection.connect(pg_conninfo(pg_url))

    async def terminate_soon() -> None:  # the backend's sessions, not the locker's
        await asyncio.sleep(0.3)
        async with await psycopg.AsyncConnection.connect(
            pg_conninfo(pg_url), autocommit=True
        ) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid NOT IN (pg_backend_pid(), %s)",
                (locker.info.backend_pid,),
            )

    try:
        # the task row locked: the record waits on it, then its session is terminated
        await locker.execute("SELECT 1 FROM durable_tasks WHERE instance_id = 'wf' FOR UPDATE")
        killer = asyncio.create_task(terminate_soon())
        with pytest.raises(BackendUnavailableError, match="record step 1"):
            await claimed.record_step("wf", _step(1), worker_id=WORKER)
        await killer
    finally:
        await locker.close()
    assert claimed.checked_out_connections() == 0
    assert await _positions(pg_url) == [0]
    await claimed.record_step("wf", _step(1), worker_id=WORKER)
    assert await _positions(pg_url) == [0, 1]


async def _positions(pg_url: str) -> list[int]:
    """The stored step positions of "wf", read on a new connection (the backend's pooled ones
    were terminated too, and SQLAlchemy's pool does not ping them)."""
    async with await psycopg.AsyncConnection.connect(pg_conninfo(pg_url)) as conn:
        cur = await conn.execute(
            "SELECT position FROM durable_steps WHERE workflow_id = 'wf' ORDER BY position"
        )
        return [row[0] for row in await cur.fetchall()]


async def test_a_record_cancelled_mid_statement_leaks_no_connection(
    claimed: SQLAlchemyBackend, pg_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_conninfo(pg_url)) as locker:
        # the record locks the claim row FOR SHARE; holding it FOR UPDATE makes it wait
        await locker.execute("SELECT 1 FROM durable_tasks WHERE instance_id = 'wf' FOR UPDATE")
        record = asyncio.create_task(claimed.record_step("wf", _step(0), worker_id=WORKER))
        await asyncio.sleep(0.3)
        assert not record.done()
        record.cancel()
        with pytest.raises(asyncio.CancelledError):
            await record
        await locker.rollback()
    assert claimed.checked_out_connections() == 0
    await claimed.record_step("wf", _step(1), worker_id=WORKER)
    assert 1 in [s.position for s in await claimed.list_steps("wf")]


async def test_a_refused_record_explains_itself(claimed: SQLAlchemyBackend) -> None:
    with pytest.raises(ClaimLostError) as info:
        await claimed.record_step("wf", _step(0), worker_id="intruder")
    assert info.value.holder == WORKER
    assert await claimed.list_steps("wf") == []
    assert claimed.checked_out_connections() == 0


async def test_close_closes_the_direct_connections(pg_url: str) -> None:
    before = await _sessions(pg_url, settle_at=1)  # the pytest-postgresql fixture's own
    backend = durable.connect(pg_url, engine_options={"pool_size": 3, "max_overflow": 0})
    assert isinstance(backend, SQLAlchemyBackend)
    await backend.start()
    await backend.create_workflow(
        WorkflowSnapshot(id="wf", name="wf"), task=TaskSpec(instance_id="wf", name="wf")
    )
    await backend.claim_task("wf", WORKFLOW_TASK, WORKER, timedelta(minutes=5))
    # more concurrent records than the pool holds: they queue, and transactions still get one
    await asyncio.gather(
        *(backend.record_step("wf", _step(p), worker_id=WORKER) for p in range(30)),
        *(backend.get_workflow("wf") for _ in range(5)),
        *(
            asyncio.to_thread(backend.record_step_blocking, "wf", _step(p), worker_id=WORKER)
            for p in range(30, 40)
        ),
    )
    assert backend.checked_out_connections() == 0
    assert len(await backend.list_steps("wf")) == 40
    await backend.close()
    assert await _sessions(pg_url, settle_at=before) == before


async def _sessions(pg_url: str, settle_at: int) -> int:
    """Other sessions on the test database, once those that were closed have gone (a server
    process leaves pg_stat_activity a moment after its client closed the connection)."""
    async with await psycopg.AsyncConnection.connect(pg_conninfo(pg_url), autocommit=True) as admin:
        for _ in range(100):
            cur = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (sa.make_url(pg_url).database,),
            )
            row = await cur.fetchone()
            assert row is not None
            if row[0] <= settle_at:
                break
            await asyncio.sleep(0.05)
    return int(row[0])


# -- sync workflows: their threads record on sync connections of the backend's own -----------

registry = durable.Registry()


@durable.step(name="tests.pg_direct.double")
def double(x: int) -> int:
    return 2 * x


@durable.step(name="tests.pg_direct.steal")
def steal(conninfo: str) -> str:
    """Another executor takes the workflow's claim over while this step runs."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            "UPDATE durable_tasks SET claimed_by = 'exec-B',"
            " claim_expires_at = now() + interval '1 hour'"
        )
    return "stolen"


@durable.workflow(name="tests.pg_direct.chain.v1", registry=registry)
def chain(x: int) -> int:
    return double(double(double(x)))


@durable.workflow(name="tests.pg_direct.lose.v1", registry=registry)
def lose(conninfo: str) -> str:
    double(1)
    steal(conninfo)
    return "unreachable"  # the record of steal is refused


async def test_sync_workflows_record_from_their_thread(pg_url: str) -> None:
    backend = durable.connect(pg_url)
    assert isinstance(backend, SQLAlchemyBackend) and backend.records_steps_blocking
    seen, stop = _engine_statements(backend)
    try:
        async with durable.Runtime(backend, recover=False, registry=registry) as rt:
            assert await rt.run(chain, 1, workflow_id="c") == 8
            assert [s.output for s in await rt.list_steps("c")] == [2, 4, 8]
    finally:
        stop()
    assert not [s for s in seen if "durable_steps" in s and s.startswith("INSERT")]


async def test_a_sync_step_that_lost_its_claim_records_nothing(pg_url: str) -> None:
    async with durable.Runtime(
        durable.connect(pg_url), executor_id="exec-A", recover=False, registry=registry
    ) as rt:
        with pytest.raises(ClaimLostError) as lost:
            await rt.run(lose, pg_conninfo(pg_url), workflow_id="l")
        assert (lost.value.worker_id, lost.value.holder) == ("exec-A", "exec-B")
        steps = await rt.list_steps("l")
        assert [(s.name, s.output) for s in steps] == [("tests.pg_direct.double", 2)]


async def test_a_sync_connection_the_server_closed_while_idle_is_replaced_too(
    claimed: SQLAlchemyBackend, pg_url: str
) -> None:
    record = claimed.record_step_blocking
    await asyncio.to_thread(record, "wf", _step(0), worker_id=WORKER)
    await terminate_other_sessions(pg_url)
    await asyncio.to_thread(record, "wf", _step(1), worker_id=WORKER)
    assert await _positions(pg_url) == [0, 1]


async def test_an_engine_durable_did_not_create_records_on_the_loop(pg_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(sa.make_url(pg_url).set(drivername="postgresql+psycopg"))
    backend = SQLAlchemyBackend(engine)
    assert not backend.records_steps_blocking  # its connect arguments are not known to durable
    try:
        async with durable.Runtime(backend, recover=False, registry=registry) as rt:
            assert await rt.run(chain, 2, workflow_id="e") == 16
    finally:
        await engine.dispose()


async def test_begin_and_finish_are_single_direct_statements(claimed: SQLAlchemyBackend) -> None:
    """begin_execution returns the history in one statement (an UPDATE in a CTE joined with the
    steps); finish_workflow removes the task and writes the outcome in one statement."""
    for position in (2, 0, 1):
        await claimed.record_step("wf", _step(position), worker_id=WORKER)
    seen, stop = _engine_statements(claimed)
    try:
        snapshot = await claimed.begin_execution("wf", WORKER)
        again = await claimed.begin_execution("wf", WORKER)  # re-entrant: resumes the attempt
        info = await claimed.finish_workflow(
            "wf", worker_id=WORKER, status=durable.WorkflowStatus.SUCCEEDED, output={"ok": 1}
        )
    finally:
        stop()
    assert not [s for s in seen if "durable_workflows" in s or "durable_tasks" in s]
    assert [s.position for s in snapshot.steps] == [0, 1, 2]
    assert [s.output for s in snapshot.steps] == [{"position": p} for p in range(3)]
    assert all(s.started_at is not None and s.started_at.tzinfo is UTC for s in snapshot.steps)
    assert (snapshot.status, snapshot.executor_id, snapshot.attempts) == (
        durable.WorkflowStatus.RUNNING,
        WORKER,
        1,
    )
    assert (again.attempts, again.interruptions) == (1, 1)
    assert snapshot.started_at == again.started_at
    assert (info.status, info.output, info.version) == (
        durable.WorkflowStatus.SUCCEEDED,
        {"ok": 1},
        again.version + 1,
    )
    assert info.completed_at is not None and info.completed_at.tzinfo is UTC
    with pytest.raises(ClaimLostError):  # the task is gone with the finish
        await claimed.finish_workflow("wf", worker_id=WORKER, status=durable.WorkflowStatus.FAILED)
    assert (await claimed.get_workflow("wf")).status is durable.WorkflowStatus.SUCCEEDED


async def test_begin_refusals_explain_themselves(claimed: SQLAlchemyBackend) -> None:
    with pytest.raises(durable.WorkflowNotFoundError):
        await claimed.begin_execution("nope", WORKER)
    with pytest.raises(ClaimLostError) as lost:
        await claimed.begin_execution("wf", "intruder")
    assert lost.value.holder == WORKER
    assert (await claimed.get_workflow("wf")).attempts == 0  # nothing written


async def test_claims_are_direct_and_one_statement_serves_every_list_length(
    pg_url: str,
) -> None:
    backend = durable.connect(pg_url)
    assert isinstance(backend, SQLAlchemyBackend)
    await backend.start()
    try:
        for i, (name, queue, priority) in enumerate(
            [("a", "q1", 5), ("b", "q1", 1), ("c", "q2", 3), ("d", "q3", 0)]
        ):
            await backend.create_workflow(
                WorkflowSnapshot(id=f"wf-{i}", name=name, queue=queue),
                task=TaskSpec(instance_id=f"wf-{i}", name=name, queue=queue, priority=priority),
            )
        seen, stop = _engine_statements(backend)
        try:
            first = await backend.claim_available_tasks(
                WORKER, 10, timedelta(minutes=1), names=["a", "b", "c"], queues=["q1"]
            )
            second = await backend.claim_available_tasks(
                WORKER, 10, timedelta(minutes=1), names=["a", "b", "c", "d"], include_own=False
            )
        finally:
            stop()
        assert not [s for s in seen if "durable_tasks" in s]
        assert [c.name for c in first] == ["b", "a"]  # by priority, within the filters
        assert [c.name for c in second] == ["d", "c"]  # the rest; lists of any length
        assert all(c.worker_id == WORKER and c.expires_at.tzinfo is UTC for c in first + second)
    finally:
        await backend.close()


async def test_a_lease_extension_is_one_autocommitted_statement(
    claimed: SQLAlchemyBackend,
) -> None:
    """A heartbeat holds the task's row lock only while the server runs its statement: in a
    transaction, a process frozen between its UPDATE and its COMMIT kept the task locked, and
    no other worker could take it over after the lease ran out (they skip locked tasks)."""
    before = (await claimed.get_task("wf", WORKFLOW_TASK)).claim_expires_at
    seen, stop = _engine_statements(claimed)
    try:
        claim = await claimed.extend_task_claim("wf", WORKFLOW_TASK, WORKER, timedelta(hours=1))
    finally:
        stop()
    assert not [s for s in seen if "durable_tasks" in s]  # none went through SQLAlchemy
    assert (claim.worker_id, claim.instance_id, claim.task_id) == (WORKER, "wf", WORKFLOW_TASK)
    assert before is not None and claim.expires_at > before + timedelta(minutes=30)
    assert (await claimed.get_task("wf", WORKFLOW_TASK)).claim_expires_at == claim.expires_at
    # refusals still say why (read in a transaction of their own)
    with pytest.raises(ClaimLostError) as lost:
        await claimed.extend_task_claim("wf", WORKFLOW_TASK, "intruder", timedelta(minutes=1))
    assert lost.value.holder == WORKER
    with pytest.raises(durable.TaskNotFoundError):
        await claimed.extend_task_claim("nope", WORKFLOW_TASK, WORKER, timedelta(minutes=1))
    assert (await claimed.get_task("wf", WORKFLOW_TASK)).claim_expires_at == claim.expires_at


async def test_typed_arrays_round_trip_in_binary(pg_url: str) -> None:
    """The batched statements' arrays (durable's own binary dumper, one dimension, each element
    through psycopg's dumper for its type) arrive as the values given: nulls, empty arrays,
    non-ASCII text, the largest and smallest bigint, times in other zones."""
    from durable.backends.sql.direct import _ARRAYS

    arrays = {known.__name__: array for known, array in _ARRAYS}
    east = timezone(timedelta(hours=5, minutes=30))
    cases: list[tuple[str, list[Any]]] = [
        ("String", ["a", None, "naïve ✓", "", '{"x": NULL}']),
        ("Integer", [0, None, 2**63 - 1, -(2**63), 7]),
        ("Boolean", [True, None, False]),
        ("DateTime", [datetime(2026, 12, 4, 20, 0, tzinfo=east), None]),
        ("String", []),
        ("Integer", [None, None]),
    ]
    cast = {
        "String": "text[]",
        "Integer": "bigint[]",
        "Boolean": "bool[]",
        "DateTime": "timestamptz[]",
    }
    async with await psycopg.AsyncConnection.connect(pg_conninfo(pg_url), autocommit=True) as conn:
        for kind, values in cases:
            sent = arrays[kind](values)
            cursor = await conn.execute(
                f"SELECT %b::{cast[kind]}, cardinality(%b::{cast[kind]}),"
                f" array_lower(%b::{cast[kind]}, 1), (%b::{cast[kind]})[1]",
                [sent] * 4,
            )
            row = await cursor.fetchone()
            assert row is not None
            assert row[:2] == (values, len(values)), kind
            assert row[2:] == ((1, values[0]) if values else (None, None)), kind
        cursor = await conn.execute(
            "SELECT * FROM unnest(%b::text[], %b::integer[]) ORDER BY 2",
            [arrays["String"](["x", "y"]), arrays["Integer"]([1, 2])],
        )
        assert await cursor.fetchall() == [("x", 1), ("y", 2)]


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "past-the-cap"])
async def test_direct_statements_give_what_the_engine_gives(
    pg_url: str, prepared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct path runs statements below psycopg's cursor (its own numbered query, a
    prepared statement per parameter types): a name used twice is one parameter, an escaped
    ``%`` stays a ``%``, an integer too large for the type first sent and a NULL where a value
    was sent get statements of their own, arrays go in binary, and rows come back as the engine
    returns them. Past the cap on prepared statements, the same statements run unprepared."""
    from durable.backends.sql import direct

    if not prepared:
        monkeypatch.setattr(direct, "MAX_PREPARED", 0)
    n = sa.bindparam("n", type_=sa.BigInteger())
    label = sa.bindparam("label", type_=sa.String())
    items = sa.bindparam("items", type_=sa.ARRAY(sa.Integer()))
    at = sa.bindparam("at", type_=sa.DateTime(timezone=True))
    stmt = sa.select(
        (n + n).label("twice"),
        sa.func.concat(label, sa.literal_column("'%'")).label("text"),
        sa.func.cardinality(items).label("count"),
        at.label("at"),
        sa.literal_column("'a%b' LIKE 'a%%'").label("like"),
    )
    east = timezone(timedelta(hours=5, minutes=30))
    cases = [
        {"n": 1, "label": "x", "items": [1, 2, 3], "at": datetime(2026, 12, 7, tzinfo=east)},
        {"n": 2**40, "label": None, "items": [], "at": None},
        {"n": 3, "label": "naïve", "items": [None, 5], "at": datetime(2026, 1, 1, tzinfo=UTC)},
        {"n": -(2**62), "label": "", "items": [2**31 - 1], "at": None},
    ]
    async with SQLAlchemyBackend(pg_url) as backend:
        engine = backend.engine
        runner = direct.DirectStatements(engine)
        compiled = direct.CompiledStatement(stmt, engine.dialect)
        try:
            for values in cases * 2:  # the second time, on the statements prepared the first
                done = await runner.execute(compiled, values)
                assert done is not None
                async with engine.connect() as conn:
                    expected = (await conn.execute(stmt, values)).mappings().one()
                assert done.rowcount == 1
                assert done.rows == [dict(expected)]
                assert done.rows[0]["twice"] == 2 * values["n"]
                assert done.rows[0]["like"] is True
            # a statement the server refuses: the driver's error as SQLAlchemy raises it, the
            # connection discarded, and the next statement runs
            with pytest.raises(sa.exc.DBAPIError) as refused:
                await runner.execute(
                    direct.CompiledStatement(
                        sa.select(sa.cast(label, sa.Integer).label("x")), engine.dialect
                    ),
                    {"label": "not a number"},
                )
            assert isinstance(refused.value.orig, psycopg.errors.InvalidTextRepresentation)
            done = await runner.execute(compiled, cases[0])
            assert done is not None and done.rows[0]["twice"] == 2
        finally:
            await runner.close()
