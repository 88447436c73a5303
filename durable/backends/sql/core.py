"""What every area of the SQL backend shares: :class:`SQLCore`, the base of
:class:`~durable.backends.sql.backend.SQLAlchemyBackend` and of its areas' classes.

The backend is one class assembled from one class per area of the domain, each in its own module
with the statements its operations run, built once per backend: :mod:`.workflows` (snapshots,
listings, cancel and requeue), :mod:`.execution` (an execution's begin, its step records, its
end or retry: the hot path), :mod:`.fanout` (steps handed to other workers), :mod:`.claims`
(tasks and claims), :mod:`.executors` (the workflow registry and executors), :mod:`.wakeups`
(telling workers that work is available). :mod:`.backend` composes them and owns the engine, the
runner, the lifecycle and error translation.

This module holds what several areas use: the declarations of what the composition root
provides, the statements several areas run (the claim fence, the workflow and its steps by id,
a new task), and the conversions between rows and durable's models. What differs between
databases stays in :mod:`.dialects`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from durable.backends.base import PersistentBackend
from durable.backends.rows import RowRef, step_values, workflow_values
from durable.backends.sql.dialects import SQLDialect
from durable.backends.sql.direct import (
    BlockingDirectStatements,
    CompiledStatement,
    DirectResult,
    driver_connect_params,
)
from durable.backends.sql.feed import NAMES
from durable.backends.sql.runners import Runner
from durable.backends.sql.schema import UTCDateTime, steps, tasks, workflow_labels, workflows
from durable.errors import (
    BackendError,
    ClaimLostError,
    DurableError,
    InvalidArgumentError,
    TaskNotFoundError,
)
from durable.models import (
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.serialization import Serializer
from durable.validation import MAX_LABELS, check_labels

T = TypeVar("T")

# the backend's logger, as before the backend was split by area
log = logging.getLogger("durable.backends.sql.backend")

#: The steps table's columns, in order (a step record's parameters are ``s_<column>``).
#: (not its change feed position: each statement computes that itself, see .feed)
STEP_COLUMNS = [c.name for c in steps.columns if c.name != "change_seq"]
#: Each step column with the name of the parameter a step record binds it to (``s_<column>``,
#: :meth:`SQLCore._step_params`)
_STEP_PARAM_KEYS = [(column, f"s_{column}") for column in STEP_COLUMNS]
#: A step status's stored text, by status (a member or its text: a StrEnum hashes as its
#: text), without ``StepStatus(...)`` and the enum's ``value`` property on every step
_STEP_STATUS_TEXT = {status: status.value for status in StepStatus}
#: A workflow's columns but its change feed positions: what a statement that writes a whole row
#: binds (the positions are computed by the statement itself, see .feed) and what the hot path's
#: statements return (nothing reads the positions back: fewer bytes, and the claim's statement
#: stays short)
WORKFLOW_COLUMNS = [c for c in workflows.c if c.name not in NAMES]
#: The parameters of the statements: a workflow's id, a task's id, a worker's id.
P_IID = sa.bindparam("p_iid", type_=sa.String())
P_POSITION = sa.bindparam("p_position", type_=sa.Integer())
P_TID = sa.bindparam("p_tid", type_=sa.String())
P_WID = sa.bindparam("p_wid", type_=sa.String())


class Creation(Protocol):
    """What ``Enqueues._creation`` (:mod:`.batches`) makes: a batch's writes, on ``conn``, in
    its transaction. ``locked``: the existing rows are looked up by a locking read (MySQL: the
    latest committed rows, not the transaction's snapshot)."""

    def __call__(
        self, conn: sa.Connection, *, locked: bool = False
    ) -> list[tuple[WorkflowInfo, bool]]: ...


class SQLCore(PersistentBackend):
    """The base of the SQL backend's areas: what the composition root provides, the statements
    several areas share (:meth:`_build_core_statements`), and row conversion."""

    serializer: Serializer
    engine: sa.Engine | AsyncEngine
    dialect: SQLDialect
    #: the time rows are stamped with (the dialect's clock: this host's, or a test's)
    clock: Callable[[], datetime]
    _runner: Runner
    #: whether the hot path's statements run straight on the driver (PostgreSQL, async engine)
    _direct: bool
    _blocking: BlockingDirectStatements | None
    _engine_options: dict[str, Any] | None  # as given, on engines durable created
    #: the connect arguments the engine was created with, where durable created it (else {})
    _connect_args: dict[str, Any]
    _started: bool
    _loop: asyncio.AbstractEventLoop | None
    #: why every operation is refused: the SQLite file was deleted or replaced (else None)
    _file_lost: str | None

    if TYPE_CHECKING:  # provided by SQLAlchemyBackend (.backend) and WakeUps (.wakeups)

        async def _run(
            self,
            fn: Callable[[sa.Connection], T],
            *,
            what: str = "",
            retry_also: Callable[[sa.exc.DBAPIError], bool] | None = None,
            read_only: bool = False,
        ) -> T: ...

        async def _run_direct(
            self, statement: CompiledStatement | None, params: dict[str, Any], *, what: str
        ) -> DirectResult | None: ...

        def _errors(
            self, what: str, *, url: str | None = None
        ) -> contextlib.AbstractContextManager[None]: ...

        def _file_lost_error(self, what: str) -> BackendError: ...

        def _translated(self, exc: Exception, doing: str, url: str | None = None) -> Exception: ...

        def _announce_work(self, conn: sa.Connection) -> None: ...

        def _check_revision(self, connection: sa.Connection) -> None: ...

    def _keep_listening(
        self,
        listener: asyncio.Task[None] | None,
        channel: str,
        on_listening: Callable[[], None],
        on_note: Callable[[str], None],
    ) -> asyncio.Task[None] | None:
        """The task that turns PostgreSQL notifications on ``channel`` into local wake-ups:
        ``listener`` while it runs; a new one if it never started or died (on other databases,
        or before :meth:`start`, ``listener`` unchanged). The caller keeps what it returns."""
        if (
            self.dialect.name != "postgresql"
            or not self._started
            or (listener is not None and not listener.done())
        ):
            return listener
        return asyncio.get_running_loop().create_task(
            self._listen_on(channel, on_listening, on_note), name=f"durable-listen-{channel}"
        )

    async def _listen_on(
        self, channel: str, on_listening: Callable[[], None], on_note: Callable[[str], None]
    ) -> None:
        """LISTEN on ``channel`` on a connection of its own, calling ``on_listening`` once
        listening (for what was committed while nobody listened) and ``on_note`` with each
        notification's payload; after the server goes away, reconnect (quickly at first, then
        once a second; whoever waits on these wake-ups polls meanwhile)."""
        import psycopg

        # with the connect arguments the engine was created with (a password, SSL, a token),
        # outside its pool: a listener opening its connection is no pooled checkout
        args, kwargs = driver_connect_params(self.engine, self._connect_args)
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(*args, **kwargs) as conn:
                    if conn.info.server_version >= 140000:
                        # a listener is idle by design: not to be ended by idle_session_timeout
                        await conn.execute("SET idle_session_timeout = 0")
                    await conn.execute(f"LISTEN {channel}")
                    if failures:
                        log.info(
                            "listening on %s again after %d failed attempt(s)",
                            channel,
                            failures,
                            extra={"action": "listen.resumed"},
                        )
                    failures = 0
                    on_listening()
                    async for note in conn.notifies():
                        on_note(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server went away: polling covers us meanwhile
                failures += 1
                delay = min(0.05 * 2**failures, 1.0)
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "listening on %s failed, retrying in %.1fs: %s",
                    channel,
                    delay,
                    first_line(exc),
                    extra={"action": "listen.error"},
                )
                await asyncio.sleep(delay)

    def _build_core_statements(self) -> None:
        d = self.dialect
        now = d.now()
        self._held = sa.exists(
            d.lock_for_fence(
                sa.select(sa.literal(1)).where(
                    tasks.c.instance_id == P_IID,
                    tasks.c.task_id == P_TID,
                    tasks.c.claimed_by == P_WID,
                    tasks.c.claim_expires_at > now,
                )
            )
        )
        self._task_key = sa.and_(tasks.c.instance_id == P_IID, tasks.c.task_id == P_TID)
        # the claim's state, for explaining why a fenced write was refused
        self._claim_state = sa.select(
            tasks.c.claimed_by, sa.case((tasks.c.claim_expires_at > now, True), else_=False)
        ).where(self._task_key)
        self._select_steps = (
            sa.select(steps).where(steps.c.workflow_id == P_IID).order_by(steps.c.position)
        )
        self._select_step = sa.select(steps).where(
            steps.c.workflow_id == P_IID, steps.c.position == P_POSITION
        )
        self._select_workflow = sa.select(workflows).where(workflows.c.id == P_IID)
        self._select_workflow_id = sa.select(workflows.c.id).where(workflows.c.id == P_IID)
        task_values: dict[str, Any] = {
            c: sa.bindparam(f"t_{c}", type_=tasks.c[c].type)
            for c in ("instance_id", "task_id", "name", "queue", "priority", "created_at")
        }
        task_values["partition_key"] = sa.bindparam(
            "t_partition_key", type_=tasks.c.partition_key.type
        )
        task_values["run_after"] = sa.func.coalesce(
            sa.bindparam("t_run_after", type_=UTCDateTime()), d.later("delay")
        )
        task_values["attempts"] = sa.literal(0)
        self._insert_task = sa.insert(tasks).values(task_values)
        #: steps written with their workflow (executemany over step rows): one change of the
        #: feed's each (see .feed)
        self._insert_steps = sa.insert(steps).values(change_seq=d.next_position())
        self._add_task_if_absent = (
            d.insert(tasks)
            .values(task_values)
            .on_conflict_do_nothing()
            .execution_options(preserve_rowcount=True)
        )
        # the failed steps the next attempt runs again: those listed (p_rerun) or marked rerun,
        # and those after the last step that did not fail
        last_unfailed = (
            sa.select(sa.func.coalesce(sa.func.max(steps.c.position), -1))
            .where(steps.c.workflow_id == P_IID, steps.c.status != StepStatus.FAILED.value)
            .scalar_subquery()
        )
        self._drop_failures = sa.delete(steps).where(
            steps.c.workflow_id == P_IID,
            steps.c.status == StepStatus.FAILED.value,
            sa.or_(
                steps.c.position > last_unfailed,
                steps.c.rerun,
                steps.c.position.in_(sa.bindparam("p_rerun", expanding=True)),
            ),
        )

    def _replaced(self, name: str, own: str) -> bool:
        """Whether the method ``name`` is not this backend's own (``own``, its qualified name):
        a subclass overrides it, or it is replaced on the instance (a test's or a wrapper's). A
        shortcut past it must then go through it."""
        return name in vars(self) or getattr(type(self), name).__qualname__ != own

    # -- row conversion -----------------------------------------------------------------------

    def _dump(self, value: Any) -> str | None:
        return None if value is None else self.serializer.dumps(value)

    def _info(self, row: sa.Row[Any], *, lenient: bool = False) -> WorkflowInfo:
        """A workflow's header from its row. Strict: an unreadable column raises
        :class:`CorruptRowError`; ``lenient`` (listings, the header a write returns): the row is
        returned marked unreadable (see :func:`~durable.backends.rows.workflow_values`)."""
        return WorkflowInfo.from_fields(self._info_fields(row._mapping, lenient=lenient))

    def _info_fields(self, m: Mapping[Any, Any], *, lenient: bool = False) -> dict[str, Any]:
        return {
            "id": m["id"],
            "name": m["name"],
            **workflow_values(
                RowRef(workflows.name, m["id"]),
                self.serializer,
                status=m["status"],
                input=m["input"],
                output=m["output"],
                error=m["error"],
                lenient=lenient,
            ),
            "parent_id": m["parent_id"],
            "executor_id": m["executor_id"],
            "queue": m["queue"],
            "priority": m["priority"],
            "idempotency_key": m["idempotency_key"],
            "attempts": m["attempts"],
            "max_attempts": m["max_attempts"],
            "interruptions": m["interruptions"],
            "version": m["version"],
            "created_at": m["created_at"],
            "updated_at": m["updated_at"],
            "started_at": m["started_at"],
            "completed_at": m["completed_at"],
            "deadline": m["deadline"],
            "continuations": m["continuations"],
            "code_version": m["code_version"],
            "trace_context": m.get("trace_context"),
            "partition_key": m.get("partition_key"),
        }

    def _snapshot(self, row: sa.Row[Any], step_rows: Sequence[sa.Row[Any]]) -> WorkflowSnapshot:
        return self._snapshot_of(row._mapping, (r._mapping for r in step_rows))

    def _snapshot_of(
        self, head: Mapping[Any, Any], step_rows: Iterable[Mapping[Any, Any]]
    ) -> WorkflowSnapshot:
        """A snapshot from its workflow's row and its steps' rows, each a mapping by column
        name; an unreadable column raises :class:`CorruptRowError`."""
        fields: dict[str, Any] = self._info_fields(head)
        instance_id = head["id"]
        fields["steps"] = tuple(self._step(instance_id, m) for m in step_rows)
        return WorkflowSnapshot.from_fields(fields)

    def _step(self, instance_id: str, m: Mapping[Any, Any]) -> StepRecord:
        """A step from its row; an unreadable column raises :class:`CorruptRowError`."""
        return StepRecord(
            position=m["position"],
            name=m["name"],
            **step_values(
                RowRef(steps.name, instance_id, m["position"]),
                self.serializer,
                status=m["status"],
                input=m["input"],
                output=m["output"],
                error=m["error"],
            ),
            child_workflow_id=m["child_workflow_id"],
            attempts=m["attempts"],
            executor_id=m["executor_id"],
            started_at=m["started_at"],
            completed_at=m["completed_at"],
            rerun=bool(m["rerun"]),
        )

    def _workflow_row(self, info: WorkflowInfo, now: datetime, version: int) -> dict[str, Any]:
        return {
            "id": info.id,
            "name": info.name,
            "status": WorkflowStatus(info.status).value,
            "input": self._dump(info.input),
            "output": self._dump(info.output),
            "error": info.error.to_json() if info.error else None,
            "parent_id": info.parent_id,
            "executor_id": info.executor_id,
            "queue": info.queue,
            "priority": info.priority,
            "idempotency_key": info.idempotency_key,
            "attempts": info.attempts,
            "max_attempts": info.max_attempts,
            "interruptions": info.interruptions,
            "version": version,
            "created_at": info.created_at or now,
            "updated_at": now,
            "started_at": info.started_at,
            "completed_at": info.completed_at,
            "deadline": info.deadline,
            "continuations": info.continuations,
            "code_version": info.code_version,
            "trace_context": info.trace_context,
            "partition_key": info.partition_key,
        }

    def _step_row(self, instance_id: str, step: StepRecord, now: datetime) -> dict[str, Any]:
        """``step``'s row in the steps table, by column (:meth:`_step_params`' values)."""
        params = self._step_params(instance_id, step, now)
        return {column: params[key] for column, key in _STEP_PARAM_KEYS}

    def _step_params(self, instance_id: str, step: StepRecord, now: datetime) -> dict[str, Any]:
        """``step``'s row as the step record statements bind it: each column's value under
        ``s_<column>`` (built as such: the hot path's record binds it, and renaming the keys
        of a row cost a microsecond a step). ``now``: the completion time of a final outcome
        that has none."""
        if step.position < 0:
            raise InvalidArgumentError(f"a step position must be >= 0, got {step.position}")
        completed = step.completed_at
        if completed is None and step.status is not StepStatus.PENDING:
            completed = now
        return {
            "s_workflow_id": instance_id,
            "s_position": step.position,
            "s_name": step.name,
            "s_status": _STEP_STATUS_TEXT.get(step.status) or StepStatus(step.status).value,
            "s_input": self._dump(step.input),
            "s_output": step.serialized_output
            if step.serialized_output is not None
            else self._dump(step.output),
            "s_error": step.error.to_json() if step.error else None,
            "s_child_workflow_id": step.child_workflow_id,
            "s_attempts": step.attempts,
            "s_executor_id": step.executor_id,
            "s_started_at": step.started_at,
            "s_completed_at": completed,
            "s_rerun": step.rerun,
        }

    def _task_row(self, spec: TaskSpec, now: datetime) -> dict[str, Any]:
        """Parameters for :attr:`_insert_task`: a task due at ``spec.run_after``, or now by the
        lease clock (the database's on PostgreSQL, so app servers' clocks do not matter)."""
        return {
            "t_instance_id": spec.instance_id,
            "t_task_id": spec.task_id,
            "t_name": spec.name,
            "t_queue": spec.queue,
            "t_priority": spec.priority,
            "t_run_after": spec.run_after,
            "t_created_at": now,
            "t_partition_key": spec.partition_key,
            **self.dialect.clock_params(
                delay=spec.delay.total_seconds() if spec.delay is not None else 0.0
            ),
        }

    def _refusal(
        self,
        conn: sa.Connection,
        clock: dict[str, Any],
        instance_id: str,
        task_id: str,
        worker_id: str,
        *,
        missing_task: bool = False,
    ) -> DurableError:
        """Why a write fenced by a claim was refused."""
        row = conn.execute(
            self._claim_state, {"p_iid": instance_id, "p_tid": task_id, **clock}
        ).first()
        if row is None and missing_task:
            return TaskNotFoundError(instance_id, task_id)
        holder = row[0] if row is not None and row[1] else None
        return ClaimLostError(instance_id, task_id, worker_id, holder)


def aware(value: Any) -> datetime | None:
    """A timestamp from a CASE expression, which loses the column's type on SQLite."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # type: ignore[no-any-return]


def first_line(exc: BaseException | None) -> str:
    """The first line of an error's message (its repr when it has none)."""
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else repr(exc)


async def stop_listener(listener: asyncio.Task[None] | None) -> None:
    """Cancel a listener task from :meth:`SQLCore._keep_listening` and wait for its end."""
    if listener is not None:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener


# -- labels: written with their workflow, searched by (key, value) ------------------------------


def has_labels(labels: Mapping[str, str] | None) -> list[sa.ColumnElement[bool]]:
    """The conditions on ``workflows`` of a listing filtered by ``labels`` (every pair): one
    ``id IN (ids carrying key = value)`` each, which the index on (key, value) answers."""
    wanted = check_labels(labels, "labels filter")
    return [
        workflows.c.id.in_(
            sa.select(workflow_labels.c.workflow_id).where(
                workflow_labels.c.key == key, workflow_labels.c.value == value
            )
        )
        for key, value in sorted(wanted.items())
    ]


def write_labels(conn: sa.Connection, created: Sequence[WorkflowSnapshot]) -> None:
    """Store the labels of workflows just created in this transaction: each snapshot's own,
    merged over its parent's (as stored now) when it has a ``parent_id``. A workflow with no
    labels and no parent costs nothing; children cost one read of their parents' labels.

    :raises InvalidArgumentError: more than :data:`MAX_LABELS` once merged (the caller's
        transaction is rolled back).
    """
    parents = sorted({s.parent_id for s in created if s.parent_id is not None})
    inherited: dict[str, dict[str, str]] = {}
    if parents:
        rows = conn.execute(
            sa.select(workflow_labels).where(workflow_labels.c.workflow_id.in_(parents))
        )
        for row in rows:
            inherited.setdefault(row.workflow_id, {})[row.key] = row.value
    values: list[dict[str, str]] = []
    for snapshot in created:
        merged = {**inherited.get(snapshot.parent_id or "", {}), **snapshot.labels}
        if len(merged) > MAX_LABELS:
            raise InvalidArgumentError(
                f"workflow {snapshot.id!r}: at most {MAX_LABELS} labels per workflow, got "
                f"{len(merged)} with those inherited from {snapshot.parent_id!r}"
            )
        values += [{"workflow_id": snapshot.id, "key": k, "value": v} for k, v in merged.items()]
    if values:
        conn.execute(sa.insert(workflow_labels), values)


def record_steps(
    d: SQLDialect, values: list[sa.Label[Any]], held: sa.ColumnElement[bool] | None
) -> Any:
    """A step record's upsert: the row of ``values`` (labelled as :data:`STEP_COLUMNS`), when
    ``held`` (a fence), inserted, or written over a pending row at its position (a row that is
    not pending stays: the statement changes no row). Its change feed position goes where
    :meth:`~.dialects.SQLDialect.recorded_steps` says; a pending row written over gets a
    ``change_seq`` (see :mod:`.feed`)."""
    target, position = d.recorded_steps()
    select = sa.select(*values, d.next_position().label(position))
    insert = d.insert(target).from_select(
        [*STEP_COLUMNS, position], select if held is None else select.where(held)
    )
    return overwrite_steps(d, insert).execution_options(preserve_rowcount=True)


def overwrite_steps(d: SQLDialect, insert: Any, *, pending_only: bool = True) -> Any:
    """``insert`` (the dialect's INSERT of step rows) writing over the row stored at the same
    position instead, where there is one (with ``pending_only``, only a pending one: a
    recorded row stays, and the statement changes no row): every column of the new row, and a
    new change feed position in ``change_seq`` (see :mod:`.feed`)."""
    pending = insert.table.c.status == StepStatus.PENDING.value
    return insert.on_conflict_do_update(
        index_elements=["workflow_id", "position"],
        set_={
            **{c: insert.excluded[c] for c in STEP_COLUMNS if c != "workflow_id"},
            "change_seq": d.next_position(),
        },
        where=pending if pending_only else None,
    )
