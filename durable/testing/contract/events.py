"""What workflows publish: events (the latest value per key wins) and streams (values in order,
each once, then closed), each written with its step in one transaction fenced by the claim,
readable while the workflow runs and after it finished, and announced to watchers."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    ClaimLostError,
    InvalidArgumentError,
    SerializationError,
    StepAlreadyRecordedError,
    StreamClosedError,
    WorkflowNotFoundError,
)
from durable.models import StepRecord, StepStatus, WorkflowStatus
from durable.testing.contract._support import (
    EXPIRED,
    LONG,
    SHORT,
    ContractBase,
    Unserializable,
    W,
    create,
    now,
    running,
    step,
)

#: Values an event or a stream must give back equal (a few of the suite's VALUES).
PUBLISHED: list[Any] = [
    None,
    0,
    2**63 + 1,
    -2.5,
    True,
    "",
    "ünïcødé ☃ \x00",
    [1, "two", None],
    {"nested": {"deep": [{"k": [1, {"x": None}]}]}},
    "x" * 100_000,
]


def event_step(position: int) -> StepRecord:
    return step(position, "durable.set_event", input={"key": "k"})


def write_step(position: int) -> StepRecord:
    return step(position, "durable.write_stream", input={"key": "s"})


async def positions(backend: PersistentBackend, instance_id: str) -> list[tuple[int, str]]:
    return [(s.position, s.name) for s in await backend.list_steps(instance_id)]


async def fired(backend: PersistentBackend, instance_id: str, write: Any) -> bool:
    """Whether a watch of ``instance_id`` started before ``write()`` fires after it."""
    with backend.watch_outputs(instance_id) as watch:
        await write()
        return await watch.wait(10)


class EventContract(ContractBase):
    """Events: ``set_event`` (fenced, with its step), ``get_event``, watches."""

    async def test_the_latest_value_wins_and_values_round_trip(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        assert await backend.get_event("wf", "k") is None
        before = now()
        for position, value in enumerate(PUBLISHED):
            await backend.set_event("wf", "k", value, worker_id="w1", step=event_step(position))
            event = await backend.get_event("wf", "k")
            assert event is not None and event.value == value and type(event.value) is type(value)
            assert event.key == "k" and event.position == position
            assert event.updated_at is not None and event.updated_at >= before - timedelta(
                seconds=30
            )
        await backend.set_event("wf", "other", "o", worker_id="w1", step=event_step(100))
        event = await backend.get_event("wf", "k")
        assert event is not None and event.value == PUBLISHED[-1]
        other = await backend.get_event("wf", "other")
        assert other is not None and other.value == "o"
        assert await positions(backend, "wf") == [
            *((p, "durable.set_event") for p in range(len(PUBLISHED))),
            (100, "durable.set_event"),
        ]
        recorded = (await backend.list_steps("wf"))[0]
        assert recorded.status is StepStatus.SUCCEEDED and recorded.input == {"key": "k"}

    async def test_events_are_per_workflow(self, backend: PersistentBackend) -> None:
        await running(backend, "a", "w1")
        await running(backend, "b", "w1")
        await backend.set_event("a", "k", "for a", worker_id="w1", step=event_step(0))
        assert await backend.get_event("b", "k") is None
        with pytest.raises(WorkflowNotFoundError) as caught:
            await backend.get_event("missing", "k")
        assert caught.value.workflow_id == "missing"

    async def test_set_event_is_fenced_and_all_or_nothing(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        # a long lease while the claim must hold (a loaded machine is slow), shortened below
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        await backend.set_event("wf", "k", "first", worker_id="w1", step=event_step(0))
        # another worker never held it
        with pytest.raises(ClaimLostError) as caught:
            await backend.set_event("wf", "k", "intruder", worker_id="w2", step=event_step(1))
        assert caught.value.holder == "w1"
        # the same position twice: a replay must not set it again
        with pytest.raises(StepAlreadyRecordedError):
            await backend.set_event("wf", "k", "again", worker_id="w1", step=event_step(0))
        # a value the serializer refuses: nothing written, the claim still held
        with pytest.raises(SerializationError):
            await backend.set_event("wf", "k", Unserializable(), worker_id="w1", step=event_step(1))
        # the lease expired and another worker took over: the first one cannot write
        await backend.extend_task_claim("wf", W, "w1", SHORT)
        await asyncio.sleep(EXPIRED)
        with pytest.raises(ClaimLostError):
            await backend.set_event("wf", "k", "stale", worker_id="w1", step=event_step(1))
        assert await backend.claim_task("wf", W, "w2", LONG) is not None
        with pytest.raises(ClaimLostError) as caught:
            await backend.set_event("wf", "k", "stale", worker_id="w1", step=event_step(1))
        assert caught.value.holder == "w2"
        event = await backend.get_event("wf", "k")
        assert event is not None and event.value == "first" and event.position == 0
        assert await positions(backend, "wf") == [(0, "durable.set_event")]

    async def test_events_are_readable_after_the_workflow_finished_until_deleted(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        await backend.set_event("wf", "k", {"done": True}, worker_id="w1", step=event_step(0))
        await backend.finish_workflow(
            "wf", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=1
        )
        event = await backend.get_event("wf", "k")
        assert event is not None and event.value == {"done": True}
        assert await backend.delete_snapshot("wf")
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_event("wf", "k")
        await create(backend, "wf")  # a new workflow under the id starts from nothing
        assert await backend.get_event("wf", "k") is None

    async def test_set_event_fires_the_workflows_watches(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1")

        async def write() -> None:
            await backend.set_event("wf", "k", 1, worker_id="w1", step=event_step(0))

        assert await fired(backend, "wf", write)


class StreamContract(ContractBase):
    """Streams: ``write_stream`` and ``close_stream`` (fenced, with their steps),
    ``read_stream`` from an offset, the end of a stream, watches."""

    async def test_values_come_in_order_from_any_offset(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1")
        empty = await backend.read_stream("wf", "s")
        assert empty.values == () and empty.offset == 0 and not empty.closed and not empty.ended
        for position, value in enumerate(PUBLISHED):
            offset = await backend.write_stream(
                "wf", "s", value, worker_id="w1", step=write_step(position)
            )
            assert offset == position
        chunk = await backend.read_stream("wf", "s")
        assert list(chunk.values) == PUBLISHED
        assert [type(v) for v in chunk.values] == [type(v) for v in PUBLISHED]
        assert chunk.next_offset == len(PUBLISHED) and not chunk.closed and not chunk.ended
        tail = await backend.read_stream("wf", "s", offset=3, limit=2)
        assert list(tail.values) == PUBLISHED[3:5] and tail.offset == 3 and tail.next_offset == 5
        beyond = await backend.read_stream("wf", "s", offset=len(PUBLISHED) + 5)
        assert beyond.values == ()
        assert await positions(backend, "wf") == [
            (p, "durable.write_stream") for p in range(len(PUBLISHED))
        ]

    async def test_streams_are_per_workflow_and_key(self, backend: PersistentBackend) -> None:
        await running(backend, "a", "w1")
        await running(backend, "b", "w1")
        await backend.write_stream("a", "s", "a0", worker_id="w1", step=write_step(0))
        await backend.write_stream("a", "t", "t0", worker_id="w1", step=write_step(1))
        await backend.write_stream("b", "s", "b0", worker_id="w1", step=write_step(0))
        assert await backend.write_stream("a", "s", "a1", worker_id="w1", step=write_step(2)) == 1
        assert (await backend.read_stream("a", "s")).values == ("a0", "a1")
        assert (await backend.read_stream("a", "t")).values == ("t0",)
        assert (await backend.read_stream("b", "s")).values == ("b0",)
        with pytest.raises(WorkflowNotFoundError):
            await backend.read_stream("missing", "s")
        with pytest.raises(InvalidArgumentError):
            await backend.read_stream("a", "s", offset=-1)
        with pytest.raises(InvalidArgumentError):
            await backend.read_stream("a", "s", limit=0)

    async def test_closing_ends_the_stream_after_its_last_value(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        for position in range(3):
            await backend.write_stream(
                "wf", "s", position, worker_id="w1", step=write_step(position)
            )
        await backend.close_stream("wf", "s", worker_id="w1", step=step(3, "durable.close_stream"))
        chunk = await backend.read_stream("wf", "s")
        assert chunk.values == (0, 1, 2) and chunk.closed and chunk.ended
        partial = await backend.read_stream("wf", "s", limit=2)
        assert partial.closed and not partial.ended  # a value is left after it
        with pytest.raises(StreamClosedError) as caught:
            await backend.write_stream("wf", "s", 3, worker_id="w1", step=write_step(4))
        assert caught.value.workflow_id == "wf" and caught.value.key == "s"
        await backend.close_stream(  # closing again is allowed
            "wf", "s", worker_id="w1", step=step(4, "durable.close_stream")
        )
        await backend.close_stream(  # so is closing a stream never written
            "wf", "never", worker_id="w1", step=step(5, "durable.close_stream")
        )
        never = await backend.read_stream("wf", "never")
        assert never.values == () and never.closed and never.ended
        assert (await backend.read_stream("wf", "s")).values == (0, 1, 2)
        assert await positions(backend, "wf") == [
            (0, "durable.write_stream"),
            (1, "durable.write_stream"),
            (2, "durable.write_stream"),
            (3, "durable.close_stream"),
            (4, "durable.close_stream"),
            (5, "durable.close_stream"),
        ]

    async def test_a_finished_workflows_streams_end_and_stay_readable(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        await backend.write_stream("wf", "s", "v", worker_id="w1", step=write_step(0))
        await backend.finish_workflow("wf", worker_id="w1", status=WorkflowStatus.FAILED)
        chunk = await backend.read_stream("wf", "s")
        assert chunk.values == ("v",) and not chunk.closed and chunk.ended
        untouched = await backend.read_stream("wf", "never-written")
        assert untouched.values == () and untouched.ended
        assert await backend.delete_snapshot("wf")
        with pytest.raises(WorkflowNotFoundError):
            await backend.read_stream("wf", "s")
        await running(backend, "wf", "w1")  # a new workflow under the id starts from nothing
        assert (await backend.read_stream("wf", "s")).values == ()
        assert await backend.write_stream("wf", "s", "new", worker_id="w1", step=write_step(0)) == 0

    async def test_a_refused_write_takes_no_offset(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        # a long lease while the claim must hold (a loaded machine is slow), shortened below
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        assert await backend.write_stream("wf", "s", "v0", worker_id="w1", step=write_step(0)) == 0
        with pytest.raises(StepAlreadyRecordedError):  # a replay of position 0
            await backend.write_stream("wf", "s", "v0", worker_id="w1", step=write_step(0))
        with pytest.raises(SerializationError):
            await backend.write_stream(
                "wf", "s", Unserializable(), worker_id="w1", step=write_step(1)
            )
        with pytest.raises(ClaimLostError):
            await backend.write_stream("wf", "s", "x", worker_id="w2", step=write_step(1))
        await backend.extend_task_claim("wf", W, "w1", SHORT)
        await asyncio.sleep(EXPIRED)
        with pytest.raises(ClaimLostError):  # the lease expired: a stale writer writes nothing
            await backend.write_stream("wf", "s", "stale", worker_id="w1", step=write_step(1))
        with pytest.raises(ClaimLostError):
            await backend.close_stream(
                "wf", "s", worker_id="w1", step=step(1, "durable.close_stream")
            )
        # the next executor takes over and replays: position 0 is recorded, 1 is written once
        assert await backend.claim_task("wf", W, "w2", LONG) is not None
        snapshot = await backend.begin_execution("wf", "w2")
        assert [(s.position, s.name) for s in snapshot.steps] == [(0, "durable.write_stream")]
        assert await backend.write_stream("wf", "s", "v1", worker_id="w2", step=write_step(1)) == 1
        chunk = await backend.read_stream("wf", "s")
        assert chunk.values == ("v0", "v1") and not chunk.closed

    async def test_concurrent_writes_take_consecutive_offsets(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        count = 30
        offsets = await asyncio.gather(
            *(
                backend.write_stream("wf", "s", f"v{p}", worker_id="w1", step=write_step(p))
                for p in range(count)
            )
        )
        assert sorted(offsets) == list(range(count))
        chunk = await backend.read_stream("wf", "s")
        by_offset = {offset: f"v{p}" for p, offset in enumerate(offsets)}
        assert list(chunk.values) == [by_offset[o] for o in range(count)]

    async def test_writes_and_closes_fire_the_workflows_watches(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")

        async def write() -> None:
            await backend.write_stream("wf", "s", 1, worker_id="w1", step=write_step(0))

        async def close() -> None:
            await backend.close_stream(
                "wf", "s", worker_id="w1", step=step(1, "durable.close_stream")
            )

        assert await fired(backend, "wf", write)
        assert await fired(backend, "wf", close)
