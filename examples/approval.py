"""Long-running workflows: an approval that waits for a human, with a reminder timer, an event
the caller reads, a receive with a timeout, and a deadline on the whole execution.

To run: python examples/approval.py   (SQLite, no server; writes approval.db here)

``orders.approval.v1`` publishes its status (an event), starts a reminder timer, and waits for
the message ``decision``. Order o-1 gets its decision before its reminder is due (the timer is
cancelled, so it never fires); order o-2 gets no decision in time (the reminder fires, then
the receive times out and the order is rejected). While a workflow waits it holds no worker:
its wait is recorded in the database, and the send wakes it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import durable

REMINDERS: list[str] = []


@durable.step(name="orders.remind")
async def remind(order_id: str) -> None:
    REMINDERS.append(order_id)


@durable.workflow(name="orders.approval.v1", timeout=timedelta(days=7))
async def approval(order_id: str, patience: float) -> str:
    await durable.set_event("status", "waiting")
    await durable.start_timer("reminder", timedelta(seconds=patience / 2))
    decision = await durable.recv("decision", timeout=timedelta(seconds=patience / 4))
    if decision is None:  # nothing yet: wait for the reminder, remind, then wait on
        await durable.recv("reminder")
        await remind(order_id)
        decision = await durable.recv("decision", timeout=timedelta(seconds=patience / 2))
    else:
        await durable.cancel_timer("reminder")
    verdict = "approved" if decision and decision.get("ok") else "rejected"
    await durable.set_event("status", verdict)
    return verdict


async def main(url: str) -> None:
    async with durable.Runtime(durable.connect(url)) as runtime:
        await runtime.start_worker(poll_interval=0.2)
        client = runtime.client
        # o-1 is patient (its decision comes long before its reminder); o-2 has 2 seconds
        for order_id, patience in (("o-1", 600.0), ("o-2", 2.0)):
            await runtime.enqueue(approval, order_id, patience, workflow_id=f"approval-{order_id}")
        status = await client.get_event("approval-o-1", "status", timeout=10)
        print(f"approval-o-1 status: {status}")
        for _ in range(200):  # it sets its status, then starts its timer and waits
            waiting = await client.waiting("approval-o-1")
            if waiting is not None:
                break
            await asyncio.sleep(0.05)
        print(f"approval-o-1 is {waiting}")
        sent = await client.send(
            "approval-o-1", "decision", {"ok": True}, idempotency_key="mail-123"
        )
        again = await client.send(
            "approval-o-1", "decision", {"ok": True}, idempotency_key="mail-123"
        )
        print(f"decision sent: {sent}; the same mail again stored: {again}")
        for order_id in ("o-1", "o-2"):
            verdict = await runtime.result(f"approval-{order_id}", timeout=30)
            status = await client.get_event(f"approval-{order_id}", "status", timeout=1)
            print(f"approval-{order_id}: {verdict} (status event: {status})")
        print(f"reminders sent: {REMINDERS}")
        steps = [s.name for s in await runtime.list_steps("approval-o-2")]
        print("approval-o-2 history: " + ", ".join(steps))


if __name__ == "__main__":
    db = Path("approval.db")
    for leftover in (db, Path("approval.db-wal"), Path("approval.db-shm")):
        leftover.unlink(missing_ok=True)
    asyncio.run(main(f"sqlite:///{db}"))
