"""Queues with limits: stored in ``durable_queues``, and claimed within their limits.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). The
ordinary claims (:mod:`.claims`) leave the workflow tasks of a queue with a limit alone;
:meth:`Queues.claim_queue_tasks` claims them, in one short transaction per queue:

1. lock the queue's row (``SELECT ... FOR UPDATE SKIP LOCKED``: a claim that finds it locked
   by another claim of the queue returns nothing at once; on SQLite ``BEGIN IMMEDIATE`` already
   holds the database's write lock, and SQLAlchemy renders no ``FOR UPDATE``), which serializes
   the claims of one queue across every worker and process, and read its limits (a change is
   seen by the next claim);
2. count, in a statement of its own, the queue's running executions (workflow tasks holding a
   live claim), the worker's own, and the starts in the rate limit's window. It must be a
   statement after the lock's: under PostgreSQL's READ COMMITTED a statement sees the commits
   made before *it* started, and one that waited for the lock inside the same statement would
   count with a snapshot taken before the previous holder's claim committed, and overshoot;
3. claim at most what the limits leave room for (with partitions: per partition key, the oldest
   tasks its room allows), with the dialect's batch claim (:meth:`.SQLDialect.claim_batch`);
4. with a rate limit, record the starts (at the clock's current time, after the lock) and prune
   the ones that left the window.

The lock is held until the commit, so the next claimer counts this one's claims. Claims of
queues without limits never take this path.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from durable.backends.base import QUEUE_LIMITS, check_queue_limits, queue_limits_to_set
from durable.backends.sql.core import P_WID, SQLCore
from durable.backends.sql.direct import CompiledStatement
from durable.backends.sql.schema import queue_starts, queues, tasks, workflow_registry
from durable.errors import InvalidArgumentError, QueueNotFoundError
from durable.models import WORKFLOW_TASK, QueueInfo, TaskClaim, ttl_seconds

P_QUEUE = sa.bindparam("p_queue", type_=sa.String())


class Queues(SQLCore):
    """Queues with limits, one row each in ``durable_queues``."""

    # set by Claims._build_claim_statements (the claim's SET, RETURNING and order)
    _claim_values: dict[str, Any]
    _claim_columns: tuple[Any, ...]
    _available_order: list[Any]

    def _queue_info(self, row: Any) -> QueueInfo:
        return QueueInfo(**dict(row._mapping))

    async def put_queue(
        self, queue: QueueInfo, *, replace: bool = True, only: Collection[str] | None = None
    ) -> tuple[QueueInfo, bool]:
        check_queue_limits(queue)
        chosen = queue_limits_to_set(only)
        now = self.clock()
        limits = {k: getattr(queue, k) for k in QUEUE_LIMITS}
        if limits["rate_period"] is not None:
            limits["rate_period"] = float(limits["rate_period"])
        insert = (
            self.dialect.insert(queues)
            .values(name=queue.name, created_at=now, updated_at=now, **limits)
            .on_conflict_do_nothing()
            .execution_options(preserve_rowcount=True)
        )
        update = (
            sa.update(queues)
            .where(queues.c.name == queue.name)
            .values(updated_at=now, **{k: limits[k] for k in chosen})
        )
        select = sa.select(queues).where(queues.c.name == queue.name)

        def fn(conn: sa.Connection) -> tuple[QueueInfo, bool]:
            created = conn.execute(insert).rowcount == 1
            if not created and replace:
                conn.execute(update)
            return self._queue_info(conn.execute(select).one()), created

        return await self._run(fn, what=f"store queue {queue.name!r}")

    async def get_queue(self, name: str) -> QueueInfo:
        select = sa.select(queues).where(queues.c.name == name)

        def fn(conn: sa.Connection) -> QueueInfo:
            row = conn.execute(select).first()
            if row is None:
                raise QueueNotFoundError(name)
            return self._queue_info(row)

        return await self._run(fn, what=f"read queue {name!r}", read_only=True)

    async def list_queues(self) -> list[QueueInfo]:
        select = sa.select(queues).order_by(queues.c.name)

        def fn(conn: sa.Connection) -> list[QueueInfo]:
            return [self._queue_info(r) for r in conn.execute(select)]

        return await self._run(fn, what="list queues", read_only=True)

    async def delete_queue(self, name: str) -> bool:
        def fn(conn: sa.Connection) -> bool:
            conn.execute(sa.delete(queue_starts).where(queue_starts.c.queue == name))
            deleted = conn.execute(sa.delete(queues).where(queues.c.name == name))
            return bool(deleted.rowcount)

        return await self._run(fn, what=f"delete queue {name!r}")

    # -- the limited claim -------------------------------------------------------------------

    def _queue_statements(
        self, partitioned: bool, names: bool, versions: bool = False
    ) -> dict[str, Any]:
        """The statements of :meth:`claim_queue_tasks`, built once per combination."""
        cache: dict[tuple[bool, bool, bool], dict[str, Any]] = self.__dict__.setdefault(
            "_queue_claims", {}
        )
        built = cache.get((partitioned, names, versions))
        if built is not None:
            return built
        d = self.dialect
        now = d.now()
        running = sa.and_(
            tasks.c.queue == P_QUEUE,
            tasks.c.task_id == WORKFLOW_TASK,
            tasks.c.claimed_by.is_not(None),
            tasks.c.claim_expires_at > now,
        )
        count = sa.func.count()
        counts = sa.select(
            sa.select(count).where(running).scalar_subquery().label("running"),
            sa.select(count)
            .where(running, tasks.c.claimed_by == P_WID)
            .scalar_subquery()
            .label("mine"),
            sa.select(count)
            .where(queue_starts.c.queue == P_QUEUE, queue_starts.c.started_at > d.later("window"))
            .scalar_subquery()
            .label("started"),
        )
        free = sa.or_(
            tasks.c.claimed_by.is_(None),
            tasks.c.claim_expires_at <= now,
            tasks.c.claim_expires_at.is_(None),
        )
        disabled = sa.select(workflow_registry.c.name).where(
            workflow_registry.c.enabled.is_(sa.false())
        )
        clauses = [
            tasks.c.queue == P_QUEUE,
            tasks.c.task_id == WORKFLOW_TASK,
            tasks.c.run_after <= now,
            free,
            tasks.c.name.not_in(disabled),
        ]
        if names:
            clauses.append(d.in_list(tasks.c.name, "p_names"))
        if versions:  # Runtime(serve_versions=...): the claims' code-version filter (.claims)
            clauses.append(self._started_by_versions())  # type: ignore[attr-defined]
        available = sa.and_(*clauses)
        if partitioned:
            available = sa.and_(free, tasks.c.id.in_(_partition_heads(available, now)))
        claim = (
            d.claim_batch(tasks, available, self._available_order)
            .values(**self._claim_values)
            .returning(*self._claim_columns, tasks.c.priority, tasks.c.run_after, tasks.c.id)
        )
        # the probe: the limits and what runs, read without the lock (see claim_queue_tasks)
        probe = sa.select(
            *(queues.c[k] for k in ("name", *QUEUE_LIMITS) if k != "rate_period"),
            sa.select(count).where(running).scalar_subquery().label("running"),
            sa.select(count)
            .where(running, tasks.c.claimed_by == P_WID)
            .scalar_subquery()
            .label("mine"),
        ).where(queues.c.name == P_QUEUE)
        built = cache[(partitioned, names, versions)] = {
            "probe": probe,
            # SKIP LOCKED: while another claim of the queue holds its lock, this one returns
            # nothing at once rather than queueing behind it (a convoy of workers polling a
            # busy queue would otherwise serialize on the lock)
            "lock": sa.select(queues)
            .where(queues.c.name == P_QUEUE)
            .with_for_update(skip_locked=True),
            "counts": counts,
            "claim": claim,
            "record": sa.insert(queue_starts).values(queue=P_QUEUE, started_at=d.current_time()),
            "prune": sa.delete(queue_starts).where(
                queue_starts.c.queue == P_QUEUE, queue_starts.c.started_at <= d.later("window")
            ),
        }
        return built

    async def claim_queue_tasks(
        self,
        worker_id: str,
        queue: str,
        limit: int,
        ttl: timedelta,
        *,
        names: Sequence[str] | None = None,
        versions: Sequence[str] | None = None,
    ) -> list[TaskClaim]:
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        seconds = ttl_seconds(ttl)

        base: dict[str, Any] = {"p_queue": queue, "p_wid": worker_id}
        # 0. PostgreSQL: a probe without the lock, one autocommitted statement: a queue at its
        # concurrency (the common answer when workers poll a busy queue) is told so without
        # queueing for the lock behind the claims that do have room. It may be stale: it only
        # ever says "full" a moment too long, the locked count below decides.
        # Only while the queue was last found without room: when it has room, the probe is a
        # round trip for nothing.
        full: dict[str, bool] = self.__dict__.setdefault("_queue_full", {})
        if self._direct and full.get(queue, False):
            probe = self.__dict__.get("_queue_probe")
            if probe is None:
                stmt = self._queue_statements(False, False)["probe"]
                probe = self.__dict__["_queue_probe"] = CompiledStatement(stmt, self.engine.dialect)
            seen = await self._run_direct(
                probe, {**base, **self.dialect.clock_params()}, what=f"probe queue {queue!r}"
            )
            if seen is not None and (not seen.rows or _full(seen.rows[0], limit) <= 0):
                return []

        def fn(conn: sa.Connection) -> list[TaskClaim]:
            self.dialect.plan_by_keys(conn)
            # 1. the queue's lock (held to the commit) and its limits as they are now
            row = conn.execute(self._queue_statements(False, False)["lock"], base).first()
            if row is None:  # not stored, or another claim of the queue holds the lock
                full[queue] = True
                return []
            config = self._queue_info(row)
            if not config.limited:
                return []
            stmts = self._queue_statements(
                config.partition_concurrency is not None, bool(names), versions is not None
            )
            # the clock is read after the lock was taken (SQLite: the host's; PostgreSQL's now())
            period = config.rate_period or 0.0
            params = {**base, **self.dialect.clock_params(ttl=seconds, window=-period)}
            # 2. what runs, in a statement that sees every claim committed before the lock
            counts = conn.execute(stmts["counts"], params).one()
            room = limit
            if config.concurrency is not None:
                room = min(room, config.concurrency - counts.running)
            if config.worker_concurrency is not None:
                room = min(room, config.worker_concurrency - counts.mine)
            if config.rate_limit is not None:
                room = min(room, config.rate_limit - counts.started)
            full[queue] = room <= 0
            if room <= 0:
                return []
            # 3. the claim, within the room left
            params["p_limit"] = room
            params["p_part"] = config.partition_concurrency or 0
            if names:
                params["p_names"] = list(names)
            if versions is not None:
                params["p_versions"] = list(versions)
            claimed = [r._mapping for r in conn.execute(stmts["claim"], params)]
            # 4. the starts, for the rate limit's window
            if config.rate_limit is not None:
                if claimed:
                    current = {**params, **self.dialect.current_params()}
                    conn.execute(stmts["record"], [current] * len(claimed))
                conn.execute(stmts["prune"], params)
            claimed.sort(key=lambda r: (r["priority"], r["run_after"], r["id"]))
            return [_claim(r) for r in claimed]

        return await self._run(fn, what=f"claim tasks of queue {queue!r}")


def _partition_heads(available: sa.ColumnElement[bool], now: Any) -> sa.Select[Any]:
    """The ids of the available tasks their partition has room for: per partition key, the
    oldest available ones (creation order) up to ``:p_part`` less the partition's running
    ones. Tasks without a partition key are all kept. A window function over the queue's
    available tasks (portable: SQLite 3.25+, PostgreSQL, MySQL 8)."""
    ranked = (
        sa.select(
            tasks.c.id,
            tasks.c.partition_key,
            sa.func.row_number()
            .over(partition_by=tasks.c.partition_key, order_by=tasks.c.id)
            .label("rn"),
        )
        .where(available)
        .subquery("ranked")
    )
    held = tasks.alias("held")
    busy = (
        sa.select(sa.func.count())
        .select_from(held)
        .where(
            held.c.queue == P_QUEUE,
            held.c.task_id == WORKFLOW_TASK,
            held.c.claimed_by.is_not(None),
            held.c.claim_expires_at > now,
            held.c.partition_key == ranked.c.partition_key,
        )
        .scalar_subquery()
    )
    room = sa.bindparam("p_part", type_=sa.Integer())
    return sa.select(ranked.c.id).where(
        sa.or_(ranked.c.partition_key.is_(None), ranked.c.rn + busy <= room)
    )


def _full(row: Mapping[str, Any], limit: int) -> int:
    """The room the probe's row leaves (0 or less: none; the rate limit is not probed)."""
    info = QueueInfo(**{k: row[k] for k in ("name", *QUEUE_LIMITS) if k != "rate_period"})
    if not info.limited:
        return 0
    room = limit
    if info.concurrency is not None:
        room = min(room, info.concurrency - row["running"])
    if info.worker_concurrency is not None:
        room = min(room, info.worker_concurrency - row["mine"])
    return room


def _claim(m: Mapping[Any, Any]) -> TaskClaim:
    return TaskClaim(
        instance_id=m["instance_id"],
        task_id=m["task_id"],
        worker_id=m["claimed_by"],
        expires_at=m["claim_expires_at"],
        attempts=m["attempts"],
        name=m["name"],
    )
