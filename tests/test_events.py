"""Events out: ``durable.set_event`` / ``set_event_sync`` in workflows, ``get_event`` /
``get_event_sync`` on a Client or a Runtime.

* the latest value per key wins; readable while the workflow runs (it sleeps) and after it
  finished, on every backend; a replay does not set it again (its record and its time are
  unchanged; the backend is asked once per position);
* ``get_event`` waits until the key is set (woken by the write), returns ``default`` on timeout,
  and at once when the workflow finished without setting it; an unknown workflow is
  WorkflowNotFoundError;
* sync workflows and sync clients;
* another process reads the event while the workflow sleeps and after it finished (SQLite file,
  PostgreSQL);
* bad input (a key that is not a non-empty str, a value the serializer refuses, a bad timeout)
  raises InvalidArgumentError naming the argument; outside a workflow and the wrong flavour are
  clear errors.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import eventually

import durable
from durable.events import EVENT_STEP
from durable.models import StepStatus, WorkflowStatus
from durable.timers import SLEEP_STEP

REG = durable.Registry()
WAIT = 60.0  # an upper bound for anything the tests wait for, never reached when green
PROG = Path(__file__).with_name("streamprog.py")


@durable.workflow(name="events.approval", registry=REG)
async def approval(seconds: float) -> str:
    await durable.set_event("first", {"n": 1})
    await durable.set_event("status", "waiting")
    await durable.sleep(seconds)
    await durable.set_event("status", "done")
    return "ok"


@durable.workflow(name="events.late", registry=REG)
async def late(seconds: float) -> str:
    await durable.sleep(seconds)
    await durable.set_event("status", "late")
    return "ok"


@durable.workflow(name="events.silent", registry=REG)
async def silent() -> str:
    return "quiet"


@durable.workflow(name="events.sync", registry=REG)
def sync_events(n: int) -> int:
    for i in range(n):
        durable.set_event_sync("count", i)
    durable.set_event_sync("status", "done")
    return n


@durable.workflow(name="events.wrong-async", registry=REG)
async def wrong_async() -> None:
    durable.set_event_sync("k", 1)


@durable.workflow(name="events.wrong-sync", registry=REG)
def wrong_sync() -> None:
    durable.set_event("k", 1)  # type: ignore[unused-coroutine]


BAD: dict[str, tuple[Any, Any]] = {
    "int key": (1, "v"),
    "empty key": ("", "v"),
    "long key": ("k" * 300, "v"),
    "unserializable value": ("k", object()),
}


@durable.workflow(name="events.bad", registry=REG)
async def bad(which: str) -> None:
    await durable.set_event("before", 0)
    key, value = BAD[which]
    await durable.set_event(key, value)


class CountingBackend(durable.InMemoryBackend):
    """Counts the backend's set_event calls by key."""

    def __init__(self) -> None:
        super().__init__()
        self.sets: Counter[str] = Counter()

    async def set_event(self, instance_id: str, key: str, value: Any, **kwargs: Any) -> None:
        self.sets[key] += 1
        await super().set_event(instance_id, key, value, **kwargs)


def runtime(backend: durable.PersistentBackend, executor_id: str = "events") -> durable.Runtime:
    return durable.Runtime(
        backend, executor_id=executor_id, registry=REG, poll_interval=0.01, claim_ttl=5.0
    )


async def sleeping(reader: durable.Client | durable.Runtime, workflow_id: str) -> bool:
    steps = await reader.list_steps(workflow_id)
    info = await reader.get_workflow(workflow_id)
    return (
        info.status is WorkflowStatus.PENDING
        and bool(steps)
        and (steps[-1].name, steps[-1].status) == (SLEEP_STEP, StepStatus.PENDING)
    )


# -- in one process, every backend ---------------------------------------------------------------


async def test_events_are_readable_while_the_workflow_sleeps_and_after(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with runtime(backend) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(approval, 2.0)  # long enough to be seen asleep
        await eventually(lambda: sleeping(rt, workflow_id), "the workflow to sleep")
        assert await rt.get_event(workflow_id, "status", timeout=0) == "waiting"
        first = await backend.get_event(workflow_id, "first")
        assert first is not None and first.value == {"n": 1} and first.position == 0
        assert await rt.result(workflow_id, timeout=WAIT) == "ok"
        assert await rt.get_event(workflow_id, "status") == "done"
        assert await rt.client.get_event(workflow_id, "first") == {"n": 1}
        after = await backend.get_event(workflow_id, "first")
        steps = await rt.list_steps(workflow_id)
    # the replay after the sleep went through both set_event positions and set nothing again
    assert after == first
    assert [(s.position, s.name, s.input) for s in steps] == [
        (0, EVENT_STEP, {"key": "first"}),
        (1, EVENT_STEP, {"key": "status"}),
        (2, SLEEP_STEP, None),
        (3, EVENT_STEP, {"key": "status"}),
    ]


async def test_a_waiter_that_nothing_wakes_looks_again_soon(tmp_path: Path) -> None:
    """A waiter on another backend object than the writer's (as in another process on SQLite,
    where no write is announced to it) looks again 10 ms after an empty look, then at pauses
    that double: it sees an event set 0.3 s later long before its ``poll_interval`` (an
    hour)."""
    url = f"sqlite:///{tmp_path / 'unannounced.db'}"
    async with runtime(durable.connect(url)) as rt, durable.Client(url, poll_interval=3600) as c:
        await rt.start_worker(poll_interval=0.01)
        workflow_id = await c.enqueue(late, 0.3)
        seen = await asyncio.wait_for(c.get_event(workflow_id, "status"), WAIT / 4)
        assert seen == "late"


async def test_a_replay_does_not_set_again() -> None:
    backend = CountingBackend()
    async with runtime(backend) as rt:
        assert await rt.run(approval, 0.05, workflow_id="a-1") == "ok"
        info = await rt.get_workflow("a-1")
    assert info.attempts == 1  # the workflow ran twice: before its sleep and after
    assert backend.sets == Counter({"first": 1, "status": 2})


async def test_get_event_waits_until_it_is_set(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(late, 0.3)
        assert await rt.get_event(workflow_id, "status", timeout=0) is None
        assert await rt.get_event(workflow_id, "status", timeout=WAIT) == "late"


async def test_get_event_gives_the_default_on_timeout_and_when_it_will_never_be_set(
    backend_url: str,
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        sleeper = await rt.enqueue(late, 3600)
        await eventually(lambda: sleeping(rt, sleeper), "the workflow to sleep")
        assert await rt.get_event(sleeper, "status", timeout=0.2) is None
        assert await rt.get_event(sleeper, "status", timeout=0.1, default="n/a") == "n/a"
        finished = await rt.enqueue(silent)
        assert await rt.result(finished, timeout=WAIT) == "quiet"
        # it finished without setting it: no wait, even without a time limit
        got = await asyncio.wait_for(rt.get_event(finished, "status", timeout=None), WAIT)
        assert got is None
        with pytest.raises(durable.WorkflowNotFoundError):
            await rt.get_event("no-such-workflow", "status")


async def test_sync_workflows_set_events_and_sync_callers_read_them(backend_url: str) -> None:
    def read(client: durable.Client) -> tuple[Any, Any, Any]:
        return (
            client.get_event_sync("s-1", "count"),
            client.get_event_sync("s-1", "status", timeout=0),
            client.get_event_sync("s-1", "never", timeout=None, default=-1),
        )

    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(sync_events, 3, workflow_id="s-1") == 3
        steps = await rt.list_steps("s-1")
        # from a thread, through the runtime's client (its loop)
        assert await asyncio.to_thread(read, rt.client) == (2, "done", -1)
    assert [s.name for s in steps] == [EVENT_STEP] * 4


# -- bad input and misuse ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "match"),
    [
        ("int key", "key must be a str"),
        ("empty key", "key must not be empty"),
        ("long key", "key must be at most 255"),
        ("unserializable value", "value cannot be stored"),
    ],
)
async def test_bad_input_in_a_workflow_names_the_argument_and_records_nothing(
    which: str, match: str
) -> None:
    async with runtime(durable.InMemoryBackend()) as rt:
        with pytest.raises(durable.InvalidArgumentError, match=match):
            await rt.run(bad, which, workflow_id="bad-1")
        steps = await rt.list_steps("bad-1")
    assert [(s.name, s.status) for s in steps] == [(EVENT_STEP, StepStatus.SUCCEEDED)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": -1}, "timeout must not be negative"),
        ({"timeout": float("nan")}, "timeout must be finite"),
        ({"timeout": "soon"}, "timeout must be a number"),
        ({"key": 7}, "key must be a str"),
        ({"key": ""}, "key must not be empty"),
        ({"workflow_id": None}, "workflow_id must be a str"),
    ],
)
async def test_bad_reads_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    call = {"workflow_id": "w", "key": "k", "timeout": 1.0, **kwargs}
    async with durable.Client(durable.InMemoryBackend()) as client:
        with pytest.raises(durable.InvalidArgumentError, match=match):
            await client.get_event(call["workflow_id"], call["key"], timeout=call["timeout"])


async def test_outside_a_workflow_and_the_wrong_flavour_are_clear_errors() -> None:
    with pytest.raises(durable.DurableError, match="outside a workflow"):
        await durable.set_event("k", 1)
    with pytest.raises(durable.DurableError, match="outside a workflow"):
        durable.set_event_sync("k", 1)
    with pytest.raises(durable.InvalidArgumentError, match="key must be a str"):
        durable.set_event_sync(None, 1)  # type: ignore[arg-type]
    async with runtime(durable.InMemoryBackend()) as rt:
        with pytest.raises(durable.DurableError, match=r"await durable.set_event\(...\)"):
            await rt.run(wrong_async)
        with pytest.raises(durable.DurableError, match=r"durable.set_event_sync\(\)"):
            await rt.run(wrong_sync)


# -- another process reads them --------------------------------------------------------------------


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(url: str) -> subprocess.Popen[bytes]:
        with (tmp_path / "worker.out").open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(PROG), "serve", "--url", url, "--executor-id", "events-1"],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT)


def read_event_elsewhere(url: str, workflow_id: str, key: str) -> Any:
    """The event's value as another process reads it (``get_event_sync``)."""
    done = subprocess.run(
        [sys.executable, str(PROG), "get-event", "--url", url, "--id", workflow_id, "--key", key],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
async def test_another_process_reads_events_while_the_workflow_sleeps_and_after(
    db_url: str, worker: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    async with durable.Client(db_url, poll_interval=0.05) as client:
        workflow_id = await client.enqueue(
            "streamprog.approval.v1", 3600.0, workflow_id="approval-1"
        )
        worker(db_url)
        await eventually(lambda: sleeping(client, workflow_id), "the workflow to sleep")
        read = asyncio.to_thread(read_event_elsewhere, db_url, workflow_id, "status")
        assert await read == "waiting"
        assert await sleeping(client, workflow_id)  # it was read while the workflow slept

        short = await client.enqueue("streamprog.approval.v1", 0.2, workflow_id="approval-2")
        assert await client.result(short, timeout=WAIT) == "ok"
        read = asyncio.to_thread(read_event_elsewhere, db_url, short, "status")
        assert await read == "done"
