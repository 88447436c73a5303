"""Queues with limits end to end: worker processes draining a queue with a concurrency limit
(the steps log their own running intervals; the test computes the overlap), a rate limit, a
partition's order, a limit changed while workers run, and the API's checks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support import WAIT

import durable
from durable.backends.sql.schema import queue_starts
from durable.errors import InvalidArgumentError, QueueNotFoundError
from durable.testing._concurrency import max_overlap

HERE = Path(__file__).parent
JOB = "queueprog.job.v1"
#: Executions drained by the process tests: the issue's figure, 2,000 (about 20 to 40 seconds
#: per database; DURABLE_QUEUE_FIGURE_COUNT=400 for a quicker run by hand).
COUNT = int(os.environ.get("DURABLE_QUEUE_FIGURE_COUNT", "2000"))


def _intervals(log: Path) -> list[tuple[int, int]]:
    lines = [line.split() for line in log.read_text().splitlines() if line.strip()]
    return [(int(a), int(b)) for a, b, _pid in lines]


def _starts_in_any_window(starts: list[int], window_ns: int) -> int:
    """The most starts in any half-open window ``[t, t + window)`` (sliding)."""
    starts = sorted(starts)
    most, lo = 0, 0
    for hi, stamp in enumerate(starts):
        while starts[lo] <= stamp - window_ns:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


async def _prepare(url: str, count: int, queue: durable.Queue) -> None:
    async with durable.Client(url) as client:
        await client.create_queue(queue)
        await client.enqueue_many(JOB, [(n,) for n in range(count)], queue="q")


#: PostgreSQL: a copy of every start a rate-limited claim records, kept by a trigger (the
#: claims prune the starts that left the window: a reader polling them can miss some when the
#: machine is slow)
START_LOG = "test_queue_start_log"


def _log_starts(url: str) -> None:
    """PostgreSQL: copy each row inserted into the queue starts into :data:`START_LOG`."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {START_LOG} (id BIGINT, started_at TIMESTAMPTZ)"))
            conn.execute(
                sa.text(
                    f"CREATE FUNCTION {START_LOG}_copy() RETURNS trigger LANGUAGE plpgsql AS "
                    f"$$ BEGIN INSERT INTO {START_LOG} VALUES (NEW.id, NEW.started_at); "
                    "RETURN NEW; END $$"
                )
            )
            conn.execute(
                sa.text(
                    f"CREATE TRIGGER {START_LOG}_copy AFTER INSERT ON {queue_starts.name} "
                    f"FOR EACH ROW EXECUTE FUNCTION {START_LOG}_copy()"
                )
            )
    finally:
        engine.dispose()


def _logged_starts(url: str) -> dict[int, datetime]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT id, started_at FROM {START_LOG}"))
            return {r.id: r.started_at for r in rows}
    finally:
        engine.dispose()


async def _drained(url: str, count: int, timeout: float) -> list[durable.WorkflowInfo]:
    """Wait until ``count`` executions have succeeded (or ``timeout`` passes)."""
    async with durable.Client(url) as client:
        deadline = time.monotonic() + timeout
        while True:
            page = await client.list_workflows(limit=count + 10, status="succeeded")
            if len(page.items) >= count or time.monotonic() > deadline:
                return page.items
            await asyncio.sleep(0.2)


def _drain(
    url: str,
    tmp_path: Path,
    *,
    workers: int,
    count: int,
    queue: durable.Queue,
    hold: float = 0.005,
    slots: int = 4,
    timeout: float = 120,
    starts: dict[int, datetime] | None = None,
) -> list[tuple[int, int]]:
    """Enqueue ``count`` executions of a queue stored as ``queue``, drain them with ``workers``
    processes of tests/queueprog.py, and return the logged running intervals; with ``starts``
    (PostgreSQL), also every start the rate-limited claims recorded, by id."""
    asyncio.run(_prepare(url, count, queue))
    if starts is not None:
        _log_starts(url)
    log = tmp_path / "runs.log"
    log.touch()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "queueprog.py"),
                "--url",
                url,
                "--executor-id",
                f"w{n}",
                "--log",
                str(log),
                "--hold",
                str(hold),
                "--slots",
                str(slots),
            ],
            cwd=HERE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(workers)
    ]
    try:
        done = asyncio.run(_drained(url, count, timeout))
        if starts is not None:
            starts.update(_logged_starts(url))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [p.returncode for p in procs] == [0] * workers, errors
    assert len(done) == count, f"{len(done)} of {count} executions succeeded"
    intervals = _intervals(log)
    assert len(intervals) == count, "an execution's step ran twice, or not at all"
    return intervals


@pytest.mark.slow
def test_concurrency_five_with_four_processes_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    intervals = _drain(
        sqlite_url, tmp_path, workers=4, count=COUNT, queue=durable.Queue("q", concurrency=5)
    )
    assert max_overlap(intervals) == 5


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrency_five_with_eight_processes_on_postgres(pg_url: str, tmp_path: Path) -> None:
    intervals = _drain(
        pg_url, tmp_path, workers=8, count=COUNT, queue=durable.Queue("q", concurrency=5)
    )
    assert max_overlap(intervals) == 5


@pytest.mark.slow
@pytest.mark.postgres
def test_rate_limit_fifty_per_second(pg_url: str, tmp_path: Path) -> None:
    """500 executions at 50 starts per second take 10 s: in no window of one second did the
    claims start more than 50 (the starts they record, on the database's clock), and every
    execution ran once.

    The steps' own start times are not the measure: a worker's event loop may start a batch
    of claimed executions late (CPU starved), bunching them up with the next window's."""
    starts: dict[int, datetime] = {}
    intervals = _drain(
        pg_url,
        tmp_path,
        workers=4,
        count=500,
        queue=durable.Queue("q", rate_limit=(50, 1)),
        hold=0.001,
        slots=20,
        starts=starts,
    )
    # every execution was claimed at least once (a claim handed back and taken again, by a
    # worker stopping or a reserve grown stale, records one start more)
    assert len(starts) >= 500, f"only {len(starts)} starts recorded"
    stamps = [int(t.timestamp() * 1e9) for t in starts.values()]
    assert _starts_in_any_window(stamps, 1_000_000_000) <= 50
    span = (max(stamps) - min(stamps)) / 1e9
    assert span >= 9.0, f"500 starts at 50/s took {span:.1f}s"
    steps = sorted(start for start, _ in intervals)
    assert (steps[-1] - steps[0]) / 1e9 >= 9.0


# -- in one process --------------------------------------------------------------------------


async def _until(done: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until ``done()`` (checked every 10 ms), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 - a condition, no event
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_partitions_run_in_order(sqlite_url: str) -> None:
    """Three customers, eight executions each, partition concurrency 1, eight slots: each
    customer's run one at a time in enqueue order, while customers run side by side."""
    registry = durable.Registry()
    runs: list[tuple[str, int, int, int]] = []

    @durable.step
    async def work(customer: str, n: int) -> None:
        start = time.monotonic_ns()
        await asyncio.sleep(0.01)
        runs.append((customer, n, start, time.monotonic_ns()))

    @durable.workflow(name="partitioned.v1", registry=registry)
    async def job(customer: str, n: int) -> None:
        await work(customer, n)

    queue = durable.Queue("orders", partition_concurrency=1)
    runtime = durable.Runtime(durable.connect(sqlite_url), registry=registry, queues=[queue])
    async with runtime:
        for n in range(8):
            for customer in ("a", "b", "c"):
                await runtime.enqueue(  # the runtime's enqueue: a Queue object as queue=
                    job, customer, n, queue=queue, partition_key=f"customer-{customer}"
                )
        worker = await runtime.start_worker(concurrency=8, poll_interval=0.02)
        await _until(lambda: len(runs) >= 24)
        await worker.stop()
    assert len(runs) == 24
    for customer in ("a", "b", "c"):
        mine = sorted((r for r in runs if r[0] == customer), key=lambda r: r[2])
        assert [r[1] for r in mine] == list(range(8)), f"{customer} out of order"
        assert max_overlap([(r[2], r[3]) for r in mine]) == 1
    assert max_overlap([(r[2], r[3]) for r in runs]) > 1, "partitions never ran side by side"


@pytest.mark.slow
async def test_runtime_run_and_children_keep_to_the_limits(backend_url: str) -> None:
    """``Runtime.run`` of a limited queue's workflow does not claim it by itself past the
    limit: it waits for the workers' limited claims. A child in another limited queue waits for
    that queue's place too; a child in its parent's own queue runs in its parent's place."""
    registry = durable.Registry()
    runs: list[tuple[str, int, int]] = []

    # named: a default name would not tell this run's function from the last backend's
    @durable.step(name="limited.work")
    async def work(what: str) -> None:
        start = time.monotonic_ns()
        await asyncio.sleep(0.05)
        runs.append((what, start, time.monotonic_ns()))

    @durable.workflow(name="limited.job.v1", registry=registry, queue="one")
    async def job(n: int) -> int:
        await work("job")
        return n

    @durable.workflow(name="limited.child.v1", registry=registry, queue="one")
    async def child() -> None:
        await work("child")

    @durable.workflow(name="limited.same.v1", registry=registry, queue="other")
    async def same() -> None:
        await work("same")

    @durable.workflow(name="limited.parent.v1", registry=registry, queue="other")
    async def parent() -> None:
        await child()
        await same()  # its parent's queue: runs in the parent's place, not waiting for one

    one, other = durable.Queue("one", concurrency=1), durable.Queue("other", concurrency=1)
    runtime = durable.Runtime(
        durable.connect(backend_url), registry=registry, queues=[one, other], recover=False
    )
    async with runtime:
        await runtime.start_worker(concurrency=8, poll_interval=0.02)
        results = await asyncio.wait_for(
            asyncio.gather(*(runtime.run(job, n) for n in range(5))), WAIT
        )
        assert sorted(results) == list(range(5))
        jobs = [(a, b) for what, a, b in runs if what == "job"]
        assert len(jobs) == 5 and max_overlap(jobs) == 1
        await asyncio.wait_for(runtime.run(parent), WAIT)
    assert sorted(what for what, _a, _b in runs if what != "job") == ["child", "same"]


async def test_a_partitions_order_holds_across_an_outage_hand_back(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt an outage ended is handed back, due again after a short pause: meanwhile its
    partition's later executions, due, ran before it, and the partition's order broke."""
    registry = durable.Registry()
    started: list[int] = []
    cut: list[int] = []

    @durable.step(name="ordered.work")
    async def work(n: int) -> int:
        started.append(n)
        return n

    @durable.workflow(name="ordered.job.v1", registry=registry)
    async def job(n: int) -> int:
        return await work(n)

    backend = durable.connect(sqlite_url)
    record_step = backend.record_step

    async def flaky(instance_id: str, step: durable.StepRecord, **kw: Any) -> None:
        if not cut:  # the first record of the first job: the database went away
            cut.append(1)
            raise durable.BackendUnavailableError("the database went away")
        await record_step(instance_id, step, **kw)

    monkeypatch.setattr(backend, "record_step", flaky)
    queue = durable.Queue("ordered", partition_concurrency=1)
    runtime = durable.Runtime(backend, registry=registry, queues=[queue])
    async with runtime:
        ids = [
            await runtime.enqueue(job, n, queue=queue, partition_key="customer-42")
            for n in range(4)
        ]
        await runtime.start_worker(concurrency=4, poll_interval=0.02)
        for workflow_id in ids:
            await runtime.client.result(workflow_id, timeout=20)
    assert started == [0, 0, 1, 2, 3]  # job 0 ran again first, then the others in order


async def test_a_grandchild_in_its_grandparents_limited_queue_runs_in_its_place(
    sqlite_url: str,
) -> None:
    """A parent in queue "pa" (one place) awaits a child in "pb", which awaits a grandchild in
    "pa": the grandchild waited for a place in "pa", which its grandparent held while it
    waited for it, and the tree hung for good. Only the parent's own queue was looked at."""
    registry = durable.Registry()

    @durable.step(name="tree.leaf")
    async def leaf(x: int) -> int:
        return x

    @durable.workflow(name="tree.grandchild.v1", registry=registry, queue="pa")
    async def grandchild(x: int) -> int:
        return await leaf(x)

    @durable.workflow(name="tree.child.v1", registry=registry, queue="pb")
    async def child(x: int) -> int:
        return await grandchild(x) + 1

    @durable.workflow(name="tree.parent.v1", registry=registry, queue="pa")
    async def parent(x: int) -> int:
        return await child(x) + 1

    queues = [durable.Queue("pa", concurrency=1), durable.Queue("pb", concurrency=1)]
    runtime = durable.Runtime(durable.connect(sqlite_url), registry=registry, queues=queues)
    async with runtime:
        await runtime.start_worker(concurrency=4, poll_interval=0.02)
        workflow_id = await runtime.enqueue(parent, 1)
        assert await runtime.client.result(workflow_id, timeout=20) == 3


@pytest.mark.slow
async def test_a_limit_change_applies_while_workers_run(sqlite_url: str) -> None:
    registry = durable.Registry()
    runs: list[tuple[int, int, int]] = []

    @durable.step
    async def work(n: int) -> None:
        start = time.monotonic_ns()
        await asyncio.sleep(0.02)
        runs.append((n, start, time.monotonic_ns()))

    @durable.workflow(name="live.v1", registry=registry, queue="live")
    async def job(n: int) -> None:
        await work(n)

    runtime = durable.Runtime(
        durable.connect(sqlite_url),
        registry=registry,
        queues=[durable.Queue("live", concurrency=1)],
    )
    async with runtime:
        await runtime.client.enqueue_many(job, [(n,) for n in range(40)])
        worker = await runtime.start_worker(concurrency=8, poll_interval=0.02)
        await _until(lambda: len(runs) >= 8)
        before = len(runs)
        stored = await runtime.client.update_queue("live", concurrency=4)
        assert stored.concurrency == 4
        await _until(lambda: len(runs) >= 40)
        await worker.stop()
    assert len(runs) == 40
    first = sorted(runs, key=lambda r: r[1])[:before]
    assert max_overlap([(r[1], r[2]) for r in first]) == 1
    overlap = max_overlap([(r[1], r[2]) for r in runs])
    assert 1 < overlap <= 4


async def test_client_queue_operations_and_checks(sqlite_url: str) -> None:
    async with durable.Client(sqlite_url) as client:
        with pytest.raises(QueueNotFoundError):
            await client.get_queue("mail")
        stored = await client.update_queue("mail", rate_limit=(100, timedelta(minutes=1)))
        assert (stored.rate_limit, stored.rate_period, stored.concurrency) == (100, 60.0, None)
        stored = await client.update_queue("mail", concurrency=3)
        assert (stored.rate_limit, stored.concurrency) == (100, 3)
        stored = await client.update_queue("mail", rate_limit=None)
        assert (stored.rate_limit, stored.rate_period, stored.concurrency) == (None, None, 3)
        assert [q.name for q in await client.list_queues()] == ["mail"]
        assert await client.delete_queue("mail") is True
        with pytest.raises(InvalidArgumentError, match="partition_key"):
            await client.enqueue("x.v1", partition_key="")
    for bad in (
        {"concurrency": 0},
        {"worker_concurrency": True},
        {"rate_limit": (10,)},
        {"rate_limit": (10, 0)},
        {"partition_concurrency": 1.5},
    ):
        with pytest.raises(InvalidArgumentError):
            durable.Queue("q", **bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        durable.Queue("")
    with pytest.raises(InvalidArgumentError, match=r"durable\.Queue"):
        durable.Runtime(durable.connect("sqlite:///:memory:"), queues=["q"])  # type: ignore[list-item]


UPDATER = """
import asyncio, sys
import durable

async def main(url: str, which: str) -> None:
    async with durable.Client(url) as client:
        for i in range(1, 61):
            if which == "concurrency":
                await client.update_queue("race", concurrency=i)
            else:
                await client.update_queue("race", rate_limit=(i, 60))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_processes_changing_different_limits_keep_both(
    db: str, request: pytest.FixtureRequest
) -> None:
    """update_queue read the queue, then wrote every limit back: of two processes changing
    one limit each, one's change was undone by the other's (concurrency=148 rate_limit=200).
    Only the limits given are written now, in the backend's transaction."""
    url = str(request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[db]))
    with durable.Client(url) as client:
        client.update_queue_sync("race", concurrency=1)
    procs = [
        subprocess.Popen([sys.executable, "-c", UPDATER, url, which])
        for which in ("concurrency", "rate")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with durable.Client(url) as client:
        queue = client.get_queue_sync("race")
    assert (queue.concurrency, queue.rate_limit, queue.rate_period) == (60, 60, 60.0)


async def test_a_declared_queue_does_not_undo_a_stored_change(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with durable.Client(sqlite_url) as client:
        await client.create_queue(durable.Queue("q", concurrency=7))
    runtime = durable.Runtime(
        durable.connect(sqlite_url), queues=[durable.Queue("q", concurrency=2)]
    )
    async with runtime:
        assert (await runtime.client.get_queue("q")).concurrency == 7
    assert "stored with other limits" in caplog.text


def test_cli_sets_shows_and_deletes_limits(sqlite_url: str) -> None:
    from click.testing import CliRunner

    from durable.cli import main

    asyncio.run(_prepare(sqlite_url, 2, durable.Queue("q", concurrency=2)))
    runner = CliRunner()
    done = runner.invoke(
        main, ["queues", "set", sqlite_url, "q", "--rate-limit", "100/60", "--concurrency", "none"]
    )
    assert done.exit_code == 0, done.output
    assert "limits=100 per 60s" in done.output
    listed = runner.invoke(main, ["queues", sqlite_url])
    assert listed.exit_code == 0, listed.output
    assert "q\tpending=2\trunning=0\t" in listed.output
    assert listed.output.rstrip().endswith("limits=100 per 60s")
    refused = runner.invoke(main, ["queues", "set", sqlite_url, "q", "--concurrency", "0"])
    assert refused.exit_code != 0 and "not a positive int" in refused.output
    assert runner.invoke(main, ["queues", "delete", sqlite_url, "q"]).exit_code == 0
    assert runner.invoke(main, ["queues", "delete", sqlite_url, "q"]).exit_code != 0
