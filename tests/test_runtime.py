"""The runtime's behaviour on every backend: replay, determinism, children, gather, retries,
sync and async paths, inspection, and bad input."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import durable
from durable.models import WORKFLOW_TASK, StepRecord, StepStatus, WorkflowStatus

calls: Counter[str] = Counter()
gate = asyncio.Event()  # wait_gate() blocks until it is set
entered = asyncio.Event()  # set when wait_gate() starts


class PaymentDeclined(Exception):
    def __init__(self, order: str, reason: str) -> None:
        super().__init__(order, reason)
        self.order = order
        self.reason = reason


@pytest.fixture(autouse=True)
async def _reset() -> None:
    global gate, entered
    calls.clear()
    gate, entered = asyncio.Event(), asyncio.Event()  # bound to this test's event loop


@durable.step
async def add(a: int, b: int) -> int:
    calls["add"] += 1
    return a + b


@durable.step
def mul(a: int, b: int) -> int:
    calls["mul"] += 1
    return a * b


@durable.step
async def echo(value: Any) -> Any:
    calls["echo"] += 1
    return value


@durable.step
async def decline(order: str) -> str:
    calls["decline"] += 1
    raise PaymentDeclined(order, "insufficient funds")


@durable.step
async def wait_gate() -> str:
    calls["wait_gate"] += 1
    entered.set()
    await gate.wait()
    return "opened"


@durable.workflow(name="tests.arith.v1")
async def arith(x: int) -> dict[str, Any]:
    s = await add(x, 1)
    m = await mul.aio(s, 2)
    return {"s": s, "m": m, "t": await echo((1, 2))}


@durable.workflow(name="tests.fanin.v1")
async def fanin(n: int) -> list[int]:
    return list(await asyncio.gather(*(add(i, i) for i in range(n))))


@durable.workflow(name="tests.child.v1")
async def child(x: int) -> int:
    return await add(x, 100)


@durable.workflow(name="tests.parent.v1")
async def parent(x: int) -> int:
    first = await child(x)
    second, third = await asyncio.gather(child(x + 1), child(x + 2))
    return first + second + third


@durable.workflow(name="tests.sync.v1")
def sync_flow(x: int) -> int:
    return mul(x, 3) + mul(x, 4)


@durable.workflow(name="tests.sync_parent.v1")
def sync_parent(x: int) -> int:
    return sync_flow(x) + sync_flow(x + 1)


@durable.workflow(name="tests.handled.v1")
async def handled(order: str) -> str:
    try:
        await decline(order)
    except PaymentDeclined as exc:
        outcome = f"declined:{exc.reason}"
    return outcome + ":" + await wait_gate()


class CardDeclined(Exception):
    """Its constructor takes other arguments than its ``args`` (as SQLAlchemy's errors do):
    ``CardDeclined(*args)`` cannot rebuild it."""

    def __init__(self, order: str, code: int) -> None:
        super().__init__(f"order {order} declined with code {code}")
        self.order = order
        self.code = code


@durable.step
async def decline_card(order: str) -> str:
    calls["decline_card"] += 1
    raise CardDeclined(order, 51)


@durable.workflow(name="tests.handled_card.v1")
async def handled_card(order: str) -> str:
    try:
        await decline_card(order)
    except CardDeclined as exc:
        outcome = f"declined:{exc.order}:{exc.code}"
    return outcome + ":" + await wait_gate()


@durable.step
async def fail_as_a_group(order: str) -> str:
    calls["fail_as_a_group"] += 1
    raise ExceptionGroup(f"{order} failed", [ValueError("a"), TypeError("b")])


@durable.workflow(name="tests.handled_group.v1")
async def handled_group(order: str) -> str:
    outcome = "not caught"
    try:
        await fail_as_a_group(order)
    except* (ValueError, TypeError) as group:
        outcome = f"handled:{group.message}:{len(group.exceptions)}"
    return outcome + ":" + await wait_gate()


@durable.workflow(name="tests.unhandled.v1")
async def unhandled(order: str) -> str:
    return await decline(order)


async def test_run_records_every_step_and_returns_the_result(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        result = await rt.run(arith, 5, workflow_id="a-1")
        assert result == {"s": 6, "m": 12, "t": [1, 2]}
        info = await rt.get_workflow("a-1")
        assert info.status is WorkflowStatus.SUCCEEDED
        assert info.output == result
        assert info.input == {"args": [5], "kwargs": {}}
        assert info.executor_id == rt.executor_id
        assert info.started_at is not None and info.completed_at is not None
        steps = await rt.list_steps("a-1")
        assert [(s.position, s.name, s.status, s.output) for s in steps] == [
            (0, add.name, StepStatus.SUCCEEDED, 6),
            (1, mul.name, StepStatus.SUCCEEDED, 12),
            (2, echo.name, StepStatus.SUCCEEDED, [1, 2]),
        ]
        assert all(s.executor_id == rt.executor_id and s.attempts == 1 for s in steps)
        assert all(
            s.started_at and s.completed_at and s.started_at <= s.completed_at for s in steps
        )


async def test_a_succeeded_id_returns_the_stored_result_without_running(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        first = await rt.run(arith, 1, workflow_id="same")
        before = dict(calls)
        assert await rt.run(arith, 1, workflow_id="same") == first
        assert dict(calls) == before


async def test_gather_gets_deterministic_positions(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        assert await rt.run(fanin, 6, workflow_id="g") == [0, 2, 4, 6, 8, 10]
        steps = await rt.list_steps("g")
        assert [s.output for s in steps] == [0, 2, 4, 6, 8, 10]  # position i holds call i


async def _branch(first: int, second: int) -> list[int]:
    """A branch of two steps; the pause lets the other branch run between them, as a write
    that yields does (every backend then interleaves the same way)."""
    one = await add(first, 0)
    await asyncio.sleep(0)
    return [one, await add(second, 0)]


@durable.workflow(name="tests.branches.v1")
async def branches() -> list[list[int]]:
    return list(await asyncio.gather(_branch(1, 2), _branch(3, 4)))


@durable.workflow(name="tests.gathered_then_waits.v1")
async def gathered_then_waits() -> list[Any]:
    return [await asyncio.gather(add(1, 0), add(2, 0)), await durable.recv("go")]


async def test_interleaved_branches_of_steps_fail_at_once_and_gathered_steps_replay(
    backend_url: str,
) -> None:
    """Branches of several steps each, gathered, take positions in the order their writes end,
    which a replay does not follow (it diverged at the first replay, or gave a step another
    call's result): refused where it happens, the first time. Steps gathered themselves take
    their positions in order, and replay."""
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        with pytest.raises(durable.NonDeterminismError, match="branches interleave") as seen:
            await rt.run(branches, workflow_id="br")
        # the first branch's second step, or the other branch's (when a loaded SQLite runner
        # let the loop turn elsewhere): refused at the first step that interleaves, either way
        assert re.search(r"step 'test_runtime:add' \(position [23]\)", str(seen.value))
        info = await rt.get_workflow("br")
        assert info.status is WorkflowStatus.FAILED and info.attempts == 1  # not retried
        await rt.start_worker(poll_interval=0.01)
        wid = await rt.enqueue(gathered_then_waits, workflow_id="gw")
        with pytest.raises(TimeoutError):  # suspended, waiting for its message
            await rt.result(wid, timeout=0.5)
        await rt.send(wid, "go", "m")
        assert await rt.result(wid, timeout=30) == [[1, 2], "m"]  # replayed the gather


async def test_child_workflows_have_deterministic_ids_and_parent(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        assert await rt.run(parent, 1, workflow_id="p") == 101 + 102 + 103
        steps = await rt.list_steps("p")
        assert [s.child_workflow_id for s in steps] == ["p/0", "p/1", "p/2"]
        assert [s.output for s in steps] == [101, 102, 103]
        children = await rt.list_workflows(parent_id="p")
        assert sorted(c.id for c in children) == ["p/0", "p/1", "p/2"]
        assert all(c.status is WorkflowStatus.SUCCEEDED and c.name == child.name for c in children)
        assert calls["add"] == 3


async def test_sync_workflows_and_sync_children(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        assert await rt.run(sync_flow, 2, workflow_id="s") == 14
        assert await rt.run(sync_parent, 1, workflow_id="sp") == 7 + 14
        assert [s.child_workflow_id for s in await rt.list_steps("sp")] == ["sp/0", "sp/1"]


def test_blocking_api_from_plain_sync_code(sqlite_url: str) -> None:
    with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        assert rt.run_sync(sync_flow, 5, workflow_id="plain") == 35
        assert rt.run_sync("tests.sync.v1", 5, workflow_id="plain") == 35  # by name, stored
        assert calls["mul"] == 2
        # from another thread too (a web server's worker thread)
        out: list[int] = []
        t = threading.Thread(target=lambda: out.append(rt.run_sync(arith, 1)["m"]))
        t.start()
        t.join()
        assert out == [4]


async def _stopped_mid_run(
    rt: durable.Runtime, wf: durable.Workflow[Any, Any], arg: str, workflow_id: str
) -> None:
    """Run ``wf(arg)`` until it sets ``entered`` (its failure is recorded by then), then stop it
    as a process stops mid-workflow (its lease is released)."""
    run = asyncio.create_task(rt.run(wf, arg, workflow_id=workflow_id))
    await entered.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def test_a_step_failure_is_recorded_and_rebuilt_on_replay(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        await _stopped_mid_run(rt, handled, "o-9", "h")
        steps = await rt.list_steps("h")
        assert len(steps) == 1 and steps[0].status is StepStatus.FAILED
        assert steps[0].error is not None
        assert steps[0].error.type == f"{__name__}.PaymentDeclined"
        assert "insufficient funds" in steps[0].error.message
        assert "Traceback" in (steps[0].error.traceback or "")
        gate.set()
        assert await rt.run(handled, "o-9", workflow_id="h") == "declined:insufficient funds:opened"
        assert calls["decline"] == 1  # replayed: the recorded exception was raised again


async def test_a_caught_failure_takes_the_same_path_on_replay_whatever_its_constructor(
    backend_url: str,
) -> None:
    """An exception that its ``args`` cannot rebuild came back as a StepError in a replay, so
    the workflow's ``except CardDeclined`` no longer matched and the replay failed."""
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        await _stopped_mid_run(rt, handled_card, "o-7", "hc")
        (step,) = await rt.list_steps("hc")
        assert step.error is not None and step.error.attrs == {"order": "o-7", "code": 51}
        gate.set()
        assert await rt.run(handled_card, "o-7", workflow_id="hc") == "declined:o-7:51:opened"
        assert calls["decline_card"] == 1  # replayed, not run again


def test_a_recorded_exception_is_rebuilt_as_its_own_class() -> None:
    from durable.errors import ErrorInfo, StepError, rebuild_exception

    declined = rebuild_exception(ErrorInfo.from_exception(CardDeclined("o-1", 5)))
    assert type(declined) is CardDeclined
    assert (declined.order, declined.code) == ("o-1", 5)
    assert str(declined) == "order o-1 declined with code 5"
    stored = ErrorInfo.from_json(ErrorInfo.from_exception(CardDeclined("o-2", 6)).to_json())
    assert rebuild_exception(stored).code == 6  # type: ignore[attr-defined]
    old = ErrorInfo(type=f"{__name__}.CardDeclined", message="order o-3 declined with code 7")
    assert type(rebuild_exception(old)) is CardDeclined  # a record from before attrs
    gone = ErrorInfo(type="no_such_module.Gone", message="m", args=("m",))
    assert isinstance(rebuild_exception(gone), StepError)


async def test_a_caught_exception_group_takes_the_same_path_on_replay(backend_url: str) -> None:
    """A step's ExceptionGroup that the workflow handled with ``except*`` came back as a
    StepError in a replay (its args are not JSON), so ``except*`` no longer matched and the
    replay failed. The group is recorded with its exceptions and rebuilt as the group."""
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        await _stopped_mid_run(rt, handled_group, "o-5", "hg")
        gate.set()
        assert await rt.run(handled_group, "o-5", workflow_id="hg") == "handled:o-5 failed:2:opened"
        assert calls["fail_as_a_group"] == 1  # replayed, not run again
        step = (await rt.list_steps("hg"))[0]
        assert step.error is not None and step.error.exceptions is not None
        assert [e.type for e in step.error.exceptions] == [
            "builtins.ValueError",
            "builtins.TypeError",
        ]


def _as_replayed(exc: BaseException) -> BaseException:
    """``exc`` raised, recorded, stored as text and rebuilt, as a replay sees it."""
    from durable.errors import ErrorInfo, rebuild_exception

    try:
        raise exc
    except BaseException as raised:
        info = ErrorInfo.from_exception(raised)
    assert ErrorInfo.from_json(info.to_json()) == info
    return rebuild_exception(ErrorInfo.from_json(info.to_json()))


def _chained() -> ValueError:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner
    except ValueError as outer:
        return outer


def test_a_rebuilt_exception_keeps_its_group_cause_and_message() -> None:
    """What a handler reads of a caught exception, it reads again on replay: a group's
    exceptions (nested groups too, a BaseExceptionGroup's), the ``__cause__`` of ``raise ...
    from``, an OSError's filename (outside its args: its message lost it) and a
    UnicodeDecodeError's fields (bytes in its args: it rebuilt with an empty message)."""
    group = _as_replayed(
        ExceptionGroup("grp", [ValueError("a"), ExceptionGroup("inner", [KeyError("k")])])
    )
    assert type(group) is ExceptionGroup and group.message == "grp"
    assert repr(group.exceptions) == repr(
        (ValueError("a"), ExceptionGroup("inner", [KeyError("k")]))
    )
    base = _as_replayed(BaseExceptionGroup("bgrp", [KeyboardInterrupt("kb"), ValueError("v")]))
    assert type(base) is BaseExceptionGroup
    assert [type(e) for e in base.exceptions] == [KeyboardInterrupt, ValueError]

    chained = _as_replayed(_chained())
    assert type(chained) is ValueError and repr(chained.__cause__) == "KeyError('inner')"
    assert chained.__suppress_context__

    missing = _as_replayed(FileNotFoundError(2, "No such file", "/x/y"))
    assert type(missing) is FileNotFoundError and missing.filename == "/x/y"
    assert str(missing) == "[Errno 2] No such file: '/x/y'"

    undecodable = _as_replayed(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    assert type(undecodable) is UnicodeDecodeError
    assert (undecodable.object, undecodable.reason) == (b"\xff", "invalid start byte")
    assert str(undecodable) == str(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))


async def test_reading_a_recorded_error_imports_no_module(
    sqlite_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rebuild_exception imported the module a stored error's type named, so a client reading
    a result ran the import-time code of whatever module a row named. Only classes of modules
    already imported are rebuilt; any other stands as a StepError (WorkflowFailedError from
    result())."""
    import sqlite3
    import sys

    from durable.errors import ErrorInfo, StepError, rebuild_exception

    ran = tmp_path / "imported"  # the module's import-time code writes it
    (tmp_path / "durable_sidefx_mod.py").write_text(
        f"open({str(ran)!r}, 'w').close()\nclass Anything(Exception):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "durable_sidefx_mod", raising=False)
    async with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        with pytest.raises(PaymentDeclined):
            await rt.run(unhandled, "o-1", workflow_id="sidefx")
    path = sqlite_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        (text,) = db.execute("select error from durable_workflows where id='sidefx'").fetchone()
        info = ErrorInfo.from_json(text)
        forged = ErrorInfo(type="durable_sidefx_mod.Anything", message=info.message)
        db.execute("update durable_workflows set error=? where id='sidefx'", (forged.to_json(),))
        db.commit()
    async with durable.Client(sqlite_url) as client:
        with pytest.raises(durable.WorkflowFailedError, match=r"durable_sidefx_mod\.Anything"):
            await client.result("sidefx")
    assert isinstance(rebuild_exception(forged), StepError)
    assert "durable_sidefx_mod" not in sys.modules and not ran.exists()
    import durable_sidefx_mod  # type: ignore[import-not-found]  # once imported, it is found

    assert type(rebuild_exception(forged)) is durable_sidefx_mod.Anything
    del sys.modules["durable_sidefx_mod"]


async def test_an_unhandled_step_failure_fails_the_workflow(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        with pytest.raises(PaymentDeclined):
            await rt.run(unhandled, "o-1", workflow_id="u")
        info = await rt.get_workflow("u")
        assert info.status is WorkflowStatus.FAILED
        assert info.error is not None and info.error.type.endswith("PaymentDeclined")
        # asking again does not run anything: the stored error is rebuilt
        with pytest.raises(PaymentDeclined) as caught:
            await rt.run(unhandled, "o-1", workflow_id="u")
        assert caught.value.reason == "insufficient funds"
        assert calls["decline"] == 1


async def test_replay_that_diverges_fails_with_non_determinism(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, recover=False, executor_id="ex") as rt:
        # an execution in flight whose history says another step ran at position 0
        snapshot = durable.WorkflowSnapshot(
            id="nd", name=arith.name, input={"args": [1], "kwargs": {}}
        )
        await backend.create_workflow(
            snapshot, task=durable.TaskSpec(instance_id="nd", name=arith.name)
        )
        await backend.claim_task("nd", WORKFLOW_TASK, "old", timedelta(seconds=30))
        await backend.begin_execution("nd", "old")
        await backend.record_step(
            "nd", StepRecord(position=0, name="some.other.step", output=1), worker_id="old"
        )
        await backend.release_task_claim("nd", WORKFLOW_TASK, "old")

        with pytest.raises(durable.NonDeterminismError, match=r"some\.other\.step"):
            await rt.run(arith, 1, workflow_id="nd")
        info = await rt.get_workflow("nd")
        assert info.status is WorkflowStatus.FAILED
        assert info.error is not None and info.error.type.endswith("NonDeterminismError")
        assert calls["add"] == 0  # nothing ran on the wrong history
        assert len(await rt.list_steps("nd")) == 1


async def test_enqueued_replay_that_diverges_fails_at_once_without_retries(
    backend_url: str,
) -> None:
    """An execution with retries left (as enqueue makes it) is not retried on divergence:
    another attempt would replay the same history against the same code."""
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, recover=False, executor_id="ex") as rt:
        snapshot = durable.WorkflowSnapshot(
            id="nd-q", name=arith.name, input={"args": [1], "kwargs": {}}, max_attempts=5
        )
        await backend.create_workflow(
            snapshot, task=durable.TaskSpec(instance_id="nd-q", name=arith.name)
        )
        await backend.claim_task("nd-q", WORKFLOW_TASK, "old", timedelta(seconds=30))
        await backend.begin_execution("nd-q", "old")
        await backend.record_step(
            "nd-q", StepRecord(position=0, name="some.other.step", output=1), worker_id="old"
        )
        await backend.release_task_claim("nd-q", WORKFLOW_TASK, "old")

        with pytest.raises(durable.NonDeterminismError, match=r"some\.other\.step"):
            await rt.run(arith, 1, workflow_id="nd-q")
        info = await rt.get_workflow("nd-q")
        assert info.status is WorkflowStatus.FAILED
        assert info.attempts == 1
        with pytest.raises(durable.errors.TaskNotFoundError):  # nothing left to retry
            await backend.get_task("nd-q", WORKFLOW_TASK)
        assert calls["add"] == 0


async def test_swallowing_the_non_determinism_error_does_not_help(sqlite_url: str) -> None:
    @durable.workflow(name="tests.swallow.v1")
    async def swallow() -> str:
        with contextlib.suppress(durable.NonDeterminismError):
            await add(1, 1)
        return await echo("went on")

    backend = durable.connect(sqlite_url)
    async with durable.Runtime(backend, recover=False) as rt:
        await backend.create_workflow(
            durable.WorkflowSnapshot(id="sw", name=swallow.name, input={"args": [], "kwargs": {}}),
            task=durable.TaskSpec(instance_id="sw", name=swallow.name),
        )
        await backend.claim_task("sw", WORKFLOW_TASK, "old", timedelta(seconds=30))
        await backend.record_step("sw", StepRecord(position=0, name="renamed"), worker_id="old")
        await backend.release_task_claim("sw", WORKFLOW_TASK, "old")
        with pytest.raises(durable.NonDeterminismError):
            await rt.run(swallow, workflow_id="sw")
        assert calls["echo"] == 0
        assert (await rt.get_workflow("sw")).status is WorkflowStatus.FAILED


async def test_history_longer_than_the_replay_is_divergence(sqlite_url: str) -> None:
    backend = durable.connect(sqlite_url)
    async with durable.Runtime(backend, recover=False) as rt:
        await backend.create_workflow(
            durable.WorkflowSnapshot(id="ln", name=child.name, input={"args": [1], "kwargs": {}}),
            task=durable.TaskSpec(instance_id="ln", name=child.name),
        )
        await backend.claim_task("ln", WORKFLOW_TASK, "old", timedelta(seconds=30))
        await backend.record_step(
            "ln", StepRecord(position=0, name=add.name, output=101), worker_id="old"
        )
        await backend.record_step(
            "ln", StepRecord(position=1, name=add.name, output=5), worker_id="old"
        )
        await backend.release_task_claim("ln", WORKFLOW_TASK, "old")
        with pytest.raises(durable.NonDeterminismError, match="position 1"):
            await rt.run(child, 1, workflow_id="ln")


async def test_retries_with_backoff_and_non_retryable_errors(sqlite_url: str) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    @durable.step(max_attempts=4, initial_delay=2.0, backoff_rate=3.0)
    async def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionError("try again")
        return "ok"

    @durable.step(max_attempts=5)
    async def fatal() -> str:
        calls["fatal"] += 1
        raise durable.NonRetryableError("card stolen")

    @durable.workflow(name="tests.retry.v1")
    async def retrying() -> str:
        first = await flaky()
        try:
            await fatal()
        except durable.NonRetryableError:
            return first + ":gave up"
        return first

    async with durable.Runtime(durable.connect(sqlite_url), recover=False, sleep=fake_sleep) as rt:
        assert await rt.run(retrying, workflow_id="r") == "ok:gave up"
        assert slept == [2.0, 6.0]
        steps = await rt.list_steps("r")
        assert [(s.status, s.attempts) for s in steps] == [
            (StepStatus.SUCCEEDED, 3),
            (StepStatus.FAILED, 1),
        ]
        assert calls["fatal"] == 1


async def test_run_step_primitive_and_step_guard(backend_url: str) -> None:
    @durable.workflow(name="tests.dynamic.v1")
    async def dynamic(items: list[str]) -> list[str]:
        out = [await durable.run_step(f"upper:{item}", str.upper, item) for item in items]
        guard = durable.step_guard("manual")
        async with guard:
            if not guard.replayed:
                calls["manual"] += 1
                guard.result = {"n": len(out)}
        return [*out, str(guard.result["n"])]

    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        assert await rt.run(dynamic, ["a", "b"], workflow_id="dyn") == ["A", "B", "2"]
        steps = await rt.list_steps("dyn")
        assert [s.name for s in steps] == ["upper:a", "upper:b", "manual"]
        assert steps[2].output == {"n": 2}
        assert calls["manual"] == 1


async def test_steps_outside_workflows_are_plain_calls() -> None:
    assert await add(1, 2) == 3
    assert mul(2, 3) == 6
    assert await mul.aio(2, 4) == 8
    assert sync_flow(1) == 7  # a workflow called outside a runtime is a plain call too
    assert await durable.run_step("x", str.upper, "q") == "Q"


async def test_bad_input_is_refused_before_anything_is_written(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, recover=False) as rt:
        with pytest.raises(durable.SerializationError, match=r"arguments of workflow .*set"):
            await rt.run(echo_workflow, {1, 2}, workflow_id="bad-arg")
        with pytest.raises(durable.WorkflowNotFoundError):
            await rt.get_workflow("bad-arg")

        with pytest.raises(durable.InvalidArgumentError, match="not a durable workflow"):
            await rt.run(not_decorated, workflow_id="nd")  # type: ignore[arg-type]
        with pytest.raises(durable.UnknownWorkflowError, match=r"no\.such\.workflow"):
            await rt.run("no.such.workflow")
        with pytest.raises(durable.WorkflowNotFoundError):
            await rt.result("missing-id", timeout=1)

        await rt.run(arith, 1, workflow_id="taken")
        with pytest.raises(durable.InvalidArgumentError, match="belongs to workflow"):
            await rt.run(child, 1, workflow_id="taken")
        assert (await rt.get_workflow("taken")).output == {"s": 2, "m": 4, "t": [1, 2]}


async def test_unserializable_step_result_fails_naming_step_and_type(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        with pytest.raises(durable.SerializationError, match=r"step .*echo.*position 1.*set"):
            await rt.run(echo_workflow, [1], workflow_id="bad-out")
        steps = await rt.list_steps("bad-out")
        assert [s.status for s in steps] == [StepStatus.SUCCEEDED, StepStatus.FAILED]
        assert steps[1].error is not None and steps[1].error.type.endswith("SerializationError")
        info = await rt.get_workflow("bad-out")
        assert info.status is WorkflowStatus.FAILED


@durable.workflow(name="tests.echo_set.v1")
async def echo_workflow(value: Any) -> Any:
    await echo(value)
    return await echo({1, 2, 3})


async def not_decorated() -> None:
    return None


async def test_a_sync_step_called_directly_in_async_workflow_is_a_clear_error(
    sqlite_url: str,
) -> None:
    @durable.workflow(name="tests.misuse.v1")
    async def misuse() -> int:
        return mul(1, 2)

    async with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        with pytest.raises(durable.DurableError, match=r"await mul\.aio"):
            await rt.run(misuse, workflow_id="m")


async def test_cancel_stops_at_the_next_step_boundary(backend_url: str) -> None:

    @durable.workflow(name="tests.cancel.v1")
    async def cancellable() -> str:
        await wait_gate()
        return await echo("after")

    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        run = asyncio.create_task(rt.run(cancellable, workflow_id="c"))
        await entered.wait()
        info = await rt.cancel("c")
        assert info.status is WorkflowStatus.CANCELLED
        gate.set()
        with pytest.raises(durable.WorkflowCancelledError):
            await run
        assert calls["echo"] == 0
        assert await rt.list_steps("c") == []  # the step finishing after the cancel was refused
        with pytest.raises(durable.WorkflowCancelledError):
            await rt.run(cancellable, workflow_id="c")


sync_gate = threading.Event()  # held_sync() returns once it is set
sync_entered = threading.Event()  # set each time held_sync() starts


@durable.step(name="tests.held_sync")
def held_sync() -> str:
    calls["held_sync"] += 1
    sync_entered.set()
    sync_gate.wait(30)
    return "held"


@durable.step(name="tests.after_held")
def after_held(value: str) -> str:
    calls["after_held"] += 1
    return f"{value}, then after"


@durable.workflow(name="tests.cancelled_sync.v1")
def cancelled_sync() -> str:
    return after_held(held_sync())


async def test_a_sync_body_whose_run_was_cancelled_records_nothing_more(backend_url: str) -> None:
    """``run()`` cancelled (``asyncio.wait_for``, a request given up) while a sync workflow's
    step runs in its thread: the thread cannot be stopped, but it records nothing more and runs
    no further step; the same id run again finishes (it ran the later steps itself, and the
    run again failed with ``ClaimLostError``)."""
    sync_gate.clear()
    sync_entered.clear()
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        first = asyncio.create_task(rt.run(cancelled_sync, workflow_id="cs"))
        assert await asyncio.to_thread(sync_entered.wait, 30)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        sync_entered.clear()
        again = asyncio.create_task(rt.run(cancelled_sync, workflow_id="cs"))
        assert await asyncio.to_thread(sync_entered.wait, 30)  # the step runs again
        sync_gate.set()  # both threads' step returns now
        assert await again == "held, then after"
        await asyncio.sleep(0.3)  # room for the abandoned thread to do what it would
        assert calls["held_sync"] == 2 and calls["after_held"] == 1
        steps = await rt.list_steps("cs")
        assert [(s.name, s.status) for s in steps] == [
            ("tests.held_sync", StepStatus.SUCCEEDED),
            ("tests.after_held", StepStatus.SUCCEEDED),
        ]


async def test_restart_with_same_executor_id_resumes_own_work_at_once(sqlite_url: str) -> None:
    backend = durable.connect(sqlite_url)

    @durable.workflow(name="tests.resume.v1")
    async def resumable() -> list[Any]:
        return [await add(1, 1), await wait_gate(), await add(2, 2)]

    async with durable.Runtime(backend, recover=False, executor_id="node-a", claim_ttl=600) as rt:
        run = asyncio.create_task(rt.run(resumable, workflow_id="res"))
        await entered.wait()
        # simulate a crash: the task dies without releasing its lease
        rt.backend = _NoRelease(rt.backend)  # type: ignore[assignment]
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    gate.set()
    async with durable.Runtime(durable.connect(sqlite_url), executor_id="node-a") as rt2:
        assert await rt2.result("res", timeout=10) == [2, "opened", 4]
        assert calls["add"] == 2  # the first add replayed, not re-run
        other = durable.Runtime(durable.connect(sqlite_url), executor_id="node-b")
        assert other.executor_id != rt2.executor_id


class _NoRelease:
    """Wraps a backend so that releasing a lease does nothing, as when a process is killed."""

    def __init__(self, inner: durable.PersistentBackend) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def release_task_claim(self, *args: Any, **kwargs: Any) -> None:
        return None


async def test_inspection_lists_by_status_and_name(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        for i in range(3):
            await rt.run(arith, i, workflow_id=f"ok-{i}")
        with pytest.raises(PaymentDeclined):
            await rt.run(unhandled, "x", workflow_id="bad")
        succeeded = await rt.list_workflows(status="succeeded", name=arith.name)
        assert [w.id for w in succeeded] == ["ok-2", "ok-1", "ok-0"]
        failed = await rt.list_workflows(status=[WorkflowStatus.FAILED])
        assert [w.id for w in failed] == ["bad"]
        page = await rt.list_workflows(limit=2)
        rest = await rt.list_workflows(limit=2, cursor=page.next_cursor)
        assert len(page) == 2 and len(rest) == 2 and rest.next_cursor is None


async def test_recovery_resumes_started_work_and_leaves_fresh_work_to_workers(
    backend_url: str,
) -> None:
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, recover=False, executor_id="producer") as rt:
        fresh = await rt.enqueue(child, 1)  # never started
        started = await rt.enqueue(child, 2)
        # an executor that died mid-run: its lease runs out
        await backend.claim_task(started, WORKFLOW_TASK, "dead", timedelta(seconds=0.2))
        await backend.begin_execution(started, "dead")
        await asyncio.sleep(0.3)
        assert await rt.recover() == [started]
        assert await rt.result(started, timeout=10) == 102
        assert (await rt.get_workflow(fresh)).status is WorkflowStatus.PENDING
        assert (await rt.get_workflow(started)).executor_id == "producer"


@durable.workflow(name="tests.passes_gate.v1")
async def passes_gate() -> str:
    return await wait_gate()


@pytest.mark.parametrize("finishes", [True, False], ids=["finishes", "handed-back"])
async def test_a_workers_graceful_stop_covers_what_recovery_resumed(
    backend_url: str, finishes: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The executions recovery resumed ran beside the worker's, but its stop neither waited for
    them (the runtime's close cancelled them at once, their grace ignored) nor counted them in
    what it handed back."""
    caplog.set_level(logging.INFO, logger="durable.worker")
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, recover=False, executor_id="heir") as rt:
        wid = await rt.enqueue(passes_gate)
        await backend.claim_task(wid, WORKFLOW_TASK, "dead", timedelta(seconds=0.2))
        await backend.begin_execution(wid, "dead")
        await asyncio.sleep(0.3)
        worker = await rt.start_worker(concurrency=1, poll_interval=0.05)
        assert await rt.recover() == [wid]
        await asyncio.wait_for(entered.wait(), 10)
        if finishes:
            asyncio.get_running_loop().call_later(0.2, gate.set)
        await worker.stop(grace=10.0 if finishes else 0.1)
        info = await rt.get_workflow(wid)
    if finishes:
        assert info.status is WorkflowStatus.SUCCEEDED and info.output == "opened"
    else:
        assert info.status is WorkflowStatus.PENDING
        assert "handed back 1 unfinished execution(s)" in caplog.text


@durable.workflow(name="tests.fails_at_gate.v1")
async def fails_at_gate() -> None:
    calls["fails_at_gate"] += 1
    await wait_gate()
    raise ValueError("boom")


async def test_recovery_leaves_an_execution_run_drives_to_run(
    backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # the recovery a runtime starts on start, run while run() drives an execution it just
    # began: the execution is this executor's, started and unfinished, so recovery claims it
    # (the lease is run()'s too); it must not drive it a second time in the background, which
    # found it failed by run() and logged its error as a failed background task
    caplog.set_level(logging.ERROR, logger="durable.runtime")
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        running = asyncio.ensure_future(
            rt.run(fails_at_gate, workflow_id="run-1", labels={"k": "v"})
        )
        await asyncio.wait_for(entered.wait(), 10)
        resumed = await rt.recover()
        gate.set()
        with pytest.raises(ValueError, match="boom"):
            await running
        drives = [t for t in asyncio.all_tasks() if t.get_name() == "durable:run-1"]
        if drives:  # the old behaviour: wait for the background drive to end
            await asyncio.wait(drives, timeout=10)
        info = await rt.get_workflow("run-1")
    assert info.status is WorkflowStatus.FAILED and info.attempts == 1
    assert calls["fails_at_gate"] == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert resumed == []


class Declined(Exception):
    """Its constructor builds its message from its arguments: built again from the message
    (its ``args``), the message was "42: card declined: card declined"."""

    def __init__(self, code: int, reason: str = "card declined") -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code


class Unrebuildable(Exception):
    """Its class is found, but nothing can make one from a record."""

    def __new__(cls, *args: Any, token: object) -> Unrebuildable:
        return super().__new__(cls, *args)

    def __init__(self, *args: Any, token: object) -> None:
        super().__init__(*args)


@durable.step(name="tests.runtime.charge_declined")
async def charge_declined(kind: str) -> None:
    calls[f"charge_declined:{kind}"] += 1
    if kind == "declined":
        raise Declined(42)
    if kind == "tuple":
        raise ValueError((1, 2))
    raise Unrebuildable("live", token=object())


@durable.workflow(name="tests.runtime.sees_as_replayed.v1")
async def sees_as_replayed(kind: str) -> list[str]:
    try:
        await charge_declined(kind)
    except Declined as exc:
        seen = ["Declined", str(exc), str(exc.code)]
    except durable.StepError as exc:
        seen = ["StepError", type(exc).__name__]
    except ValueError as exc:
        seen = ["ValueError", str(exc)]
    await wait_gate()
    return seen


@pytest.mark.parametrize("kind", ["declined", "tuple", "unrebuildable"])
async def test_a_handled_failure_is_seen_in_the_first_run_as_a_replay_sees_it(
    backend_url: str, kind: str
) -> None:
    """The first run saw the live exception and a replay the one rebuilt from its record: an
    exception whose constructor builds its message had another message in the replay (the
    workflow took another path, and failed with NonDeterminismError), a tuple argument came
    back a list, and a class that cannot be rebuilt came back a StepError (``except`` no
    longer matched). The first run now sees what a replay will."""
    gate.clear()
    entered.clear()
    calls[f"charge_declined:{kind}"] = 0
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        first = asyncio.create_task(rt.run(sees_as_replayed, kind, workflow_id=f"seen-{kind}"))
        await entered.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        gate.set()
        replayed = await rt.run(sees_as_replayed, kind, workflow_id=f"seen-{kind}")
        gate.clear()
        entered.clear()
        gate.set()
        uncrashed = await rt.run(sees_as_replayed, kind, workflow_id=f"seen-{kind}-whole")
    assert replayed == uncrashed
    assert calls[f"charge_declined:{kind}"] == 2  # once per execution: replayed, not run again
    expected = {
        "declined": ["Declined", "42: card declined", "42"],
        "tuple": ["ValueError", "[1, 2]"],
        "unrebuildable": ["StepError", "StepError"],
    }
    assert replayed == expected[kind]
