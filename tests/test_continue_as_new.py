"""Continue-as-new: ``durable.continue_as_new(*args, **kwargs)`` ends a run and starts the
workflow again, under the same id, with new input and an empty history.

* an entity that continues five times returns the last run's result through ``run`` and
  through a worker, and through ``run`` while the same runtime's worker claims its continued
  runs, on every backend; each run's step runs once; the history holds the last run
  only; ``continuations`` counts the runs; attempts start again at 1 each run;
* sync workflows continue too; ``except Exception`` in the workflow cannot swallow it;
* a child started in a later run gets an id of its own (``<id>/<run>.<position>``), never an
  earlier run's child; the deadline is kept across runs;
* a worker SIGKILLed right before the continuation is recorded, or right after it is committed
  (SQLite file, PostgreSQL): another worker finishes the entity, no step that was recorded runs
  again, and the result is the same;
* bad use is a clear error: outside a workflow, arguments that cannot be serialized.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import Processes

import durable
from durable.errors import DurableError
from durable.models import StepStatus, WorkflowStatus

REG = durable.Registry()
CALLS: Counter[str] = Counter()
WAIT = 60.0
PROG = Path(__file__).with_name("continueprog.py")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CALLS.clear()
    yield


@durable.step(name="can.add")
async def add(n: int) -> int:
    CALLS[f"add {n}"] += 1
    return n * 10


@durable.workflow(name="can.entity", registry=REG)
async def entity(n: int, total: int = 0) -> dict[str, int]:
    total += await add(n)
    if n < 5:
        try:
            durable.continue_as_new(n + 1, total=total)
        except Exception:
            CALLS["swallowed"] += 1
    return {"n": n, "total": total}


@durable.step(name="can.sync.add")
def sync_add(n: int) -> int:
    CALLS[f"sync {n}"] += 1
    return n + 100


@durable.workflow(name="can.sync", registry=REG)
def sync_entity(n: int) -> int:
    value = sync_add(n)
    if n < 3:
        durable.continue_as_new(n + 1)
    return value


@durable.workflow(name="can.kid", registry=REG)
async def kid(n: int) -> int:
    return await add(n)


@durable.workflow(name="can.with.children", registry=REG)
async def with_children(n: int) -> list[Any]:
    got = await kid(n)
    if n < 2:
        durable.continue_as_new(n + 1)
    return [n, got, durable.workflow_id()]


@durable.workflow(name="can.unserializable", registry=REG)
async def unserializable(value: object = None) -> None:
    durable.continue_as_new(object())


@durable.workflow(name="can.bad.arguments", registry=REG)
async def bad_arguments(n: int) -> None:
    await add(n)
    if n == 1:
        durable.continue_as_new(n + 1, "one too many")
    durable.continue_as_new(n + 1, nope=True)


def runtime(backend: durable.PersistentBackend, executor_id: str = "cont") -> durable.Runtime:
    return durable.Runtime(
        backend, executor_id=executor_id, registry=REG, poll_interval=0.01, claim_ttl=5.0
    )


async def test_an_entity_continues_as_new_until_it_returns(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        result = await rt.run(entity, 1, workflow_id="e")
        info = await rt.get_workflow("e")
        steps = await rt.list_steps("e")
    assert result == {"n": 5, "total": 150}
    assert info.status is WorkflowStatus.SUCCEEDED and info.continuations == 4
    assert info.input == {"args": [5], "kwargs": {"total": 100}}
    assert (info.attempts, info.interruptions) == (1, 0)
    assert [(s.name, s.status, s.output) for s in steps] == [("can.add", StepStatus.SUCCEEDED, 50)]
    assert Counter({f"add {n}": 1 for n in range(1, 6)}) == CALLS  # nothing swallowed


async def test_an_entity_continues_through_a_worker(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(entity, 2)
        assert await rt.result(workflow_id, timeout=WAIT) == {"n": 5, "total": 140}
        assert (await rt.get_workflow(workflow_id)).continuations == 3
    assert Counter({f"add {n}": 1 for n in range(2, 6)}) == CALLS


async def test_a_run_and_a_worker_of_one_runtime_run_each_continuation_once(
    backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # run() drives each entity here while the worker claims every continued run as soon as
    # it is due: leases are held by executor id, so the two must not both run it (the
    # worker's claim is the drive's to run, and it is not handed back from under the drive)
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=4, poll_interval=0.01)
        for i in range(5):
            assert await rt.run(entity, 1, workflow_id=f"both-{i}") == {"n": 5, "total": 150}
            assert (await rt.get_workflow(f"both-{i}")).continuations == 4
    assert Counter({f"add {n}": 5 for n in range(1, 6)}) == CALLS
    # no lease lost or lapsed; the watchdog's warning of a loop late by a second (a loaded
    # machine's, which names the leases' length) says nothing of that
    lost = [
        r.getMessage()
        for r in caplog.records
        if "lease" in r.getMessage() and getattr(r, "action", None) != "loop.blocked"
    ]
    assert not lost


async def test_a_sync_workflow_continues_as_new(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(sync_entity, 0, workflow_id="s") == 103
        assert (await rt.get_workflow("s")).continuations == 3
        assert [s.output for s in await rt.list_steps("s")] == [103]
    assert Counter({f"sync {n}": 1 for n in range(4)}) == CALLS


async def test_each_run_starts_children_of_its_own(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(with_children, 0, workflow_id="c") == [2, 20, "c"]
        children = {
            w.id: (w.status, w.output) for w in await rt.list_workflows(parent_id="c", limit=10)
        }
    assert children == {
        "c/0": (WorkflowStatus.SUCCEEDED, 0),
        "c/1.0": (WorkflowStatus.SUCCEEDED, 10),
        "c/2.0": (WorkflowStatus.SUCCEEDED, 20),
    }


@durable.workflow(name="can.collect.v1", registry=REG)
async def collect(n: int) -> list[Any]:
    return [await durable.recv("m", timeout=30) for _ in range(n)]


@durable.workflow(name="can.sender.v1", registry=REG)
async def sender(target: str, run: int) -> int:
    await durable.send(target, "m", f"run-{run}")  # at position 0 in every run
    if run < 2:
        durable.continue_as_new(target, run + 1)
    return run


async def test_each_runs_sends_are_sent(backend_url: str) -> None:
    """A send's default idempotency key named its position only: each later run's send, at the
    same position, was taken for the first run's and silently stored nothing."""
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        target = await rt.enqueue(collect, 3, workflow_id="target")
        assert await rt.run(sender, target, 0, workflow_id="sender") == 2
        assert await rt.result(target, timeout=WAIT) == ["run-0", "run-1", "run-2"]


async def test_the_deadline_bounds_every_run() -> None:
    async with runtime(durable.InMemoryBackend()) as rt:
        at = datetime.now(UTC) + timedelta(hours=1)
        await rt.run(entity, 3, workflow_id="d", deadline=at)
        info = await rt.get_workflow("d")
    assert info.deadline == at and info.continuations == 2


async def test_bad_use_is_a_clear_error() -> None:
    with pytest.raises(DurableError, match="outside a workflow"):
        durable.continue_as_new(1)
    async with runtime(durable.InMemoryBackend()) as rt:
        with pytest.raises(durable.SerializationError, match="continues as new"):
            await rt.run(unserializable, workflow_id="u")
        info = await rt.get_workflow("u")
    assert info.status is WorkflowStatus.FAILED and info.continuations == 0


async def test_arguments_the_workflow_cannot_take_are_refused_at_the_call(
    backend_url: str,
) -> None:
    """As enqueue refuses them: before anything is recorded, so the run's input and history
    are kept (recorded, its next run would fail at once, its history already gone)."""
    async with runtime(durable.connect(backend_url)) as rt:
        for n, problem in ((1, "too many positional arguments"), (2, "unexpected keyword")):
            wid = f"bad-{n}"
            with pytest.raises(durable.InvalidArgumentError, match=problem):
                await rt.run(bad_arguments, n, workflow_id=wid)
            info = await rt.get_workflow(wid)
            assert info.status.is_terminal and info.continuations == 0
            assert info.input == {"args": [n], "kwargs": {}}
            assert [s.name for s in await rt.list_steps(wid)] == ["can.add"]


def test_it_is_public() -> None:
    assert "continue_as_new" in durable.__all__


# -- crashes around the continuation ---------------------------------------------------------


@pytest.fixture
def workers(processes: Processes, tmp_path: Path) -> Callable[..., subprocess.Popen[bytes]]:
    def start(url: str, executor_id: str, kill: str | None = None) -> subprocess.Popen[bytes]:
        return processes(
            PROG,
            *("serve", "--url", url, "--executor-id", executor_id),
            "--log",
            str(tmp_path / "effects.log"),
            *(("--kill", kill) if kill else ()),
            name=executor_id,
        )

    return start


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_worker_killed_around_a_continuation(
    db_url: str,
    when: str,
    tmp_path: Path,
    workers: Callable[..., subprocess.Popen[bytes]],
) -> None:
    async with durable.Client(durable.connect(db_url), poll_interval=0.05) as client:
        first = workers(db_url, "cont-1", f"{when}:2")
        workflow_id = await client.enqueue("continueprog.entity.v1", 1, 4, workflow_id="ent")
        code = await asyncio.to_thread(first.wait, WAIT)
        assert code == -signal.SIGKILL, (tmp_path / "cont-1.out").read_text()
        assert (tmp_path / f"killed-{when}-2").exists()
        info = await client.get_workflow(workflow_id)
        # killed with the workflow running: run 2's step recorded, the continuation not
        # (before) or committed (after)
        assert info.continuations == (1 if when == "before" else 2)
        second = workers(db_url, "cont-2")  # another id: it takes over once the lease expires
        assert await client.result(workflow_id, timeout=WAIT) == {"n": 4, "total": 100}
        info = await client.get_workflow(workflow_id)
        steps = await client.list_steps(workflow_id)
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, WAIT) == 0
    assert info.continuations == 3
    assert [(s.name, s.output) for s in steps] == [("entity.tick", 40)]
    effects = [line.split() for line in (tmp_path / "effects.log").read_text().splitlines()]
    # every run's step ran once: run 2's, recorded before the kill, was replayed, not run again
    assert [(e[0], e[1], int(e[2])) for e in effects] == [
        (workflow_id, "tick", 1),
        (workflow_id, "tick", 2),
        (workflow_id, "tick", 3),
        (workflow_id, "tick", 4),
    ]
    assert {int(e[3]) for e in effects[:2]} == {first.pid}
    assert {int(e[3]) for e in effects[2:]} == {second.pid}
