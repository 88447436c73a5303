"""Senders and receivers of one workflow's messages, as coroutines or as processes of their own,
for the contract suite's exactly-once tests (:mod:`durable.testing.contract.messages`).

A *sender* sends its values in order, each with its own idempotency key, and each twice (the
second send must store nothing). A *receiver* competes for the workflow's claim (short leases,
so that holders expire and are taken over) and, while it holds it, receives at the next position
of the history; it stops once ``total`` receives are recorded. What each returns lets the test
check that every message was received exactly once, in order per sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any

from durable.backends.base import PersistentBackend
from durable.errors import ClaimLostError, StepAlreadyRecordedError
from durable.models import RECV_STEP, WORKFLOW_TASK, ReceiveStatus, StepRecord, StepStatus

TOPIC = "t"
#: A receiver's lease: short, so that leases expire under load and are taken over.
LEASE = timedelta(seconds=0.3)


async def send_all(
    backend: PersistentBackend, workflow_id: str, sender: str, count: int
) -> list[bool]:
    """Send ``[sender, i]`` for i in range(count), each twice under key ``sender-i``; return
    what every send returned."""
    results = []
    for i in range(count):
        for _ in range(2):
            results.append(
                await backend.send_message(
                    workflow_id, TOPIC, [sender, i], idempotency_key=f"{sender}-{i}"
                )
            )
    return results


async def receive_until(
    backend: PersistentBackend, workflow_id: str, worker_id: str, total: int, timeout: float
) -> list[int]:
    """Receive while holding the claim until ``total`` receives are recorded; return the
    ``seq`` of every message this receiver got (a refused write is not a receive)."""
    got: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        claim = await backend.claim_task(workflow_id, WORKFLOW_TASK, worker_id, LEASE)
        if claim is None:
            await asyncio.sleep(0.002)
            continue
        steps = await backend.list_steps(workflow_id)
        done = sum(1 for s in steps if s.status is StepStatus.SUCCEEDED)
        if done >= total:
            return got
        record = StepRecord(
            position=done, name=RECV_STEP, status=StepStatus.PENDING, input=TOPIC, attempts=1
        )
        try:
            receipt = await backend.receive_message(
                workflow_id, TOPIC, worker_id=worker_id, step=record, deadline=None
            )
        except (ClaimLostError, StepAlreadyRecordedError):
            continue
        if receipt.status is ReceiveStatus.RECEIVED:
            assert receipt.message is not None
            got.append(receipt.message.seq)
            with contextlib.suppress(ClaimLostError):
                await backend.release_task_claim(workflow_id, WORKFLOW_TASK, worker_id)
        else:
            await asyncio.sleep(0.002)  # handed back to wait: let the senders go on
    raise AssertionError(f"{worker_id} gave up after {timeout}s with {len(got)} receives")


def _job(
    factory: Callable[[], PersistentBackend], role: str, args: tuple[Any, ...]
) -> tuple[str, Any]:
    async def run() -> Any:
        backend = factory()
        await backend.start()
        try:
            if role == "send":
                return await send_all(backend, *args)
            return await receive_until(backend, *args)
        finally:
            await backend.close()

    try:
        return role, asyncio.run(run())
    except BaseException:
        # as text: an exception (durable's included) may not survive pickling
        raise RuntimeError(f"a {role} process failed:\n{traceback.format_exc()}") from None


def run_processes(
    factory: Callable[[], PersistentBackend],
    jobs: Sequence[tuple[str, tuple[Any, ...]]],
    *,
    timeout: float = 120.0,
) -> list[Any]:
    """Run each ``(role, args)`` job (``"send"``: :func:`send_all`'s arguments after the
    backend; ``"receive"``: :func:`receive_until`'s) in a process of its own, all at once;
    return their results in order."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(jobs), mp_context=ctx) as pool:
        futures = [pool.submit(_job, factory, role, args) for role, args in jobs]
        return [f.result(timeout=timeout)[1] for f in futures]
