"""Workers: claim enqueued executions in batches and run them, many processes sharing one database.

A worker loops: it claims up to its free slots in one atomic statement (``SKIP LOCKED`` on
PostgreSQL, one write transaction on SQLite), runs each claimed execution under its lease (kept
alive by heartbeats), and when nothing is available it sleeps until the backend signals new work
(LISTEN/NOTIFY on PostgreSQL) or the poll interval passes. A dead worker's executions are taken
over by any worker once their leases expire, and resume from their history.

Stopping is graceful: the worker stops claiming, lets running executions finish within a grace
period, and hands back the rest at once (their leases released, the interrupted attempt not
counted) so that other workers resume them without waiting for expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from durable.errors import DurableError
from durable.models import WORKFLOW_TASK, TaskClaim
from durable.validation import (
    check_names,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)

if TYPE_CHECKING:
    from durable.runtime import Runtime

log = logging.getLogger(__name__)


class Worker:
    """Claims and runs enqueued executions for a :class:`~durable.Runtime`.

    Create it with :meth:`Runtime.start_worker`.

    :raises InvalidArgumentError: ``concurrency`` is not a positive int (``True`` is not one),
        ``poll_interval`` not a finite positive number, or ``queues`` / ``names`` not lists of
        valid names.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        concurrency: int,
        queues: Sequence[str] | None,
        names: Sequence[str] | None,
        poll_interval: float,
    ) -> None:
        check_positive_int(concurrency, "concurrency")
        check_positive_float(poll_interval, "poll_interval")
        self.runtime = runtime
        self.concurrency = concurrency
        self.queues = check_names(queues, "queues")
        self._names = check_names(names, "names")
        self.poll_interval = poll_interval
        self._running: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.completed = 0
        """How many executions this worker ran to an end (any outcome)."""

    def __repr__(self) -> str:
        return (
            f"Worker(executor_id={self.runtime.executor_id!r}, concurrency={self.concurrency}, "
            f"running={len(self._running)})"
        )

    @property
    def names(self) -> list[str]:
        """The names this worker claims: the workflow names given, else every one registered
        in this process, less those disabled here (:meth:`Registry.disable`), and the steps of
        its registry. Names disabled for every worker (:meth:`Runtime.set_workflow_enabled`)
        are skipped by the claim itself, in the database, from the moment they are disabled."""
        registry = self.runtime.registry
        workflows = [n for n in (self._names or registry.names()) if registry.is_enabled(n)]
        return workflows + registry.step_names()

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"durable-worker:{self.runtime.executor_id}"
            )

    async def _loop(self) -> None:
        backend = self.runtime.backend
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            claims: list[TaskClaim] = []
            names = self.names
            if free > 0 and names:
                try:
                    claims = await backend.claim_available_tasks(
                        self.runtime.executor_id,
                        free,
                        self.runtime.claim_ttl,
                        names=names,
                        queues=self.queues,
                        include_own=False,
                    )
                except DurableError as exc:  # the database may come back
                    log.warning("claiming work failed: %s", exc, extra={"action": "worker.claim"})
            for claim in claims:
                task = asyncio.get_running_loop().create_task(
                    self._process(claim), name=f"durable:{claim.instance_id}"
                )
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if claims and len(claims) == free:
                await self._wait_for_slot()
            elif not claims:
                waiter = asyncio.ensure_future(backend.wait_for_work(self.poll_interval))
                stopper = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for f in (waiter, stopper):
                    f.cancel()

    async def _wait_for_slot(self) -> None:
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({stopper, *self._running}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()

    async def _process(self, claim: TaskClaim) -> None:
        runtime = self.runtime
        try:
            if claim.task_id == WORKFLOW_TASK:
                wf = runtime.registry.get(claim.name)
                await runtime.execute_claimed(wf, claim.instance_id)
            else:
                await runtime.execute_step_task(claim)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            # suspended (waiting for its steps), or its outcome is recorded (failed,
            # rescheduled, dead-lettered), or its lease was lost: this worker is done with it
            log.info(
                "workflow %s ended with %s: %s",
                claim.instance_id,
                type(exc).__name__,
                exc,
                extra={"action": "worker.ended", "workflow_id": claim.instance_id},
            )
        finally:
            self.completed += 1

    def request_stop(self) -> None:
        """Stop claiming new work (safe to call from a signal handler on the loop)."""
        self._stopping.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop claiming, give running executions ``grace`` seconds to finish, then interrupt
        the rest and hand them back at once.

        :raises InvalidArgumentError: ``grace`` is negative or not finite."""
        check_non_negative_float(grace, "grace")
        self.request_stop()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._running:
            _done, pending = await asyncio.wait(set(self._running), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.info(
                    "handed back %d unfinished execution(s)",
                    len(pending),
                    extra={"action": "worker.handed_back"},
                )

    async def wait_stopped(self) -> None:
        """Wait until :meth:`request_stop` is called."""
        await self._stopping.wait()


async def serve(
    runtime: Runtime,
    *,
    concurrency: int = 10,
    queues: Sequence[str] | None = None,
    grace: float = 30.0,
    poll_interval: float = 1.0,
) -> int:
    """Run a worker until SIGTERM or SIGINT, then shut down gracefully. Returns how many
    executions it ran. This is what ``durable worker module:runtime`` does.

    :raises InvalidArgumentError: as :meth:`Runtime.start_worker`, or ``grace`` is negative or
        not finite (before the runtime starts)."""
    check_positive_int(concurrency, "concurrency")
    check_positive_float(poll_interval, "poll_interval")
    check_names(queues, "queues")
    check_non_negative_float(grace, "grace")
    async with runtime:
        worker = await runtime.start_worker(
            concurrency=concurrency, queues=queues, poll_interval=poll_interval
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        log.info(
            "worker %s serving %s",
            runtime.executor_id,
            ", ".join(worker.names) or "nothing",
            extra={"action": "worker.started"},
        )
        try:
            await worker.wait_stopped()
            await worker.stop(grace)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return worker.completed
