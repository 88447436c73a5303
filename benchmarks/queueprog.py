"""Worker processes for ``vs_queues.py`` (not a benchmark itself): one job-queue worker per
process, durable's, PgQueuer's or procrastinate's, started through
:func:`workerlib.child_command` (``python -c``).

``work --system SYSTEM ...``: imports everything and connects, says ``ready``, waits for
``go`` on stdin, then serves until ``stop`` on stdin, and prints one JSON line: how many jobs it
ran, the first start and the last end of a job (epoch seconds), its CPU time. With
``--print-starts``, each job also prints ``start <key> <time.time()>`` as it starts (the
latency probe). Jobs do nothing else.

* ``durable``: :func:`durable.worker.serve` with ``--concurrency`` executions at a time, on the
  schema ``--schema``; the jobs are one-step workflows (:data:`NOOP`: one no-op step) and
  probes (:data:`PROBE`: prints when its body starts, then one no-op step).
* ``pgqueuer``: ``PgQueuer(AsyncpgDriver(connection))`` with one entrypoint per job kind and
  ``run(batch_size=--batch-size)`` (PgQueuer's default is 10), as its README's consumer.
* ``procrastinate``: ``App(connector=PsycopgConnector(...))`` with one task per job kind and
  ``run_worker_async(concurrency=--concurrency)`` (LISTEN/NOTIFY on, its default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

import durable
import durable.worker

NOOP = "bench.queues.noop.v1"
PROBE = "bench.queues.probe.v1"
REGISTRY = durable.Registry()


class Tally:
    """Jobs run in this process: how many, the first start, the last end."""

    def __init__(self, print_starts: bool) -> None:
        self.count = 0
        self.first_start: float | None = None
        self.last_end: float | None = None
        self.print_starts = print_starts

    def start(self, key: str) -> None:
        now = time.time()
        if self.first_start is None:
            self.first_start = now
        if self.print_starts:
            print(f"start {key} {now!r}", flush=True)

    def end(self) -> None:
        self.count += 1
        self.last_end = time.time()


TALLY = Tally(False)


@durable.step
async def nothing(i: Any) -> Any:
    return i


@durable.workflow(name=NOOP, registry=REGISTRY)
async def noop(i: int) -> int:
    TALLY.start(str(i))
    result: int = await nothing(i)
    TALLY.end()
    return result


@durable.workflow(name=PROBE, registry=REGISTRY)
async def probe(key: str) -> str:
    TALLY.start(key)
    result: str = await nothing(key)
    TALLY.end()
    return result


async def wait_for_line(expected: str) -> None:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line or line.strip() == expected:
            return


async def serve_durable(args: argparse.Namespace) -> None:
    backend = durable.connect(
        args.url, engine_options={"connect_args": bl.pg_search_path(args.schema)}
    )
    runtime = durable.Runtime(
        backend, executor_id=f"bench-queues-{os.getpid()}", registry=REGISTRY, recover=False
    )
    await runtime.backend.start()
    print("ready", flush=True)
    await wait_for_line("go")
    worker = asyncio.ensure_future(
        durable.worker.serve(runtime, concurrency=args.concurrency, poll_interval=1.0, grace=10.0)
    )
    await wait_for_line("stop")
    while not runtime._workers:  # noqa: ASYNC110 (private: serve() hands out no worker)
        await asyncio.sleep(0.01)
    for w in runtime._workers:
        w.request_stop()
    await worker


async def serve_pgqueuer(args: argparse.Namespace) -> None:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    connection = await asyncpg.connect(args.dsn)
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("noop")
    async def run_noop(job: Job) -> None:
        TALLY.start(str(job.id))
        TALLY.end()

    @pgq.entrypoint("probe")
    async def run_probe(job: Job) -> None:
        TALLY.start((job.payload or b"").decode())
        TALLY.end()

    print("ready", flush=True)
    await wait_for_line("go")
    running = asyncio.ensure_future(pgq.run(batch_size=args.batch_size))
    await wait_for_line("stop")
    pgq.shutdown.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(running, 30)
    await connection.close()


def procrastinate_app(dsn: str) -> Any:
    """A procrastinate app on ``dsn`` (made here: procrastinate warns about an app made in the
    ``__main__`` module)."""
    import procrastinate

    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))


async def serve_procrastinate(args: argparse.Namespace) -> None:
    app = procrastinate_app(args.dsn)

    @app.task(name="noop")
    async def run_noop(i: int) -> None:
        TALLY.start(str(i))
        TALLY.end()

    @app.task(name="probe")
    async def run_probe(key: str) -> None:
        TALLY.start(key)
        TALLY.end()

    async with app.open_async():
        print("ready", flush=True)
        await wait_for_line("go")
        running = asyncio.ensure_future(
            app.run_worker_async(concurrency=args.concurrency, install_signal_handlers=False)
        )
        await wait_for_line("stop")
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


SERVERS = {
    "durable": serve_durable,
    "pgqueuer": serve_pgqueuer,
    "procrastinate": serve_procrastinate,
}


def child_main(argv: Sequence[str]) -> int:
    import logging

    parser = argparse.ArgumentParser(prog="queueprog")
    commands = parser.add_subparsers(dest="command", required=True)
    work = commands.add_parser("work")
    work.add_argument("--system", choices=sorted(SERVERS), required=True)
    work.add_argument("--url", help="durable: SQLAlchemy URL")
    work.add_argument("--schema", help="durable: its schema")
    work.add_argument("--dsn", help="pgqueuer, procrastinate: libpq connection string")
    work.add_argument("--concurrency", type=int, default=16)
    work.add_argument("--batch-size", type=int, default=10)
    work.add_argument("--print-starts", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="queue worker %(process)d: %(message)s")
    TALLY.print_starts = args.print_starts
    cpu = time.process_time()
    asyncio.run(SERVERS[args.system](args))
    report = {
        "completed": TALLY.count,
        "first_start": TALLY.first_start,
        "last_end": TALLY.last_end,
        "cpu_seconds": round(time.process_time() - cpu, 4),
        "pid": os.getpid(),
    }
    print(json.dumps(report), flush=True)
    return 0
