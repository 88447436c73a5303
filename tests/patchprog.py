"""The workflows of tests/test_patching.py, in three versions of the same code, and a program
that runs one execution with one of them (and can SIGKILL itself mid-workflow)::

    python patchprog.py --url sqlite:///app.db --code old --workflow-id o-1 --log effects.log \\
        --kill

``old`` is the code before a change (the fee step ``fee_v1``), ``new`` the code with the change
behind ``durable.patched("fee-v2")`` (``fee_v2`` for new executions), ``clean`` the cleanup
(``durable.deprecate_patch("fee-v2")`` and only ``fee_v2``), ``diverged`` the same change made
without a patch (a replay of an old execution diverges). With ``--kill``, the ``hold`` step
SIGKILLs the process the first time it runs (a marker file beside the log makes it once),
after the fee step was recorded: the execution is in flight past the patch point. The result
is printed as JSON. Every step body appends ``<step> <value> <pid>`` to the log (flush + fsync).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import durable

NAME = "patchprog.order"
OLD = durable.Registry()
NEW = durable.Registry()
CLEAN = durable.Registry()
DIVERGED = durable.Registry()
CODES = {"old": OLD, "new": NEW, "clean": CLEAN, "diverged": DIVERGED}
LOG: list[Path] = []
KILL: list[bool] = []


def append(line: str) -> None:
    if not LOG:
        return
    with LOG[0].open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


@durable.step(name="patchprog.fee_v1")
async def fee_v1(amount: int) -> int:
    append(f"fee_v1 {amount} {os.getpid()}")
    return amount + 1


@durable.step(name="patchprog.fee_v2")
async def fee_v2(amount: int) -> int:
    append(f"fee_v2 {amount} {os.getpid()}")
    return amount + 2


@durable.step(name="patchprog.hold")
async def hold(fee: int) -> int:
    append(f"hold {fee} {os.getpid()}")
    if KILL and LOG:
        marker = LOG[0].with_name("killed")
        try:
            marker.touch(exist_ok=False)
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return fee * 10


@durable.workflow(name=NAME, registry=OLD)
async def order_old(amount: int) -> list[int]:
    fee = await fee_v1(amount)
    return [fee, await hold(fee)]


@durable.workflow(name=NAME, registry=NEW)
async def order_new(amount: int) -> list[int]:
    if durable.patched("fee-v2"):
        fee = await fee_v2(amount)
    else:
        fee = await fee_v1(amount)
    return [fee, await hold(fee)]


@durable.workflow(name=NAME, registry=CLEAN)
async def order_clean(amount: int) -> list[int]:
    durable.deprecate_patch("fee-v2")
    fee = await fee_v2(amount)
    return [fee, await hold(fee)]


@durable.workflow(name=NAME, registry=DIVERGED)
async def order_diverged(amount: int) -> list[int]:
    fee = await fee_v2(amount)  # changed without a patch
    return [fee, await hold(fee)]


async def run(url: str, code: str, workflow_ids: list[str], amount: int) -> Any:
    registry = CODES[code]
    wf: Any = registry.get(NAME)
    runtime = durable.Runtime(
        durable.connect(url),
        executor_id="patch-worker",
        registry=registry,
        claim_ttl=5.0,
        poll_interval=0.02,
    )
    async with runtime:
        return [await runtime.run(wf, amount, workflow_id=i) for i in workflow_ids]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--code", choices=sorted(CODES), required=True)
    parser.add_argument("--workflow-id", action="append", required=True)
    parser.add_argument("--amount", type=int, default=10)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--kill", action="store_true")
    args = parser.parse_args(argv)
    LOG.append(args.log)
    if args.kill:
        KILL.append(True)
    result = asyncio.run(run(args.url, args.code, args.workflow_id, args.amount))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
