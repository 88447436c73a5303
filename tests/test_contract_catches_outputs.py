"""The events and streams areas of the contract suite catch the flaws they are there for: each
check runs against the in-memory backend with one flaw, and must fail, and against the sound one,
and must pass (tests/test_contract.py runs them on every real backend). The suite's own test
methods are called, not copies of them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.backends.memory import InMemoryBackend
from durable.backends.memory.outputs import StoredEvent, StoredStream
from durable.models import StreamChunk
from durable.testing.contract import EventContract, StreamContract

Check = Callable[[PersistentBackend], Awaitable[None]]


class UnfencedEvent(InMemoryBackend):
    """Stores the event's value before the fenced step record, which may refuse it."""

    async def set_event(self, instance_id: str, key: str, value: Any, **kwargs: Any) -> None:
        with self._lock:
            events = self._events.setdefault(instance_id, {})
            events[key] = StoredEvent(self._dump(value), kwargs["step"].position, self.clock())
        await super().set_event(instance_id, key, value, **kwargs)


class AppendsFirst(InMemoryBackend):
    """Appends the value before the fenced step record: a refused write (a replay's, a stale
    executor's) leaves its value behind."""

    async def write_stream(self, instance_id: str, key: str, value: Any, **kwargs: Any) -> int:
        with self._lock:
            stream = self._streams.setdefault(instance_id, {}).setdefault(key, StoredStream())
            stream.values.append(self._dump(value))
            early = len(stream.values) - 1
        offset = await super().write_stream(instance_id, key, value, **kwargs)
        with self._lock:  # accepted: keep one copy
            del stream.values[early]
        return offset - 1


class RacyOffsets(InMemoryBackend):
    """Reads the next offset, yields, then writes at it: concurrent writes take one offset."""

    async def write_stream(self, instance_id: str, key: str, value: Any, **kwargs: Any) -> int:
        with self._lock:
            stream = self._streams.setdefault(instance_id, {}).setdefault(key, StoredStream())
            offset = len(stream.values)
        await asyncio.sleep(0)
        await super().write_stream(instance_id, key, value, **kwargs)
        with self._lock:
            text = stream.values.pop()
            if offset < len(stream.values):
                stream.values[offset] = text
            else:
                stream.values.append(text)
        return offset


class EndsOnlyWhenClosed(InMemoryBackend):
    """A finished workflow's unclosed stream never ends for its readers."""

    async def read_stream(self, *args: Any, **kwargs: Any) -> StreamChunk:
        chunk = await super().read_stream(*args, **kwargs)
        return StreamChunk(chunk.values, chunk.offset, chunk.closed, chunk.closed and chunk.ended)


class Silent(InMemoryBackend):
    """Never fires a watch."""

    def notify_outputs(self, instance_id: str) -> None:
        pass


CASES: list[tuple[type[InMemoryBackend], Check]] = [
    (UnfencedEvent, EventContract().test_set_event_is_fenced_and_all_or_nothing),
    (AppendsFirst, StreamContract().test_a_refused_write_takes_no_offset),
    (RacyOffsets, StreamContract().test_concurrent_writes_take_consecutive_offsets),
    (EndsOnlyWhenClosed, StreamContract().test_a_finished_workflows_streams_end_and_stay_readable),
    (Silent, EventContract().test_set_event_fires_the_workflows_watches),
]


@pytest.mark.parametrize(("flawed", "check"), CASES, ids=[c[0].__name__ for c in CASES])
async def test_the_flaw_fails_the_check_and_the_sound_backend_passes(
    flawed: type[InMemoryBackend], check: Check
) -> None:
    async with flawed() as bad:
        with pytest.raises(AssertionError):
            await check(bad)
    async with InMemoryBackend() as sound:
        await check(sound)
