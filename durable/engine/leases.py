"""The runtime's leases: the executor id it runs under, the heartbeats that keep it and its
leases alive, and how a lease is handed back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from durable import identity
from durable.context import ExecutionContext, HandedBack
from durable.engine.core import RuntimeCore
from durable.errors import (
    BackendUnavailableError,
    ClaimLostError,
    DurableError,
    ExecutorIdInUseError,
    TaskNotFoundError,
)
from durable.models import STALE_AFTER_HEARTBEATS, WORKFLOW_TASK

#: The runtime's logger: what this module logs, it logs as the runtime.
log = logging.getLogger("durable.runtime")
T = TypeVar("T")


#: The longest a release of a lease is waited for (it is best effort: the lease expires anyway).
RELEASE_TIMEOUT = 5.0
#: An attempt handed back during an outage tries its release again after this many seconds,
#: twice as long each time, at most :data:`OUTAGE_RETRY_MAX`, until the database answers.
OUTAGE_RETRY_FIRST = 0.05
OUTAGE_RETRY_MAX = 1.0


class Leases(RuntimeCore):
    """The executor's identity (one live process per executor id), its heartbeats, and its
    leases: renewed by heartbeats, handed back best effort and bounded in time."""

    async def _take_executor_id(self) -> None:
        """Record this start as the one live process under ``executor_id`` (see
        :mod:`durable.identity`), or raise :class:`ExecutorIdInUseError`."""
        incarnation = identity.new_incarnation()
        here = identity.hostname()
        for _ in range(5):  # the record may change between the look and the write: look again
            known = await self.backend.get_executor(self.executor_id)
            if known is not None and identity.in_use(known, here):
                raise ExecutorIdInUseError(
                    self.executor_id, known.hostname, known.pid, known.heartbeat_at
                )
            if await self.backend.start_executor(
                self.executor_id,
                hostname=here,
                pid=os.getpid(),
                incarnation=incarnation,
                heartbeat_interval=self.heartbeat_interval,
                replacing=known.incarnation if known is not None else None,
            ):
                self._incarnation = incarnation
                self._superseded = False
                if known is not None and known.stopped_at is None:
                    log.info(
                        "executor %s took its id over from process %d on %s (%s)",
                        self.executor_id,
                        known.pid,
                        known.hostname,
                        f"silent for {STALE_AFTER_HEARTBEATS} of its heartbeat intervals"
                        if known.stale
                        else "gone",
                        extra={"action": "executor.taken_over", "executor_id": self.executor_id},
                    )
                return
        known = await self.backend.get_executor(self.executor_id)
        assert known is not None  # someone else started under the id each time we tried
        raise ExecutorIdInUseError(self.executor_id, known.hostname, known.pid, known.heartbeat_at)

    async def _node_heartbeat(self) -> bool:
        """Record that this process is alive, fenced by its incarnation. Returns False when
        another process took the executor id over (this one looked dead to it): from then on
        this runtime claims nothing and runs no further step (its leases are the other one's
        now, since leases are held by executor id), and says so once, at ERROR."""
        if not self._superseded and await self.backend.record_executor_heartbeat(
            self.executor_id, incarnation=self._incarnation
        ):
            return True
        if not self._superseded:
            self._superseded = True
            for worker in self._workers:
                worker.request_stop()  # no hand-back: what it runs is not this process's now
            log.error(
                "executor id %s is no longer this process's: another process took it over "
                "(this one was presumed dead: no heartbeat for %d intervals of %.1f s). This "
                "runtime claims nothing more and runs no further step; stop this process",
                self.executor_id,
                STALE_AFTER_HEARTBEATS,
                self.heartbeat_interval,
                extra={"action": "executor.superseded", "executor_id": self.executor_id},
            )
        return False

    async def check_identity(self, instance_id: str, task_id: str = WORKFLOW_TASK) -> None:
        """Before work under a lease whose local deadline has passed (this process may have
        been paused long enough to be presumed dead): make sure the executor id is still this
        process's.

        :raises ClaimLostError: another process took the executor id over.
        """
        if not await self._node_heartbeat():
            raise self._lost(instance_id, task_id)

    def _lost(self, instance_id: str, task_id: str) -> ClaimLostError:
        return ClaimLostError(
            instance_id, task_id, self.executor_id, f"another process under {self.executor_id!r}"
        )

    async def _node_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._node_heartbeat()
            except Exception as exc:  # the database may come back: keep trying
                log.warning("node heartbeat failed: %s", exc, extra={"action": "node.heartbeat"})

    async def _heartbeat(
        self,
        instance_id: str,
        task_id: str = WORKFLOW_TASK,
        *,
        context: ExecutionContext | None = None,
        due: bool = False,
    ) -> None:
        """Extend the claim every ``heartbeat_interval``; the first extension at once when
        ``due`` (the caller already waited an interval).

        With ``context``, an execution's: no longer once a write of its own has waited for
        longer than ``claim_ttl`` (:meth:`ExecutionContext.write_waited`: a checkpoint, its
        outcome; a connection that went silent may hold it for ever). The lease is then taken
        for lost (its next write is refused here) and lapses, and another executor takes the
        execution over; the write, if it lands after that, is refused by the lease's fence.
        Without this the heartbeats, on other connections, kept the execution here for good."""
        while True:
            if not due:
                await asyncio.sleep(self.heartbeat_interval)
            due = False
            if self._superseded:  # the lease is the other process's now: stop at the next step
                if context is not None:
                    context.lease_lost = self._lost(instance_id, task_id)
                return
            if context is not None and self._write_stalled(instance_id, task_id, context):
                return
            before = time.monotonic()
            try:
                await self.backend.extend_task_claim(
                    instance_id, task_id, self.executor_id, self.claim_ttl
                )
                if context is not None:
                    context.lease_deadline = before + self.lease_window
            except (ClaimLostError, TaskNotFoundError) as exc:
                if context is not None:
                    context.lease_lost = ClaimLostError(
                        instance_id, task_id, self.executor_id, getattr(exc, "holder", None)
                    )
                if isinstance(exc, TaskNotFoundError):  # a cancel deleted it: nothing to see
                    log.info(
                        "workflow %s has no %s task any more (it was cancelled, or ended "
                        "elsewhere): it stops at its next step",
                        instance_id,
                        task_id,
                        extra={"action": "heartbeat.lost", "workflow_id": instance_id},
                    )
                    return
                log.warning(
                    "lost the lease on workflow %s: %s",
                    instance_id,
                    exc,
                    extra={"action": "heartbeat.lost", "workflow_id": instance_id},
                )
                return
            except Exception as exc:  # the database may come back: keep trying
                log.warning(
                    "heartbeat for workflow %s failed: %s",
                    instance_id,
                    exc,
                    extra={"action": "heartbeat.error", "workflow_id": instance_id},
                )

    async def _renewing(
        self,
        instance_id: str,
        write: Callable[[], Awaitable[T]],
        context: ExecutionContext | None = None,
    ) -> T:
        """``write()``, a write fenced by this executor's lease on the workflow (its start, its
        outcome); refused because the lease only ran out, with nobody else holding the workflow
        (this process paused, or its loop was late, for longer than ``claim_ttl``), the lease is
        renewed and the write tried once more, as a step's record is
        (:meth:`ExecutionContext.renew_lapsed`, with ``context``). Safe for the same reason:
        nobody can have run or recorded anything under a lease that nobody took over, and the
        renewal fails if another executor holds the workflow now, or it was released or removed.

        :raises ClaimLostError: the lease is gone (the refusal, or the renewal's own).
        """
        try:
            return await write()
        except ClaimLostError as refused:
            if context is not None:
                await context.renew_lapsed(refused)
            else:
                await self._renew_lapsed(instance_id, refused)
        return await write()

    async def _renew_lapsed(self, instance_id: str, refused: ClaimLostError) -> None:
        """:meth:`_renewing` without an execution context (before the execution began): renew
        the lease if it only ran out, else raise ``refused``."""
        if refused.holder is not None or self._superseded:
            raise refused
        await self.renew_lease(instance_id)

    async def renew_lease(self, instance_id: str) -> None:
        """Renew this executor's lease on the workflow for ``claim_ttl``, after a pause that
        may have outlasted it (the local deadline passed, or a write was refused).

        :raises ClaimLostError: another process took the executor id over, another executor
            holds the workflow, or its task is gone (it ended elsewhere, or was cancelled).
        """
        # paused long enough to be presumed dead? then another process may run under this
        # executor id, and the lease below would be renewed for it: check the id first
        await self.check_identity(instance_id)
        try:
            await self.backend.extend_task_claim(
                instance_id, WORKFLOW_TASK, self.executor_id, self.claim_ttl
            )
        except TaskNotFoundError as exc:  # finished elsewhere, or cancelled: nothing to hold
            raise ClaimLostError(
                instance_id,
                WORKFLOW_TASK,
                self.executor_id,
                None,
                reason="its task is gone (the workflow ended elsewhere, or was cancelled)",
            ) from exc

    def _write_stalled(self, instance_id: str, task_id: str, context: ExecutionContext) -> bool:
        """Whether the execution's oldest write in flight has waited for longer than
        ``claim_ttl``; if so, take its lease for lost and say so (a warning, action
        ``heartbeat.stalled``)."""
        waited = context.write_waited()
        ttl = self.claim_ttl.total_seconds()
        if waited <= ttl:
            return False
        reason = (
            f"a write of its own has waited {waited:.1f} s for the database, more than "
            f"claim_ttl ({ttl:g} s): its lease is left to lapse"
        )
        context.lease_lost = ClaimLostError(
            instance_id, task_id, self.executor_id, None, reason=reason
        )
        log.warning(
            "workflow %s: a write of its own (a step's record, its outcome) has waited %.1f s "
            "for the database, more than claim_ttl (%g s): its lease is no longer renewed, so "
            "that another executor takes the execution over once it lapses (the write, if it "
            "ever lands, is refused then). A connection to the database may have gone silent",
            instance_id,
            waited,
            ttl,
            extra={"action": "heartbeat.stalled", "workflow_id": instance_id, "waited": waited},
        )
        return True

    async def _release_quietly(self, instance_id: str, run_after: timedelta = timedelta(0)) -> None:
        """Hand an interrupted execution back, due ``run_after`` from now, without counting
        the attempt. Best effort, and bounded in time: if the database cannot be reached, the
        lease expires instead and the next executor resumes the execution. Nothing is done once
        another process took this executor id over: the lease is that process's then."""
        if self._superseded:
            return
        failed = await self._bounded(
            self.backend.reschedule_workflow(
                instance_id,
                worker_id=self.executor_id,
                run_after=run_after,
                consume_attempt=False,
            )
        )
        if failed is not None:
            log.warning(
                "workflow %s could not be handed back (%s): it is resumed once its lease "
                "expires, within %s s",
                instance_id,
                failed,
                self.claim_ttl.total_seconds(),
                extra={"action": "workflow.not_handed_back", "workflow_id": instance_id},
            )

    async def _bounded(self, release: Coroutine[Any, Any, Any]) -> str | None:
        """Run a best-effort release of a lease: errors are ignored, a cancellation of the
        caller does not interrupt it, and it is given up after :data:`RELEASE_TIMEOUT` seconds
        (at most the lease's duration: after that the lease has expired anyway). Returns why
        it was not done (None: done)."""
        task = asyncio.ensure_future(release)
        task.add_done_callback(_retrieve)
        timeout = min(self.claim_ttl.total_seconds(), RELEASE_TIMEOUT)
        asyncio.get_running_loop().call_later(timeout, task.cancel)
        try:
            await asyncio.shield(task)
        except DurableError as exc:
            return f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            return "given up" if task.cancelled() else None  # (else: the caller's cancellation)
        return None

    async def _hand_back(
        self, instance_id: str, outage: BackendUnavailableError, *, begun: bool = True
    ) -> NoReturn:
        """A checkpoint (or, not ``begun``, the attempt's start) could not reach the database:
        end the attempt without counting it, to be resumed after the database answers again
        (or once the lease expires); see :meth:`_release_through_outage`."""
        log.warning(
            "workflow %s: the database could not be reached, handing the attempt back: %s",
            instance_id,
            outage,
            extra={"action": "workflow.outage", "workflow_id": instance_id},
        )
        await self._release_through_outage(instance_id, begun=begun)
        raise HandedBack(instance_id) from outage

    async def _release_through_outage(self, instance_id: str, *, begun: bool = True) -> None:
        """Hand back an attempt that an outage ended, without counting it: due
        :meth:`_outage_backoff` after the release (at once in a partition, whose order it
        keeps), or, not ``begun`` (its start met the outage:
        nothing ran, and whether the start was recorded is unknown), its claim given back, due
        at once. Tried until the database answers (see :meth:`_through_outage`), else the lease
        expires and the next executor resumes the execution.

        The caller waits meanwhile, so a worker's slot stays taken while its database is away:
        it starts none of the executions it claimed ahead (each would run step bodies whose
        results cannot be recorded, to run them again later), and the attempt is due again
        shortly after the database is back, not only once its lease expires."""
        if self._superseded:
            return

        async def release() -> None:
            if begun:
                # one in a partition keeps its place there: due at once (its partition's later
                # executions, due, would run before it meanwhile)
                partitioned = (await self.backend.get_workflow(instance_id)).partition_key
                await self.backend.reschedule_workflow(
                    instance_id,
                    worker_id=self.executor_id,
                    run_after=timedelta(0) if partitioned else self._outage_backoff(),
                    consume_attempt=False,
                )
            else:
                await self.backend.release_task_claim(instance_id, WORKFLOW_TASK, self.executor_id)

        with contextlib.suppress(DurableError):  # still away, or nothing left to hand back
            await self._through_outage(release)

    async def _through_outage(
        self, write: Callable[[], Awaitable[T]], *, bounded: bool = True
    ) -> T:
        """``write()``, a write fenced by one of this executor's leases, tried again while the
        database cannot be reached (``BackendUnavailableError``; with ``bounded``, also a try
        that took longer than :data:`RELEASE_TIMEOUT`, which is given up): after
        :data:`OUTAGE_RETRY_FIRST` seconds, twice as long each time up to
        :data:`OUTAGE_RETRY_MAX`, for at most the lease's duration (by then the lease has
        expired, and the fence would refuse the write anyway). Without ``bounded`` a try takes
        as long as it takes (a write that may wait for locks).

        :raises BackendUnavailableError: the database did not answer in time (the last error).
        :raises DurableError: any other error of ``write()``, at once (a lost lease...).
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.claim_ttl.total_seconds()
        pause = OUTAGE_RETRY_FIRST
        while True:
            try:
                if not bounded:
                    return await write()
                return await asyncio.wait_for(
                    write(), max(min(give_up - loop.time(), RELEASE_TIMEOUT), 0.01)
                )
            except (BackendUnavailableError, TimeoutError) as exc:
                if self._superseded or loop.time() + pause >= give_up:
                    if isinstance(exc, BackendUnavailableError):
                        raise
                    raise BackendUnavailableError(
                        f"the database did not answer within {RELEASE_TIMEOUT:g} s"
                    ) from exc
            await asyncio.sleep(pause)
            pause = min(pause * 2, OUTAGE_RETRY_MAX)


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a best-effort task's outcome as seen (its errors are expected and ignored)."""
    if not task.cancelled():
        task.exception()
