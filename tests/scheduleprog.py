"""A worker process serving one scheduled workflow, for tests/test_schedules.py::

    python scheduleprog.py --url sqlite:///app.db --executor-id w1 --log ticks.log

The workflow :data:`TICK` is scheduled every second (``@durable.scheduled("* * * * * *")``,
missed ticks all run); its one step appends ``<scheduled_at> <pid>`` to the log (``--log``),
with flush and fsync, so that the test sees every execution of every tick. It runs
``durable.worker.serve`` (which runs the scheduler) until SIGTERM, logging at INFO on stderr
(the scheduler logs each fire it won).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

import durable
import durable.worker

TICK = "scheduleprog.tick.v1"
REGISTRY = durable.Registry()
LOG: list[Path] = []


@durable.step
def record(scheduled_at: str) -> None:
    with LOG[0].open("a", encoding="utf-8") as f:
        f.write(f"{scheduled_at} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())


@durable.scheduled("* * * * * *", missed="all", max_catchup=100, registry=REGISTRY)
@durable.workflow(name=TICK, registry=REGISTRY)
async def tick(*, scheduled_at: str) -> str:
    await record.aio(scheduled_at)
    return scheduled_at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--log", required=True, type=Path)
    args = parser.parse_args()
    LOG.append(args.log)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    runtime = durable.Runtime(
        durable.connect(args.url),
        registry=REGISTRY,
        executor_id=args.executor_id,
        claim_ttl=5,
    )
    asyncio.run(durable.worker.serve(runtime, concurrency=4, poll_interval=0.2, grace=10))


if __name__ == "__main__":
    main()
