"""Crash injection: ``durable.testing.check_replay_safe`` crashes a workflow at every boundary of
every position (before, inside, after), resumes it, and passes a replay-safe workflow (async or
sync, with a sleep, a child workflow, steps returning random values when outputs are not
compared); it catches a workflow that branches on something outside its steps, and one whose
result depends on the time of the run, naming the position, the step and the boundary.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest

import durable
from durable.testing import ReplayUnsafeError, check_replay_safe, check_replay_safe_sync

CALLS: Counter[str] = Counter()
RUNS: list[int] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    RUNS.clear()


@durable.step(name="crash.reserve")
async def reserve(order: str) -> str:
    CALLS["reserve"] += 1
    return f"r-{order}"


@durable.step(name="crash.charge")
def charge(order: str, amount: int) -> dict[str, object]:
    CALLS["charge"] += 1
    return {"order": order, "amount": amount}


@durable.step(name="crash.token")
def token() -> str:
    return uuid.uuid4().hex


@durable.workflow(name="crash.child.v1")
async def child(order: str) -> str:
    return await reserve(order + "-child")


@durable.workflow(name="crash.checkout.v1")
async def checkout(order: str) -> dict[str, object]:
    reservation = await reserve(order)
    await durable.sleep(timedelta(hours=1))
    payment = await charge.aio(order, 4200)
    nested = await child(order)
    return {"reservation": reservation, "payment": payment, "child": nested}


@durable.workflow(name="crash.checkout_sync.v1")
def checkout_sync(order: str) -> list[object]:
    return [charge(order, 1), charge(order, 2)]


@durable.workflow(name="crash.tokens.v1")
async def tokens() -> str:
    return (await token.aio()) + (await token.aio())


@durable.workflow(name="crash.branches.v1")
async def branches(order: str) -> object:
    RUNS.append(1)
    if len(RUNS) % 2 == 0:  # stands for random.random() < 0.5: differs between runs
        await reserve(order)
    return await charge.aio(order, 1)


@durable.workflow(name="crash.stamped.v1")
async def stamped(order: str) -> object:
    payment = await charge.aio(order, 1)
    return {"payment": payment, "at": time.time_ns()}  # the time of the run, outside a step


async def test_a_replay_safe_workflow_passes_at_every_boundary() -> None:
    check = await check_replay_safe(checkout, "o-1")
    assert check.result == {
        "reservation": "r-o-1",
        "payment": {"order": "o-1", "amount": 4200},
        "child": "r-o-1-child",
    }
    # 4 positions (reserve, sleep, charge, child), each before, inside and after
    assert len(check.boundaries) == 12
    assert check.boundaries[:3] == [
        "0 crash.reserve before",
        "0 crash.reserve inside",
        "0 crash.reserve after",
    ]


def test_a_sync_workflow_from_a_sync_test() -> None:
    check = check_replay_safe_sync(checkout_sync, "o-2")
    assert check.result == [{"order": "o-2", "amount": 1}, {"order": "o-2", "amount": 2}]
    assert len(check.boundaries) == 6


async def test_random_step_outputs_need_compare_outputs_off() -> None:
    with pytest.raises(ReplayUnsafeError, match=r"crash\.token"):
        await check_replay_safe(tokens)
    check = await check_replay_safe(tokens, compare_outputs=False)
    assert len(check.boundaries) == 6


async def test_a_workflow_that_branches_outside_its_steps_is_caught() -> None:
    with pytest.raises(ReplayUnsafeError) as caught:
        await check_replay_safe(branches, "o-3")
    message = str(caught.value)
    assert "crash.branches.v1" in message
    assert "replay diverged" in message
    assert "position 0 ('crash.charge'), after it" in message or (
        "position 0 ('crash.reserve'), after it" in message
    )
    assert caught.value.problems and all(
        p.startswith("crash at position") for p in caught.value.problems
    )


async def test_a_result_that_depends_on_the_time_of_the_run_is_caught() -> None:
    with pytest.raises(ReplayUnsafeError) as caught:
        await check_replay_safe(stamped, "o-4")
    assert "the resumed run returned" in str(caught.value)
    assert isinstance(caught.value, AssertionError)  # pytest shows it as a failed check


@durable.workflow(name="crash.entity.v1")
async def entity(run: int) -> str:
    reserved = await reserve(f"o-{run}")
    if run < 2:
        durable.continue_as_new(run + 1)
    return reserved


@durable.workflow(name="crash.entity_branches.v1")
async def entity_branches(run: int) -> object:
    if run == 1:
        RUNS.append(1)
        if len(RUNS) % 2 == 0:  # differs between runs, in the second run only
            await reserve("extra")
    await charge.aio(f"o-{run}", run)
    if run < 2:
        durable.continue_as_new(run + 1)
    return run


async def test_a_workflow_that_continues_as_new_is_checked_run_by_run() -> None:
    """Each run starts again at position 0: the check compared the first run's steps, before
    its crash, with the last run's after it, and took the later runs' records of position 0
    for completed steps recorded again, so a deterministic entity was reported unsafe."""
    check = await check_replay_safe(entity, 0)
    assert check.result == "r-o-2" and check.boundaries
    with pytest.raises(ReplayUnsafeError):
        await check_replay_safe(entity_branches, 0)


@durable.workflow(name="crash.reminded")
async def reminded(order: str) -> str:
    await durable.start_timer("reminder", timedelta(days=1))
    decision = await durable.recv("decision", timeout=timedelta(days=3))
    await durable.cancel_timer("reminder")
    return f"{order}: {decision}"


async def test_a_timers_due_time_is_not_compared_across_runs() -> None:
    """A timer records when it fires, on the virtual clock, which each run moves on (here by
    the receive's timeout): the check took a deterministic workflow for one whose steps
    depend on the time of the run."""
    await check_replay_safe(reminded, "o-1")


async def test_the_sync_check_in_an_async_test_says_to_await_the_async_one() -> None:
    """It raised asyncio's own RuntimeError and left a never-awaited coroutine warning."""
    with pytest.raises(durable.DurableError, match=r"await durable\.testing\.check_replay_safe"):
        check_replay_safe_sync(entity, 0)


async def test_only_workflows_are_checked() -> None:
    with pytest.raises(durable.InvalidArgumentError, match="workflow"):
        await check_replay_safe(charge)  # type: ignore[arg-type]


@durable.workflow(name="crash.waits.v1")
async def waits_for_ever() -> object:
    return await durable.recv("never-sent")


async def test_a_workflow_that_never_finishes_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("durable.testing.crash.RUN_TIMEOUT", 0.3)
    with pytest.raises(durable.DurableError, match=r"did not finish within 0\.3 s"):
        await check_replay_safe(waits_for_ever)


@durable.transaction(name="tests.replay_check.tx")
def in_a_transaction(conn: object) -> int:
    return 1


@durable.workflow(name="tests.replay_check.transactional")
async def transactional() -> int:
    return await in_a_transaction.aio()


async def test_a_workflow_the_check_cannot_run_is_not_passed() -> None:
    """A transactional step cannot run on the check's in-memory backend: the reference run
    failed, nothing was recorded, and the check passed with nothing checked."""
    with pytest.raises(durable.DurableError, match=r"could not run .*checked nothing"):
        await check_replay_safe(transactional)


@durable.workflow(name="crash.fails_at_once.v1")
async def fails_at_once(order: str) -> object:
    raise ValueError(f"no such order {order}")


async def test_arguments_the_workflow_cannot_take_or_store_are_refused() -> None:
    """Missing or extra arguments, or ones that cannot be stored, are refused as a run would
    refuse them; and an uncrashed run that fails before any step (nothing to crash at) is not
    passed with nothing checked."""
    with pytest.raises(durable.InvalidArgumentError, match=r"cannot be called.*missing"):
        await check_replay_safe(checkout)
    with pytest.raises(durable.InvalidArgumentError, match="cannot be called"):
        await check_replay_safe(checkout, "o-1", "extra")
    with pytest.raises(durable.SerializationError):
        await check_replay_safe(checkout, {1, 2})
    with pytest.raises(durable.DurableError, match="failed before its first step") as failed:
        await check_replay_safe(fails_at_once, "o-9")
    assert isinstance(failed.value.__cause__, ValueError)
