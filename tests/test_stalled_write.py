"""A write of an execution's own that never comes back does not keep the execution for good.

A connection to the database can go silent: the host vanished, a proxy or NAT in between
dropped the flow, and the bytes sent on it are neither answered nor refused. A worker whose
step record went out on such a connection waited for it for ever, while the lease's heartbeats,
sent on other connections (new ones work), kept renewing the lease: no other worker could take
the execution over, and it stayed ``running`` for good (seen on MariaDB behind a proxy that
black-holed every open connection).

Now a heartbeat renews no lease whose execution has waited for a write of its own (a step's
record, its outcome) for longer than ``claim_ttl``: it logs ``heartbeat.stalled`` and lets the
lease lapse, another worker takes the execution over and finishes it, and the stuck write, when
it finally reaches the database, is refused by the lease's fence.

Real processes on PostgreSQL: worker ``w1`` (tests/stallprog.py, ``claim_ttl`` 3 s) reaches the
database through :class:`SilencingProxy`, which silences the one connection that carries the
second step's record, or the execution's outcome (found by what they write in the bytes): those
bytes are held, nothing is answered, nothing is closed, while every other connection, old or
new, flows. Worker ``w2``, connected directly, must finish the execution; no step whose record
was acknowledged runs again. Then the held bytes are delivered: the late write changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import Processes

import durable

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(120)]

PROG = Path(__file__).with_name("stallprog.py")
WORKFLOW = "stallprog.two.v1"
#: What the silenced write carries, for an input of 4: the second step's output (its record),
#: or the workflow's output (its outcome), and the step bodies that run in all
SILENCED = {
    "record": (b"hold-me-5", {"first w1": 1, "second w1": 1, "second w2": 1}),
    "outcome": (b"finished:hold", {"first w1": 1, "second w1": 1}),
}
OUTPUT = "finished:hold-me-5"


class SilencingProxy:
    """A TCP proxy to a PostgreSQL server, on the test's event loop. The first connection whose
    client sends bytes containing ``marker`` goes silent from those bytes on: they and all that
    follow are held, the server answers nothing (it never sees them), and neither side is
    closed. Every other connection flows. :meth:`deliver` sends the held bytes to the server at
    last, and the connection flows again (the write lands late)."""

    def __init__(self, target: tuple[str, int], marker: bytes) -> None:
        self._target = target
        self._marker = marker
        self.silenced = asyncio.Event()  # a connection went silent
        self.answered = asyncio.Event()  # the server answered the delivered bytes
        self._held: list[bytes] = []
        self._resume = asyncio.Event()
        self._silent_sink: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    def url(self, pg_url: str) -> str:
        return sa.make_url(pg_url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def deliver(self) -> None:
        self._resume.set()
        if self._silent_sink is not None:
            self._silent_sink.write(b"".join(self._held))
            self._held = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        mine = {"silent": False}
        for task in (
            asyncio.create_task(self._upstream(reader, up_writer, mine)),
            asyncio.create_task(self._downstream(up_reader, writer, mine)),
        ):
            self._tasks.add(task)

    async def _upstream(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, mine: dict[str, bool]
    ) -> None:
        tail = b""  # the marker may straddle two reads
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                if not mine["silent"] and not self.silenced.is_set():
                    if self._marker in tail + data:
                        mine["silent"] = True
                        self.silenced.set()
                    tail = data[-len(self._marker) :]
                if mine["silent"] and not self._resume.is_set():
                    self._silent_sink = sink
                    self._held.append(data)
                    continue  # swallowed: never answered, never closed
                sink.write(data)
                await sink.drain()
            sink.transport.abort()

    async def _downstream(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, mine: dict[str, bool]
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                if mine["silent"] and self._resume.is_set():
                    self.answered.set()
                sink.write(data)
                await sink.drain()
            sink.transport.abort()


@pytest.fixture(params=list(SILENCED))
async def proxy(pg_url: str, request: pytest.FixtureRequest) -> AsyncIterator[SilencingProxy]:
    url = sa.make_url(pg_url)
    marker = SILENCED[request.param][0]
    proxy = SilencingProxy((url.host or "127.0.0.1", url.port or 5432), marker)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def _runs(path: Path) -> Counter[str]:
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


async def test_a_write_that_never_comes_back_lets_the_lease_lapse(
    pg_url: str,
    proxy: SilencingProxy,
    processes: Processes,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    silenced = request.node.callspec.params["proxy"]
    bodies = Counter(SILENCED[silenced][1])
    runs = tmp_path / "runs.log"

    def worker(url: str, executor_id: str) -> subprocess.Popen[bytes]:
        return processes(
            PROG,
            *("serve", "--url", url, "--executor-id", executor_id, "--runs", str(runs)),
            name=executor_id,
        )

    async with durable.Client(pg_url, poll_interval=0.1) as client:  # creates the schema
        w1 = worker(proxy.url(pg_url), "w1")
        wid = await client.enqueue(WORKFLOW, 4)
        await asyncio.wait_for(proxy.silenced.wait(), 60)  # the write is out, and held
        assert _runs(runs) == Counter({"first w1": 1, "second w1": 1})
        w2 = worker(pg_url, "w2")
        try:
            # 3 s for the stall to be seen, up to 3 s more for the lease to lapse, the start
            # of w2: well within 30 s. Before, the lease was renewed for ever
            assert await client.result(wid, timeout=30) == OUTPUT
        except TimeoutError:
            pytest.fail(
                "no other worker took the execution over; w1 said:\n"
                + (tmp_path / "w1.out").read_text()[-3000:]
            )
        said = (tmp_path / "w1.out").read_text()
        assert "[heartbeat.stalled]" in said, said
        assert "more than claim_ttl (3 s)" in said, said
        # no step whose record was acknowledged ran again
        assert _runs(runs) == bodies
        second_by = "w2" if silenced == "record" else "w1"
        recorded = [("stallprog.first", "w1", 5), ("stallprog.second", second_by, "hold-me-5")]
        steps = await client.list_steps(wid)
        assert [(s.name, s.executor_id, s.output) for s in steps] == recorded
        # the stuck write reaches the database at last: the fence refuses it
        proxy.deliver()
        await asyncio.wait_for(proxy.answered.wait(), 30)
        await asyncio.sleep(0.5)
        steps = await client.list_steps(wid)
        assert [(s.name, s.executor_id, s.output) for s in steps] == recorded
        info = await client.get_workflow(wid)
        assert (info.status, info.output) == (durable.WorkflowStatus.SUCCEEDED, OUTPUT)
        assert info.interruptions == 1  # w1's attempt, taken over
        assert _runs(runs) == bodies
        assert w1.poll() is None and w2.poll() is None  # both workers still serve
