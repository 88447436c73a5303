"""Retention on real databases (a SQLite file and PostgreSQL): Client.delete_finished, the
runtime's background retention beside a worker draining a queue, ``durable gc`` through click,
and a gc process killed with SIGKILL mid-run (the store stays consistent; a re-run finishes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import durable
from durable.backends.base import PersistentBackend
from durable.cli import main
from durable.cli_gc import parse_age, shown_age
from durable.errors import InvalidArgumentError
from durable.models import StepRecord, StepStatus, WorkflowSnapshot, WorkflowStatus

DAY = timedelta(days=1)
registry = durable.Registry()


@durable.workflow(name="test.retention.job", registry=registry)
async def job(n: int) -> int:
    return await double(n)


@durable.step(name="test.retention.double")
async def double(n: int) -> int:
    return 2 * n


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return str(
        request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param])
    )


async def store_finished(
    backend: PersistentBackend,
    count: int,
    *,
    age: timedelta = 40 * DAY,
    prefix: str = "old",
    name: str = "test.retention.old",
    queue: str = "default",
) -> None:
    """Store ``count`` executions that finished ``age`` ago, each with two steps."""
    at = datetime.now(UTC) - age
    steps = tuple(
        StepRecord(position=i, name="s", status=StepStatus.SUCCEEDED, output=i) for i in range(2)
    )
    for start in range(0, count, 500):
        await backend.create_workflows(
            [
                (
                    WorkflowSnapshot(
                        id=f"{prefix}-{i}",
                        name=name,
                        queue=queue,
                        status=WorkflowStatus.SUCCEEDED,
                        output=i,
                        started_at=at,
                        completed_at=at,
                        steps=steps,
                    ),
                    None,
                )
                for i in range(start, min(count, start + 500))
            ]
        )


def orphans(url: str) -> int:
    """Rows of the tables that hang off workflows whose workflow is gone."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return sum(
                conn.execute(
                    sa.text(
                        f"SELECT count(*) FROM durable_{table} WHERE {column} NOT IN "
                        "(SELECT id FROM durable_workflows)"
                    )
                ).scalar_one()
                for table, column in [
                    ("steps", "workflow_id"),
                    ("tasks", "instance_id"),
                    ("messages", "workflow_id"),
                    ("events", "workflow_id"),
                    ("streams", "workflow_id"),
                    ("stream_values", "workflow_id"),
                ]
            )
    finally:
        engine.dispose()


def stored_count(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM durable_workflows")).scalar_one())
    finally:
        engine.dispose()


def test_parse_age() -> None:
    assert parse_age("30d") == 30 * DAY
    assert parse_age("1d12h") == timedelta(hours=36)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("2w") == 14 * DAY
    assert [shown_age(parse_age(t)) for t in ["30d", "1d12h", "90m", "2w"]] == [
        "30d",
        "1d12h",
        "1h30m",
        "14d",
    ]
    for bad in ["30x", "30", "d", "", "0d", "-1d", "1.5d", "30 d"]:
        with pytest.raises(ValueError, match="duration"):
            parse_age(bad)


async def test_client_delete_finished(url: str) -> None:
    async with durable.Client(url) as client:
        await store_finished(client.backend, 25)
        await store_finished(client.backend, 5, age=DAY, prefix="recent")
        await store_finished(client.backend, 4, prefix="other", name="test.retention.other")
        pending = await client.enqueue(job, 1)
        assert await client.count_finished(30 * DAY) == 29
        assert await client.count_finished(30 * DAY, names=["test.retention.old"]) == 25
        batches: list[int] = []
        deleted = await client.delete_finished(
            30 * DAY, names=["test.retention.old"], batch=4, on_batch=batches.append
        )
        assert deleted == 25 and batches == [4] * 6 + [1]
        assert await client.delete_finished(30 * DAY) == 4
        assert await client.count_finished(30 * DAY) == 0
        remaining = {w.id for w in (await client.list_workflows(limit=100)).items}
        assert remaining == {f"recent-{i}" for i in range(5)} | {pending}
        with pytest.raises(InvalidArgumentError, match="older_than"):
            await client.delete_finished(-DAY)
        with pytest.raises(InvalidArgumentError, match="batch"):
            await client.delete_finished(DAY, batch=0)
        with pytest.raises(InvalidArgumentError, match="names"):
            await client.delete_finished(DAY, names="abc")  # type: ignore[arg-type]
    assert orphans(url) == 0


def test_client_delete_finished_sync(sqlite_url: str) -> None:
    with durable.Client(sqlite_url) as client:
        client.blocking(store_finished(client.backend, 7))
        assert client.count_finished_sync(30 * DAY) == 7
        assert client.delete_finished_sync(30 * DAY, batch=3) == 7
        assert client.count_finished_sync(30 * DAY) == 0


def test_retention_policies_are_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="keep"):
        durable.Retention(timedelta(0))
    with pytest.raises(InvalidArgumentError, match="batch"):
        durable.Retention(DAY, batch=0)
    with pytest.raises(InvalidArgumentError, match="queues"):
        durable.Retention(DAY, queues="bulk")
    with pytest.raises(InvalidArgumentError, match="retention"):
        durable.Runtime(durable.connect("memory://"), retention=30)  # type: ignore[arg-type]
    runtime = durable.Runtime(durable.connect("memory://"), retention=DAY)
    assert runtime.retention == (durable.Retention(DAY),)


async def test_worker_drains_a_queue_while_the_runtime_deletes(url: str) -> None:
    """A runtime with retention and a worker: the worker runs every enqueued execution while
    the old finished ones are deleted in the background; nothing unfinished is deleted, and
    the finished child of an unfinished parent is kept."""
    async with durable.Client(url) as client:
        await store_finished(client.backend, 3000)
        await store_finished(client.backend, 10, queue="keep", prefix="kept")
        await client.backend.create_workflow(WorkflowSnapshot(id="parent", name="elsewhere"))
        await store_finished(client.backend, 1, prefix="child")
    # the child of an unfinished parent: set its parent
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE durable_workflows SET parent_id = 'parent' WHERE id = 'child-0'")
        )
    engine.dispose()

    policy = durable.Retention(30 * DAY, queues=["default"], batch=100, pause=0.01, interval=0.2)
    async with durable.Runtime(durable.connect(url), registry=registry, retention=policy) as rt:
        ids = [await rt.client.enqueue(job, i) for i in range(100)]
        await rt.start_worker(concurrency=4, poll_interval=0.1)
        results = [await rt.client.result(i, timeout=120) for i in ids]
        assert results == [2 * i for i in range(100)]
        for _ in range(600):  # the background retention finishes (bounded wait, no timing)
            if await rt.client.count_finished(30 * DAY, queues=["default"]) == 0:
                break
            await asyncio.sleep(0.1)
        assert await rt.client.count_finished(30 * DAY, queues=["default"]) == 0
        assert await rt.client.count_finished(30 * DAY) == 10  # the other queue's
        assert (await rt.client.get_workflow("child-0")).status is WorkflowStatus.SUCCEEDED
        assert (await rt.client.get_workflow("parent")).status is WorkflowStatus.PENDING
        for i in ids:
            assert (await rt.client.get_workflow(i)).status is WorkflowStatus.SUCCEEDED
    assert stored_count(url) == 100 + 10 + 2
    assert orphans(url) == 0


async def test_client_deletion_beside_a_worker(url: str) -> None:
    """A one-off deletion (Client.delete_finished) and a worker at once: both finish."""
    async with durable.Client(url) as client:
        await store_finished(client.backend, 3000)
    async with durable.Runtime(durable.connect(url), registry=registry) as rt:
        ids = [await rt.client.enqueue(job, i) for i in range(100)]
        await rt.start_worker(concurrency=4, poll_interval=0.1)
        async with durable.Client(url) as deleter:
            deleted, results = await asyncio.gather(
                deleter.delete_finished(30 * DAY, batch=50),
                asyncio.gather(*(rt.client.result(i, timeout=120) for i in ids)),
            )
        assert deleted == 3000
        assert results == [2 * i for i in range(100)]
    assert stored_count(url) == 100
    assert orphans(url) == 0


def test_cli_gc(url: str) -> None:
    async def setup() -> None:
        async with durable.Client(url) as client:
            await store_finished(client.backend, 30)
            await store_finished(client.backend, 3, age=DAY, prefix="recent")
            await store_finished(client.backend, 4, prefix="q", queue="bulk")

    asyncio.run(setup())
    runner = CliRunner()
    dry = runner.invoke(main, ["gc", url, "--older-than", "30d", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run: 34 executions that finished more than 30d ago would be" in dry.output
    assert stored_count(url) == 37

    one_queue = runner.invoke(main, ["gc", url, "--older-than", "30d", "--queue", "bulk"])
    assert one_queue.exit_code == 0, one_queue.output
    assert "deleted 4 executions on bulk that finished" in one_queue.output

    done = runner.invoke(main, ["gc", url, "--older-than", "30d", "--batch", "7"])
    assert done.exit_code == 0, done.output
    assert "deleted 30 executions that finished more than 30d ago" in done.output

    again = runner.invoke(main, ["gc", url, "--older-than", "30d"])
    assert again.exit_code == 0 and "nothing to delete" in again.output
    assert stored_count(url) == 3

    bad = runner.invoke(main, ["gc", url, "--older-than", "30x"])
    assert bad.exit_code == 2 and "'30x' is not a duration" in bad.output
    missing = runner.invoke(main, ["gc", url])
    assert missing.exit_code == 2 and "--older-than" in missing.output
    zero = runner.invoke(main, ["gc", url, "--older-than", "1d", "--batch", "0"])
    assert zero.exit_code == 2 and "--batch" in zero.output
    assert stored_count(url) == 3


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_gc_killed_mid_run_leaves_a_consistent_store(
    url: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    total = 6000

    async def setup() -> None:
        async with durable.Client(url) as client:
            await store_finished(client.backend, total)

    asyncio.run(setup())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from durable.cli import main; main()",
            "gc",
            url,
            "--older-than",
            "30d",
            "--batch",
            "10",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.append(process)
    for _ in range(1200):  # until it has deleted some (bounded wait)
        if stored_count(url) < total - 100 or process.poll() is not None:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = stored_count(url)
    assert 0 < left < total - 100  # killed mid-run
    assert orphans(url) == 0
    result = CliRunner().invoke(main, ["gc", url, "--older-than", "30d", "--batch", "500"])
    assert result.exit_code == 0, result.output
    assert f"deleted {left} executions" in result.output
    assert stored_count(url) == 0 and orphans(url) == 0
