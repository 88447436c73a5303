"""Retention: finished executions deleted once they are older than a period.

An execution that finished (succeeded, failed, cancelled or dead-lettered) longer ago than the
period is deleted with everything stored for it (steps, tasks, messages, events, streams), in
small batches, each its own short transaction that skips rows others hold, so that workers'
claims never wait for it for long. Unfinished executions are never deleted, nor a finished
child whose parent has not finished (the parent may still need its outcome), nor a finished
parent with an unfinished child (see
:meth:`~durable.backends.PersistentBackend.delete_finished_workflows` for the rule).

Three ways to run it:

* in the background of a runtime that serves workers:
  ``Runtime(backend, retention=timedelta(days=30))``, or per workflow name or queue with
  :class:`Retention` policies (``retention=[Retention(timedelta(days=7), queues=["bulk"]),
  Retention(timedelta(days=90))]``); every process with a worker runs it, and racing ones
  delete each execution once;
* once, from code: :meth:`RetentionOperations.delete_finished` on a :class:`~durable.Client`;
* once, from a shell: ``durable gc URL --older-than 30d``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from durable.backends.base import PersistentBackend
from durable.errors import DurableError, InvalidArgumentError
from durable.validation import (
    check_duration,
    check_names,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Executions deleted per transaction unless told otherwise.
DEFAULT_BATCH = 1000
#: Seconds a background run pauses between two batches, leaving the database to workers.
DEFAULT_PAUSE = 0.05
#: Seconds a background run waits, once nothing is left to delete, before it looks again.
DEFAULT_INTERVAL = 60.0


@dataclass(frozen=True)
class Retention:
    """Keep finished executions for ``keep``, then delete them (in the background of a runtime
    with a worker: ``Runtime(backend, retention=[...])``).

    :param keep: how long a finished execution is kept after its ``completed_at`` (a
        ``timedelta`` or seconds).
    :param names: only executions of these workflow names (default: all).
    :param queues: only executions on these queues (default: all). With both, both must match.
    :param batch: executions deleted per transaction.
    :param pause: seconds between two batches (leaves the database to workers).
    :param interval: seconds between two runs once nothing is left to delete.

    :raises InvalidArgumentError: a bad value, named.
    """

    keep: timedelta
    names: Sequence[str] | None = None
    queues: Sequence[str] | None = None
    batch: int = DEFAULT_BATCH
    pause: float = DEFAULT_PAUSE
    interval: float = DEFAULT_INTERVAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", check_duration(self.keep, "keep"))
        names = check_names(self.names, "names")
        queues = check_names(self.queues, "queues")
        object.__setattr__(self, "names", None if names is None else tuple(names))
        object.__setattr__(self, "queues", None if queues is None else tuple(queues))
        check_positive_int(self.batch, "batch")
        check_non_negative_float(self.pause, "pause")
        check_positive_float(self.interval, "interval")


def retention_policies(value: Any) -> tuple[Retention, ...]:
    """The policies a runtime's ``retention`` option stands for: None (none), a ``timedelta``
    (every execution kept that long), a :class:`Retention`, or a list of them.

    :raises InvalidArgumentError: anything else.
    """
    if value is None:
        return ()
    if isinstance(value, timedelta):
        return (Retention(value),)
    if isinstance(value, Retention):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, Retention) for v in value):
        return tuple(value)
    raise InvalidArgumentError(
        f"retention must be a timedelta, a durable.Retention or a list of them, got "
        f"{type(value).__qualname__}"
    )


async def delete_in_batches(
    backend: PersistentBackend,
    before: datetime,
    *,
    names: Sequence[str] | None = None,
    queues: Sequence[str] | None = None,
    batch: int = DEFAULT_BATCH,
    pause: float = 0.0,
    on_batch: Callable[[int], None] | None = None,
    sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
) -> int:
    """Delete every deletable execution finished before ``before``, ``batch`` at a time (each
    batch one transaction), pausing ``pause`` seconds between batches and calling ``on_batch``
    with each batch's count; return the total. Interrupted (cancelled, killed), it leaves the
    batches done deleted and the rest stored: running it again finishes the job."""
    total = 0
    while True:
        deleted = await backend.delete_finished_workflows(
            before, names=names, queues=queues, limit=batch
        )
        total += deleted
        if on_batch is not None and deleted:
            on_batch(deleted)
        if deleted < batch:
            return total
        if pause:
            await sleep(pause)


async def run_retention(
    backend: PersistentBackend,
    policies: Sequence[Retention],
    *,
    sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
) -> None:
    """Apply ``policies`` for ever (a runtime runs it in the background of its workers): each
    policy deletes what it may in batches, then everything waits the shortest ``interval``. A
    database error is logged at DEBUG and the run tried again after the interval."""
    if not policies:
        return
    interval = min(p.interval for p in policies)
    while True:
        for policy in policies:
            try:
                before = await backend.now() - policy.keep
                deleted = await delete_in_batches(
                    backend,
                    before,
                    names=policy.names,
                    queues=policy.queues,
                    batch=policy.batch,
                    pause=policy.pause,
                    sleep=sleep,
                )
            except DurableError as exc:  # the database may be away: look again later
                log.debug("retention run failed: %s", exc, extra={"action": "retention.failed"})
                continue
            if deleted:
                log.info(
                    "retention: deleted %d finished executions older than %s",
                    deleted,
                    before.isoformat(),
                    extra={"action": "retention.deleted"},
                )
        await sleep(interval)


class RetentionOperations:
    """The retention operations of :class:`~durable.Client` (each with a ``_sync`` twin)."""

    backend: PersistentBackend

    if TYPE_CHECKING:  # provided by the client

        def blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...
        def _require_started(self) -> None: ...

    async def _cutoff(self, older_than: timedelta | float) -> datetime:
        keep = check_duration(older_than, "older_than")
        return await self.backend.now() - keep

    async def delete_finished(
        self,
        older_than: timedelta | float,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        batch: int = DEFAULT_BATCH,
        pause: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete, now, every execution that finished more than ``older_than`` ago (on the
        store's clock) and may be deleted (see :mod:`durable.retention`), of ``names`` and on
        ``queues`` if given, ``batch`` per transaction with ``pause`` seconds between batches;
        ``on_batch`` is called with each batch's count. Returns how many were deleted.

        :raises InvalidArgumentError: a bad argument, named.
        """
        self._require_started()
        checked_names = check_names(names, "names")
        checked_queues = check_names(queues, "queues")
        check_positive_int(batch, "batch")
        check_non_negative_float(pause, "pause")
        return await delete_in_batches(
            self.backend,
            await self._cutoff(older_than),
            names=checked_names,
            queues=checked_queues,
            batch=batch,
            pause=pause,
            on_batch=on_batch,
        )

    def delete_finished_sync(
        self,
        older_than: timedelta | float,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        batch: int = DEFAULT_BATCH,
        pause: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """:meth:`delete_finished` from sync code."""
        return self.blocking(
            self.delete_finished(
                older_than, names=names, queues=queues, batch=batch, pause=pause, on_batch=on_batch
            )
        )

    async def count_finished(
        self,
        older_than: timedelta | float,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
    ) -> int:
        """How many executions :meth:`delete_finished` would delete now (nothing is written).

        :raises InvalidArgumentError: a bad argument, named.
        """
        self._require_started()
        return await self.backend.count_finished_workflows(
            await self._cutoff(older_than),
            names=check_names(names, "names"),
            queues=check_names(queues, "queues"),
        )

    def count_finished_sync(
        self,
        older_than: timedelta | float,
        *,
        names: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
    ) -> int:
        """:meth:`count_finished` from sync code."""
        return self.blocking(self.count_finished(older_than, names=names, queues=queues))
