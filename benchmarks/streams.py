"""Streams out: how fast a workflow writes a stream, and how soon another process reads a value.

```sh
python benchmarks/streams.py [--backend memory|sqlite|postgres|all] [--values 2000] \
    [--latency-values 300] [--pause-ms 10] [--poll-interval 1.0] [--pg-url URL]
```

Per backend:

* **write**: one workflow writes ``--values`` values to one stream (``durable.write_stream``,
  each a recorded position written with its value in one fenced transaction), run by a runtime
  in this process; values/s is the number of values over the workflow's run time.
* **write -> read** (SQLite and PostgreSQL: what several processes share): a worker in another
  process runs a workflow that writes ``--latency-values`` values, each its own ``time.time()``
  at the write, ``--pause-ms`` apart; a :class:`~durable.Client` in this process reads the
  stream (``read_stream``) with a poll interval of ``--poll-interval`` (1 s by default: on
  PostgreSQL the reader must be woken by NOTIFY, not find values at its next poll; on SQLite
  other processes' writes are only found by polling, so its figure is about half the poll
  interval). Latency is the time from a value's write (before its commit) to its read; both
  clocks are this host's. Reported: p50, p99 and max in ms.

Figures are indicative: nothing here is a test. PostgreSQL: ``--pg-url`` (default
``$DURABLE_BENCH_PG_URL`` or ``postgresql+psycopg://postgres@127.0.0.1:5432/durable_bench``),
in a schema of its own, ``durable_bench_streams``, dropped before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

import durable
import durable.worker

SCHEMA = "durable_bench_streams"
REG = durable.Registry()


@durable.workflow(name="bench.streams.write.v1", registry=REG)
async def writer(n: int) -> int:
    for i in range(n):
        await durable.write_stream("s", i)
    await durable.close_stream("s")
    return n


@durable.workflow(name="bench.streams.stamps.v1", registry=REG)
async def stamps(n: int, pause: float) -> int:
    for _ in range(n):
        await asyncio.sleep(pause)
        await durable.write_stream("s", time.time())  # a benchmark's stamp, not a replayed value
    await durable.close_stream("s")
    return n


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def connect(kind: str, url: str) -> durable.PersistentBackend:
    if kind == "memory":
        return durable.InMemoryBackend()
    if kind == "postgres":
        return benchlib.pg_connect_backend(url, SCHEMA)
    return durable.connect(url)


async def write_rate(backend: durable.PersistentBackend, values: int) -> dict[str, float]:
    async with durable.Runtime(backend, registry=REG, recover=False) as rt:
        began = time.perf_counter()
        workflow_id = await rt.enqueue(writer, values)
        await rt.start_worker(concurrency=1, poll_interval=0.05)
        await rt.result(workflow_id, timeout=600)
        info = await rt.get_workflow(workflow_id)
        wall = time.perf_counter() - began
        read = [v async for v in rt.read_stream(workflow_id, "s")]
    assert read == list(range(values)), "the stream is not every value once, in order"
    assert info.started_at is not None and info.completed_at is not None
    run = (info.completed_at - info.started_at).total_seconds()
    return {"values": values, "values_per_s": values / run, "wall_s": wall}


def serve(kind: str, url: str) -> None:
    """The writer process: a worker serving :data:`REG` until it is terminated."""

    async def main() -> None:
        runtime = durable.Runtime(connect(kind, url), registry=REG, recover=False)
        await durable.worker.serve(runtime, concurrency=2, poll_interval=0.05)

    asyncio.run(main())


async def read_latency(
    kind: str, url: str, values: int, pause: float, poll: float
) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=serve, args=(kind, url), daemon=True)
    process.start()
    try:
        async with durable.Client(connect(kind, url), poll_interval=poll) as client:
            workflow_id = await client.enqueue(stamps.name, values, pause)
            late: list[float] = []
            async for stamp in client.read_stream(workflow_id, "s"):
                late.append((time.time() - stamp) * 1000)
            await client.result(workflow_id, timeout=600)
    finally:
        process.terminate()
        process.join(timeout=30)
    assert len(late) == values
    return {
        "p50_ms": statistics.median(late),
        "p99_ms": percentile(late, 0.99),
        "max_ms": max(late),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="all", choices=["memory", "sqlite", "postgres", "all"])
    parser.add_argument("--values", type=int, default=2000)
    parser.add_argument("--latency-values", type=int, default=300)
    parser.add_argument("--pause-ms", type=float, default=10.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--pg-url", default=benchlib.DEFAULT_PG_URL)
    args = parser.parse_args(argv)
    kinds = ["memory", "sqlite", "postgres"] if args.backend == "all" else [args.backend]
    print(
        f"{'backend':<10}{'values/s':>10}{'read p50 ms':>13}{'read p99 ms':>13}{'read max ms':>13}"
    )
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.pg_url if kind == "postgres" else f"sqlite:///{Path(tmp) / 'streams.db'}"
            if kind == "postgres":
                benchlib.ensure_pg_database(url)
                benchlib.reset_pg_schema(url, SCHEMA)
            try:
                rate = asyncio.run(write_rate(connect(kind, url), args.values))
                latency: dict[str, Any] = {}
                if kind != "memory":
                    if kind == "sqlite":  # a file of its own: the rate's workflow is not read
                        url = f"sqlite:///{Path(tmp) / 'latency.db'}"
                    latency = asyncio.run(
                        read_latency(
                            kind, url, args.latency_values, args.pause_ms / 1000, args.poll_interval
                        )
                    )
            finally:
                if kind == "postgres":
                    benchlib.drop_pg_schema(url, SCHEMA)
        cells = [
            f"{latency[k]:>13.1f}" if latency else f"{'-':>13}"
            for k in ("p50_ms", "p99_ms", "max_ms")
        ]
        print(f"{kind:<10}{rate['values_per_s']:>10.0f}{''.join(cells)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
