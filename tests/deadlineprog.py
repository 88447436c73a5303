"""A worker process that tests/test_timeouts.py starts and SIGKILLs while it runs a workflow
that has a deadline.

``serve`` runs ``durable.worker.serve`` on a runtime whose registry holds :data:`SLOW` (one step
that logs, then waits an hour) and :data:`OTHER` (one that returns at once)::

    python deadlineprog.py serve --url sqlite:///app.db --executor-id worker-1 --log effects.log

The step appends ``<workflow id> <pid>`` to the side-effect log with flush and fsync when it
starts, so that a line written before a SIGKILL is on disk. Leases last ``--claim-ttl`` seconds
(default 60: far longer than the tests' deadlines, so that a dead worker's lease is still live
when the deadline passes); the deadline sweep runs every ``--sweep`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from progkit import append, runtime_for, serve_command

import durable
import durable.worker

SLOW = "deadlineprog.slow.v1"
OTHER = "deadlineprog.other.v1"
REGISTRY = durable.Registry()
LOG: list[Path] = []  # the side-effect log, set by main()


@durable.step(name="deadlineprog.wait")
async def wait() -> None:
    append(LOG[0], f"{durable.workflow_id()} {os.getpid()}")
    await asyncio.sleep(3600)


@durable.workflow(name=SLOW, registry=REGISTRY)
async def slow() -> str:
    await wait()
    return "finished"


@durable.workflow(name=OTHER, registry=REGISTRY)
async def other() -> str:
    return "other"


async def serve(args: argparse.Namespace) -> int:
    runtime = runtime_for(args, REGISTRY)
    runtime.deadline_sweep_interval = args.sweep
    return await durable.worker.serve(runtime, concurrency=4, poll_interval=0.1)


def main(argv: list[str] | None = None) -> int:
    parser, _, serve_cmd = serve_command(__doc__, claim_ttl=60.0)
    serve_cmd.add_argument("--log", type=Path, required=True)
    serve_cmd.add_argument("--sweep", type=float, default=0.1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(levelname)s %(message)s")
    LOG.append(args.log)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
