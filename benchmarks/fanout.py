"""``durable.map`` at scale: items per second for a small and a large fan-out.

```sh
python benchmarks/fanout.py [--backend sqlite|postgres|all] [--items 500,5000] \
    [--concurrency 16] [--pg-url URL]
```

One workflow maps a no-op step over ``--items`` items (each size in turn, on a fresh
database); one worker in this process (``start_worker(concurrency=--concurrency)``) runs the
workflow and its items. Timed from the enqueue to the workflow's result: every item claimed,
run, recorded, and the workflow woken once the last one is in.

Target: the largest fan-out runs at least half as many items per second as the smallest (an
item's cost must not grow with the size of its map: until 2026-12-06 each item read every step
of its workflow, and 2,000 items on SQLite took 72 s against 3.9 s for 500). Figures are
indicative: nothing here is a test.

PostgreSQL: ``--pg-url`` (default ``$DURABLE_BENCH_PG_URL`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/durable_bench``), in a schema of its own,
``durable_bench_fanout``, dropped before and after each run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

import durable

SCHEMA = "durable_bench_fanout"
TARGET_RATIO = 0.5

REG = durable.Registry()


@durable.step(name="bench.fanout.item")
async def item(x: int) -> int:
    return x


@durable.workflow(name="bench.fanout.v1", registry=REG)
async def fan(n: int) -> int:
    return len(await durable.map(item, range(n)))


async def measure(kind: str, url: str, items: int, concurrency: int) -> float:
    """Items per second of one map over ``items`` items."""
    async with durable.Runtime(
        benchlib.connect_backend(kind, url, SCHEMA), registry=REG, recover=False
    ) as rt:
        await rt.start_worker(concurrency=concurrency, poll_interval=0.05)
        started = time.perf_counter()
        workflow_id = await rt.enqueue(fan, items)
        if await rt.result(workflow_id, timeout=3600) != items:
            raise RuntimeError(f"the map over {items} items lost some")
        return items / (time.perf_counter() - started)


def run_one(kind: str, pg_url: str, items: int, concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        url = pg_url if kind == "postgres" else f"sqlite:///{Path(tmp) / 'fanout.db'}"
        if kind == "postgres":
            benchlib.ensure_pg_database(url)
            benchlib.reset_pg_schema(url, SCHEMA)
        try:
            return asyncio.run(measure(kind, url, items, concurrency))
        finally:
            if kind == "postgres":
                benchlib.drop_pg_schema(url, SCHEMA)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="all", choices=["sqlite", "postgres", "all"])
    parser.add_argument("--items", default="500,5000", help="map sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pg-url", default=benchlib.DEFAULT_PG_URL)
    args = parser.parse_args(argv)
    sizes = sorted(int(n) for n in args.items.split(","))
    kinds = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    missed = False
    print(f"{'backend':<10}{'items':>8}{'items/s':>10}")
    for kind in kinds:
        rates = {}
        for size in sizes:
            rates[size] = run_one(kind, args.pg_url, size, args.concurrency)
            print(f"{kind:<10}{size:>8}{rates[size]:>10,.0f}", flush=True)
        ratio = rates[sizes[-1]] / rates[sizes[0]]
        ok = ratio >= TARGET_RATIO
        missed |= not ok
        print(
            f"{kind}: {sizes[-1]} items at {ratio:.2f}x the rate of {sizes[0]} "
            f"(target at least {TARGET_RATIO:g}x: {'met' if ok else 'MISSED'})"
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
