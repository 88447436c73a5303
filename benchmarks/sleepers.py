"""What many sleeping workflows cost the worker that put them to sleep: CPU and memory.

```sh
python benchmarks/sleepers.py [--backend sqlite|postgres|all] [--counts 1000,10000] \
    [--window 10] [--pg-url URL]
```

Per backend and per count N, a fresh worker process (one runtime, one worker of concurrency 16,
the default poll interval of 1 s) runs N workflows that each record one step and then
``durable.sleep(1 hour)``; they are enqueued in bulk by this process. Once all N sleep (their
``durable.sleep`` recorded pending, their task handed back), the worker is measured over
``--window`` seconds: the CPU time it used (a sleeping workflow must cost nothing: no
per-workflow polling, no task or thread per sleeper), and its resident memory (RSS) at the
end, against the same figures for the smaller count. Figures are indicative; nothing here is a
test.

PostgreSQL: ``--pg-url`` (default ``$DURABLE_BENCH_PG_URL`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/durable_bench``), in a schema of its own,
``durable_bench_sleepers``, dropped before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import psutil

import durable

SCHEMA = "durable_bench_sleepers"
REG = durable.Registry()


@durable.step(name="bench.sleepers.before")
async def before(n: int) -> int:
    return n


@durable.workflow(name="bench.sleepers.v1", registry=REG)
async def sleeper(n: int) -> int:
    await before(n)
    await durable.sleep(timedelta(hours=1))
    return n


def serve(kind: str, where: str) -> None:
    """The worker process: serve until killed."""

    async def run() -> None:
        async with durable.Runtime(
            benchlib.connect_backend(kind, where, SCHEMA), registry=REG, recover=False
        ) as rt:
            await rt.start_worker(concurrency=16)
            await asyncio.Event().wait()

    asyncio.run(run())


async def _enqueue_and_wait(kind: str, where: str, count: int) -> float:
    """Enqueue ``count`` sleepers, wait until every one sleeps; seconds it took."""
    begun = time.monotonic()
    async with durable.Client(benchlib.connect_backend(kind, where, SCHEMA)) as client:
        for start in range(0, count, 1000):
            await client.enqueue_many(
                sleeper,
                [durable.Enqueue(args=(n,)) for n in range(start, min(count, start + 1000))],
            )
        while True:
            if await _count_sleeping(client) >= count:
                return time.monotonic() - begun
            await asyncio.sleep(0.5)


async def _count_sleeping(client: durable.Client) -> int:
    found, cursor = 0, None
    while True:
        page = await client.list_waiting(kind="sleep", limit=1000, cursor=cursor)
        found += len(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return found


def measure(kind: str, where: str, count: int, window: float) -> dict[str, float]:
    process = multiprocessing.get_context("spawn").Process(target=serve, args=(kind, where))
    process.start()
    try:
        worker = psutil.Process(process.pid)
        took = asyncio.run(_enqueue_and_wait(kind, where, count))
        time.sleep(2.0)  # the last hand-backs' follow-up (wake-ups, slot refills) settles
        cpu_before = worker.cpu_times()
        time.sleep(window)
        cpu_after = worker.cpu_times()
        rss = worker.memory_info().rss
    finally:
        process.kill()
        process.join()
    used = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return {
        "count": count,
        "to_sleep_s": took,
        "cpu_ms_per_s": used * 1000 / window,
        "rss_mb": rss / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="all", choices=["sqlite", "postgres", "all"])
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--pg-url", default=benchlib.DEFAULT_PG_URL)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    kinds = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    print(f"{'backend':<10}{'sleeping':>10}{'to sleep s':>12}{'CPU ms/s':>10}{'RSS MB':>9}")
    for kind in kinds:
        for count in counts:
            with tempfile.TemporaryDirectory() as tmp:
                if kind == "sqlite":
                    where = f"sqlite:///{Path(tmp) / 'sleepers.db'}"
                else:
                    where = args.pg_url
                    benchlib.ensure_pg_database(where)
                    benchlib.reset_pg_schema(where, SCHEMA)
                try:
                    figures = measure(kind, where, count, args.window)
                finally:
                    if kind == "postgres":
                        benchlib.drop_pg_schema(where, SCHEMA)
            print(
                f"{kind:<10}{count:>10}{figures['to_sleep_s']:>12.1f}"
                f"{figures['cpu_ms_per_s']:>10.2f}{figures['rss_mb']:>9.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
