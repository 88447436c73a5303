"""Workflows that tests/test_web.py and scripts/screenshots.py run with durable into a SQLite
file, so the web view shows real records: succeeded ones with steps (one retried), a failed
one, a parent with a child, one asleep in ``durable.sleep`` and one waiting in a queue.

``python tests/webdata.py sqlite:///path.db`` fills a database from a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

import durable
from durable.timers import SLEEP_STEP

REGISTRY = durable.Registry()
FLAKY: dict[str, int] = {}


@durable.step(name="web.fetch")
async def fetch(n: int) -> int:
    await asyncio.sleep(0.01)
    return n + 1


@durable.step(name="web.flaky", max_attempts=3, initial_delay=0.01)
async def flaky(n: int) -> int:
    key = durable.workflow_id()
    FLAKY[key] = FLAKY.get(key, 0) + 1
    if FLAKY[key] < 2:
        raise ConnectionError("the first attempt fails")
    return n * 2


@durable.step(name="web.store")
async def store(n: int) -> str:
    await asyncio.sleep(0.02)
    return f"stored {n}"


@durable.step(name="web.explode")
async def explode(n: int) -> None:
    raise ValueError(f"order {n} is malformed")


@durable.workflow(name="web.order.v1", registry=REGISTRY)
async def order(n: int) -> dict[str, Any]:
    """Three steps, the second retried once."""
    return {"n": n, "result": await store(await flaky(await fetch(n)))}


@durable.workflow(name="web.broken.v1", registry=REGISTRY)
async def broken(n: int) -> None:
    await fetch(n)
    await explode(n)


@durable.workflow(name="web.parent.v1", registry=REGISTRY)
async def parent(n: int) -> dict[str, Any]:
    first = await fetch(n)
    child = await order(first)
    return {"child": child}


@durable.workflow(name="web.nap.v1", registry=REGISTRY)
async def nap(n: int) -> int:
    await fetch(n)
    await durable.sleep(3600)
    return n


@durable.step(name="web.render")
async def render(part: int) -> str:
    await asyncio.sleep(0.03 + 0.02 * part)
    return f"part {part}"


@durable.workflow(name="web.report.v1", registry=REGISTRY)
async def report(n: int) -> dict[str, Any]:
    """A step, three in parallel, a retried one, a child: a timeline worth a screenshot."""
    first = await fetch(n)
    parts = await asyncio.gather(render(1), render(2), render(3))
    doubled = await flaky(first)
    child = await order(doubled)
    return {"parts": parts, "child": child, "summary": await store(len(parts))}


async def fill(url: str, orders: int = 3, *, showcase: bool = False) -> dict[str, list[str]]:
    """Run the workflows above into the database at ``url``; returns their ids by kind:
    ``order`` (succeeded, 3 steps each), ``broken`` (failed), ``parent`` (with a child),
    ``nap`` (asleep), ``queued`` (pending on queue ``slow``), and with ``showcase`` a
    ``report`` (parallel steps, a retry, a child)."""
    ids: dict[str, list[str]] = {"order": [], "broken": [], "parent": [], "nap": [], "queued": []}
    runtime = durable.Runtime(durable.connect(url), registry=REGISTRY, executor_id="web-test-1")
    async with runtime:
        if showcase:
            await runtime.run(report, 8, workflow_id="report-8")
            ids["report"] = ["report-8"]
        for i in range(orders):
            workflow_id = f"order-{i}"
            await runtime.run(order, i, workflow_id=workflow_id)
            ids["order"].append(workflow_id)
        with contextlib.suppress(ValueError):
            await runtime.run(broken, 7, workflow_id="broken-7")
        ids["broken"].append("broken-7")
        await runtime.run(parent, 40, workflow_id="parent-40")
        ids["parent"].append("parent-40")
        napping = asyncio.create_task(runtime.run(nap, 5, workflow_id="nap-5"))
        for _ in range(500):
            steps = await runtime.list_steps("nap-5") if await _exists(runtime, "nap-5") else []
            if any(s.name == SLEEP_STEP for s in steps):
                break
            await asyncio.sleep(0.02)
        napping.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await napping
        ids["nap"].append("nap-5")
    async with durable.Client(url) as client:
        ids["queued"].append(await client.enqueue("web.order.v1", 99, queue="slow"))
    return ids


async def _exists(runtime: durable.Runtime, workflow_id: str) -> bool:
    try:
        await runtime.get_workflow(workflow_id)
    except durable.errors.WorkflowNotFoundError:
        return False
    return True


if __name__ == "__main__":
    print(asyncio.run(fill(sys.argv[1])))
