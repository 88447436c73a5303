"""How late a durable sleep wakes up: ``durable.sleep(delta)`` run by a worker.

```sh
python benchmarks/sleep_wakeup.py [--backend memory|sqlite|postgres|all] [--workflows 200] \
    [--sleep-ms 50] [--poll-interval 1.0] [--pg-url URL]
```

Per backend, one runtime with one worker (``--poll-interval``, default 1 s, the default of
``start_worker``: the worker must be woken at the wake-up time, not find the workflow at its
next poll) runs ``--workflows`` workflows enqueued at once, each ``sleep(--sleep-ms)`` then one
step. Lateness is the time from the wake-up time the sleep recorded (on the store's clock) to
the start of the step after it (this host's clock; on PostgreSQL the server runs on this host in
the reference setup, so the two clocks are the same). Reported: p50, p99 and max, in ms, and
how many workflows ran. Figures are indicative: nothing here is a test.

PostgreSQL: ``--pg-url`` (default ``$DURABLE_BENCH_PG_URL`` or
``postgresql+psycopg://postgres@127.0.0.1:5432/durable_bench``), in a schema of its own,
``durable_bench_sleep``, dropped before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib

import durable

SCHEMA = "durable_bench_sleep"

REG = durable.Registry()
STARTED: dict[str, datetime] = {}


@durable.step(name="bench.sleep.after")
async def after() -> None:
    STARTED[durable.workflow_id()] = datetime.now(UTC)


@durable.workflow(name="bench.sleep.v1", registry=REG)
async def napper(seconds: float) -> None:
    await durable.sleep(seconds)
    await after()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_one(
    backend: durable.PersistentBackend, workflows: int, sleep_ms: float, poll: float
) -> dict[str, float]:
    STARTED.clear()
    async with durable.Runtime(backend, registry=REG, recover=False) as rt:
        await rt.start_worker(concurrency=max(workflows, 1), poll_interval=poll)
        begun = time.monotonic()
        ids = await asyncio.gather(*(rt.enqueue(napper, sleep_ms / 1000) for _ in range(workflows)))
        for workflow_id in ids:
            await rt.result(workflow_id, timeout=120)
        wall = time.monotonic() - begun
        late = []
        for workflow_id in ids:
            steps = await rt.list_steps(workflow_id)
            woke = datetime.fromisoformat(steps[0].output)
            late.append((STARTED[workflow_id] - woke).total_seconds() * 1000)
    return {
        "workflows": workflows,
        "p50_ms": statistics.median(late),
        "p99_ms": percentile(late, 0.99),
        "max_ms": max(late),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="all", choices=["memory", "sqlite", "postgres", "all"])
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--sleep-ms", type=float, default=50.0)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument(
        "--pg-url",
        default=benchlib.DEFAULT_PG_URL,
    )
    args = parser.parse_args(argv)
    kinds = ["memory", "sqlite", "postgres"] if args.backend == "all" else [args.backend]
    print(f"{'backend':<10}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'wall s':>9}")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            backend: durable.PersistentBackend
            if kind == "memory":
                backend = durable.InMemoryBackend()
            elif kind == "sqlite":
                backend = durable.connect(f"sqlite:///{Path(tmp) / 'sleep.db'}")
            else:
                benchlib.ensure_pg_database(args.pg_url)
                benchlib.reset_pg_schema(args.pg_url, SCHEMA)
                backend = benchlib.pg_connect_backend(args.pg_url, SCHEMA)
            try:
                figures = asyncio.run(
                    run_one(backend, args.workflows, args.sleep_ms, args.poll_interval)
                )
            finally:
                if kind == "postgres":
                    benchlib.drop_pg_schema(args.pg_url, SCHEMA)
        print(
            f"{kind:<10}{figures['workflows']:>6}{figures['p50_ms']:>10.1f}"
            f"{figures['p99_ms']:>10.1f}{figures['max_ms']:>10.1f}{figures['wall_s']:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
