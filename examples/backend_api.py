"""The storage API by hand: what the runtime does for you, for people writing a backend.

To run:

    python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python examples/backend_api.py

No database server is needed. Then see it resume after a crash:

    .venv/bin/python examples/backend_api.py --db crash.db --crash-after 2  # dies after step 2
    .venv/bin/python examples/backend_api.py --db crash.db  # resumes: steps 1-2 are not re-run

This drives durable's storage API (a ``PersistentBackend``) by hand, the way durable's runtime does
for you: claim the workflow's task, record each step's result before going on to the next, and on
a rerun replay the recorded results instead of running those steps again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import durable
from durable import (
    WORKFLOW_TASK,
    NonDeterminismError,
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowSnapshot,
    WorkflowStatus,
)

WORKFLOW_ID = "order-42"
#: A stable worker id: after a crash, the same worker may take its own claim back at once.
WORKER = "quickstart-worker"


def reserve_stock(order: dict[str, Any]) -> dict[str, Any]:
    return {"reserved": order["items"]}


def charge_card(order: dict[str, Any]) -> dict[str, Any]:
    return {"charged": sum(price for _, price in order["items"])}


def ship(order: dict[str, Any]) -> dict[str, Any]:
    return {"tracking": f"TRACK-{order['id']}"}


STEPS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
    ("reserve_stock", reserve_stock),
    ("charge_card", charge_card),
    ("ship", ship),
]


async def run(url: str, crash_after: int | None) -> None:
    # Starting the backend creates (or upgrades) durable's tables in the file.
    async with durable.connect(url) as backend:
        order = {"id": 42, "items": [["book", 12.5], ["pen", 2.0]]}
        info, created = await backend.create_workflow(
            WorkflowSnapshot(id=WORKFLOW_ID, name="place_order", input=order),
            task=TaskSpec(instance_id=WORKFLOW_ID, name="place_order"),
        )
        print(f"workflow {WORKFLOW_ID}: {'created' if created else 'found'} ({info.status})")
        if info.status.is_terminal:
            print(f"already finished, output {info.output}: run with another --db to start over")
            return

        claim = await backend.claim_task(WORKFLOW_ID, WORKFLOW_TASK, WORKER, timedelta(minutes=1))
        if claim is None:
            sys.exit("another worker holds this workflow; try again in a minute")
        snapshot = await backend.begin_execution(WORKFLOW_ID, WORKER)
        recorded = {step.position: step for step in snapshot.steps}

        results = {}
        for position, (name, fn) in enumerate(STEPS):
            step = recorded.get(position)
            if step is not None and step.status == StepStatus.SUCCEEDED:
                if step.name != name:  # the code changed under a running workflow
                    raise NonDeterminismError(
                        f"step {position} was recorded as {step.name!r}, the code now runs {name!r}"
                    )
                print(f"  step {position + 1} {name}: replayed {step.output}")
                results[name] = step.output
                continue
            output = fn(snapshot.input)
            # Persist before advancing: once this returns, the step never runs again.
            await backend.record_step(
                WORKFLOW_ID,
                StepRecord(position=position, name=name, output=output),
                worker_id=WORKER,
            )
            print(f"  step {position + 1} {name}: ran, recorded {output}")
            results[name] = output
            if crash_after == position + 1:
                print("  crash! (the process dies here; run again to resume)")
                sys.stdout.flush()
                os._exit(1)

        done = await backend.finish_workflow(
            WORKFLOW_ID, worker_id=WORKER, status=WorkflowStatus.SUCCEEDED, output=results
        )
        print(f"workflow {WORKFLOW_ID}: {done.status}, output {done.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="quickstart.db", help="SQLite file (default: %(default)s)")
    parser.add_argument("--crash-after", type=int, metavar="N", help="die after step N")
    args = parser.parse_args()
    asyncio.run(run(f"sqlite:///{args.db}", args.crash_after))


if __name__ == "__main__":
    main()
