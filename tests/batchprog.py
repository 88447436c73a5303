"""A process that tests/test_group_commit_crash.py kills with SIGKILL while group commits are in
flight.

It opens the backend at ``--url``, creates ``--workflows`` executions and claims them as executor
``w1``, then records steps in all of them at once, forever: each writer records positions 0, 1,
2, ... of its execution, and after each ``record_step`` returns (the step is acknowledged) appends
``<workflow id> <position>`` to ``--acks`` (flushed: a line written before the kill survives it).
Once a flush has carried more than one record, it writes ``BATCHED`` there once.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import IO, Any

from durable.backends.sql import SQLAlchemyBackend
from durable.backends.sql.batch import GroupCommit
from durable.testing.contract._support import LONG, W, create, step


async def writer(
    backend: SQLAlchemyBackend, group: GroupCommit[Any, Any], wid: str, acks: IO[str]
) -> None:
    position = 0
    while True:
        await backend.record_step(wid, step(position, output=f"{wid}:{position}"), worker_id="w1")
        acks.write(f"{wid} {position}\n")
        if group.items > group.flushes and not BATCHED:
            BATCHED.append(True)
            acks.write("BATCHED\n")
        acks.flush()
        position += 1


BATCHED: list[bool] = []


async def main(args: argparse.Namespace, acks: IO[str]) -> None:
    async with SQLAlchemyBackend(args.url) as backend:
        ids = [f"wf{i}" for i in range(args.workflows)]
        for wid in ids:
            await create(backend, wid)
            assert await backend.claim_task(wid, W, "w1", LONG) is not None
        group = backend._record_group or getattr(backend._runner, "_group", None)
        assert group is not None
        await asyncio.gather(*(writer(backend, group, wid, acks) for wid in ids))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--acks", required=True)
    parser.add_argument("--workflows", type=int, default=16)
    arguments = parser.parse_args()
    with open(arguments.acks, "a") as ack_file:
        asyncio.run(main(arguments, ack_file))
