"""Send -> recv latency across processes: how long a workflow waiting in ``durable.recv`` takes
to have a message a client in another process sent.

```sh
python benchmarks/send_recv.py [--backend sqlite|postgres|all] [--messages 100] \
    [--poll-interval 1.0] [--pg-url URL]
```

A worker process (``durable.worker.serve``, polling every ``--poll-interval`` seconds, 1 s by
default: the send must wake it) runs one workflow that, ``--messages`` times, waits in
``durable.recv("ping")`` and then runs a step that returns ``time.time()``. This process sends
each message (its value: ``time.time()`` just before ``client.send``) once the workflow waits
again, after a random pause of 10 to 30 ms. Latency is the step's time minus the value: the
send's commit, the wake-up (LISTEN/NOTIFY on PostgreSQL; SQLite cannot signal another process,
so its worker finds the message at its next poll: pass ``--poll-interval 0.1`` to see it), the
claim, the replay of the workflow's history up to the receive, the receive recorded with its
message, and the start of the next step. Both processes read this machine's clock.

Target: p50 at most 25 ms on PostgreSQL. Figures are indicative: nothing here is a test.

PostgreSQL: ``--pg-url`` (default ``$DURABLE_BENCH_PG_URL`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/durable_bench``), in a schema of its own,
``durable_bench_send_recv``, dropped before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

import durable
import durable.worker
from durable.models import RECV_STEP, StepStatus

SCHEMA = "durable_bench_send_recv"
NAME = "bench.send_recv.v1"
TARGET_P50_MS = 25.0

REG = durable.Registry()


@durable.step(name="bench.send_recv.stamp")
async def stamp() -> float:
    return time.time()


@durable.workflow(name=NAME, registry=REG)
async def pinged(count: int) -> int:
    for _ in range(count):
        await durable.recv("ping")
        await stamp()
    return count


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def waits(client: durable.Client, workflow_id: str, received: int) -> bool:
    """The workflow waits in its receive number ``received`` (0-based)."""
    steps = await client.list_steps(workflow_id)
    return (
        len(steps) == 2 * received + 1
        and steps[-1].name == RECV_STEP
        and steps[-1].status is StepStatus.PENDING
    )


async def until(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def start_worker(kind: str, url: str, poll: float) -> subprocess.Popen[bytes]:
    """The worker process that runs the receiving workflow."""
    command = [sys.executable, __file__, "--child", "--backend", kind, "--url", url]
    return subprocess.Popen([*command, "--poll-interval", str(poll)], stdin=subprocess.DEVNULL)


async def measure(kind: str, url: str, messages: int, poll: float) -> dict[str, float]:
    async with durable.Client(benchlib.connect_backend(kind, url, SCHEMA)) as client:
        child = start_worker(kind, url, poll)
        try:
            workflow_id = await client.enqueue(NAME, messages)
            for i in range(messages):
                await until(lambda i=i: waits(client, workflow_id, i), f"receive {i}")
                await asyncio.sleep(random.uniform(0.010, 0.030))
                await client.send(workflow_id, "ping", time.time())
            await client.result(workflow_id, timeout=120)
            steps = await client.list_steps(workflow_id)
        finally:
            child.terminate()
            child.wait(timeout=30)
    sent = [s.output for s in steps if s.name == RECV_STEP]
    stamped = [s.output for s in steps if s.name != RECV_STEP]
    latency = [(t - s) * 1000 for s, t in zip(sent, stamped, strict=True)]
    return {
        "messages": len(latency),
        "p50_ms": statistics.median(latency),
        "p99_ms": percentile(latency, 0.99),
        "max_ms": max(latency),
    }


async def serve(kind: str, url: str, poll: float) -> None:
    runtime = durable.Runtime(
        benchlib.connect_backend(kind, url, SCHEMA), registry=REG, recover=False
    )
    await durable.worker.serve(runtime, concurrency=4, poll_interval=poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="all", choices=["sqlite", "postgres", "all"])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--pg-url", default=benchlib.DEFAULT_PG_URL)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        asyncio.run(serve(args.backend, args.url, args.poll_interval))
        return 0
    kinds = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    print(f"{'backend':<10}{'poll s':>8}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "postgres":
                url = args.pg_url
                benchlib.ensure_pg_database(url)
                benchlib.reset_pg_schema(url, SCHEMA)
            else:
                url = f"sqlite:///{Path(tmp) / 'send_recv.db'}"
            try:
                figures = asyncio.run(measure(kind, url, args.messages, args.poll_interval))
            finally:
                if kind == "postgres":
                    benchlib.drop_pg_schema(url, SCHEMA)
        verdict = ""
        if kind == "postgres":
            ok = figures["p50_ms"] <= TARGET_P50_MS
            verdict = f"  (target p50 <= {TARGET_P50_MS:g} ms: {'met' if ok else 'MISSED'})"
        print(
            f"{kind:<10}{args.poll_interval:>8g}{figures['messages']:>6}{figures['p50_ms']:>10.1f}"
            f"{figures['p99_ms']:>10.1f}{figures['max_ms']:>10.1f}{verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
