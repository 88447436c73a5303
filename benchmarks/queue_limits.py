"""Claim throughput with queue limits on versus off.

On a fresh database (a SQLite file, or PostgreSQL), ``--tasks`` (4,000) workflow tasks are
created in a queue; ``--claimers`` (4) coroutines of one process claim them ``--batch`` (10) at a
time, completing each claim at once, until none is left; the drain is timed. Three ways:

* **off**: the queue has no stored limit: the ordinary claim
  (:meth:`~durable.backends.PersistentBackend.claim_available_tasks`), as every worker claims
  today;
* **on**: the queue is stored with limits that never bind (``concurrency`` and a rate limit far
  above what the drain reaches): the limited claim
  (:meth:`~durable.backends.PersistentBackend.claim_queue_tasks`), its lock, counts and start
  records included;
* **on, binding**: ``concurrency`` = ``--claimers`` x ``--batch`` / 2, so that claimers find
  the queue full half the time (the price of polling a full queue).

Each is run ``--rounds`` (3) times, alternated, and the medians reported (tasks claimed per
second) with the ratio off / on (target: at most 1.3).

    python benchmarks/queue_limits.py [--backend sqlite|postgres|all] [--tasks 4000]
        [--claimers 4] [--batch 10] [--rounds 3] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

import durable
from durable.backends.base import PersistentBackend
from durable.models import QueueInfo, TaskSpec, WorkflowSnapshot

TTL = timedelta(seconds=300)
PG_ADMIN = os.environ.get("DURABLE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _fill(backend: PersistentBackend, queue: str, count: int) -> None:
    prefix = uuid.uuid4().hex[:8]
    for start in range(0, count, 1000):
        await backend.create_workflows(
            [
                (
                    WorkflowSnapshot(id=f"{prefix}-{i}", name="job", queue=queue),
                    TaskSpec(instance_id=f"{prefix}-{i}", name="job", queue=queue),
                )
                for i in range(start, min(count, start + 1000))
            ]
        )


async def _drain(
    backend: PersistentBackend, queue: str, limited: bool, claimers: int, batch: int, count: int
) -> float:
    """Seconds to claim (and complete) ``count`` tasks of ``queue``."""
    done = 0

    async def claimer(worker: str) -> None:
        nonlocal done
        while done < count:
            if limited:
                claims = await backend.claim_queue_tasks(worker, queue, batch, TTL)
            else:
                claims = await backend.claim_available_tasks(
                    worker, batch, TTL, queues=[queue], include_own=False
                )
            if not claims:
                await asyncio.sleep(0.001)
                continue
            done += len(claims)
            for claim in claims:
                await backend.complete_task(claim.instance_id, claim.task_id, worker)

    started = time.perf_counter()
    await asyncio.gather(*(claimer(f"w{i}") for i in range(claimers)))
    return time.perf_counter() - started


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    backend = durable.connect(url)
    modes = {
        "off": None,
        "on": QueueInfo(name="on", concurrency=1_000_000, rate_limit=1_000_000, rate_period=1.0),
        "on_binding": QueueInfo(name="on_binding", concurrency=args.claimers * args.batch // 2),
    }
    rates: dict[str, list[float]] = {m: [] for m in modes}
    async with backend:
        for info in modes.values():
            if info is not None:
                await backend.put_queue(info)
        for _ in range(args.rounds):
            for mode, info in modes.items():
                await _fill(backend, mode, args.tasks)
                seconds = await _drain(
                    backend, mode, info is not None, args.claimers, args.batch, args.tasks
                )
                rates[mode].append(args.tasks / seconds)
    result = {mode: statistics.median(r) for mode, r in rates.items()}
    result["ratio_off_on"] = result["off"] / result["on"]
    result["ratio_off_on_binding"] = result["off"] / result["on_binding"]
    return result


def _pg_database() -> tuple[str, str]:
    name = f"durable_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return name, f"{base}/{name}"


def _drop(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--claimers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if args.backend in ("sqlite", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = asyncio.run(run(f"sqlite:///{Path(tmp) / 'bench.db'}", args))
    if args.backend in ("postgres", "all"):
        name, url = _pg_database()
        try:
            results["postgres"] = asyncio.run(run(url, args))
        finally:
            _drop(name)
    for backend, r in results.items():
        print(
            f"{backend}: off {r['off']:.0f}/s, on {r['on']:.0f}/s "
            f"(off/on {r['ratio_off_on']:.2f}x, target <= 1.3), "
            f"on with a binding concurrency {r['on_binding']:.0f}/s "
            f"({r['ratio_off_on_binding']:.2f}x)"
        )
    return results


if __name__ == "__main__":
    main()
