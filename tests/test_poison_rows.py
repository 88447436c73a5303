"""Stored rows that cannot be read: each fails its own execution once, with an error that says
where it is, and leaves every other execution alone.

Rows are corrupted from outside durable: raw SQL UPDATEs on SQLite files and PostgreSQL, the
stored records themselves for the in-memory backend. Before these fixes a corrupt step output or
an unknown status kept a workflow running forever (re-claimed every lease period), reads raised
bare ``ValueError``/``JSONDecodeError``, one bad row broke a whole listing, and a claim with a
holder but no expiry was never claimable again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import durable
from durable.backends.memory import InMemoryBackend
from durable.backends.rows import CORRUPT_ROW
from durable.backends.sql.dialects import normalize_url
from durable.models import WORKFLOW_TASK, StepRecord, StepStatus, WorkflowStatus

REG = durable.Registry()
WAIT = 60.0  # a safety net: the tests wait on outcomes, never on time
#: Leases short enough that a re-claiming loop shows within WAIT (at 1 s, a loaded machine's
#: pause of the process outlasted one mid-write, and the outcome was refused)
TTL = 5.0
#: The lease of the set-up's own claims, handed back at once: long, so that a machine that
#: stalls between the claim and the writes under it does not see them refused.
SETUP_TTL = timedelta(minutes=5)


@durable.step(name="poison.add")
async def add(x: int) -> int:
    return x + 1


REG.register_step(add)  # so that a worker of this registry runs it when it is handed out


@durable.workflow(name="poison.two_steps.v1", registry=REG)
async def two_steps(x: int) -> int:
    return await add(await add(x))


# -- corrupting stored rows from outside ---------------------------------------------------------


def raw_update(url: str, sql: str, **params: Any) -> None:
    """Run one UPDATE on the database behind ``url``, bypassing durable."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        parsed = parsed.set(drivername="sqlite")
    if parsed.get_backend_name() == "mysql":  # PyMySQL: the sync driver aiomysql is built on
        parsed = parsed.set(drivername="mysql+pymysql").update_query_dict({"charset": "utf8mb4"})
    engine = sa.create_engine(parsed)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text(sql), params).rowcount == 1, sql
    finally:
        engine.dispose()


def corrupt_workflow(url: str, backend: Any, workflow_id: str, column: str, value: Any) -> None:
    if isinstance(backend, InMemoryBackend):
        stored = backend._workflows[workflow_id]
        backend._workflows[workflow_id] = dataclasses.replace(stored, **{column: value})
        return
    raw_update(
        url, f"UPDATE durable_workflows SET {column} = :v WHERE id = :id", v=value, id=workflow_id
    )


def corrupt_step(
    url: str, backend: Any, workflow_id: str, position: int, column: str, value: Any
) -> None:
    if isinstance(backend, InMemoryBackend):
        stored = backend._steps[workflow_id][position]
        backend._steps[workflow_id][position] = dataclasses.replace(stored, **{column: value})
        return
    raw_update(
        url,
        f"UPDATE durable_steps SET {column} = :v WHERE workflow_id = :id AND position = :p",
        v=value,
        id=workflow_id,
        p=position,
    )


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
async def runtime(backend_url: str) -> AsyncIterator[durable.Runtime]:
    backend = durable.connect(backend_url)
    rt = durable.Runtime(
        backend,
        executor_id="poison-1",
        registry=REG,
        claim_ttl=TTL,
        recover=False,
        poll_interval=0.02,
    )
    async with rt:
        yield rt


async def half_done(rt: durable.Runtime, workflow_id: str) -> None:
    """Enqueue ``two_steps(1)`` and record its first step as another executor would have, then
    hand it back: a worker that claims it replays step 0 from the stored row."""
    backend = rt.backend
    await rt.enqueue(two_steps, 1, workflow_id=workflow_id, max_attempts=3)
    assert await backend.claim_task(workflow_id, WORKFLOW_TASK, "setup", SETUP_TTL) is not None
    await backend.begin_execution(workflow_id, "setup")
    await backend.record_step(
        workflow_id, StepRecord(position=0, name="poison.add", output=2), worker_id="setup"
    )
    await backend.reschedule_workflow(
        workflow_id, worker_id="setup", run_after=timedelta(0), consume_attempt=False
    )


# -- one corrupt row fails its execution once ----------------------------------------------------

STEP_CORRUPTIONS = [
    pytest.param("output", "{not json", "not valid JSON", id="step-output"),
    pytest.param("status", "exploded", "'exploded' is not a step status", id="step-status"),
    pytest.param("error", "{not json", "not a recorded error", id="step-error"),
]


@pytest.mark.parametrize(("column", "value", "reason"), STEP_CORRUPTIONS)
async def test_a_corrupt_step_fails_its_execution_once_and_no_other(
    backend_url: str, runtime: durable.Runtime, column: str, value: str, reason: str
) -> None:
    await half_done(runtime, "bad")
    corrupt_step(backend_url, runtime.backend, "bad", 0, column, value)
    good = await runtime.enqueue(two_steps, 10)
    await runtime.start_worker(poll_interval=0.02)

    assert await runtime.result(good, timeout=WAIT) == 12
    with pytest.raises(durable.CorruptRowError) as raised:
        await runtime.result("bad", timeout=WAIT)
    message = str(raised.value)
    assert "step 0 of workflow 'bad'" in message
    assert f"column {column!r}" in message and reason in message
    if backend_url != "memory://":
        assert "durable_steps" in message

    info = await runtime.backend.list_snapshots(status="failed")
    assert [i.id for i in info] == ["bad"]
    # failed once and for all: no task left to claim, attempts never past the limit
    assert await runtime.backend.find_available_tasks("anyone", 10) == []
    stored = info.items[0]
    assert stored.max_attempts is not None and stored.attempts <= stored.max_attempts
    assert stored.error is not None and "step 0 of workflow 'bad'" in stored.error.message


WORKFLOW_CORRUPTIONS = [
    pytest.param("input", "{not json", "not valid JSON", id="input-not-json"),
    pytest.param("input", None, "expected the arguments", id="input-null"),
    pytest.param("input", "[1, 2]", "expected the arguments", id="input-wrong-shape"),
    pytest.param("error", "not an error record", "not a recorded error", id="workflow-error"),
]


@pytest.mark.parametrize(("column", "value", "reason"), WORKFLOW_CORRUPTIONS)
async def test_a_corrupt_workflow_row_fails_its_execution_once(
    backend_url: str, runtime: durable.Runtime, column: str, value: str | None, reason: str
) -> None:
    await half_done(runtime, "bad")
    if isinstance(runtime.backend, InMemoryBackend) and column == "error":
        # the in-memory backend stores the record itself, not its text
        pytest.skip("an in-memory error record cannot be unreadable")
    corrupt_workflow(backend_url, runtime.backend, "bad", column, value)
    good = await runtime.enqueue(two_steps, 10)
    await runtime.start_worker(poll_interval=0.02)

    assert await runtime.result(good, timeout=WAIT) == 12
    with pytest.raises(durable.CorruptRowError) as raised:
        await runtime.result("bad", timeout=WAIT)
    message = str(raised.value)
    assert "workflow 'bad'" in message and f"column {column!r}" in message
    assert reason in message
    listed = {i.id: i for i in await runtime.list_workflows()}
    assert listed["bad"].status is WorkflowStatus.FAILED
    assert listed[good].status is WorkflowStatus.SUCCEEDED
    assert await runtime.backend.find_available_tasks("anyone", 10) == []


# -- reads raise durable's errors; a listing shows the bad row -----------------------------------


async def test_reads_of_corrupt_rows_raise_durable_errors(
    backend_url: str, runtime: durable.Runtime
) -> None:
    assert await runtime.run(two_steps, 1, workflow_id="bad") == 3
    assert await runtime.run(two_steps, 5, workflow_id="good") == 7
    corrupt_workflow(backend_url, runtime.backend, "bad", "output", "{not json")
    corrupt_step(backend_url, runtime.backend, "bad", 1, "status", "exploded")

    with pytest.raises(durable.CorruptRowError) as got:
        await runtime.get_workflow("bad")
    assert (got.value.workflow_id, got.value.position, got.value.column) == ("bad", None, "output")
    assert isinstance(got.value, durable.SerializationError)
    with pytest.raises(durable.CorruptRowError) as steps:
        await runtime.list_steps("bad")
    assert (steps.value.workflow_id, steps.value.position, steps.value.column) == (
        "bad",
        1,
        "status",
    )
    with pytest.raises(durable.CorruptRowError):
        await runtime.result("bad", timeout=WAIT)

    # the listing is not broken by one row: the row is there, marked unreadable
    listed = {i.id: i for i in await runtime.list_workflows()}
    assert set(listed) == {"bad", "good"}
    assert listed["good"].output == 7 and listed["good"].error is None
    bad = listed["bad"]
    assert bad.output is None and bad.input == {"args": [1], "kwargs": {}}
    assert bad.error is not None and bad.error.type == CORRUPT_ROW
    assert "column 'output'" in bad.error.message
    assert await runtime.get_workflow("good") is not None
    assert [s.output for s in await runtime.list_steps("good")] == [6, 7]


async def test_an_unknown_workflow_status_is_an_error_not_a_wait(
    backend_url: str, runtime: durable.Runtime
) -> None:
    assert await runtime.run(two_steps, 1, workflow_id="bad") == 3
    corrupt_workflow(backend_url, runtime.backend, "bad", "status", "exploded")

    with pytest.raises(durable.CorruptRowError, match="'exploded' is not a workflow status"):
        await runtime.result("bad", timeout=WAIT)
    with pytest.raises(durable.CorruptRowError):
        await runtime.get_workflow("bad")
    (listed,) = (await runtime.list_workflows()).items
    assert listed.status is WorkflowStatus.FAILED
    assert listed.error is not None and listed.error.type == CORRUPT_ROW
    assert "column 'status'" in listed.error.message
    if isinstance(runtime.backend, InMemoryBackend):
        return  # its statuses are enum members: only this test's poke makes one unknown
    # an operator can still cancel it, which repairs the status
    cancelled = await runtime.cancel("bad")
    assert cancelled.status is WorkflowStatus.CANCELLED
    with pytest.raises(durable.WorkflowCancelledError):
        await runtime.result("bad", timeout=WAIT)


# -- claims ------------------------------------------------------------------------------------


async def test_a_claim_with_a_holder_but_no_expiry_is_claimable(
    backend_url: str, runtime: durable.Runtime
) -> None:
    wid = await runtime.enqueue(two_steps, 1)
    backend = runtime.backend
    if isinstance(backend, InMemoryBackend):
        task = backend._tasks[(wid, WORKFLOW_TASK)]
        task.claimed_by, task.claim_expires_at = "ghost", None
    else:
        raw_update(
            backend_url,
            "UPDATE durable_tasks SET claimed_by = 'ghost', claim_expires_at = NULL "
            "WHERE instance_id = :id",
            id=wid,
        )
    (found,) = await backend.find_available_tasks("poison-1", 10)
    assert found.instance_id == wid and found.claimed_by is None
    await runtime.start_worker(poll_interval=0.02)
    assert await runtime.result(wid, timeout=WAIT) == 3


# -- a pending step handed to other workers ----------------------------------------------------


async def test_a_step_task_whose_input_cannot_be_read_fails_the_step_once(
    backend_url: str, runtime: durable.Runtime
) -> None:
    backend = runtime.backend
    await runtime.enqueue(two_steps, 1, workflow_id="bad", max_attempts=1)
    assert await backend.claim_task("bad", WORKFLOW_TASK, "setup", SETUP_TTL) is not None
    handed_out = StepRecord(
        position=0,
        name="poison.add",
        status=StepStatus.PENDING,
        input={"args": [1], "kwargs": {}},
    )
    task = durable.TaskSpec(instance_id="bad", task_id="step:0", name="poison.add")
    await backend.suspend_workflow("bad", worker_id="setup", steps=[handed_out], tasks=[task])
    corrupt_step(backend_url, backend, "bad", 0, "input", "{not json")
    await runtime.start_worker(poll_interval=0.02)

    with pytest.raises(durable.DurableError, match="step 0 of workflow 'bad'"):
        await runtime.result("bad", timeout=WAIT)
    (step,) = await runtime.list_steps("bad")
    assert step.status is StepStatus.FAILED and step.error is not None
    assert "column 'input'" in step.error.message
    assert await backend.find_available_tasks("anyone", 10) == []


async def test_run_fails_an_unreadable_execution_it_finds(
    backend_url: str, runtime: durable.Runtime
) -> None:
    """No worker: the caller that finds the execution runs it, which fails it for good."""
    await half_done(runtime, "bad")
    corrupt_workflow(backend_url, runtime.backend, "bad", "input", "{not json")

    with pytest.raises(durable.CorruptRowError, match="column 'input'"):
        await runtime.run(two_steps, 1, workflow_id="bad")
    (info,) = (await runtime.list_workflows()).items
    assert info.status is WorkflowStatus.FAILED
    assert await runtime.backend.find_available_tasks("anyone", 10) == []
    with pytest.raises(durable.CorruptRowError, match="column 'input'"):
        await runtime.run(two_steps, 1, workflow_id="bad")
