"""The store's clock: :meth:`~durable.backends.PersistentBackend.now` tells it, and every lease
and due time is judged by it, never by the calling host's clock (which, for a database server,
may be off). The check moves this host's clock with ``time-machine``: a store that keeps its own
clock must not notice, one whose clock is the host's must move with it, consistently."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import ModuleType

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import ClaimLostError
from durable.models import TaskSpec
from durable.testing.contract._support import (
    SLACK,
    ContractBase,
    W,
    create,
    keys_of,
    step,
)

#: How far apart two readings of one clock, taken around an operation, may be from the stamp
#: the operation set (a database's ``now()`` is its transaction's start).
TOLERANCE = timedelta(seconds=1)
#: How far this host's clock is moved: far beyond every lease in the check.
JUMP = timedelta(days=1)
#: The leases of the check: long enough not to expire while it runs, far shorter than JUMP.
TTL = timedelta(minutes=10)


def _time_machine() -> ModuleType:
    try:
        import time_machine
    except ImportError:  # pragma: no cover - an environment without the test extra
        pytest.fail("the clock checks need the time-machine package: pip install time-machine")
    return time_machine


def assert_utc(stamp: datetime) -> None:
    assert isinstance(stamp, datetime), f"now() returned {stamp!r}, not a datetime"
    assert stamp.utcoffset() == timedelta(0), f"now() returned {stamp!r}, not aware UTC"


async def assert_stamped_by_store(
    backend: PersistentBackend, stamp: datetime, offset: timedelta, before: datetime
) -> None:
    """``stamp`` is ``offset`` after the store's now, read between ``before`` and now."""
    after = await backend.now()
    low, high = before + offset - TOLERANCE, after + offset + TOLERANCE
    assert low <= stamp <= high, (
        f"{stamp} is not {offset} after the store's clock ({before} .. {after}): "
        "the backend does not judge by the clock its now() reports"
    )


class ClockContract(ContractBase):
    """The store's clock: ``now()``, and leases and due times judged by it."""

    async def test_now_is_aware_utc_and_stamps_claims_and_due_times(
        self, backend: PersistentBackend
    ) -> None:
        first = await backend.now()
        assert_utc(first)
        host = datetime.now(UTC)
        assert abs(first - host) <= SLACK, f"the store's clock {first} is far from {host}"
        second = await backend.now()
        assert_utc(second)
        assert second >= first, "the store's clock went back"

        await create(backend, "wf")
        before = await backend.now()
        claim = await backend.claim_task("wf", W, "w1", TTL)
        assert claim is not None
        await assert_stamped_by_store(backend, claim.expires_at, TTL, before)
        before = await backend.now()
        extended = await backend.extend_task_claim("wf", W, "w1", 2 * TTL)
        await assert_stamped_by_store(backend, extended.expires_at, 2 * TTL, before)

        before = await backend.now()
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="now", name="t"))
        due = await backend.get_task("wf", "now")
        await assert_stamped_by_store(backend, due.run_after, timedelta(0), before)
        before = await backend.now()
        hour = timedelta(hours=1)
        assert await backend.add_task(
            TaskSpec(instance_id="wf", task_id="delayed", name="t", delay=hour)
        )
        delayed = await backend.get_task("wf", "delayed")
        await assert_stamped_by_store(backend, delayed.run_after, hour, before)
        assert keys_of(await backend.find_available_tasks("w2", 10)) == [("wf", "now")]

    async def test_leases_and_due_times_follow_the_stores_clock(
        self, backend: PersistentBackend
    ) -> None:
        """Move this host's clock a day ahead: whether the store's clock moved with it or not,
        the backend judges every lease and due time by the clock its ``now()`` reports."""
        time_machine = _time_machine()
        await create(backend, "held")
        await create(backend, "fresh")
        held = await backend.claim_task("held", W, "w1", TTL)
        assert held is not None

        with time_machine.travel(datetime.now(UTC) + JUMP, tick=True):
            store_now = await backend.now()
            assert_utc(store_now)
            host = datetime.now(UTC)
            moved = abs(store_now - host) <= SLACK
            kept = abs(store_now - (host - JUMP)) <= SLACK
            assert moved or kept, (
                f"after this host's clock moved {JUMP} ahead, now() is {store_now}: neither "
                f"this host's clock ({host}) nor a clock of the store's own"
            )
            # the claim taken before the move: lapsed if the store's clock moved a day, else live
            if store_now >= held.expires_at:
                with pytest.raises(ClaimLostError) as lost:
                    await backend.record_step("held", step(0), worker_id="w1")
                assert lost.value.holder is None
                assert ("held", W) in keys_of(await backend.find_available_tasks("w2", 10))
                taken = await backend.claim_task("held", W, "w2", TTL)
                assert taken is not None, "a claim expired by the store's clock was refused"
            else:
                assert ("held", W) not in keys_of(await backend.find_available_tasks("w2", 10)), (
                    "a claim live by the store's clock was offered: leases are judged by the "
                    "host's clock, not by now()"
                )
                assert await backend.claim_task("held", W, "w2", TTL) is None, (
                    "a claim live by the store's clock was taken over"
                )
                await backend.record_step("held", step(0), worker_id="w1")

            # a claim taken now expires TTL after the store's now, and is live by it
            before = await backend.now()
            fresh = await backend.claim_task("fresh", W, "w3", TTL)
            assert fresh is not None
            await assert_stamped_by_store(backend, fresh.expires_at, TTL, before)
            assert await backend.claim_task("fresh", W, "w4", TTL) is None
            await backend.record_step("fresh", step(0), worker_id="w3")

            # due times: at the store's now, after a delay by it, or as given
            store_now = await backend.now()
            tasks = [
                TaskSpec(instance_id="fresh", task_id="at-once", name="t"),
                TaskSpec(instance_id="fresh", task_id="delayed", name="t", delay=TTL),
                TaskSpec(instance_id="fresh", task_id="past", name="t", run_after=store_now - TTL),
                TaskSpec(
                    instance_id="fresh", task_id="future", name="t", run_after=store_now + TTL
                ),
            ]
            for spec in tasks:
                assert await backend.add_task(spec)
            await assert_stamped_by_store(
                backend,
                (await backend.get_task("fresh", "at-once")).run_after,
                timedelta(0),
                before,
            )
            available = keys_of(await backend.find_available_tasks("w5", 10))
            assert sorted(k for k in available if k[0] == "fresh") == [
                ("fresh", "at-once"),
                ("fresh", "past"),
            ], "due times are not judged by the store's clock"
            assert await backend.claim_task("fresh", "future", "w5", TTL, due_only=True) is None
            assert await backend.claim_task("fresh", "past", "w5", TTL, due_only=True) is not None
