"""Messages in, and timers by key: sending to a workflow, receiving (or waiting) inside it, its
timers (a timer is a message deliverable later), each operation one transaction.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`).

The lost wake-up: a receive that finds nothing hands the workflow back to wait, and a send that
commits meanwhile must wake it. Both lock the workflow's task row first (``FOR UPDATE`` on
PostgreSQL; SQLite's write transactions are serialized already), so one of them runs after the
other has committed: either the receive sees the message, or the send sees the workflow waiting
(its task unclaimed, its last step a pending receive on the topic) and makes its task due now,
with a NOTIFY on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from durable.backends.sql.core import (
    P_IID,
    P_TID,
    P_WID,
    STEP_COLUMNS,
    SQLCore,
    aware,
    record_steps,
)
from durable.backends.sql.schema import UTCDateTime, messages, steps, tasks, workflows
from durable.errors import (
    StepAlreadyRecordedError,
    WorkflowFinishedError,
    WorkflowNotFoundError,
)
from durable.models import (
    RECV_STEP,
    UNTIL_WOKEN,
    WORKFLOW_TASK,
    Message,
    Receipt,
    ReceiveStatus,
    StepRecord,
    StepStatus,
    WorkflowStatus,
)

P_TOPIC = sa.bindparam("p_topic", type_=sa.String())


class Messages(SQLCore):
    """Messages in, timers by key."""

    def _build_message_statements(self) -> None:
        d = self.dialect
        now = d.now()
        key = sa.and_(tasks.c.instance_id == P_IID, tasks.c.task_id == P_TID)
        # the workflow task's row, locked: sends and receives of a workflow take turns
        self._msg_lock_task = (
            sa.select(tasks.c.claimed_by, tasks.c.run_after).where(key).with_for_update()
        )
        self._msg_fence = (
            sa.select(tasks.c.id)
            .where(key, tasks.c.claimed_by == P_WID, tasks.c.claim_expires_at > now)
            .with_for_update()
        )
        self._msg_now = sa.select(now)
        self._msg_status = sa.select(workflows.c.status).where(workflows.c.id == P_IID)
        self._msg_key_used = sa.select(messages.c.id).where(
            messages.c.workflow_id == P_IID,
            messages.c.idempotency_key == sa.bindparam("p_key", type_=sa.String()),
        )
        columns = ("workflow_id", "topic", "value", "idempotency_key", "timer")
        values: dict[str, Any] = {
            c: sa.bindparam(f"m_{c}", type_=messages.c[c].type) for c in columns
        }
        values["sent_at"] = sa.bindparam("m_now", type_=UTCDateTime())
        values["deliver_at"] = sa.bindparam("m_deliver_at", type_=UTCDateTime())
        values["sent_seq"] = d.next_position()
        self._msg_insert = (
            d.insert(messages)
            .values(values)
            .on_conflict_do_nothing()
            .execution_options(preserve_rowcount=True)
        )
        self._msg_last_step = (
            sa.select(steps.c.name, steps.c.status, steps.c.input)
            .where(steps.c.workflow_id == P_IID)
            .order_by(steps.c.position.desc())
            .limit(1)
        )
        self._msg_wake = sa.update(tasks).where(key).values(run_after=sa.bindparam("p_due"))
        pending = sa.and_(
            messages.c.workflow_id == P_IID,
            messages.c.topic == P_TOPIC,
            messages.c.received_at.is_(None),
        )
        self._msg_next = (
            sa.select(messages)
            .where(pending, messages.c.deliver_at <= sa.bindparam("m_now", type_=UTCDateTime()))
            .order_by(messages.c.id)
            .limit(1)
            .with_for_update()
        )
        self._msg_next_due = sa.select(sa.func.min(messages.c.deliver_at)).where(
            pending, messages.c.deliver_at > sa.bindparam("m_now", type_=UTCDateTime())
        )
        self._msg_take = (
            sa.update(messages)
            .where(messages.c.id == sa.bindparam("p_id"), messages.c.received_at.is_(None))
            .values(
                received_at=sa.bindparam("m_now", type_=UTCDateTime()),
                received_position=sa.bindparam("p_position"),
            )
        )
        self._msg_drop_timer = sa.delete(messages).where(pending, messages.c.timer)
        # a step at a position that is not final yet (as record_step writes it, the fence taken)
        row = [sa.bindparam(f"s_{c}", type_=steps.c[c].type).label(c) for c in STEP_COLUMNS]
        self._msg_record = record_steps(d, row, None)
        self._msg_hand_back = (
            sa.update(workflows)
            .where(workflows.c.id == P_IID)
            .values(
                status=WorkflowStatus.PENDING.value,
                error=None,
                attempts=sa.case((workflows.c.attempts > 0, workflows.c.attempts - 1), else_=0),
                updated_at=sa.bindparam("p_ts", type_=UTCDateTime()),
                version=workflows.c.version + 1,
            )
        )
        self._msg_release = (
            sa.update(tasks)
            .where(key)
            .values(claimed_by=None, claim_expires_at=None, run_after=sa.bindparam("p_due"))
        )

    # -- helpers ---------------------------------------------------------------------------

    def _msg_clock(self, conn: sa.Connection) -> tuple[datetime, dict[str, Any]]:
        """The store's time now (PostgreSQL: the transaction's ``now()``, as every statement
        of it sees it) and the clock parameters of the statements."""
        clock = self.dialect.clock_params()
        local = clock.get("c_now")
        if isinstance(local, datetime):
            return local, clock
        value = aware(conn.execute(self._msg_now).scalar_one())
        assert value is not None
        return value, clock

    def _msg_fenced(
        self, conn: sa.Connection, instance_id: str, worker_id: str
    ) -> tuple[datetime, dict[str, Any]]:
        """Take the fence (the claim on the workflow task, locked) and return the clock.

        :raises ClaimLostError: the claim is not held.
        """
        now, clock = self._msg_clock(conn)
        params = {"p_iid": instance_id, "p_tid": WORKFLOW_TASK, "p_wid": worker_id, **clock}
        if conn.execute(self._msg_fence, params).first() is None:
            raise self._refusal(conn, clock, instance_id, WORKFLOW_TASK, worker_id)
        return now, clock

    def _msg_write_step(
        self, conn: sa.Connection, instance_id: str, step: StepRecord, now: datetime
    ) -> None:
        """Write ``step`` unless its position is final.

        :raises StepAlreadyRecordedError: it is.
        """
        row = self._step_row(instance_id, step, now)
        if conn.execute(self._msg_record, {f"s_{k}": v for k, v in row.items()}).rowcount != 1:
            raise StepAlreadyRecordedError(instance_id, step.position)

    def _message(self, m: Mapping[Any, Any]) -> Message:
        return Message(
            workflow_id=m["workflow_id"],
            topic=m["topic"],
            value=self.serializer.loads(m["value"]),
            seq=m["id"],
            sent_at=m["sent_at"],
            deliver_at=m["deliver_at"],
            idempotency_key=m["idempotency_key"],
            timer=bool(m["timer"]),
            received_at=m["received_at"],
            received_position=m["received_position"],
        )

    # -- operations ------------------------------------------------------------------------

    async def send_message(
        self, instance_id: str, topic: str, value: Any, *, idempotency_key: str | None = None
    ) -> bool:
        text = self.serializer.dumps(value)  # before anything is written
        fn = self._sending(instance_id, topic, text, idempotency_key)
        stored, woken = await self._run(fn, what=f"send a message to workflow {instance_id!r}")
        if woken:
            self.notify_work()
        return stored

    def _sending(
        self, instance_id: str, topic: str, text: str, idempotency_key: str | None
    ) -> Callable[[sa.Connection], tuple[bool, bool]]:
        """What :meth:`send_message` runs in its transaction (the value serialized as
        ``text``), for other operations to run in theirs: it returns whether the message was
        stored and whether a waiting workflow was woken (the caller tells workers after the
        commit)."""

        def fn(conn: sa.Connection) -> tuple[bool, bool]:
            now, _clock = self._msg_clock(conn)
            params = {"p_iid": instance_id, "p_tid": WORKFLOW_TASK}
            task = conn.execute(self._msg_lock_task, params).first()
            status = conn.execute(self._msg_status, params).scalar_one_or_none()
            if status is None:
                raise WorkflowNotFoundError(instance_id)
            if WorkflowStatus(status).is_terminal:
                if (
                    idempotency_key is not None
                    and conn.execute(
                        self._msg_key_used, {"p_iid": instance_id, "p_key": idempotency_key}
                    ).first()
                    is not None
                ):
                    return False, False
                raise WorkflowFinishedError(instance_id, status)
            inserted = conn.execute(
                self._msg_insert,
                {
                    "m_workflow_id": instance_id,
                    "m_topic": topic,
                    "m_value": text,
                    "m_idempotency_key": idempotency_key,
                    "m_timer": False,
                    "m_now": now,
                    "m_deliver_at": now,
                },
            ).rowcount
            if inserted != 1:
                return False, False
            due = aware(task.run_after) if task is not None else None
            if task is None or task.claimed_by is not None or due is None or due <= now:
                return True, False  # running, or due anyway: it will look
            last = conn.execute(self._msg_last_step, params).first()
            if (
                last is None
                or last.name != RECV_STEP
                or last.status != StepStatus.PENDING.value
                or last.input is None
                or self.serializer.loads(last.input) != topic
            ):
                return True, False  # not waiting on this topic
            conn.execute(self._msg_wake, {**params, "p_due": now})
            self._announce_work(conn)
            return True, True

        return fn

    async def receive_message(
        self,
        instance_id: str,
        topic: str,
        *,
        worker_id: str,
        step: StepRecord,
        deadline: datetime | None,
    ) -> Receipt:
        def fn(conn: sa.Connection) -> Receipt:
            now, _clock = self._msg_fenced(conn, instance_id, worker_id)
            params = {"p_iid": instance_id, "p_tid": WORKFLOW_TASK, "p_topic": topic, "m_now": now}
            found = conn.execute(self._msg_next, params).first()
            if found is not None:
                conn.execute(
                    self._msg_take,
                    {"p_id": found.id, "m_now": now, "p_position": step.position},
                )
                taken = {**found._mapping, "received_at": now, "received_position": step.position}
                message = self._message(taken)
                done = dataclasses.replace(
                    step,
                    status=StepStatus.SUCCEEDED,
                    output=message.value,
                    serialized_output=found.value,
                    completed_at=now,
                )
                self._msg_write_step(conn, instance_id, done, now)
                return Receipt(status=ReceiveStatus.RECEIVED, message=message, now=now)
            if deadline is not None and deadline <= now:
                done = dataclasses.replace(
                    step,
                    status=StepStatus.SUCCEEDED,
                    output=None,
                    serialized_output=None,
                    completed_at=now,
                )
                self._msg_write_step(conn, instance_id, done, now)
                return Receipt(status=ReceiveStatus.TIMED_OUT, now=now)
            wake_at = aware(conn.execute(self._msg_next_due, params).scalar_one_or_none())
            if deadline is not None and (wake_at is None or deadline < wake_at):
                wake_at = deadline
            self._msg_write_step(conn, instance_id, step, now)
            conn.execute(self._msg_hand_back, {"p_iid": instance_id, "p_ts": now})
            due = wake_at if wake_at is not None else now + UNTIL_WOKEN
            conn.execute(self._msg_release, {**params, "p_due": due})
            return Receipt(status=ReceiveStatus.WAITING, wake_at=wake_at, now=now)

        return await self._run(fn, what=f"receive a message of workflow {instance_id!r}")

    async def start_timer(
        self,
        instance_id: str,
        key: str,
        value: Any,
        *,
        delay: timedelta,
        worker_id: str,
        step: StepRecord,
    ) -> datetime:
        text = self.serializer.dumps(value)

        def fn(conn: sa.Connection) -> datetime:
            now, _clock = self._msg_fenced(conn, instance_id, worker_id)
            fires_at = now + max(delay, timedelta(0))
            done = dataclasses.replace(
                step, status=StepStatus.SUCCEEDED, output=fires_at.isoformat()
            )
            self._msg_write_step(conn, instance_id, done, now)
            conn.execute(self._msg_drop_timer, {"p_iid": instance_id, "p_topic": key})
            conn.execute(
                self._msg_insert,
                {
                    "m_workflow_id": instance_id,
                    "m_topic": key,
                    "m_value": text,
                    "m_idempotency_key": None,
                    "m_timer": True,
                    "m_now": now,
                    "m_deliver_at": fires_at,
                },
            )
            return fires_at

        return await self._run(fn, what=f"start timer {key!r} of workflow {instance_id!r}")

    async def cancel_timer(
        self, instance_id: str, key: str, *, worker_id: str, step: StepRecord
    ) -> bool:
        def fn(conn: sa.Connection) -> bool:
            now, _clock = self._msg_fenced(conn, instance_id, worker_id)
            dropped = conn.execute(
                self._msg_drop_timer, {"p_iid": instance_id, "p_topic": key}
            ).rowcount
            done = dataclasses.replace(step, status=StepStatus.SUCCEEDED, output=dropped > 0)
            self._msg_write_step(conn, instance_id, done, now)
            return dropped > 0

        return await self._run(fn, what=f"cancel timer {key!r} of workflow {instance_id!r}")

    async def list_messages(
        self, instance_id: str, *, topic: str | None = None, received: bool | None = None
    ) -> list[Message]:
        query = sa.select(messages).where(messages.c.workflow_id == instance_id)
        if topic is not None:
            query = query.where(messages.c.topic == topic)
        if received is not None:
            query = query.where(
                messages.c.received_at.is_not(None)
                if received
                else messages.c.received_at.is_(None)
            )
        query = query.order_by(messages.c.id)

        def fn(conn: sa.Connection) -> list[Message]:
            if conn.execute(self._msg_status, {"p_iid": instance_id}).first() is None:
                raise WorkflowNotFoundError(instance_id)
            return [self._message(r._mapping) for r in conn.execute(query)]

        return await self._run(
            fn, what=f"list the messages of workflow {instance_id!r}", read_only=True
        )
