"""A worker process that tests/test_stalled_write.py starts, behind a proxy that silences the
connection a step's record goes out on.

``serve`` runs ``durable.worker.serve`` (one execution at a time) on a runtime whose registry
holds :data:`WORKFLOW`: step :func:`first`, then step :func:`second`, whose result
(``"hold-me-<n>"``) the proxy may look for in the bytes its record is sent in; the workflow's
output (``"finished:hold-me-<n>"``) goes out in its outcome's write alone::

    python stallprog.py serve --url postgresql://... --executor-id w1 --claim-ttl 3 \\
        --runs runs.log

Each step body appends ``<step> <executor id>`` to the runs file (``--runs``) with flush and
fsync, so that the test counts the bodies that ran in every process. Log records at INFO and
above go to stderr with their ``action``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from progkit import runtime_for, serve_command

import durable
import durable.worker

WORKFLOW = "stallprog.two.v1"
REGISTRY = durable.Registry()
RUNS: list[Path] = []  # the runs file, set by main()
EXECUTOR: list[str] = []  # this process's executor id, set by main()


def ran(step: str) -> None:
    """Append one line and make it durable before going on (append + flush + fsync)."""
    with RUNS[0].open("a", encoding="utf-8") as f:
        f.write(f"{step} {EXECUTOR[0]}\n")
        f.flush()
        os.fsync(f.fileno())


@durable.step(name="stallprog.first")
async def first(n: int) -> int:
    ran("first")
    return n + 1


@durable.step(name="stallprog.second")
async def second(n: int) -> str:
    ran("second")
    return f"hold-me-{n}"


@durable.workflow(name=WORKFLOW, registry=REGISTRY)
async def two(n: int) -> str:
    return "finished:" + await second(await first(n))


class _WithAction(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.action = getattr(record, "action", "-")
        return super().format(record)


async def serve(args: argparse.Namespace) -> int:
    runtime = runtime_for(args, REGISTRY, recover=False)
    return await durable.worker.serve(runtime, concurrency=1, poll_interval=0.1)


def main(argv: list[str] | None = None) -> int:
    parser, _, serve_cmd = serve_command(__doc__, claim_ttl=3.0)
    serve_cmd.add_argument("--runs", type=Path, required=True)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_WithAction("%(asctime)s %(levelname)s [%(action)s] %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    logging.getLogger("durable").setLevel(logging.INFO)
    RUNS.append(args.runs)
    EXECUTOR.append(args.executor_id)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
