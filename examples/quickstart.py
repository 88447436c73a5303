"""Quickstart: a checkout workflow that survives being killed half-way.

To run:

    python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python examples/quickstart.py

No database server is needed: progress goes to a SQLite file. The script runs the workflow in a
child process and kills that process with SIGKILL while the third step is running, after the
first two steps' results were committed. Then it runs the same workflow id again: the run resumes
from the database, the two completed steps are not executed again, and the workflow finishes.
The side-effect log it prints shows which step bodies ran, and how often.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import durable

LOG = Path(os.environ.get("QUICKSTART_LOG", "quickstart-effects.log"))


def effect(line: str) -> None:
    """Something a step does to the outside world, written down so that we can count it."""
    with LOG.open("a") as f:
        f.write(line + "\n")


@durable.step(name="shop.reserve")
def reserve(order_id: str) -> str:
    effect(f"reserve {order_id}")
    return f"reservation-{order_id}"


@durable.step(name="shop.charge", max_attempts=3, initial_delay=0.1)
async def charge(order_id: str, amount: int) -> str:
    effect(f"charge {order_id} {amount}")
    return f"payment-{order_id}"


@durable.step(name="shop.ship")
async def ship(order_id: str) -> str:
    effect(f"ship {order_id} (started)")
    if os.environ.get("QUICKSTART_CRASH") == "1":
        os.kill(os.getpid(), signal.SIGKILL)  # the power goes out
    effect(f"ship {order_id} (done)")
    return f"tracking-{order_id}"


@durable.workflow(name="shop.checkout.v1")
async def checkout(order_id: str) -> dict[str, str]:
    reservation = await reserve.aio(order_id)  # a sync step, awaited from an async workflow
    payment = await charge(order_id, 4200)
    tracking = await ship(order_id)
    return {"reservation": reservation, "payment": payment, "tracking": tracking}


async def run(db: Path) -> None:
    # A stable executor id: a restarted process takes its own unfinished work back at once.
    backend = durable.connect(f"sqlite:///{db}")
    async with durable.Runtime(backend, executor_id="quickstart", recover=False) as runtime:
        result = await runtime.run(checkout, "o-1", workflow_id="checkout-o-1")
        print(f"  result: {result}")
        for s in await runtime.list_steps("checkout-o-1"):
            print(f"  step {s.position} {s.name}: {s.status.value}, {s.attempts} attempt(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="store_true", help="run the workflow once and exit")
    parser.add_argument("--db", type=Path, help="the SQLite file (default: a temporary one)")
    args = parser.parse_args()
    if args.run:
        asyncio.run(run(args.db))
        return

    workdir = Path(tempfile.mkdtemp(prefix="durable-quickstart-"))
    db = args.db or workdir / "shop.db"
    env = {**os.environ, "QUICKSTART_LOG": str(workdir / "effects.log")}
    me = [sys.executable, __file__, "--run", "--db", str(db)]

    print("1. run the checkout, and kill the process while it ships:")
    first = subprocess.run(me, env={**env, "QUICKSTART_CRASH": "1"}, check=False)
    print(f"  the process died with signal {-first.returncode}")

    print("2. run the same workflow id again:")
    subprocess.run(me, env=env, check=True)

    effects = (workdir / "effects.log").read_text().splitlines()
    print("3. what the step bodies did, in order:")
    for line in effects:
        print(f"  {line}")
    assert effects.count("reserve o-1") == 1 and effects.count("charge o-1 4200") == 1
    print("reserve and charge ran once each: the restart resumed after them.")


if __name__ == "__main__":
    main()
