"""Retry policies: the delay schedule and its cap, ``retry_on``, ``non_retryable``, argument
validation, and the retry loops of every kind of step (async steps, sync steps in sync
workflows, sync steps awaited with ``.aio()`` from async workflows).

Delays are long (minutes to hours) and the runtime sleeps on a fake clock (``Runtime(sleep=)``)
that only records them, so these tests are fast and a loop that slept for real would hang (and
be stopped by the timeout) instead of passing.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import durable
from durable.models import StepStatus
from durable.retry import NO_RETRY, RetryPolicy

pytestmark = pytest.mark.timeout(120)

calls: Counter[str] = Counter()
#: What each step raises, in order, before it succeeds: set by each test.
script: dict[str, list[BaseException]] = {}


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    script.clear()


def _next(name: str) -> str:
    """Count a call of step ``name``; raise the next scripted exception, else return "ok"."""
    calls[name] += 1
    if script.get(name):
        raise script[name].pop(0)
    return "ok"


class Transient(Exception):
    pass


class Fatal(Transient):
    """A subclass of a retried exception that is listed as non-retryable."""


# A policy whose uncapped schedule (60, 3600, 216000 s) overshoots the cap (600 s) from the
# second retry on.
CAPPED = {"max_attempts": 4, "initial_delay": 60.0, "backoff_rate": 60.0, "max_delay": 600.0}
CAPPED_DELAYS = [60.0, 600.0, 600.0]


@durable.step(name="tests.retry_policy.async_capped", **CAPPED)  # type: ignore[call-overload]
async def async_capped() -> str:
    return _next("async_capped")


@durable.step(name="tests.retry_policy.sync_capped", **CAPPED)  # type: ignore[call-overload]
def sync_capped() -> str:
    return _next("sync_capped")


@durable.step(
    name="tests.retry_policy.only_transient",
    max_attempts=5,
    initial_delay=3600.0,
    retry_on=(Transient,),
    non_retryable=(Fatal,),
)
async def only_transient() -> str:
    return _next("only_transient")


@durable.step(
    name="tests.retry_policy.sync_only_transient",
    max_attempts=5,
    initial_delay=3600.0,
    retry_on=(Transient,),
    non_retryable=(Fatal,),
)
def sync_only_transient() -> str:
    return _next("sync_only_transient")


@durable.workflow(name="tests.retry_policy.async.v1")
async def async_flow(which: str) -> str:
    if which == "async_capped":
        return await async_capped()
    if which == "sync_capped":
        return await sync_capped.aio()
    if which == "only_transient":
        return await only_transient()
    assert which == "sync_only_transient"
    return await sync_only_transient.aio()


@durable.workflow(name="tests.retry_policy.sync.v1")
def sync_flow(which: str) -> str:
    if which == "sync_capped":
        return sync_capped()
    assert which == "sync_only_transient"
    return sync_only_transient()


async def _run(url: str, workflow: Any, which: str) -> tuple[Any, list[float], StepStatus, int]:
    """Run ``workflow(which)`` on a fake clock: (its result or exception, the delays slept, the
    status and attempts recorded for its one step)."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async with durable.Runtime(durable.connect(url), recover=False, sleep=fake_sleep) as rt:
        outcome: Any
        try:
            outcome = await rt.run(workflow, which, workflow_id="wf")
        except Exception as exc:
            outcome = exc
        [record] = await rt.list_steps("wf")
    return outcome, slept, record.status, record.attempts


# -- the policy on its own -----------------------------------------------------------------------


def test_delays_grow_by_the_backoff_rate_up_to_the_cap() -> None:
    policy = RetryPolicy(**CAPPED)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [60.0, 600.0, 600.0, 600.0]
    assert [RetryPolicy(initial_delay=1.5, backoff_rate=2.0).delay(n) for n in (1, 2, 3)] == [
        1.5,
        3.0,
        6.0,
    ]


def test_should_retry_follows_retry_on_non_retryable_and_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=(Transient, OSError), non_retryable=(Fatal,))
    assert policy.should_retry(Transient(), 1)
    assert policy.should_retry(ConnectionError(), 2)  # a subclass of a retry_on class
    assert not policy.should_retry(Transient(), 3)  # the last attempt
    assert not policy.should_retry(ValueError(), 1)  # not in retry_on
    assert not policy.should_retry(Fatal(), 1)  # non_retryable wins over retry_on
    assert not policy.should_retry(durable.NonRetryableError("no"), 1)  # always final
    assert not NO_RETRY.should_retry(Transient(), 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"max_attempts": -3}, "max_attempts must be at least 1"),
        ({"initial_delay": -1.0}, "initial_delay must not be negative"),
        ({"max_delay": -0.5}, "max_delay must not be negative"),
        ({"backoff_rate": 0.5}, "backoff_rate must be at least 1"),
    ],
)
def test_bad_arguments_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(durable.InvalidArgumentError, match=message):
        RetryPolicy(**options)
    # The decorator refuses them too, when the step is defined (not when it first fails), with
    # or without retries asked for.
    for extra in ({"max_attempts": 2}, {}):
        with pytest.raises(durable.InvalidArgumentError, match=message):
            durable.step(name="tests.retry_policy.never_defined", **{**extra, **options})(
                lambda: None
            )


def test_edge_values_are_accepted() -> None:
    policy = RetryPolicy(max_attempts=1, initial_delay=0.0, backoff_rate=1.0, max_delay=0.0)
    assert policy.delay(5) == 0.0


# -- the retry loops, run by a runtime ---------------------------------------------------------


@pytest.mark.parametrize(
    ("workflow", "which"),
    [
        pytest.param(async_flow, "async_capped", id="async-step"),
        pytest.param(async_flow, "sync_capped", id="sync-step-aio"),
        pytest.param(sync_flow, "sync_capped", id="sync-step-in-sync-workflow"),
    ],
)
async def test_a_step_is_retried_on_the_capped_schedule(
    backend_url: str, workflow: Any, which: str
) -> None:
    script[which] = [Transient("1"), Transient("2"), Transient("3")]
    outcome, slept, status, attempts = await _run(backend_url, workflow, which)
    assert outcome == "ok"
    assert slept == CAPPED_DELAYS
    assert (status, attempts) == (StepStatus.SUCCEEDED, 4)
    assert calls[which] == 4


@pytest.mark.parametrize(
    ("workflow", "which"),
    [
        pytest.param(async_flow, "async_capped", id="async-step"),
        pytest.param(async_flow, "sync_capped", id="sync-step-aio"),
        pytest.param(sync_flow, "sync_capped", id="sync-step-in-sync-workflow"),
    ],
)
async def test_the_last_failure_is_recorded_after_max_attempts(
    sqlite_url: str, workflow: Any, which: str
) -> None:
    script[which] = [Transient(str(n)) for n in range(1, 6)]
    outcome, slept, status, attempts = await _run(sqlite_url, workflow, which)
    assert isinstance(outcome, Transient) and str(outcome) == "4"
    assert slept == CAPPED_DELAYS
    assert (status, attempts) == (StepStatus.FAILED, 4)
    assert calls[which] == 4


FLOWS = [
    pytest.param(async_flow, "only_transient", id="async-step"),
    pytest.param(async_flow, "sync_only_transient", id="sync-step-aio"),
    pytest.param(sync_flow, "sync_only_transient", id="sync-step-in-sync-workflow"),
]


@pytest.mark.parametrize(("workflow", "which"), FLOWS)
async def test_retry_on_retries_only_those_exceptions(
    backend_url: str, workflow: Any, which: str
) -> None:
    script[which] = [Transient("once"), ValueError("not transient")]
    outcome, slept, status, attempts = await _run(backend_url, workflow, which)
    assert isinstance(outcome, ValueError)
    assert slept == [3600.0]  # one retry, after the Transient; none after the ValueError
    assert (status, attempts) == (StepStatus.FAILED, 2)
    assert calls[which] == 2


@pytest.mark.parametrize(("workflow", "which"), FLOWS)
@pytest.mark.parametrize("error_type", [Fatal, durable.NonRetryableError], ids=["listed", "root"])
async def test_non_retryable_exceptions_fail_at_once(
    sqlite_url: str, workflow: Any, which: str, error_type: type[Exception]
) -> None:
    error = error_type("no retry")
    script[which] = [error]
    outcome, slept, status, attempts = await _run(sqlite_url, workflow, which)
    assert type(outcome) is type(error) and str(outcome) == str(error)
    assert slept == []
    assert (status, attempts) == (StepStatus.FAILED, 1)
    assert calls[which] == 1


@pytest.mark.parametrize(("workflow", "which"), FLOWS)
async def test_a_retried_step_is_not_run_again_on_replay(
    sqlite_url: str, workflow: Any, which: str
) -> None:
    script[which] = [Transient("once")]
    outcome, slept, status, attempts = await _run(sqlite_url, workflow, which)
    assert (outcome, slept, status, attempts) == ("ok", [3600.0], StepStatus.SUCCEEDED, 2)
    async with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        # Running the same workflow id again returns the recorded outcome; the step is not
        # called a third time.
        assert await rt.run(workflow, which, workflow_id="wf") == "ok"
    assert calls[which] == 2
