"""Messages in and timers by key: sends kept until received, in order, exactly once (under
concurrent senders and receivers, in several processes where the storage allows), idempotent
sends, receives fenced and recorded with their message, waits that a send always wakes, timers
replaced, cancelled (also in a race with their delivery) and due without polling."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    ClaimLostError,
    SerializationError,
    StepAlreadyRecordedError,
    WorkflowFinishedError,
    WorkflowNotFoundError,
)
from durable.models import (
    CANCEL_TIMER_STEP,
    RECV_STEP,
    START_TIMER_STEP,
    UNTIL_WOKEN,
    ReceiveStatus,
    StepRecord,
    StepStatus,
    WorkflowStatus,
)
from durable.testing._messaging import receive_until, run_processes, send_all
from durable.testing.contract._support import (
    EXPIRED,
    LONG,
    SHORT,
    SLACK,
    Call,
    ContractBase,
    Unserializable,
    W,
    create,
    gather_all,
    running,
    step,
)

#: A deadline that has passed (a receive without a message times out, keeping the claim).
PAST = datetime(2000, 1, 1, tzinfo=UTC)


def recv(position: int, topic: str = "t", deadline: datetime | None = None) -> StepRecord:
    """A receive's record as the runtime gives it: pending, its input the topic."""
    return StepRecord(
        position=position,
        name=RECV_STEP,
        status=StepStatus.PENDING,
        input=topic,
        output=None if deadline is None else deadline.isoformat(),
        attempts=1,
        executor_id="w1",
    )


def timer_step(position: int, key: str, name: str = START_TIMER_STEP) -> StepRecord:
    return StepRecord(position=position, name=name, input=key, attempts=1, executor_id="w1")


class MessageContract(ContractBase):
    """Messages in and timers by key (see the module's docstring)."""

    async def test_messages_are_kept_and_received_in_order_once(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "wf")  # not started: messages wait for it
        for value in ("a", {"b": [1, None]}, None):
            assert await backend.send_message("wf", "t", value) is True
        assert await backend.send_message("wf", "u", "other") is True
        claim = await backend.claim_task("wf", W, "w1", LONG)
        assert claim is not None
        await backend.begin_execution("wf", "w1")
        got = []
        for position in range(3):
            receipt = await backend.receive_message(
                "wf", "t", worker_id="w1", step=recv(position), deadline=None
            )
            assert receipt.status is ReceiveStatus.RECEIVED and receipt.message is not None
            got.append(receipt.message.value)
        assert got == ["a", {"b": [1, None]}, None]
        steps = await backend.list_steps("wf")
        assert [(s.name, s.status, s.output, s.input) for s in steps] == [
            (RECV_STEP, StepStatus.SUCCEEDED, "a", "t"),
            (RECV_STEP, StepStatus.SUCCEEDED, {"b": [1, None]}, "t"),
            (RECV_STEP, StepStatus.SUCCEEDED, None, "t"),
        ]
        assert all(s.completed_at is not None for s in steps)
        listed = await backend.list_messages("wf")
        assert [(m.topic, m.received_position) for m in listed] == [
            ("t", 0),
            ("t", 1),
            ("t", 2),
            ("u", None),
        ]
        seqs = [m.seq for m in listed]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        assert [m.value for m in await backend.list_messages("wf", received=False)] == ["other"]
        assert len(await backend.list_messages("wf", topic="t", received=True)) == 3
        with pytest.raises(WorkflowNotFoundError):
            await backend.list_messages("ghost")

    async def test_a_receive_without_a_message_hands_the_workflow_back(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        await backend.record_step("wf", step(0), worker_id="w1")
        before = await backend.get_workflow("wf")
        receipt = await backend.receive_message(
            "wf", "t", worker_id="w1", step=recv(1), deadline=None
        )
        assert (receipt.status, receipt.message, receipt.wake_at) == (
            ReceiveStatus.WAITING,
            None,
            None,
        )
        info = await backend.get_workflow("wf")
        assert info.status is WorkflowStatus.PENDING
        assert info.attempts == before.attempts - 1 and info.version > before.version
        task = await backend.get_task("wf", W)
        assert (task.claimed_by, task.claim_expires_at) == (None, None)
        assert task.run_after > receipt.now + UNTIL_WOKEN - timedelta(days=1)
        assert await backend.find_available_tasks("anyone", 10) == []
        steps = await backend.list_steps("wf")
        assert (steps[1].name, steps[1].status, steps[1].input, steps[1].output) == (
            RECV_STEP,
            StepStatus.PENDING,
            "t",
            None,
        )
        # the hand-back released the claim: the old holder's writes are refused
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(2), worker_id="w1")
        # with a deadline: due then
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        deadline = await backend.now() + timedelta(hours=1)
        receipt = await backend.receive_message(
            "wf", "t", worker_id="w1", step=recv(1, deadline=deadline), deadline=deadline
        )
        assert (receipt.status, receipt.wake_at) == (ReceiveStatus.WAITING, deadline)
        assert (await backend.get_task("wf", W)).run_after == deadline
        assert (await backend.list_steps("wf"))[1].output == deadline.isoformat()

    async def test_a_receive_past_its_deadline_times_out(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1")
        deadline = await backend.now() - timedelta(seconds=1)
        receipt = await backend.receive_message(
            "wf", "t", worker_id="w1", step=recv(0, deadline=deadline), deadline=deadline
        )
        assert receipt.status is ReceiveStatus.TIMED_OUT and receipt.message is None
        (recorded,) = await backend.list_steps("wf")
        assert (recorded.status, recorded.output) == (StepStatus.SUCCEEDED, None)
        # still held: the workflow goes on
        await backend.record_step("wf", step(1), worker_id="w1")

    async def test_receives_are_fenced_and_positions_final(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        await backend.send_message("wf", "t", 1)
        with pytest.raises(ClaimLostError):
            await backend.receive_message("wf", "t", worker_id="w2", step=recv(0), deadline=None)
        await backend.record_step("wf", step(0), worker_id="w1")
        with pytest.raises(StepAlreadyRecordedError):
            await backend.receive_message("wf", "t", worker_id="w1", step=recv(0), deadline=None)
        assert [m.received_at for m in await backend.list_messages("wf")] == [None]
        with pytest.raises(ClaimLostError):
            await backend.start_timer(
                "wf", "k", 1, delay=timedelta(0), worker_id="w2", step=timer_step(1, "k")
            )
        with pytest.raises(ClaimLostError):
            await backend.cancel_timer(
                "wf", "k", worker_id="w2", step=timer_step(1, "k", CANCEL_TIMER_STEP)
            )
        assert len(await backend.list_messages("wf")) == 1

    async def test_sends_are_idempotent_per_workflow(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        await create(backend, "wf-2")
        assert await backend.send_message("wf", "t", 1, idempotency_key="k") is True
        assert await backend.send_message("wf", "t", 2, idempotency_key="k") is False
        assert await backend.send_message("wf", "other", 3, idempotency_key="k") is False
        assert await backend.send_message("wf-2", "t", 4, idempotency_key="k") is True
        results = await gather_all(
            backend.send_message("wf", "t", 5, idempotency_key="same") for _ in range(10)
        )
        assert sorted(results) == [False] * 9 + [True]
        assert [m.value for m in await backend.list_messages("wf")] == [1, 5]
        assert [m.idempotency_key for m in await backend.list_messages("wf-2")] == ["k"]

    async def test_sends_to_missing_or_finished_workflows_are_refused(
        self, backend: PersistentBackend
    ) -> None:
        with pytest.raises(WorkflowNotFoundError) as missing:
            await backend.send_message("ghost", "t", 1)
        assert missing.value.workflow_id == "ghost"
        await running(backend, "wf", "w1")
        await backend.send_message("wf", "t", 1, idempotency_key="k")
        await backend.finish_workflow("wf", worker_id="w1", status=WorkflowStatus.SUCCEEDED)
        with pytest.raises(WorkflowFinishedError) as finished:
            await backend.send_message("wf", "t", 2)
        assert finished.value.workflow_id == "wf"
        assert await backend.send_message("wf", "t", 1, idempotency_key="k") is False
        assert len(await backend.list_messages("wf")) == 1
        await create(backend, "wf-2")
        with pytest.raises(SerializationError):
            await backend.send_message("wf-2", "t", Unserializable())
        assert await backend.list_messages("wf-2") == []

    async def test_a_send_wakes_only_a_workflow_waiting_on_its_topic(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        receipt = await backend.receive_message(
            "wf", "t", worker_id="w1", step=recv(0), deadline=None
        )
        assert receipt.status is ReceiveStatus.WAITING
        due = (await backend.get_task("wf", W)).run_after
        await backend.send_message("wf", "other", 1)
        assert (await backend.get_task("wf", W)).run_after == due  # another topic: not woken
        waiter = asyncio.create_task(backend.wait_for_work(60))
        await asyncio.sleep(0.05)
        await backend.send_message("wf", "t", 2)
        try:
            await asyncio.wait_for(waiter, 10)
        except TimeoutError:
            pytest.fail("send_message did not wake a coroutine waiting for work")
        task = await backend.get_task("wf", W)
        assert task.run_after <= await backend.now()
        assert [t.instance_id for t in await backend.find_available_tasks("w2", 10)] == ["wf"]
        assert await backend.claim_task("wf", W, "w2", LONG) is not None
        receipt = await backend.receive_message(
            "wf", "t", worker_id="w2", step=recv(0), deadline=None
        )
        assert receipt.message is not None and receipt.message.value == 2

    async def test_a_send_racing_a_hand_back_is_never_lost(
        self, backend: PersistentBackend
    ) -> None:
        """Each round, a receive that may find nothing and hand the workflow back runs at the
        same time as a send: afterwards the message was received, or the workflow is due."""
        for round_ in range(20):
            instance_id = f"wf-{round_}"
            await running(backend, instance_id, "w1")
            receive = backend.receive_message(
                instance_id, "t", worker_id="w1", step=recv(0), deadline=None
            )
            receipt, _ = await asyncio.gather(receive, backend.send_message(instance_id, "t", 1))
            if receipt.status is ReceiveStatus.WAITING:
                task = await backend.get_task(instance_id, W)
                assert task.run_after <= await backend.now() + SLACK, (
                    f"round {round_}: the send came after the receive looked, and did not "
                    "wake the workflow"
                )
            else:
                assert receipt.status is ReceiveStatus.RECEIVED

    async def test_timers_fire_are_replaced_and_cancelled(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1")
        start = await backend.now()
        fires = await backend.start_timer(
            "wf", "k", "first", delay=timedelta(hours=1), worker_id="w1", step=timer_step(0, "k")
        )
        assert start + timedelta(hours=1) <= fires <= start + timedelta(hours=1) + SLACK
        (recorded,) = await backend.list_steps("wf")
        assert (recorded.name, recorded.status, recorded.output) == (
            START_TIMER_STEP,
            StepStatus.SUCCEEDED,
            fires.isoformat(),
        )
        # restarting the key replaces it
        again = await backend.start_timer(
            "wf", "k", "second", delay=timedelta(hours=2), worker_id="w1", step=timer_step(1, "k")
        )
        listed = await backend.list_messages("wf")
        assert [(m.topic, m.value, m.timer, m.deliver_at) for m in listed] == [
            ("k", "second", True, again)
        ]
        # a receive on its topic waits until it fires
        receipt = await backend.receive_message(
            "wf", "k", worker_id="w1", step=recv(2, "k"), deadline=None
        )
        assert (receipt.status, receipt.wake_at) == (ReceiveStatus.WAITING, again)
        assert (await backend.get_task("wf", W)).run_after == again
        # cancelled: never received
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        cancel = timer_step(2, "k", CANCEL_TIMER_STEP)
        assert await backend.cancel_timer("wf", "k", worker_id="w1", step=cancel) is True
        assert (await backend.list_steps("wf"))[2].output is True
        cancel = timer_step(3, "k", CANCEL_TIMER_STEP)
        assert await backend.cancel_timer("wf", "k", worker_id="w1", step=cancel) is False
        assert await backend.list_messages("wf") == []
        # a due timer is received at once, and cannot be cancelled after
        await backend.start_timer(
            "wf", "z", 7, delay=timedelta(0), worker_id="w1", step=timer_step(4, "z")
        )
        receipt = await backend.receive_message(
            "wf", "z", worker_id="w1", step=recv(5, "z"), deadline=None
        )
        assert receipt.message is not None and (receipt.message.value, receipt.message.timer) == (
            7,
            True,
        )
        cancel = timer_step(6, "z", CANCEL_TIMER_STEP)
        assert await backend.cancel_timer("wf", "z", worker_id="w1", step=cancel) is False
        with pytest.raises(StepAlreadyRecordedError):
            await backend.start_timer(
                "wf", "z", 1, delay=timedelta(0), worker_id="w1", step=timer_step(0, "z")
            )

    async def test_a_timer_cancelled_in_a_race_with_its_delivery(
        self, backend: PersistentBackend
    ) -> None:
        """A due timer's cancel and a receive on its topic, at once: exactly one wins (the
        receive's deadline has passed, so without the message it times out and keeps the
        claim)."""
        await running(backend, "wf", "w1")
        position = 0
        outcomes: Counter[str] = Counter()
        for i in range(20):
            key = f"k{i}"
            await backend.start_timer(
                "wf", key, i, delay=timedelta(0), worker_id="w1", step=timer_step(position, key)
            )
            cancel = timer_step(position + 1, key, CANCEL_TIMER_STEP)
            cancelled, receipt = await asyncio.gather(
                backend.cancel_timer("wf", key, worker_id="w1", step=cancel),
                backend.receive_message(
                    "wf", key, worker_id="w1", step=recv(position + 2, key), deadline=PAST
                ),
            )
            position += 3
            received = receipt.status is ReceiveStatus.RECEIVED
            assert cancelled != received, f"timer {key}: cancelled={cancelled}, received={received}"
            outcomes["cancelled" if cancelled else "received"] += 1
        assert sum(outcomes.values()) == 20

    async def test_an_expired_claim_fences_receives_and_timers(
        self, backend: PersistentBackend
    ) -> None:
        """A claim that expired is not held, though nobody claimed the task since: its holder's
        ``receive_message``, ``start_timer`` and ``cancel_timer`` raise ``ClaimLostError`` with
        ``holder`` None and write nothing (no message taken, no timer started or cancelled, no
        step). Renewed (``extend_task_claim``), the same calls go through."""
        await running(backend, "receive", "w1")
        await backend.send_message("receive", "t", "message")
        await running(backend, "start", "w1")
        await running(backend, "cancel", "w1")
        started = timer_step(0, "k")
        await backend.start_timer(
            "cancel", "k", "timer", delay=timedelta(hours=1), worker_id="w1", step=started
        )
        ids = ("receive", "start", "cancel")
        before = {i: (await backend.list_messages(i), await backend.list_steps(i)) for i in ids}
        # (long leases while the setup runs, shortened at its end)
        for instance_id in ids:
            await backend.extend_task_claim(instance_id, W, "w1", SHORT)
        await asyncio.sleep(EXPIRED)

        calls: dict[str, Call] = {
            "receive": lambda: backend.receive_message(
                "receive", "t", worker_id="w1", step=recv(0), deadline=None
            ),
            "start": lambda: backend.start_timer(
                "start", "k", "timer", delay=timedelta(0), worker_id="w1", step=timer_step(0, "k")
            ),
            "cancel": lambda: backend.cancel_timer(
                "cancel", "k", worker_id="w1", step=timer_step(1, "k", CANCEL_TIMER_STEP)
            ),
        }
        for instance_id, call in calls.items():
            with pytest.raises(ClaimLostError) as lost:
                await call()
            assert (lost.value.worker_id, lost.value.holder) == ("w1", None), instance_id
            after = (
                await backend.list_messages(instance_id),
                await backend.list_steps(instance_id),
            )
            assert after == before[instance_id], f"{instance_id}: a fenced call wrote"
            info = await backend.get_workflow(instance_id)
            assert info.status is WorkflowStatus.RUNNING, instance_id

        for instance_id, call in calls.items():
            await backend.extend_task_claim(instance_id, W, "w1", LONG)
            await call()
        assert [m.received_position for m in await backend.list_messages("receive")] == [0]
        assert len(await backend.list_messages("start", received=False)) == 1
        assert await backend.list_messages("cancel") == []

    async def test_deleting_a_workflow_deletes_its_messages(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "wf")
        await backend.send_message("wf", "t", 1, idempotency_key="k")
        assert await backend.delete_snapshot("wf")
        await create(backend, "wf")
        assert await backend.list_messages("wf") == []
        assert await backend.send_message("wf", "t", 1, idempotency_key="k") is True

    async def test_concurrent_senders_and_receivers(self, backend: PersistentBackend) -> None:
        """Four senders and three receivers (coroutines of one process, short leases): every
        message is received exactly once, each sender's in the order sent."""
        await create(backend, "wf")
        senders, count = 4, 10
        results = await gather_all(
            [
                *(send_all(backend, "wf", f"s{i}", count) for i in range(senders)),
                *(receive_until(backend, "wf", f"r{i}", senders * count, 60) for i in range(3)),
            ]
        )
        await self._check_exactly_once(backend, results[:senders], results[senders:], count)

    async def test_concurrent_senders_and_receivers_across_processes(
        self,
        backend: PersistentBackend,
        backend_factory: Callable[[], PersistentBackend] | None,
    ) -> None:
        if backend_factory is None:
            pytest.skip("no backend_factory fixture: the backend cannot be shared by processes")
        await create(backend, "wf")
        senders, count = 2, 15
        jobs: list[tuple[str, tuple[Any, ...]]] = [
            *(("send", ("wf", f"s{i}", count)) for i in range(senders)),
            *(("receive", ("wf", f"r{i}", senders * count, 90.0)) for i in range(2)),
        ]
        results = await asyncio.to_thread(run_processes, backend_factory, jobs)
        await self._check_exactly_once(backend, results[:senders], results[senders:], count)

    async def _check_exactly_once(
        self,
        backend: PersistentBackend,
        sent: list[Any],
        received: list[Any],
        count: int,
    ) -> None:
        for results in sent:  # each value stored by its first send only
            assert results == [True, False] * count
        seqs = [seq for got in received for seq in got]
        stored = await backend.list_messages("wf")
        assert len(stored) == len(sent) * count
        assert sorted(seqs) == sorted(m.seq for m in stored), "a message lost or received twice"
        assert all(m.received_at is not None for m in stored)
        steps = [s for s in await backend.list_steps("wf") if s.status is StepStatus.SUCCEEDED]
        values = [tuple(s.output) for s in steps]
        assert len(values) == len(set(values)) == len(stored)
        for sender in {v[0] for v in values}:  # per sender, in the order sent
            order = [v[1] for v in values if v[0] == sender]
            assert order == sorted(order), f"{sender}'s messages received out of order: {order}"
