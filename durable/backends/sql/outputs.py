"""What workflows publish: events (the latest value per key) and streams (values in order, then
closed), each written in one transaction with the step that records it, fenced by the writer's
claim, and announced to readers.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). A stream
has a head row (``durable_streams``: its next offset, whether it is closed) and one row per
value (``durable_stream_values``); a write advances the head with an upsert, which locks it, so
concurrent writes to one stream take consecutive offsets. On PostgreSQL a write sends a
notification on :data:`OUTPUT_CHANNEL` (its payload the workflow's id), delivered when, and only
if, it commits; each backend whose readers wait listens on a connection of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from durable.backends.base import OutputWatch
from durable.backends.sql.core import P_IID, SQLCore, first_line
from durable.backends.sql.schema import UTCDateTime, events, stream_values, streams, workflows
from durable.errors import (
    ClaimLostError,
    CorruptRowError,
    InvalidArgumentError,
    StepAlreadyRecordedError,
    StreamClosedError,
    WorkflowNotFoundError,
)
from durable.models import WORKFLOW_TASK, EventRecord, StepRecord, StreamChunk, WorkflowStatus

log = logging.getLogger("durable.backends.sql.backend")
T = TypeVar("T")

#: The PostgreSQL channel on which commits that publish something are announced (payload: the
#: workflow's id).
OUTPUT_CHANNEL = "durable_outputs"

P_KEY = sa.bindparam("p_key", type_=sa.String())
P_TS = sa.bindparam("p_ts", type_=UTCDateTime())
_FINISHED = frozenset(s.value for s in WorkflowStatus if s.is_terminal)


class Outputs(SQLCore):
    """Events and streams: written fenced with their step, read from anywhere, announced."""

    _outputs_listener: asyncio.Task[None] | None = None

    if TYPE_CHECKING:  # built by Execution (.execution)
        _record_step: sa.Insert

    def _build_output_statements(self) -> None:
        d = self.dialect
        event = d.insert(events).values(
            workflow_id=P_IID,
            key=P_KEY,
            value=sa.bindparam("p_value", type_=sa.Text()),
            position=sa.bindparam("p_position", type_=sa.Integer()),
            updated_at=P_TS,
        )
        self._upsert_event = event.on_conflict_do_update(
            index_elements=[events.c.workflow_id, events.c.key],
            set_={c: event.excluded[c] for c in ("value", "position", "updated_at")},
        )
        head = d.insert(streams).values(
            workflow_id=P_IID, key=P_KEY, next_offset=1, closed=False, updated_at=P_TS
        )
        # the upsert locks the head row: concurrent writes to one stream take turns
        self._advance_stream = head.on_conflict_do_update(
            index_elements=[streams.c.workflow_id, streams.c.key],
            set_={"next_offset": streams.c.next_offset + 1, "updated_at": head.excluded.updated_at},
        ).returning(streams.c.next_offset, streams.c.closed)
        self._insert_stream_value = sa.insert(stream_values).values(
            workflow_id=P_IID,
            key=P_KEY,
            offset=sa.bindparam("p_offset", type_=sa.Integer()),
            value=sa.bindparam("p_value", type_=sa.Text()),
            position=sa.bindparam("p_position", type_=sa.Integer()),
            created_at=P_TS,
        )
        closing = d.insert(streams).values(
            workflow_id=P_IID, key=P_KEY, next_offset=0, closed=True, updated_at=P_TS
        )
        self._close_stream = closing.on_conflict_do_update(
            index_elements=[streams.c.workflow_id, streams.c.key],
            set_={"closed": True, "updated_at": closing.excluded.updated_at},
        )
        self._select_status = sa.select(workflows.c.status).where(workflows.c.id == P_IID)
        self._select_event = sa.select(
            events.c.value, events.c.position, events.c.updated_at
        ).where(events.c.workflow_id == P_IID, events.c.key == P_KEY)
        self._select_head = sa.select(streams.c.next_offset, streams.c.closed).where(
            streams.c.workflow_id == P_IID, streams.c.key == P_KEY
        )
        self._select_stream_values = (
            sa.select(stream_values.c.value)
            .where(
                stream_values.c.workflow_id == P_IID,
                stream_values.c.key == P_KEY,
                stream_values.c.offset >= sa.bindparam("p_offset", type_=sa.Integer()),
            )
            .order_by(stream_values.c.offset)
            .limit(sa.bindparam("p_limit", type_=sa.Integer()))
        )
        self._notify_outputs = sa.select(sa.func.pg_notify(OUTPUT_CHANNEL, P_IID))

    # -- writes --------------------------------------------------------------------------------

    async def _publish(
        self,
        instance_id: str,
        step: StepRecord,
        worker_id: str,
        task_id: str,
        params: dict[str, Any],
        write: Callable[[sa.Connection, dict[str, Any]], T],
        what: str,
    ) -> T:
        """Record ``step`` fenced by the claim, then ``write`` (given ``params`` with the
        workflow's id, the time and the step's position), in one transaction (a refusal or an
        error of ``write`` rolls both back); announce it once committed."""
        clock = self.dialect.clock_params()
        now = self.clock()
        row = self._step_row(instance_id, step, now)
        record = {f"s_{k}": v for k, v in row.items()}
        record.update(p_iid=instance_id, p_tid=task_id, p_wid=worker_id, **clock)
        params = {"p_iid": instance_id, "p_ts": now, "p_position": step.position, **params}

        def fn(conn: sa.Connection) -> T:
            if conn.execute(self._record_step, record).rowcount != 1:
                refusal = self._refusal(conn, clock, instance_id, task_id, worker_id)
                if isinstance(refusal, ClaimLostError) and refusal.holder == worker_id:
                    raise StepAlreadyRecordedError(instance_id, step.position)
                raise refusal
            result = write(conn, params)
            if self.dialect.name == "postgresql":
                conn.execute(self._notify_outputs, params)
            return result

        result = await self._run(fn, what=what)
        self.notify_outputs(instance_id)
        return result

    async def set_event(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        params = {"p_key": key, "p_value": self._dump(value)}

        def write(conn: sa.Connection, full: dict[str, Any]) -> None:
            conn.execute(self._upsert_event, full)

        what = f"set event {key!r} of workflow {instance_id!r}"
        await self._publish(instance_id, step, worker_id, task_id, params, write, what)

    async def write_stream(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> int:
        params: dict[str, Any] = {"p_key": key, "p_value": self._dump(value)}

        def write(conn: sa.Connection, full: dict[str, Any]) -> int:
            next_offset, closed = conn.execute(self._advance_stream, full).one()
            if closed:
                raise StreamClosedError(instance_id, key)
            offset = int(next_offset) - 1
            conn.execute(self._insert_stream_value, {**full, "p_offset": offset})
            return offset

        what = f"write to stream {key!r} of workflow {instance_id!r}"
        return await self._publish(instance_id, step, worker_id, task_id, params, write, what)

    async def close_stream(
        self,
        instance_id: str,
        key: str,
        *,
        worker_id: str,
        step: StepRecord,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        params = {"p_key": key}

        def write(conn: sa.Connection, full: dict[str, Any]) -> None:
            conn.execute(self._close_stream, full)

        what = f"close stream {key!r} of workflow {instance_id!r}"
        await self._publish(instance_id, step, worker_id, task_id, params, write, what)

    # -- reads ---------------------------------------------------------------------------------

    async def get_event(self, instance_id: str, key: str) -> EventRecord | None:
        params = {"p_iid": instance_id, "p_key": key}

        def fn(conn: sa.Connection) -> Any:
            row = conn.execute(self._select_event, params).first()
            if row is None and conn.execute(self._select_status, params).first() is None:
                raise WorkflowNotFoundError(instance_id)
            return row

        row = await self._run(
            fn, what=f"read event {key!r} of workflow {instance_id!r}", read_only=True
        )
        if row is None:
            return None
        return EventRecord(
            key=key,
            value=self._load_output(instance_id, row[0], events.name),
            position=row[1],
            updated_at=row[2],
        )

    async def read_stream(
        self, instance_id: str, key: str, *, offset: int = 0, limit: int = 1000
    ) -> StreamChunk:
        if offset < 0:
            raise InvalidArgumentError(f"offset must be at least 0, got {offset}")
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, got {limit}")
        params = {"p_iid": instance_id, "p_key": key, "p_offset": offset, "p_limit": limit}

        def fn(conn: sa.Connection) -> tuple[bool, int, bool, list[str | None]]:
            # in this order: a workflow seen finished writes no more; a head seen at offset n
            # has its values below n committed with it
            status = conn.execute(self._select_status, params).scalar()
            if status is None:
                raise WorkflowNotFoundError(instance_id)
            head = conn.execute(self._select_head, params).first()
            texts = list(conn.execute(self._select_stream_values, params).scalars())
            total, closed = (0, False) if head is None else (int(head[0]), bool(head[1]))
            return status in _FINISHED, total, closed, texts

        finished, total, closed, texts = await self._run(
            fn, what=f"read stream {key!r} of workflow {instance_id!r}", read_only=True
        )
        values = tuple(self._load_output(instance_id, t, stream_values.name) for t in texts)
        return StreamChunk(
            values=values,
            offset=offset,
            closed=closed,
            ended=(closed or finished) and offset + len(values) >= total,
        )

    def _load_output(self, instance_id: str, text: str | None, table: str) -> Any:
        if text is None:
            return None
        try:
            return self.serializer.loads(text)
        except Exception as exc:
            raise CorruptRowError.at(table, instance_id, "value", first_line(exc)) from exc

    # -- wake-ups ------------------------------------------------------------------------------

    def watch_outputs(self, instance_id: str) -> OutputWatch:
        self._outputs_listener = self._keep_listening(
            self._outputs_listener,
            OUTPUT_CHANNEL,
            self._output_signal().set_all,  # anything committed before we listened
            self.notify_outputs,
        )
        return super().watch_outputs(instance_id)


__all__ = ["OUTPUT_CHANNEL", "Outputs"]
