"""Steps per second with many workflows checkpointing at once, next to one workflow alone.

For each backend, on a fresh database, in one process (``runtime.run``, no worker): one
workflow of ``--steps`` no-op ``async def`` steps alone, then ``--concurrent`` such workflows
at once (``asyncio.gather``), alternating for ``--repeat`` rounds after ``--warmup``. Reported:
steps per second over the wall time of each (first call to last return), the concurrent rate
over the single one, and the steps per second measured inside the single workflow's body.

Without a group commit each step is its own round trip (PostgreSQL) or its own write
transaction (SQLite), so many workflows can only overlap their round trips; issue #11's target
is at least 4x a single workflow's rate with 16 workflows (judged, not yet a requirement).

    python benchmarks/step_concurrency.py [--backend sqlite|postgres|all] [--steps 500]
        [--concurrent 16] [--repeat 3] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import workerlib as wl

import durable

TARGET_SPEEDUP = 4.0


async def _round(
    runtime: durable.Runtime, steps: int, count: int, tag: str
) -> tuple[float, list[float]]:
    """Run ``count`` workflows of ``steps`` steps at once: (wall seconds of the whole round,
    each workflow's body seconds)."""
    started = time.perf_counter()
    bodies = await asyncio.gather(
        *(runtime.run(wl.overhead_async, steps, workflow_id=f"{tag}-{i}") for i in range(count))
    )
    return time.perf_counter() - started, [b[0] for b in bodies]


async def bench_backend(kind: str, args: argparse.Namespace, sqlite_dir: Path) -> dict[str, Any]:
    db = wl.Database.fresh(kind, "concurrency", pg_url=args.pg_url, sqlite_dir=sqlite_dir)
    single: list[float] = []
    single_body: list[float] = []
    many: list[float] = []
    try:
        runtime = durable.Runtime(
            db.connect(), executor_id="bench-concurrency", recover=False, registry=wl.REGISTRY
        )
        async with runtime:
            for n in range(args.warmup + args.repeat):
                one_wall, (one_body,) = await _round(runtime, args.steps, 1, f"one-{n}")
                many_wall, _ = await _round(runtime, args.steps, args.concurrent, f"many-{n}")
                kept = n >= args.warmup
                one_rate = args.steps / one_wall
                many_rate = args.steps * args.concurrent / many_wall
                bl.log(
                    f"{kind} round {n + 1}/{args.warmup + args.repeat}"
                    f"{'' if kept else ' (warm-up)'}: one workflow {one_rate:,.0f} steps/s, "
                    f"{args.concurrent} at once {many_rate:,.0f} steps/s"
                )
                if kept:
                    single.append(one_rate)
                    single_body.append(args.steps / one_body)
                    many.append(many_rate)
        statuses = db.status_counts()
    finally:
        db.finish(keep=args.keep)
    one, together = statistics.median(single), statistics.median(many)
    return {
        "steps": args.steps,
        "concurrent": args.concurrent,
        "single_steps_per_second": round(one, 1),
        "single_body_steps_per_second": round(statistics.median(single_body), 1),
        "concurrent_steps_per_second": round(together, 1),
        "speedup": bl.ratio(together, one),
        "rounds": {
            "single": [round(x, 1) for x in single],
            "concurrent": [round(x, 1) for x in many],
        },
        "statuses": statuses,
    }


def evaluate(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        wl.at_least(
            f"{r['concurrent']} concurrent workflows' steps/s over one's (issue #11)",
            r["speedup"],
            TARGET_SPEEDUP,
            "x",
            backend=backend,
        )
        for backend, r in results.items()
    ]


def report(document: dict[str, Any]) -> None:
    bl.print_table(
        f"Steps per second: workflows of {document['config']['steps']} no-op steps, one alone "
        f"and {document['config']['concurrent']} at once (medians of "
        f"{document['config']['repeat']} rounds)",
        ["backend", "one workflow", "inside its body", "at once", "ratio"],
        [
            (
                backend,
                r["single_steps_per_second"],
                r["single_body_steps_per_second"],
                r["concurrent_steps_per_second"],
                f"{r['speedup']:.2f}x",
            )
            for backend, r in document["results"].items()
        ],
    )
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--steps", type=int, help="steps per workflow (500)")
    parser.add_argument("--concurrent", type=int, default=16, help="workflows at once (16)")
    parser.add_argument("--repeat", type=int, help="measured rounds (3)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds (1)")
    bl.add_run_options(parser)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 20 if args.quick else 500
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.steps < 1 or args.concurrent < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("--steps, --concurrent and --repeat must be positive")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await wl.run_per_backend(
        args,
        "step_concurrency",
        {
            "steps": args.steps,
            "concurrent": args.concurrent,
            "repeat": args.repeat,
            "warmup": args.warmup,
        },
        bench_backend,
        evaluate,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
