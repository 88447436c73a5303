"""Streams out: ``durable.write_stream`` / ``close_stream`` (and ``_sync`` forms) in workflows,
``read_stream`` / ``read_stream_sync`` on a Client or a Runtime.

* values come in order, each once, to a reader started before they are written and to one
  started after the workflow finished (from the start, or from an offset), on every backend; a
  stream never closed ends when its workflow finishes;
* a replay writes nothing twice (the backend is asked once per position), even when a write
  committed but its acknowledgement was lost;
* a reader is woken by the writes, not by its poll (it polls once an hour here): in one process
  on every backend, and across processes on PostgreSQL (LISTEN/NOTIFY);
* a worker SIGKILLed mid-stream (SQLite file, PostgreSQL): once another takes over, a reader
  that read all along sees every value exactly once, in order;
* bad input names the argument; a write after close is StreamClosedError; an unknown workflow is
  WorkflowNotFoundError.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Processes, eventually

import durable
from durable.errors import BackendUnavailableError
from durable.models import StepStatus, WorkflowStatus
from durable.streams import CLOSE_STEP, WRITE_STEP

REG = durable.Registry()
WAIT = 60.0  # an upper bound for anything the tests wait for, never reached when green
HOUR = 3600.0  # a poll interval no test may rely on
PROG = Path(__file__).with_name("streamprog.py")


@durable.step(name="streams.think")
async def think(i: int, pause: float) -> int:
    await asyncio.sleep(pause)
    return i


@durable.workflow(name="streams.tokens", registry=REG)
async def tokens(n: int, pause: float, close: bool = True) -> int:
    for i in range(n):
        await durable.write_stream("tokens", await think(i, pause))
    if close:
        await durable.close_stream("tokens")
    return n


@durable.workflow(name="streams.napping", registry=REG)
async def napping() -> str:
    for i in range(3):
        await durable.write_stream("s", i)
    await durable.sleep(0.05)  # suspends: the rest is a replay of the first three writes
    for i in range(3, 5):
        await durable.write_stream("s", i)
    await durable.close_stream("s")
    return "ok"


@durable.workflow(name="streams.sync", registry=REG)
def sync_tokens(n: int) -> int:
    for i in range(n):
        durable.write_stream_sync("tokens", {"i": i})
    durable.close_stream_sync("tokens")
    return n


@durable.workflow(name="streams.after-close", registry=REG)
async def after_close() -> None:
    await durable.write_stream("s", 1)
    await durable.close_stream("s")
    await durable.write_stream("s", 2)


BAD: dict[str, tuple[Any, Any]] = {
    "int key": (1, "v"),
    "empty key": ("", "v"),
    "unserializable value": ("s", object()),
}


@durable.workflow(name="streams.bad", registry=REG)
async def bad(which: str) -> None:
    await durable.write_stream("s", "before")
    key, value = BAD[which]
    await durable.write_stream(key, value)


class CountingBackend(durable.InMemoryBackend):
    """Counts the backend's stream writes; with ``lose``, the write of that value commits and
    then reports an outage once (its acknowledgement lost)."""

    def __init__(self, lose: Any = None) -> None:
        super().__init__()
        self.writes: list[Any] = []
        self.lose = lose

    async def write_stream(self, instance_id: str, key: str, value: Any, **kwargs: Any) -> int:
        self.writes.append(value)
        offset = await super().write_stream(instance_id, key, value, **kwargs)
        if value == self.lose:
            self.lose = None
            raise BackendUnavailableError("the connection dropped after the commit")
        return offset


def runtime(backend: durable.PersistentBackend, executor_id: str = "streams") -> durable.Runtime:
    return durable.Runtime(
        backend, executor_id=executor_id, registry=REG, poll_interval=0.01, claim_ttl=5.0
    )


async def collect(reader: Any) -> list[Any]:
    return [value async for value in reader]


# -- in one process, every backend ---------------------------------------------------------------


async def test_readers_get_every_value_in_order_while_it_runs_and_after(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        workflow_id = await rt.enqueue(tokens, 20, 0.01)
        # started before anything is written; woken by the writes (it polls once an hour)
        rt.client.poll_interval = HOUR
        early = asyncio.create_task(collect(rt.read_stream(workflow_id, "tokens")))
        await asyncio.sleep(0.05)
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        assert await asyncio.wait_for(early, WAIT) == list(range(20))
        rt.client.poll_interval = 0.01  # result() polls
        assert await rt.result(workflow_id, timeout=WAIT) == 20
        late = await collect(rt.read_stream(workflow_id, "tokens"))
        tail = await collect(rt.client.read_stream(workflow_id, "tokens", offset=15))
        beyond = await collect(rt.read_stream(workflow_id, "tokens", offset=50))
        steps = await rt.list_steps(workflow_id)
    assert late == list(range(20)) and tail == list(range(15, 20)) and beyond == []
    published = [(s.name, s.input) for s in steps if s.name != "streams.think"]
    assert published == [(WRITE_STEP, {"key": "tokens"})] * 20 + [(CLOSE_STEP, {"key": "tokens"})]


async def test_a_stream_never_closed_ends_when_its_workflow_finishes(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(tokens, 3, 0.01, False)
        reader = asyncio.create_task(collect(rt.read_stream(workflow_id, "tokens")))
        assert await rt.result(workflow_id, timeout=WAIT) == 3
        assert await asyncio.wait_for(reader, WAIT) == [0, 1, 2]
        assert await collect(rt.read_stream(workflow_id, "never-written")) == []


async def test_a_replay_writes_nothing_twice(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(napping, workflow_id="n-1") == "ok"
        values = await collect(rt.read_stream("n-1", "s"))
        info = await rt.get_workflow("n-1")
    assert values == [0, 1, 2, 3, 4]
    assert (info.attempts, info.interruptions) == (1, 0)

    backend = CountingBackend()
    async with runtime(backend) as rt:
        assert await rt.run(napping, workflow_id="n-2") == "ok"
    assert backend.writes == [0, 1, 2, 3, 4]  # the replay after the sleep asked for none


async def test_a_write_whose_acknowledgement_was_lost_is_not_written_again() -> None:
    backend = CountingBackend(lose=1)
    async with runtime(backend) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.01)
        workflow_id = await rt.enqueue(tokens, 4, 0.0)
        assert await rt.result(workflow_id, timeout=WAIT) == 4
        values = await collect(rt.read_stream(workflow_id, "tokens"))
        steps = await rt.list_steps(workflow_id)
    assert values == [0, 1, 2, 3]
    assert backend.writes == [0, 1, 2, 3]  # the replay found value 1's position recorded
    assert [s.name for s in steps].count(WRITE_STEP) == 4


async def test_sync_workflows_write_and_sync_callers_read(backend_url: str) -> None:
    def read(client: durable.Client) -> list[Any]:
        return list(client.read_stream_sync("s-1", "tokens"))

    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(sync_tokens, 4, workflow_id="s-1") == 4
        got = await asyncio.to_thread(read, rt.client)
    assert got == [{"i": i} for i in range(4)]


# -- bad input and misuse ------------------------------------------------------------------------


async def test_a_write_after_close_is_an_error() -> None:
    async with runtime(durable.InMemoryBackend()) as rt:
        with pytest.raises(durable.StreamClosedError, match="stream 's' of workflow 'c-1'"):
            await rt.run(after_close, workflow_id="c-1")
        assert await collect(rt.read_stream("c-1", "s")) == [1]


@pytest.mark.parametrize(
    ("which", "match"),
    [
        ("int key", "key must be a str"),
        ("empty key", "key must not be empty"),
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
        assert await collect(rt.read_stream("bad-1", "s")) == ["before"]
    assert [(s.name, s.status) for s in steps] == [(WRITE_STEP, StepStatus.SUCCEEDED)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"offset": -1}, "offset must be at least 0"),
        ({"offset": "0"}, "offset must be an int"),
        ({"offset": True}, "offset must be an int"),
        ({"key": 7}, "key must be a str"),
        ({"workflow_id": ""}, "workflow_id must not be empty"),
    ],
)
async def test_bad_reads_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    call = {"workflow_id": "w", "key": "k", "offset": 0, **kwargs}
    async with durable.Client(durable.InMemoryBackend()) as client:
        with pytest.raises(durable.InvalidArgumentError, match=match):
            client.read_stream(call["workflow_id"], call["key"], offset=call["offset"])
        with pytest.raises(durable.InvalidArgumentError, match=match):
            client.read_stream_sync(call["workflow_id"], call["key"], offset=call["offset"])


async def test_an_unknown_workflow_and_misuse_are_clear_errors() -> None:
    async with durable.Client(durable.InMemoryBackend()) as client:
        with pytest.raises(durable.WorkflowNotFoundError):
            await collect(client.read_stream("no-such-workflow", "s"))
    with pytest.raises(durable.DurableError, match="outside a workflow"):
        await durable.write_stream("s", 1)
    with pytest.raises(durable.DurableError, match="outside a workflow"):
        durable.close_stream_sync("s")


# -- across processes: wake-ups, and a writer killed mid-stream ----------------------------------


@pytest.fixture
def workers(processes: Processes) -> Callable[[str, str], subprocess.Popen[bytes]]:
    def start(url: str, executor_id: str) -> subprocess.Popen[bytes]:
        return processes(
            PROG,
            *("serve", "--url", url, "--executor-id", executor_id),
            name=executor_id,
        )

    return start


async def test_a_reader_that_nothing_wakes_looks_again_soon(tmp_path: Path) -> None:
    """A reader on another backend object than the writer's (as in another process on SQLite,
    where no write is announced to it) looks again 10 ms after an empty look, then at pauses
    that double: it gets values written 50 ms apart long before its ``poll_interval`` (an
    hour)."""
    url = f"sqlite:///{tmp_path / 'unannounced.db'}"
    async with runtime(durable.connect(url)) as rt, durable.Client(url, poll_interval=HOUR) as c:
        await rt.start_worker(poll_interval=0.01)
        workflow_id = await c.enqueue(tokens, 8, 0.05)
        values = await asyncio.wait_for(collect(c.read_stream(workflow_id, "tokens")), WAIT / 2)
        assert values == list(range(8))
        assert await c.result(workflow_id, timeout=WAIT / 2) == 8


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_reader_is_woken_by_another_process_on_postgres(
    pg_url: str, workers: Callable[[str, str], subprocess.Popen[bytes]]
) -> None:
    async with durable.Client(pg_url, poll_interval=HOUR) as client:
        workflow_id = await client.enqueue("streamprog.tokens.v1", 10, 0.01)
        reader = asyncio.create_task(collect(client.read_stream(workflow_id, "tokens")))
        await asyncio.sleep(0.2)  # reading (nothing yet) and waiting, before the worker starts
        workers(pg_url, "writer-1")
        assert await asyncio.wait_for(reader, WAIT) == list(range(10))


@pytest.mark.slow
async def test_a_writer_killed_mid_stream(
    db_url: str, tmp_path: Path, workers: Callable[[str, str], subprocess.Popen[bytes]]
) -> None:
    n = 60
    async with durable.Client(db_url, poll_interval=0.05) as client:
        workflow_id = await client.enqueue("streamprog.tokens.v1", n, 0.02, workflow_id="t-1")
        seen: list[Any] = []

        async def read() -> None:
            async for value in client.read_stream(workflow_id, "tokens"):
                seen.append(value)

        reader = asyncio.create_task(read())
        first = workers(db_url, "writer-1")

        async def midway() -> bool:
            return len(seen) >= 10

        await eventually(midway, "the first values")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=WAIT) == -signal.SIGKILL
        at_kill = len(seen)
        assert at_kill < n  # killed mid-stream

        second = workers(db_url, "writer-2")  # takes over once the lease expired
        assert await client.result(workflow_id, timeout=WAIT) == n
        await asyncio.wait_for(reader, WAIT)
        stored = [v async for v in client.read_stream(workflow_id, "tokens")]
        steps = await client.list_steps(workflow_id)
        info = await client.get_workflow(workflow_id)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=WAIT) == 0

    assert seen == list(range(n))  # every value once, in order, across the kill
    assert stored == list(range(n))
    assert [s.name for s in steps].count(WRITE_STEP) == n
    assert (info.status, info.interruptions) == (WorkflowStatus.SUCCEEDED, 1)
    assert {s.executor_id for s in steps if s.name == WRITE_STEP} == {"writer-1", "writer-2"}


@pytest.mark.slow
def test_the_example_streams_tokens_as_they_are_written(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "token_stream.py"
    assert "To run:" in script.read_text()
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    reply = "Thanks for your order: it ships tomorrow and arrives on Friday."
    assert lines["live"].strip() == lines["later"].strip() == reply
    assert lines["status"].strip() == "done" and lines["words"].strip() == "11"
