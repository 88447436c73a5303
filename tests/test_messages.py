"""Messages in and timers by key: ``durable.send`` / ``recv`` (and ``_sync`` forms),
``Client.send`` / ``Runtime.send``, ``durable.start_timer`` / ``cancel_timer``.

* messages sent before the workflow waits, or before it started, are kept; a topic's messages are
  received in the order sent, each exactly once; the same idempotency key is stored once;
* a waiting workflow holds no claim and no slot, and is woken by the send (a worker that polls
  once an hour still receives at once), not woken by a send on another topic, nor is a sleeper;
* the step records: ``durable.recv`` pending with its topic and deadline, succeeded with the
  value; ``durable.send`` recorded (a retried attempt does not send again);
* ``recv`` timeouts, timers (fire, cancelled never fire, restarted replace), on every backend and
  on the memory backend's fake clock across 3 days / 1 day in milliseconds;
* sends to a missing or finished workflow, bad arguments, the wrong flavour: clear errors;
* worker processes SIGKILLed while a workflow waits, and right after a receive (before and after
  its commit), SQLite file and PostgreSQL: nothing lost, nothing received twice.
"""

from __future__ import annotations

import asyncio
import pickle
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import Processes, eventually, quick_runtime

import durable
from durable.context import Rescheduled
from durable.models import (
    CANCEL_TIMER_STEP,
    RECV_STEP,
    SEND_STEP,
    START_TIMER_STEP,
    WORKFLOW_TASK,
    StepStatus,
    WorkflowStatus,
)

REG = durable.Registry()
CALLS: Counter[str] = Counter()
FAIL_ONCE: set[str] = set()
WAIT = 60.0  # an upper bound for anything the tests wait for, never reached when green
PROG = Path(__file__).with_name("messageprog.py")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CALLS.clear()
    FAIL_ONCE.clear()
    yield


@durable.step(name="msg.note")
async def note(x: Any) -> Any:
    CALLS["note"] += 1
    if "note" in FAIL_ONCE:
        FAIL_ONCE.discard("note")
        raise RuntimeError("note fails once")
    return x


@durable.workflow(name="msg.inbox", registry=REG)
async def inbox(count: int, topic: str = "t") -> list[Any]:
    got = []
    for _ in range(count):
        got.append(await durable.recv(topic))
    return got


@durable.workflow(
    name="msg.replayed",
    registry=REG,
    retry=durable.RetryPolicy(max_attempts=2, initial_delay=0.01),
)
async def replayed() -> Any:
    return await note(await durable.recv("t"))


@durable.workflow(name="msg.timeout", registry=REG)
async def with_timeout(seconds: float) -> Any:
    return await durable.recv("t", timeout=seconds)


@durable.workflow(name="msg.days", registry=REG)
async def days() -> list[Any]:
    first = await durable.recv("decision", timeout=timedelta(days=3))
    await durable.start_timer("reminder", timedelta(days=1))
    second = await durable.recv("reminder")
    return [first, second]


@durable.workflow(
    name="msg.sender",
    registry=REG,
    retry=durable.RetryPolicy(max_attempts=2, initial_delay=0.01),
)
async def sender(target: str) -> str:
    await durable.send(target, "t", "hello")
    await note("after")
    return "sent"


RUNTIMES: list[durable.Runtime] = []


@durable.workflow(name="msg.runtime_sender", registry=REG)
async def runtime_sender(target: str) -> bool:
    return await RUNTIMES[0].send(target, "t", "via runtime")


@durable.workflow(name="msg.timers", registry=REG)
async def timers(mode: str) -> list[Any]:
    if mode == "fire":
        at = await durable.start_timer("ping", 0.05)
        return [at.isoformat(), await durable.recv("ping")]
    if mode == "cancel":
        await durable.start_timer("ping", 0.05)
        cancelled = await durable.cancel_timer("ping")
        again = await durable.cancel_timer("ping")
        return [cancelled, again, await durable.recv("ping", timeout=0.3)]
    # restart: the second start replaces the first, so the topic delivers once
    await durable.start_timer("ping", 3600, value="first")
    await durable.start_timer("ping", 0.05, value="second")
    return [await durable.recv("ping"), await durable.recv("ping", timeout=0.3)]


@durable.workflow(name="msg.sync", registry=REG)
def sync_flow(target: str) -> list[Any]:
    got = durable.recv_sync("t")
    durable.send_sync(target, "t", got)
    durable.start_timer_sync("tick", 0.01)
    return [got, durable.recv_sync("tick"), durable.cancel_timer_sync("tick")]


@durable.workflow(name="msg.sleeper", registry=REG)
async def sleeper() -> None:
    await durable.sleep(3600)


@durable.workflow(name="msg.quick", registry=REG)
async def quick(x: int) -> int:
    return int(await note(x))


@durable.workflow(name="msg.wrong.async", registry=REG)
async def wrong_async() -> None:
    durable.recv_sync("t")


@durable.workflow(name="msg.wrong.sync", registry=REG)
def wrong_sync() -> None:
    durable.recv("t")  # type: ignore[unused-coroutine]


@durable.workflow(name="msg.bad", registry=REG)
async def bad_argument(kind: str) -> None:
    await note(0)
    if kind == "topic":
        await durable.recv(7)  # type: ignore[arg-type]
    elif kind == "value":
        await durable.send("x", "t", object())
    else:
        await durable.recv("t", timeout=-1)


def runtime(
    backend: durable.PersistentBackend, executor_id: str = "receiver", *, recover: bool = True
) -> durable.Runtime:
    """A runtime for these tests (see :func:`support.quick_runtime` for ``recover``)."""
    return quick_runtime(backend, registry=REG, executor_id=executor_id, recover=recover)


async def waiting(rt: durable.Runtime | durable.Client, workflow_id: str, topic: str) -> bool:
    """The workflow waits on a pending receive on ``topic``, and nobody holds it."""
    steps = await rt.list_steps(workflow_id)
    info = await rt.get_workflow(workflow_id)
    return (
        info.status is WorkflowStatus.PENDING
        and bool(steps)
        and steps[-1].name == RECV_STEP
        and steps[-1].status is StepStatus.PENDING
        and steps[-1].input == topic
    )


# -- delivery ------------------------------------------------------------------------------


async def test_messages_sent_before_the_start_are_received_in_order(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with runtime(backend, recover=False) as rt:
        await rt.enqueue(inbox, 3, workflow_id="i-1", delay=3600)  # not started yet
        for value in ("a", "b", "c"):
            assert await rt.send("i-1", "t", value) is True
        await rt.send("i-1", "other", "x")
        assert await backend.claim_task("i-1", WORKFLOW_TASK, rt.executor_id, rt.claim_ttl)
        assert await rt.execute_claimed(inbox, "i-1") == ["a", "b", "c"]
        steps = await rt.list_steps("i-1")
        received = await rt.client.list_messages("i-1", received=True)
        left = await rt.client.list_messages("i-1", received=False)
    assert [(s.name, s.status, s.output) for s in steps] == [
        (RECV_STEP, StepStatus.SUCCEEDED, "a"),
        (RECV_STEP, StepStatus.SUCCEEDED, "b"),
        (RECV_STEP, StepStatus.SUCCEEDED, "c"),
    ]
    assert [(m.value, m.received_position) for m in received] == [("a", 0), ("b", 1), ("c", 2)]
    assert [(m.topic, m.value) for m in left] == [("other", "x")]


async def test_a_waiting_workflow_is_woken_by_the_send_not_by_polling(backend_url: str) -> None:
    """The worker polls once an hour: only the send's wake-up can make it receive."""
    async with runtime(durable.connect(backend_url)) as rt:
        worker = await rt.start_worker(concurrency=1, poll_interval=3600)
        workflow_id = await rt.enqueue(inbox, 2)
        await eventually(lambda: waiting(rt, workflow_id, "t"), "the workflow to wait")
        steps = await rt.list_steps(workflow_id)
        assert (steps[-1].input, steps[-1].output) == ("t", None)  # no deadline
        task = await rt.client.backend.get_task(workflow_id, WORKFLOW_TASK)
        assert (task.claimed_by, task.claim_expires_at) == (None, None)
        await eventually(_true_when(lambda: worker.running == 0), "the slot to be given back")
        await rt.send(workflow_id, "t", {"n": 1})
        await eventually(
            lambda: _step_count(rt, workflow_id, 2), "the first receive and the second wait"
        )
        await rt.send(workflow_id, "t", {"n": 2})
        assert await rt.result(workflow_id, timeout=WAIT) == [{"n": 1}, {"n": 2}]
        info = await rt.get_workflow(workflow_id)
    assert (info.attempts, info.interruptions) == (1, 0)  # waiting is no failed attempt


def _true_when(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def _step_count(rt: durable.Runtime, workflow_id: str, n: int) -> bool:
    """The workflow has ``n`` steps, the last pending, and was handed back (nobody runs it)."""
    steps = await rt.list_steps(workflow_id)
    info = await rt.get_workflow(workflow_id)
    return (
        len(steps) == n
        and steps[-1].status is StepStatus.PENDING
        and info.status is WorkflowStatus.PENDING
    )


async def test_idempotent_sends_are_stored_once(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(inbox, 2)
        assert await rt.send(workflow_id, "t", 1, idempotency_key="mail-1") is True
        assert await rt.send(workflow_id, "t", 1, idempotency_key="mail-1") is False
        assert await rt.send(workflow_id, "t", 99, idempotency_key="mail-1") is False
        assert await rt.send(workflow_id, "t", 2, idempotency_key="mail-2") is True
        assert await rt.result(workflow_id, timeout=WAIT) == [1, 2]
        # received, the key is still known: a late duplicate is not stored again
        assert await rt.send(workflow_id, "t", 1, idempotency_key="mail-1") is False
        messages = await rt.client.list_messages(workflow_id)
    assert [m.value for m in messages] == [1, 2]


async def test_a_send_inside_a_workflow_is_a_recorded_step(backend_url: str) -> None:
    """The step after the send fails once: the second attempt replays the send."""
    FAIL_ONCE.add("note")
    async with runtime(durable.connect(backend_url), recover=False) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        target = await rt.enqueue(inbox, 1, delay=3600)
        workflow_id = await rt.enqueue(sender, target)
        assert await rt.result(workflow_id, timeout=WAIT) == "sent"
        steps = await rt.list_steps(workflow_id)
        messages = await rt.client.list_messages(target)
        info = await rt.get_workflow(workflow_id)
    assert info.attempts == 2 and CALLS["note"] == 2
    assert [(s.name, s.status) for s in steps] == [
        (SEND_STEP, StepStatus.SUCCEEDED),
        ("msg.note", StepStatus.SUCCEEDED),
    ]
    assert [(m.topic, m.value) for m in messages] == [("t", "hello")]


async def test_a_replay_returns_the_recorded_message(backend_url: str) -> None:
    """The step after the receive fails once: the second attempt replays the receive (the same
    message) and takes no other."""
    FAIL_ONCE.add("note")
    async with runtime(durable.connect(backend_url), recover=False) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(replayed, delay=3600)
        await rt.send(workflow_id, "t", "first")
        await rt.send(workflow_id, "t", "second")
        backend = rt.client.backend
        assert await backend.claim_task(workflow_id, WORKFLOW_TASK, rt.executor_id, rt.claim_ttl)
        with pytest.raises(Rescheduled):  # the first attempt failed, the retry is scheduled
            await rt.execute_claimed(replayed, workflow_id)
        assert await rt.result(workflow_id, timeout=WAIT) == "first"
        left = await rt.client.list_messages(workflow_id, received=False)
        info = await rt.get_workflow(workflow_id)
    assert CALLS["note"] == 2 and info.attempts == 2
    assert [m.value for m in left] == ["second"]


async def test_runtime_send_inside_a_workflow_is_durable_send(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        RUNTIMES[:] = [rt]
        target = await rt.enqueue(inbox, 1, delay=3600)
        assert await rt.run(runtime_sender, target, workflow_id="rs-1") is True
        steps = await rt.list_steps("rs-1")
        messages = await rt.client.list_messages(target)
    RUNTIMES.clear()
    assert [(s.name, s.status) for s in steps] == [(SEND_STEP, StepStatus.SUCCEEDED)]
    assert [m.value for m in messages] == ["via runtime"]
    assert messages[0].idempotency_key == "durable.send:rs-1/0"  # derived: sender, position


async def test_sending_to_a_missing_or_finished_workflow_is_an_error(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        with pytest.raises(durable.WorkflowNotFoundError, match="nope"):
            await rt.send("nope", "t", 1)
        assert await rt.run(quick, 3, workflow_id="q-1") == 3
        with pytest.raises(durable.WorkflowFinishedError, match=r"q-1.*succeeded"):
            await rt.send("q-1", "t", 1)
        assert await rt.client.list_messages("q-1") == []
        # a workflow that sends there records the failure, as a step's
        with pytest.raises(durable.WorkflowNotFoundError):
            await rt.run(sender, "nope", workflow_id="s-1")
        steps = await rt.list_steps("s-1")
    assert [(s.name, s.status) for s in steps] == [(SEND_STEP, StepStatus.FAILED)]


async def test_sends_do_not_wake_sleepers_nor_waiters_on_other_topics(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with runtime(backend) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        napping = await rt.enqueue(sleeper)
        other = await rt.enqueue(inbox, 1, "b")
        await eventually(lambda: waiting(rt, other, "b"), "the receiver to wait")
        await eventually(lambda: _step_count(rt, napping, 1), "the sleeper to sleep")
        before = {w: (await backend.get_task(w, WORKFLOW_TASK)).run_after for w in (napping, other)}
        await rt.send(napping, "a", 1)
        await rt.send(other, "a", 1)
        after = {w: (await backend.get_task(w, WORKFLOW_TASK)).run_after for w in (napping, other)}
        assert after == before
        assert await waiting(rt, other, "b")
        await rt.send(other, "b", 2)
        assert await rt.result(other, timeout=WAIT) == [2]
        await rt.cancel(napping)


# -- timeouts and timers -------------------------------------------------------------------


async def test_a_receive_times_out_with_none(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(with_timeout, 0.05)
        assert await rt.result(workflow_id, timeout=WAIT) is None
        assert await rt.run(with_timeout, 0, workflow_id="z-1") is None
        steps = await rt.list_steps(workflow_id)
    assert [(s.name, s.status, s.output) for s in steps] == [
        (RECV_STEP, StepStatus.SUCCEEDED, None)
    ]


@pytest.mark.parametrize("mode", ["fire", "cancel", "restart"])
async def test_timers(backend_url: str, mode: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(timers, mode)
        result = await rt.result(workflow_id, timeout=WAIT)
        steps = await rt.list_steps(workflow_id)
        messages = await rt.client.list_messages(workflow_id)
    if mode == "fire":
        assert result[1] == "ping"  # the default value: the key
        assert [s.name for s in steps] == [START_TIMER_STEP, RECV_STEP]
        assert steps[0].output == result[0] and steps[0].input == "ping"
        assert [(m.timer, m.received_position) for m in messages] == [(True, 1)]
    elif mode == "cancel":
        assert result == [True, False, None]
        assert [(s.name, s.output) for s in steps[1:3]] == [
            (CANCEL_TIMER_STEP, True),
            (CANCEL_TIMER_STEP, False),
        ]
        assert messages == []
    else:
        assert result == ["second", None]
        assert [m.value for m in messages] == ["second"]


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_fake_clock_crosses_a_three_day_timeout_and_a_one_day_timer() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    t0 = clock.now
    backend = durable.InMemoryBackend(clock=clock)
    async with runtime(backend) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(days)
        await eventually(lambda: waiting(rt, workflow_id, "decision"), "the receive to wait")
        steps = await rt.list_steps(workflow_id)
        assert steps[-1].output == (t0 + timedelta(days=3)).isoformat()
        clock.now = t0 + timedelta(days=3) - timedelta(milliseconds=1)
        backend.notify_work()
        await asyncio.sleep(0.1)  # workers look many times: nothing is due yet
        assert await waiting(rt, workflow_id, "decision")
        clock.now = t0 + timedelta(days=3)
        backend.notify_work()
        await eventually(lambda: waiting(rt, workflow_id, "reminder"), "the timer's receive")
        task = await backend.get_task(workflow_id, WORKFLOW_TASK)
        assert task.run_after == t0 + timedelta(days=4)  # due when the timer fires
        clock.now = t0 + timedelta(days=4) - timedelta(milliseconds=1)
        backend.notify_work()
        await asyncio.sleep(0.1)
        assert await waiting(rt, workflow_id, "reminder")
        clock.now = t0 + timedelta(days=4)
        backend.notify_work()
        assert await rt.result(workflow_id, timeout=WAIT) == [None, "reminder"]
        steps = await rt.list_steps(workflow_id)
    assert [(s.name, s.output) for s in steps] == [
        (RECV_STEP, None),
        (START_TIMER_STEP, (t0 + timedelta(days=4)).isoformat()),
        (RECV_STEP, "reminder"),
    ]


async def test_a_sync_workflow_receives_sends_and_times(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        target = await rt.enqueue(inbox, 1, delay=3600)
        workflow_id = await rt.enqueue(sync_flow, target)
        await eventually(lambda: waiting(rt, workflow_id, "t"), "the sync workflow to wait")
        await rt.send(workflow_id, "t", "v")
        assert await rt.result(workflow_id, timeout=WAIT) == ["v", "tick", False]
        forwarded = await rt.client.list_messages(target)
    assert [m.value for m in forwarded] == ["v"]


# -- errors --------------------------------------------------------------------------------


async def test_the_wrong_flavour_and_outside_a_workflow_are_clear_errors() -> None:
    async with runtime(durable.InMemoryBackend()) as rt:
        with pytest.raises(durable.DurableError, match=r"await durable.recv\(...\)"):
            await rt.run(wrong_async)
        with pytest.raises(durable.DurableError, match=r"durable.recv_sync\(\)"):
            await rt.run(wrong_sync)
    with pytest.raises(durable.DurableError, match="outside a workflow"):
        durable.recv("t")  # type: ignore[unused-coroutine]
    with pytest.raises(durable.DurableError, match=r"client.send"):
        durable.send("w", "t", 1)  # type: ignore[unused-coroutine]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.send("w", 7, 1), "topic must be a str"),
        (lambda c: c.send("w", "", 1), "topic must not be empty"),
        (lambda c: c.send("w", "t", object()), "value cannot be stored"),
        (lambda c: c.send("", "t", 1), "workflow_id must not be empty"),
        (lambda c: c.send("w", "t", 1, idempotency_key=5), "idempotency_key must be a str"),
    ],
)
async def test_bad_arguments_to_a_send_name_the_argument(
    call: Callable[[durable.Client], Awaitable[Any]], match: str
) -> None:
    async with durable.Client(durable.InMemoryBackend()) as client:
        with pytest.raises(durable.InvalidArgumentError, match=match):
            await call(client)


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("topic", "topic must be a str"),
        ("value", "value cannot be stored"),
        ("timeout", "timeout must not be negative"),
    ],
)
async def test_bad_arguments_in_a_workflow_record_nothing(kind: str, match: str) -> None:
    async with runtime(durable.InMemoryBackend()) as rt:
        with pytest.raises(durable.InvalidArgumentError, match=match):
            await rt.run(bad_argument, kind, workflow_id="bad-1")
        steps = await rt.list_steps("bad-1")
    assert [s.name for s in steps] == ["msg.note"]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: durable.recv("t", timeout="soon"), "timeout must be a number"),
        (lambda: durable.recv("t", timeout=float("nan")), "timeout must be finite"),
        (lambda: durable.recv("", timeout=1), "topic must not be empty"),
        (lambda: durable.start_timer("k", "soon"), "delay must be a number"),
        (lambda: durable.start_timer(None, 1), "key must be a str"),
        (lambda: durable.cancel_timer(""), "key must not be empty"),
    ],
)
def test_bad_arguments_name_the_argument(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(durable.InvalidArgumentError, match=match):
        call()


# -- worker processes killed while a workflow waits, and at a receive --------------------------


@pytest.fixture
def workers(processes: Processes, tmp_path: Path) -> Callable[..., subprocess.Popen[bytes]]:
    def start(url: str, executor_id: str, kill_at: str = "none") -> subprocess.Popen[bytes]:
        return processes(
            PROG,
            *("serve", "--url", url, "--executor-id", executor_id),
            "--log",
            str(tmp_path / "effects.log"),
            "--kill-at",
            kill_at,
            "--marker",
            str(tmp_path / "kill.marker"),
            name=executor_id,
        )

    return start


def effects(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "effects.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def check_delivered_once(
    client: durable.Client, workflow_id: str, tmp_path: Path, values: list[str]
) -> None:
    """The workflow returned every value once, in order; each was handled (a side effect) once,
    received once, by one recorded receive."""
    assert await client.result(workflow_id, timeout=WAIT) == values
    handled = [line[2] for line in effects(tmp_path) if line[1] == "handle"]
    assert handled == values, f"side effects: {effects(tmp_path)}"
    assert [line[1] for line in effects(tmp_path)].count("before") == 1
    stored = await client.list_messages(workflow_id)
    assert [m.value for m in stored] == values
    steps = await client.list_steps(workflow_id)
    receives = [s for s in steps if s.name == RECV_STEP]
    assert [(s.status, s.output) for s in receives] == [(StepStatus.SUCCEEDED, v) for v in values]
    assert sorted(m.received_position for m in stored) == [s.position for s in receives]


@pytest.mark.slow
async def test_a_worker_killed_while_a_workflow_waits(
    db_url: str, tmp_path: Path, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """The worker dies while the workflow waits; the messages are sent while no worker runs;
    a new worker receives them, each once."""
    async with durable.Client(db_url) as client:
        first = workers(db_url, "worker-1")
        workflow_id = await client.enqueue("messageprog.mailbox.v1", 2)
        await eventually(lambda: waiting(client, workflow_id, "in"), "the workflow to wait")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=WAIT)
        assert await client.send(workflow_id, "in", "m1") is True
        assert await client.send(workflow_id, "in", "m2") is True
        workers(db_url, "worker-2")
        await check_delivered_once(client, workflow_id, tmp_path, ["m1", "m2"])
        info = await client.get_workflow(workflow_id)
    assert info.interruptions == 0  # it waited, handed back: no attempt was interrupted


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["commit", "received"])
async def test_a_worker_killed_at_a_receive(
    db_url: str, kill_at: str, tmp_path: Path, workers: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """``commit``: killed inside the receive's transaction, before it commits (the message is
    still there, the receive not recorded); ``received``: killed right after it committed (the
    replay returns the recorded message). Either way each message is handled once."""
    async with durable.Client(db_url) as client:
        first = workers(db_url, "worker-1", kill_at)
        workflow_id = await client.enqueue("messageprog.mailbox.v1", 2)
        await eventually(lambda: waiting(client, workflow_id, "in"), "the workflow to wait")
        await client.send(workflow_id, "in", "m1")
        await client.send(workflow_id, "in", "m2")
        assert first.wait(timeout=WAIT) == -signal.SIGKILL
        assert (tmp_path / "kill.marker").exists()
        steps = await client.list_steps(workflow_id)
        recorded = [s.output for s in steps if s.name == RECV_STEP]
        stored = await client.list_messages(workflow_id, received=True)
        if kill_at == "commit":  # the transaction was lost with the process
            assert (recorded, stored) == ([None], [])
        else:
            assert recorded == ["m1"] and [m.value for m in stored] == ["m1"]
        workers(db_url, "worker-2")
        await check_delivered_once(client, workflow_id, tmp_path, ["m1", "m2"])


def test_workflow_finished_error_survives_pickling() -> None:
    error = durable.WorkflowFinishedError("wf-1", "succeeded")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.__dict__) == (type(error), str(error), error.__dict__)
    assert isinstance(error, durable.errors.ConflictError)
    assert error.workflow_id == "wf-1" and error.status == "succeeded"
