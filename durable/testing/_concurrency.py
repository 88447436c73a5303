"""Claiming workers for the contract suite's atomicity tests: coroutines in this process, or
processes of their own.

:class:`ProcessClaimers` keeps a pool of processes (``spawn`` start method) for a whole test class,
so that each test does not pay for starting interpreters and importing SQLAlchemy again. Every
round runs one job in each process: it builds its own backend with a picklable factory, waits at a
barrier so that all of them start claiming at the same moment, claims until nothing is left, and
reports the tasks it got and its process id.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from datetime import timedelta
from typing import Any, Literal

from durable.backends.base import PersistentBackend
from durable.errors import ClaimLostError

TaskKey = tuple[str, str]
Mode = Literal["batch", "single"]


async def claim_until_empty(
    backend: PersistentBackend, worker_id: str, *, batch: int, ttl: timedelta
) -> list[TaskKey]:
    """Claim tasks ``batch`` at a time with :meth:`~PersistentBackend.claim_available_tasks`,
    completing each one, until a claim returns nothing. Returns the keys claimed.

    A completion refused with :class:`ClaimLostError` is ignored: it means the task was also
    claimed by someone else, which the caller sees as a key claimed twice.
    """
    got: list[TaskKey] = []
    while True:
        claims = await backend.claim_available_tasks(worker_id, batch, ttl)
        if not claims:
            return got
        for claim in claims:
            got.append((claim.instance_id, claim.task_id))
            with contextlib.suppress(ClaimLostError):
                await backend.complete_task(claim.instance_id, claim.task_id, worker_id)


async def claim_each(
    backend: PersistentBackend, worker_id: str, keys: Sequence[TaskKey], *, ttl: timedelta
) -> list[TaskKey]:
    """Try :meth:`~PersistentBackend.claim_task` on every key; return the keys won."""
    won: list[TaskKey] = []
    for instance_id, task_id in keys:
        if await backend.claim_task(instance_id, task_id, worker_id, ttl) is not None:
            won.append((instance_id, task_id))
    return won


_barrier: Any = None


def _init_process(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


def _claim_job(
    factory: Callable[[], PersistentBackend],
    mode: Mode,
    worker_id: str,
    keys: list[TaskKey],
    batch: int,
    ttl: float,
) -> tuple[int, list[TaskKey]]:
    """One process's part of a round: ``(its pid, the keys it claimed)``."""

    async def run() -> list[TaskKey]:
        backend = factory()
        try:
            await backend.start()
        except BaseException:
            _barrier.abort()
            raise
        try:
            _barrier.wait(60)
            if mode == "batch":
                return await claim_until_empty(
                    backend, worker_id, batch=batch, ttl=timedelta(seconds=ttl)
                )
            return await claim_each(backend, worker_id, keys, ttl=timedelta(seconds=ttl))
        finally:
            await backend.close()

    try:
        return os.getpid(), asyncio.run(run())
    except BaseException:
        # re-raised as text: an exception (durable's included) may not survive pickling
        raise RuntimeError(f"{worker_id} failed:\n{traceback.format_exc()}") from None


class ProcessClaimers:
    """``workers`` processes that claim from one storage at the same time; create one per test
    class (processes start on first use) and :meth:`close` it at the end."""

    def __init__(self, workers: int = 4) -> None:
        self.workers = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._barrier = self._ctx.Barrier(workers)
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(
        self,
        factory: Callable[[], PersistentBackend],
        *,
        mode: Mode,
        keys: Sequence[TaskKey] = (),
        batch: int = 10,
        ttl: float = 120.0,
        timeout: float = 120.0,
    ) -> dict[str, list[TaskKey]]:
        """Run one round; return what each worker claimed, by worker id.

        ``mode="batch"``: each claims with ``claim_available_tasks`` (and completes) until none
        is left; ``mode="single"``: each tries ``claim_task`` on every one of ``keys``, in the
        same order.

        :raises AssertionError: a process failed or timed out, or two jobs shared a process.
        """
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=self._ctx,
                    initializer=_init_process,
                    initargs=(self._barrier,),
                )
            self._barrier.reset()
            worker_ids = [f"process-{i}" for i in range(self.workers)]
            futures = [
                self._pool.submit(_claim_job, factory, mode, wid, list(keys), batch, ttl)
                for wid in worker_ids
            ]
            _, pending = wait(futures, timeout, return_when=FIRST_EXCEPTION)
            if pending:
                _, pending = wait(futures, 10)
            if pending:
                self._kill()
                raise AssertionError(f"claiming processes still running after {timeout}s")
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                raise AssertionError(f"a claiming process failed: {errors[0]}") from errors[0]
            results = [f.result() for f in futures]
        pids = {pid for pid, _ in results}
        assert len(pids) == self.workers, f"jobs shared processes: {len(pids)} pids"
        return {wid: got for wid, (_, got) in zip(worker_ids, results, strict=True)}

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
        for process in list(processes.values()):
            process.kill()
        pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the processes."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
