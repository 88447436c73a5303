"""A worker process (and a producer process) that tests/test_workers.py starts, kills and stops.

``serve`` runs ``durable.worker.serve`` on a runtime whose registry holds one three-step workflow,
:data:`PIPELINE`, until SIGTERM or SIGINT (or until it is killed)::

    python workerprog.py serve --url sqlite:///app.db --executor-id worker-1 --log steps.log \\
        --claim-ttl 2 --concurrency 4

Every step body appends ``<workflow id> <step> <pid> <time>`` to the side-effect log (``--log``)
when it starts, with flush and fsync, so a line written before a SIGKILL is on disk. The step
``b`` sleeps for the workflow's ``pause`` argument, so that a test can catch a worker mid-step.

It also serves :data:`OUTAGE` and :data:`OUTAGE_SYNC` (tests/test_outage.py), three steps that
each append ``<workflow id> <step> <token> <pid> <time>`` to the log (one write in append mode,
no fsync: these workers are not killed) and return the token, so that a test can tell which
execution of a step its recorded result came from.

``enqueue`` is a producer without the workflow's code: it waits for a go file, then enqueues the
pipeline by name for every key of ``--keys``, ``--copies`` times each, all at once (concurrent
tasks), each with that key as its idempotency key, and writes the ids it got back as JSON::

    python workerprog.py enqueue --url ... --keys k1,k2 --copies 4 --ready r.txt --go go.txt \\
        --out ids.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import durable
import durable.worker

PIPELINE = "workerprog.pipeline.v1"
OUTAGE = "workerprog.outage.v1"
OUTAGE_SYNC = "workerprog.outage.sync.v1"
REGISTRY = durable.Registry()
LOG: list[Path] = []  # the side-effect log, set by main()


def append(path: Path, line: str) -> None:
    """Append one line and make it durable before going on (append + flush + fsync)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def effect(step: str) -> None:
    append(LOG[0], f"{durable.workflow_id()} {step} {os.getpid()} {time.time():.6f}")


@durable.step(name="a")
async def step_a(n: int) -> int:
    effect("a")
    return n + 1


@durable.step(name="b")
async def step_b(x: int, pause: float) -> int:
    effect("b")
    if pause:
        await asyncio.sleep(pause)
    return x * 2


@durable.step(name="c")
async def step_c(x: int) -> int:
    effect("c")
    return x - 3


@durable.workflow(name=PIPELINE, registry=REGISTRY)
async def pipeline(n: int, pause: float = 0.0) -> dict[str, Any]:
    a = await step_a(n)
    b = await step_b(a, pause)
    return {"n": n, "out": await step_c(b)}


def expected(n: int) -> dict[str, Any]:
    """What :func:`pipeline` returns for ``n``."""
    return {"n": n, "out": (n + 1) * 2 - 3}


def note(step: str) -> str:
    """Log that ``step`` of the current workflow runs, under a new token, and return it."""
    token = uuid.uuid4().hex
    line = f"{durable.workflow_id()} {step} {token} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(LOG[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write of a short line: lines never interleave
    finally:
        os.close(fd)
    return token


#: Outages interrupt attempts, and each costs one (until the runtime stops counting them):
#: plenty of attempts, retried at once.
OUTAGE_RETRY = durable.RetryPolicy(max_attempts=100, initial_delay=0.1, backoff_rate=1.0)


@durable.step(name="outage.a")
async def outage_a() -> str:
    return note("a")


@durable.step(name="outage.b")
async def outage_b(pause: float) -> str:
    token = note("b")
    await asyncio.sleep(pause)
    return token


@durable.step(name="outage.c")
async def outage_c() -> str:
    return note("c")


@durable.workflow(name=OUTAGE, registry=REGISTRY, retry=OUTAGE_RETRY)
async def outage(pause: float) -> list[str]:
    return [await outage_a(), await outage_b(pause), await outage_c()]


@durable.step(name="outage.sync.a")
def outage_sync_a() -> str:
    return note("a")


@durable.step(name="outage.sync.b")
def outage_sync_b(pause: float) -> str:
    token = note("b")
    time.sleep(pause)
    return token


@durable.step(name="outage.sync.c")
def outage_sync_c() -> str:
    return note("c")


@durable.workflow(name=OUTAGE_SYNC, registry=REGISTRY, retry=OUTAGE_RETRY)
def outage_sync(pause: float) -> list[str]:
    return [outage_sync_a(), outage_sync_b(pause), outage_sync_c()]


def wait_for_file(path: Path) -> None:
    while not path.exists():
        time.sleep(0.002)


async def serve(args: argparse.Namespace) -> int:
    runtime = durable.Runtime(
        durable.connect(args.url),
        executor_id=args.executor_id,
        claim_ttl=args.claim_ttl,
        registry=REGISTRY,
    )
    return await durable.worker.serve(
        runtime, concurrency=args.concurrency, poll_interval=args.poll_interval, grace=args.grace
    )


async def enqueue(args: argparse.Namespace) -> dict[str, list[str]]:
    runtime = durable.Runtime(
        durable.connect(args.url),
        executor_id=f"producer-{os.getpid()}",
        recover=False,
        registry=durable.Registry(),  # no code: enqueue by name only
    )
    keys = args.keys.split(",")
    async with runtime:
        append(args.ready, str(os.getpid()))
        await asyncio.to_thread(wait_for_file, args.go)
        calls = [
            runtime.enqueue(PIPELINE, 1, idempotency_key=key, served_elsewhere=True)
            for _ in range(args.copies)
            for key in keys
        ]
        ids = await asyncio.gather(*calls)
    results: dict[str, list[str]] = {key: [] for key in keys}
    for call, workflow_id in enumerate(ids):
        results[keys[call % len(keys)]].append(workflow_id)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve")
    serve_cmd.add_argument("--url", required=True)
    serve_cmd.add_argument("--executor-id", required=True)
    serve_cmd.add_argument("--log", type=Path, required=True)
    serve_cmd.add_argument("--claim-ttl", type=float, default=2.0)
    serve_cmd.add_argument("--concurrency", type=int, default=4)
    serve_cmd.add_argument("--poll-interval", type=float, default=0.1)
    serve_cmd.add_argument("--grace", type=float, default=5.0)
    enqueue_cmd = commands.add_parser("enqueue")
    enqueue_cmd.add_argument("--url", required=True)
    enqueue_cmd.add_argument("--keys", required=True, help="comma-separated idempotency keys")
    enqueue_cmd.add_argument("--copies", type=int, default=4)
    enqueue_cmd.add_argument("--ready", type=Path, required=True, help="appended when ready")
    enqueue_cmd.add_argument("--go", type=Path, required=True, help="start when this exists")
    enqueue_cmd.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(levelname)s %(message)s")
    if args.command == "serve":
        LOG.append(args.log)
        asyncio.run(serve(args))
        return 0
    ids = asyncio.run(enqueue(args))
    partial = args.out.with_suffix(".partial")
    partial.write_text(json.dumps(ids), encoding="utf-8")
    partial.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
