"""Queues with limits: declared in code (:class:`Queue`), stored in the database so that every
worker and the CLI see the same limits, and managed from a :class:`~durable.Client`
(:class:`QueueOperations`).

A queue is a name every execution carries (``enqueue(..., queue="emails")``); one without a
stored configuration has no limits. A stored queue may have

* ``concurrency``: at most this many of its executions run at once across every worker;
* ``worker_concurrency``: at most this many at once on one executor (one runtime);
* ``rate_limit=(n, period)``: at most ``n`` starts in any window of ``period`` seconds;
* ``partition_concurrency``: at most this many at once per ``partition_key`` (given at enqueue),
  the oldest first, so one customer's executions run one after the other while others'
  run in parallel.

The claim enforces them atomically (see :meth:`PersistentBackend.claim_queue_tasks
<durable.backends.PersistentBackend.claim_queue_tasks>`): at no moment does a limit overshoot,
however many workers race. It reads the limits from the database at every claim, so a change
(:meth:`QueueOperations.update_queue`, ``durable queues set``) takes effect without restarting
anything. A suspended execution (sleeping, waiting for a message or for its fanned-out steps)
holds no claim, and does not count. Limits count executions (workflow tasks): the steps an
execution hands out with ``durable.map`` are not limited.

Workers learn which queues are limited from :class:`QueueLimits` (re-read every
:data:`REFRESH_SECONDS`); until then a newly limited queue is left alone by every claim
(the ordinary claims skip it at once), never claimed beyond its limits.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Coroutine, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from durable.backends.base import MAX_RATE_PERIOD, PersistentBackend, check_queue_limits
from durable.errors import InvalidArgumentError
from durable.models import QueueInfo
from durable.validation import check_name, check_positive_int

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How often (seconds) a runtime re-reads which queues are limited.
REFRESH_SECONDS = 1.0


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: For :meth:`QueueOperations.update_queue`: leave this limit as stored.
UNSET: Any = _Unset()


def _rate(value: Any, what: str) -> tuple[int | None, float | None]:
    """``(limit, period seconds)`` from a ``rate_limit`` argument: None, or ``(n, period)``
    with ``period`` in seconds or a ``timedelta``."""
    if value is None:
        return None, None
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise InvalidArgumentError(
            f"{what} must be (starts, period) such as (100, 60) or "
            f"(100, timedelta(minutes=1)), got {value!r}"
        )
    count, period = value
    check_positive_int(count, f"{what}[0]")
    if isinstance(period, timedelta):
        period = period.total_seconds()
    if (
        isinstance(period, bool)
        or not isinstance(period, int | float)
        or not 0 < period < MAX_RATE_PERIOD  # before isfinite: an int past a float's range
        or not math.isfinite(period)
    ):
        raise InvalidArgumentError(
            f"{what}[1] (the period) must be a positive number of seconds below "
            f"{MAX_RATE_PERIOD:.0f} (about 31 years) or a timedelta, got {value[1]!r}"
        )
    return count, float(period)


def _optional_positive(value: Any, what: str) -> int | None:
    return None if value is None else check_positive_int(value, what)


class Queue:
    """A queue and its limits, declared in code::

        emails = durable.Queue("emails", concurrency=10, worker_concurrency=4, rate_limit=(100, 60))
        runtime = durable.Runtime(backend, queues=[emails])
        await client.enqueue(send_email, to, queue=emails)

    Every limit is optional (None: no such limit); see the module's docstring for what each
    means. A runtime given ``queues=[...]`` stores each declared queue on start unless it is
    stored already: the stored limits win (an operator's change survives restarts and
    deploys; a differing declaration is logged). Change stored limits with
    :meth:`Client.update_queue <durable.Client.update_queue>` or ``durable queues set``.

    :raises InvalidArgumentError: a name that is not a valid queue name, a limit that is not an
        int of at least 1, or ``rate_limit`` not ``(starts, period)``.
    """

    __slots__ = ("concurrency", "name", "partition_concurrency", "rate_limit", "worker_concurrency")

    def __init__(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: tuple[int, float | timedelta] | None = None,
        partition_concurrency: int | None = None,
    ) -> None:
        self.name = check_name(name, "name")
        self.concurrency = _optional_positive(concurrency, "concurrency")
        self.worker_concurrency = _optional_positive(worker_concurrency, "worker_concurrency")
        count, period = _rate(rate_limit, "rate_limit")
        self.rate_limit = None if count is None else (count, period)
        self.partition_concurrency = _optional_positive(
            partition_concurrency, "partition_concurrency"
        )

    def __repr__(self) -> str:
        limits = ", ".join(
            f"{k}={getattr(self, k)!r}"
            for k in ("concurrency", "worker_concurrency", "rate_limit", "partition_concurrency")
            if getattr(self, k) is not None
        )
        return f"Queue({self.name!r}{', ' if limits else ''}{limits})"

    def __str__(self) -> str:
        return self.name

    def info(self) -> QueueInfo:
        """The queue as it is stored (without timestamps)."""
        count, period = self.rate_limit if self.rate_limit is not None else (None, None)
        return QueueInfo(
            name=self.name,
            concurrency=self.concurrency,
            worker_concurrency=self.worker_concurrency,
            rate_limit=count,
            rate_period=period,
            partition_concurrency=self.partition_concurrency,
        )


def describe_limits(queue: QueueInfo | None) -> str:
    """A queue's limits in a few words (``"concurrency 10, 4 per worker, 100 per 60s, 1 per
    partition"``), or ``"-"`` for none (the CLI and the web view show it)."""
    if queue is None or not queue.limited:
        return "-"
    parts = []
    if queue.concurrency is not None:
        parts.append(f"concurrency {queue.concurrency}")
    if queue.worker_concurrency is not None:
        parts.append(f"{queue.worker_concurrency} per worker")
    if queue.rate_limit is not None:
        parts.append(f"{queue.rate_limit} per {queue.rate_period:g}s")
    if queue.partition_concurrency is not None:
        parts.append(f"{queue.partition_concurrency} per partition")
    return ", ".join(parts)


def queue_name(value: Any, what: str = "queue") -> str | None:
    """The queue name given as a name or a :class:`Queue` (None stays None)."""
    if isinstance(value, Queue):
        return value.name
    return value  # type: ignore[no-any-return]  # checked by the enqueue's own checks


def _same_limits(a: QueueInfo, b: QueueInfo) -> bool:
    keys = (
        "concurrency",
        "worker_concurrency",
        "rate_limit",
        "rate_period",
        "partition_concurrency",
    )
    return all(getattr(a, k) == getattr(b, k) for k in keys)


async def store_declared_queues(backend: PersistentBackend, declared: Sequence[Queue]) -> None:
    """Store the queues a runtime declares, keeping stored ones (a differing declaration is
    logged at WARNING, naming the command that changes the stored limits)."""
    for queue in declared:
        stored, created = await backend.put_queue(queue.info(), replace=False)
        if not created and not _same_limits(stored, queue.info()):
            log.warning(
                "queue %r is declared as %r but stored with other limits, which apply (change "
                "them with client.update_queue() or `durable queues set %s ...`)",
                queue.name,
                queue,
                queue.name,
                extra={"action": "queues.declared_differs"},
            )


class QueueLimits:
    """Which queues are limited, as a runtime's claims need to know (re-read from the backend
    at most every :data:`REFRESH_SECONDS`)."""

    def __init__(self, backend: PersistentBackend) -> None:
        self._backend = backend
        self._limited: list[str] = []
        self._read_at = -math.inf

    async def limited(self, queues: Sequence[str] | None) -> list[str]:
        """The limited queues among ``queues`` (None: every queue).

        :raises DurableError: the backend could not be read."""
        now = time.monotonic()
        if now - self._read_at >= REFRESH_SECONDS:
            stored = await self._backend.list_queues()
            self._limited = [q.name for q in stored if q.limited]
            self._read_at = now
        if queues is None:
            return list(self._limited)
        return [name for name in self._limited if name in queues]


class QueueOperations:
    """The queue operations of :class:`~durable.Client` (each with a ``_sync`` twin)."""

    backend: PersistentBackend

    if TYPE_CHECKING:  # provided by the client

        def blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...
        def _require_started(self) -> None: ...

    async def create_queue(self, queue: Queue) -> QueueInfo:
        """Store ``queue`` with its limits, replacing the stored limits of a queue of that name.

        :raises InvalidArgumentError: ``queue`` is not a :class:`Queue`.
        """
        self._require_started()
        if not isinstance(queue, Queue):
            raise InvalidArgumentError(f"queue must be a durable.Queue, got {queue!r}")
        stored, _created = await self.backend.put_queue(queue.info())
        return stored

    def create_queue_sync(self, queue: Queue) -> QueueInfo:
        """:meth:`create_queue` for code that is not async."""
        return self.blocking(self.create_queue(queue))

    async def update_queue(
        self,
        name: str,
        *,
        concurrency: int | None = UNSET,
        worker_concurrency: int | None = UNSET,
        rate_limit: tuple[int, float | timedelta] | None = UNSET,
        partition_concurrency: int | None = UNSET,
    ) -> QueueInfo:
        """Change some limits of a queue (stored, or created with them), leaving the others as
        stored; None removes a limit. Every worker's next claim obeys the new limits.

        :raises InvalidArgumentError: a bad limit (as for :class:`Queue`).
        """
        self._require_started()
        check_name(name, "name")
        stored = {q.name: q for q in await self.backend.list_queues()}.get(name)
        base = stored or QueueInfo(name=name)
        changes: dict[str, Any] = {}
        if concurrency is not UNSET:
            changes["concurrency"] = _optional_positive(concurrency, "concurrency")
        if worker_concurrency is not UNSET:
            changes["worker_concurrency"] = _optional_positive(
                worker_concurrency, "worker_concurrency"
            )
        if rate_limit is not UNSET:
            changes["rate_limit"], changes["rate_period"] = _rate(rate_limit, "rate_limit")
        if partition_concurrency is not UNSET:
            changes["partition_concurrency"] = _optional_positive(
                partition_concurrency, "partition_concurrency"
            )
        updated = dataclasses.replace(base, **changes)
        check_queue_limits(updated)
        # only the limits changed here are written, in the backend's transaction: another
        # caller's change of the others since the read above is kept
        result, _created = await self.backend.put_queue(updated, only=tuple(changes))
        return result

    def update_queue_sync(self, name: str, **limits: Any) -> QueueInfo:
        """:meth:`update_queue` for code that is not async."""
        return self.blocking(self.update_queue(name, **limits))

    async def get_queue(self, name: str) -> QueueInfo:
        """The stored queue.

        :raises QueueNotFoundError: no queue of that name is stored (it has no limits).
        :raises InvalidArgumentError: ``name`` is not a valid queue name.
        """
        self._require_started()
        return await self.backend.get_queue(check_name(name, "name"))

    def get_queue_sync(self, name: str) -> QueueInfo:
        """:meth:`get_queue` for code that is not async."""
        return self.blocking(self.get_queue(name))

    async def list_queues(self) -> list[QueueInfo]:
        """Every stored queue, sorted by name."""
        self._require_started()
        return await self.backend.list_queues()

    def list_queues_sync(self) -> list[QueueInfo]:
        """:meth:`list_queues` for code that is not async."""
        return self.blocking(self.list_queues())

    async def delete_queue(self, name: str) -> bool:
        """Forget a queue's limits (its executions stay, and run without limits). Returns
        False if it was not stored."""
        self._require_started()
        return await self.backend.delete_queue(check_name(name, "name"))

    def delete_queue_sync(self, name: str) -> bool:
        """:meth:`delete_queue` for code that is not async."""
        return self.blocking(self.delete_queue(name))
