"""The runtime's per-execution lock (:class:`durable.engine.core.KeyedLock`): one holder per
key at a time, other keys free, and nothing kept once nobody holds or waits, including after
a holder raised or a waiter was cancelled."""

from __future__ import annotations

import asyncio

import pytest

from durable.engine.core import KeyedLock


async def test_one_holder_per_key_and_other_keys_run_meanwhile() -> None:
    lock = KeyedLock()
    inside: list[str] = []
    overlaps: list[list[str]] = []

    async def hold(key: str, tag: str) -> None:
        async with lock.hold(key):
            inside.append(tag)
            overlaps.append(sorted(inside))
            await asyncio.sleep(0.01)
            inside.remove(tag)

    await asyncio.gather(hold("a", "a1"), hold("a", "a2"), hold("b", "b1"), hold("a", "a3"))
    # a1 and b1 overlap; a2 and a3 each run alone after the one before them
    assert all(sum(t.startswith("a") for t in seen) <= 1 for seen in overlaps)
    assert ["a1", "b1"] in overlaps
    assert lock._locks == {}


async def test_a_holder_that_raises_releases_the_key() -> None:
    lock = KeyedLock()
    with pytest.raises(RuntimeError):
        async with lock.hold("a"):
            raise RuntimeError("body failed")
    assert lock._locks == {}
    async with lock.hold("a"):
        assert lock._locks["a"][1] == 1
    assert lock._locks == {}


async def test_a_waiter_cancelled_before_its_turn_leaves_nothing_behind() -> None:
    lock = KeyedLock()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with lock.hold("a"):
            entered.set()
            await release.wait()

    async def waiter() -> None:
        async with lock.hold("a"):
            raise AssertionError("a cancelled waiter must not get the lock")

    first = asyncio.create_task(holder())
    await entered.wait()
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    assert lock._locks["a"][1] == 2
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert lock._locks["a"][1] == 1
    release.set()
    await first
    assert lock._locks == {}
