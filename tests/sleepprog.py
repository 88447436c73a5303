"""A worker process that tests/test_sleep.py starts and kills while a workflow sleeps.

``serve`` runs ``durable.worker.serve`` on a runtime whose registry holds :data:`NAP`: a step,
a durable sleep of its argument's seconds, another step::

    python sleepprog.py serve --url sqlite:///app.db --executor-id worker-1 --log effects.log \\
        --sleeps sleeps.log

Each step body appends ``<workflow id> <step> <pid> <time>`` to the side-effect log (``--log``)
when it starts, with flush and fsync, so that a line written before a SIGKILL is on disk. Every
time a workflow suspends to sleep, the runtime's debug record of it (logger ``durable.timers``)
is appended to ``--sleeps`` as ``<pid> <workflow id>``, also with fsync.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from progkit import append, runtime_for, serve_command

import durable
import durable.worker

NAP = "sleepprog.nap.v1"
REGISTRY = durable.Registry()
LOG: list[Path] = []  # the side-effect log, set by main()


@durable.step(name="nap.before")
async def before(n: int) -> int:
    append(LOG[0], f"{durable.workflow_id()} before {os.getpid()} {time.time():.6f}")
    return n + 1


@durable.step(name="nap.after")
async def after(n: int) -> int:
    append(LOG[0], f"{durable.workflow_id()} after {os.getpid()} {time.time():.6f}")
    return n * 10


@durable.workflow(name=NAP, registry=REGISTRY)
async def nap(n: int, seconds: float) -> dict[str, Any]:
    first = await before(n)
    await durable.sleep(seconds)
    return {"n": n, "out": await after(first)}


class SleepLog(logging.Handler):
    """Appends ``<pid> <workflow id>`` for every suspension the runtime logs."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "action", None) == "workflow.sleep":
            append(self.path, f"{os.getpid()} {getattr(record, 'workflow_id', '?')}")


async def serve(args: argparse.Namespace) -> int:
    runtime = runtime_for(args, REGISTRY)
    return await durable.worker.serve(runtime, concurrency=4, poll_interval=args.poll_interval)


def main(argv: list[str] | None = None) -> int:
    parser, _, serve_cmd = serve_command(__doc__, claim_ttl=2.0, poll_interval=0.1)
    serve_cmd.add_argument("--log", type=Path, required=True)
    serve_cmd.add_argument("--sleeps", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(levelname)s %(message)s")
    timers = logging.getLogger("durable.timers")
    timers.setLevel(logging.DEBUG)
    timers.addHandler(SleepLog(args.sleeps))
    LOG.append(args.log)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
