"""A worker process serving one workflow of a queue with limits, for tests/test_queues.py::

    python queueprog.py --url sqlite:///app.db --executor-id w1 --log runs.log

The workflow :data:`JOB` runs one step that appends ``<start> <end> <pid>`` (the system-wide
monotonic clock, nanoseconds) to the log (``--log``, opened with ``O_APPEND``: one ``write``
per line, so lines of several processes never mix), holding ``--hold`` seconds in between: the
interval lies inside the execution's claim. It runs ``durable.worker.serve`` until SIGTERM.
The queue is declared as ``Queue("q", concurrency=--concurrency)``: stored unless it is
already (the test stores it first).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import durable
import durable.worker

JOB = "queueprog.job.v1"
REGISTRY = durable.Registry()
SETTINGS: dict[str, float] = {}
LOG: list[int] = []


@durable.step
async def work(n: int) -> int:
    start = time.monotonic_ns()
    await asyncio.sleep(SETTINGS["hold"])
    os.write(LOG[0], f"{start} {time.monotonic_ns()} {os.getpid()}\n".encode())
    return n


@durable.workflow(name=JOB, registry=REGISTRY, queue="q")
async def job(n: int) -> int:
    return await work(n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--hold", type=float, default=0.005)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    SETTINGS["hold"] = args.hold
    LOG.append(os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    runtime = durable.Runtime(
        durable.connect(args.url),
        registry=REGISTRY,
        executor_id=args.executor_id,
        claim_ttl=10,
        queues=[durable.Queue("q", concurrency=args.concurrency)],
    )
    asyncio.run(durable.worker.serve(runtime, concurrency=args.slots, poll_interval=0.05, grace=10))


if __name__ == "__main__":
    main()
