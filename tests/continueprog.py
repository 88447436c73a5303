"""A worker process that tests/test_continue_as_new.py starts and SIGKILLs right around a
continue-as-new.

``serve`` runs ``durable.worker.serve`` on a runtime whose registry holds :data:`ENTITY`: one step
per run (``tick``), then ``durable.continue_as_new(n + 1, total)`` until ``n`` reaches ``last``::

    python continueprog.py serve --url sqlite:///app.db --executor-id worker-1 \\
        --log effects.log --kill before:2

Each step body appends ``<workflow id> tick <n> <pid>`` to the side-effect log with flush and
fsync, so that a line written before a SIGKILL is on disk. ``--kill before:N`` makes the process
SIGKILL itself in run N after its step is recorded and before the continuation is (the workflow
body, just before calling ``continue_as_new``); ``--kill after:N`` right after the continuation
of run N is committed (before the runtime hears back). A marker file beside the log makes each
kill happen once, whichever process gets there.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from progkit import append, runtime_for, serve_command

import durable
import durable.worker

ENTITY = "continueprog.entity.v1"
REGISTRY = durable.Registry()
LOG: list[Path] = []  # the side-effect log, set by main()
KILL: list[tuple[str, int]] = []  # (when, run), set by main()


def kill_once(when: str, n: int) -> None:
    """SIGKILL this process if asked to at this point, the first time it is reached."""
    if not KILL or KILL[0] != (when, n):
        return
    marker = LOG[0].with_name(f"killed-{when}-{n}")
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


@durable.step(name="entity.tick")
async def tick(n: int) -> int:
    append(LOG[0], f"{durable.workflow_id()} tick {n} {os.getpid()}")
    return n * 10


@durable.workflow(name=ENTITY, registry=REGISTRY)
async def entity(n: int, last: int, total: int = 0) -> dict[str, Any]:
    total += await tick(n)
    if n < last:
        kill_once("before", n)
        durable.continue_as_new(n + 1, last, total=total)
    return {"n": n, "total": total}


async def serve(args: argparse.Namespace) -> int:
    backend = durable.connect(args.url)
    original = backend.continue_as_new

    async def continue_then_maybe_die(
        instance_id: str, *, worker_id: str, input: Any
    ) -> durable.WorkflowInfo:
        info = await original(instance_id, worker_id=worker_id, input=input)
        kill_once("after", input["args"][0] - 1)  # the run that just ended
        return info

    backend.continue_as_new = continue_then_maybe_die  # type: ignore[method-assign]
    runtime = runtime_for(args, REGISTRY, backend)
    return await durable.worker.serve(runtime, concurrency=4, poll_interval=args.poll_interval)


def main(argv: list[str] | None = None) -> int:
    parser, _, serve_cmd = serve_command(__doc__, claim_ttl=2.0, poll_interval=0.1)
    serve_cmd.add_argument("--log", type=Path, required=True)
    serve_cmd.add_argument("--kill", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(levelname)s %(message)s")
    LOG.append(args.log)
    if args.kill:
        when, run = args.kill.split(":")
        KILL.append((when, int(run)))
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
