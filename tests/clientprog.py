"""A producer and operator process with no workflow code: tests/test_client.py runs it.

It imports ``durable`` only, opens a :class:`durable.Client` on ``--url`` (``--mode async``:
``async with``; ``--mode sync``: ``with`` and the ``_sync`` methods), and, for the pipeline that
a worker process (tests/workerprog.py) serves by name:

1. enqueues ``<prefix>-done`` (n=5) and waits for its result;
2. enqueues ``<prefix>-cancelled`` (n=7) an hour ahead, cancels it, and waits for it (which
   raises :class:`durable.WorkflowCancelledError`);
3. retries it (a redrive, due at once) and waits for its result;
4. lists the executions, and the steps of the first.

It prints one JSON object: what it saw, and which modules were imported (durable.runtime,
durable.worker, and any module defining workflows, must not be)::

    python clientprog.py --url sqlite:///app.db --mode sync --prefix s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import durable

PIPELINE = "workerprog.pipeline.v1"  # served by tests/workerprog.py, not imported here
WAIT = 60.0
FORBIDDEN = ("durable.runtime", "durable.worker", "workerprog")


def imported() -> list[str]:
    """The forbidden modules imported so far, any other module of tests/, and the names of
    workflows registered by whatever was imported."""
    here = Path(__file__).resolve().parent
    found = [m for m in FORBIDDEN if m in sys.modules]
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name != "__main__" and path and Path(path).resolve().parent == here:
            found.append(name)
    return found + [f"workflow:{name}" for name in durable.default_registry.names()]


async def run_async(url: str, prefix: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with durable.Client(url, poll_interval=0.05) as client:
        done = await client.enqueue(PIPELINE, 5, workflow_id=f"{prefix}-done")
        seen["done"] = await client.result(done, timeout=WAIT)
        later = await client.enqueue(PIPELINE, 7, workflow_id=f"{prefix}-cancelled", delay=3600)
        seen["cancel"] = (await client.cancel(later)).status.value
        try:
            await client.result(later, timeout=WAIT)
        except durable.WorkflowCancelledError as exc:
            seen["cancelled_error"] = type(exc).__name__
        seen["retry"] = (await client.retry(later)).status.value
        seen["retried"] = await client.result(later, timeout=WAIT)
        page = await client.list_workflows(name=PIPELINE)
        seen["listed"] = sorted((i.id, i.status.value) for i in page.items)
        seen["steps"] = [s.name for s in await client.list_steps(done)]
    return seen


def run_sync(url: str, prefix: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with durable.Client(url, poll_interval=0.05) as client:
        done = client.enqueue_sync(PIPELINE, 5, workflow_id=f"{prefix}-done")
        seen["done"] = client.result_sync(done, timeout=WAIT)
        later = client.enqueue_sync(PIPELINE, 7, workflow_id=f"{prefix}-cancelled", delay=3600)
        seen["cancel"] = client.cancel_sync(later).status.value
        try:
            client.result_sync(later, timeout=WAIT)
        except durable.WorkflowCancelledError as exc:
            seen["cancelled_error"] = type(exc).__name__
        seen["retry"] = client.retry_sync(later).status.value
        seen["retried"] = client.result_sync(later, timeout=WAIT)
        page = client.list_workflows_sync(name=PIPELINE)
        seen["listed"] = sorted((i.id, i.status.value) for i in page.items)
        seen["steps"] = [s.name for s in client.list_steps_sync(done)]
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["async", "sync"], required=True)
    parser.add_argument("--prefix", required=True)
    args = parser.parse_args()
    before = imported()
    if args.mode == "async":
        seen = asyncio.run(run_async(args.url, args.prefix))
    else:
        seen = run_sync(args.url, args.prefix)
    seen["imported_before"] = before
    seen["imported_after"] = imported()
    print(json.dumps(seen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
