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
import time
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


def _queue_claim_job(
    factory: Callable[[], PersistentBackend],
    worker_id: str,
    queue: str,
    batch: int,
    hold: float,
    log_path: str,
) -> tuple[int, list[TaskKey]]:
    """One process's part of a queue round: claim ``batch`` at a time from a queue with limits
    (:meth:`~PersistentBackend.claim_queue_tasks`) until it stays empty, holding each claim
    ``hold`` seconds; each hold is appended to ``log_path`` (``start end`` on the system-wide
    monotonic clock, nanoseconds) *inside* the claim's lifetime: after the claim returned,
    before the completion is sent. Returns ``(its pid, the keys it claimed)``."""

    async def hold_one(backend: PersistentBackend, key: TaskKey, fd: int) -> None:
        start = time.monotonic_ns()
        await asyncio.sleep(hold)
        os.write(fd, f"{start} {time.monotonic_ns()}\n".encode())
        with contextlib.suppress(ClaimLostError):
            await backend.complete_task(key[0], key[1], worker_id)

    async def run() -> list[TaskKey]:
        backend = factory()
        try:
            await backend.start()
        except BaseException:
            _barrier.abort()
            raise
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        got: list[TaskKey] = []
        holding: set[asyncio.Task[None]] = set()
        try:
            _barrier.wait(60)
            empty = 0
            while empty < 20:
                claims = await backend.claim_queue_tasks(
                    worker_id, queue, batch, timedelta(seconds=120)
                )
                for claim in claims:
                    key = (claim.instance_id, claim.task_id)
                    got.append(key)
                    task = asyncio.ensure_future(hold_one(backend, key, fd))
                    holding.add(task)
                    task.add_done_callback(holding.discard)
                if claims:
                    empty = 0
                elif holding:
                    await asyncio.wait(holding, return_when=asyncio.FIRST_COMPLETED)
                else:
                    empty += 1
                    await asyncio.sleep(0.01)
            return got
        finally:
            if holding:
                await asyncio.gather(*holding, return_exceptions=True)
            os.close(fd)
            await backend.close()

    try:
        return os.getpid(), asyncio.run(run())
    except BaseException:
        raise RuntimeError(f"{worker_id} failed:\n{traceback.format_exc()}") from None


def max_overlap(intervals: Sequence[tuple[int, int]]) -> int:
    """The most intervals ``(start, end)`` open at one moment (an end before a start at the
    same instant)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = current = 0
    for _, change in edges:
        current += change
        most = max(most, current)
    return most


def read_intervals(log_path: str) -> list[tuple[int, int]]:
    """The ``start end`` lines of a hold log."""
    with open(log_path) as f:
        return [(int(a), int(b)) for a, b in (line.split() for line in f if line.strip())]


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

    def run_queue(
        self,
        factory: Callable[[], PersistentBackend],
        queue: str,
        log_path: str,
        *,
        batch: int = 3,
        hold: float = 0.002,
        timeout: float = 120.0,
    ) -> dict[str, list[TaskKey]]:
        """One round of :func:`_queue_claim_job` in every process (see it); returns what each
        worker claimed, by worker id. The holds are in ``log_path`` (:func:`read_intervals`).

        :raises AssertionError: a process failed or timed out.
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
                self._pool.submit(_queue_claim_job, factory, wid, queue, batch, hold, log_path)
                for wid in worker_ids
            ]
            _, pending = wait(futures, timeout, return_when=FIRST_EXCEPTION)
            if pending:
                self._kill()
                raise AssertionError(f"claiming processes still running after {timeout}s")
            errors = [f.exception() for f in futures if f.exception() is not None]
            if errors:
                raise AssertionError(f"a claiming process failed: {errors[0]}") from errors[0]
            results = [f.result() for f in futures]
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
