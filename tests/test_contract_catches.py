"""The contract suite catches what it once let through: each check runs here against a
deliberately bad backend (the in-memory backend with one flaw), and must fail, and against the
sound in-memory backend, and must pass (tests/test_contract.py runs it on every real backend).
The suite's own test methods are called, not copies of them."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from durable.backends.memory import InMemoryBackend
from durable.errors import BackendUnavailableError
from durable.models import WORKFLOW_TASK, StepRecord
from durable.testing.contract import ClockContract, ConcurrencyContract, StepContract

T = TypeVar("T")

# A clock of "the database's", which moving this host's clock does not move (time-machine moves
# the wall clock, not the monotonic one).
_ANCHOR = (datetime.now(UTC), time.monotonic())


def database_clock() -> datetime:
    return _ANCHOR[0] + timedelta(seconds=time.monotonic() - _ANCHOR[1])


class RewritesHistory(InMemoryBackend):
    """Reads and re-encodes the whole history at every step, as a backend keeping a workflow's
    steps in one document would: recording step k costs O(k)."""

    async def record_step(
        self, instance_id: str, step: StepRecord, *, worker_id: str, task_id: str = WORKFLOW_TASK
    ) -> None:
        for earlier in await self.list_steps(instance_id):
            self.serializer.dumps(earlier.output)
        await super().record_step(instance_id, step, worker_id=worker_id, task_id=task_id)


class HostLeases(InMemoryBackend):
    """Judges leases and due times by this host's clock, while ``now()`` reports the store's
    own clock (a database server's)."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: datetime.now(UTC))

    async def now(self) -> datetime:
        return database_clock()


class Crowded(InMemoryBackend):
    """Fails when more than LIMIT calls are in flight at once (a pool too small that does not
    queue, a lock that is not waited for)."""

    LIMIT = 50

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0

    async def _gate(self, call: Callable[[], Awaitable[T]]) -> T:
        self.in_flight += 1
        try:
            if self.in_flight > self.LIMIT:
                raise BackendUnavailableError(f"more than {self.LIMIT} calls in flight")
            await asyncio.sleep(0)
            return await call()
        finally:
            self.in_flight -= 1

    async def create_workflow(self, *args: Any, **kwargs: Any) -> Any:
        return await self._gate(functools.partial(super().create_workflow, *args, **kwargs))

    async def record_step(self, *args: Any, **kwargs: Any) -> None:
        await self._gate(functools.partial(super().record_step, *args, **kwargs))

    async def claim_task(self, *args: Any, **kwargs: Any) -> Any:
        return await self._gate(functools.partial(super().claim_task, *args, **kwargs))

    async def get_workflow(self, *args: Any, **kwargs: Any) -> Any:
        return await self._gate(functools.partial(super().get_workflow, *args, **kwargs))

    async def list_steps(self, *args: Any, **kwargs: Any) -> Any:
        return await self._gate(functools.partial(super().list_steps, *args, **kwargs))


# -- a. the cost of a step must not grow with the history ------------------------------------


async def test_a_step_cost_that_grows_with_the_history_fails() -> None:
    check = StepContract().test_recording_a_step_costs_the_same_at_any_history
    async with RewritesHistory() as bad:
        with pytest.raises(pytest.fail.Exception, match="must not grow with the history"):
            await check(bad)
    async with InMemoryBackend() as sound:
        await check(sound)


# -- b. leases follow the store's clock, not the host's --------------------------------------


async def test_leases_judged_by_the_hosts_clock_fail() -> None:
    check = ClockContract().test_leases_and_due_times_follow_the_stores_clock
    async with HostLeases() as bad:
        with pytest.raises(AssertionError, match="judged by the host's clock"):
            await check(bad)
    # sound: a store whose clock is the host's (moves with it), or its own (does not)
    for clock in (lambda: datetime.now(UTC), database_clock):
        async with InMemoryBackend(clock=clock) as sound:
            await check(sound)
        async with InMemoryBackend(clock=clock) as sound:
            await ClockContract().test_now_is_aware_utc_and_stamps_claims_and_due_times(sound)


async def test_a_now_that_is_not_the_lease_clock_fails() -> None:
    """The other way round: leases on the store's clock, but ``now()`` reads the host's."""

    class HostNow(InMemoryBackend):
        async def now(self) -> datetime:
            return datetime.now(UTC)

    async with HostNow(clock=database_clock) as bad:
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            await ClockContract().test_leases_and_due_times_follow_the_stores_clock(bad)


# -- c. 200 concurrent calls ----------------------------------------------------------------


async def test_a_backend_that_fails_under_200_concurrent_calls_fails() -> None:
    check = ConcurrencyContract().test_two_hundred_concurrent_calls
    async with Crowded() as bad:
        with pytest.raises(AssertionError, match="of 200 concurrent calls failed"):
            await check(bad)
    async with InMemoryBackend() as sound:
        await check(sound)
