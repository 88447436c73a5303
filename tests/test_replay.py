"""The replayer: recorded executions against the current code, nothing run, nothing written.

* the patched code replays executions recorded before and after the patch; a change made
  without a patch diverges (a step renamed), so does the old code over a history with the
  marker (a missing patch marker), and the cleanup's code over an execution that took the old
  branch; the message names both code versions; no step body runs;
* an execution in flight replays up to where it is; a succeeded one whose replay returns
  another output diverges; sync workflows too;
* export / replay round-trip through a history file (``durable.history``), from a backend read
  (every backend) and through the CLI: ``durable workflows export`` then ``durable workflows
  replay`` (files, ids, filters), exit 0 when everything replays, 1 on a divergence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import patchprog
import pytest
from click.testing import CliRunner, Result

import durable
from durable.cli import main
from durable.errors import NonDeterminismError
from durable.history import HistoryFormatError, dump_history, load_history, write_history_file
from durable.models import WorkflowSnapshot, WorkflowStatus
from durable.testing.replay import as_snapshot, replay, replay_async

WAIT = 30.0
#: aiosqlite stores as sqlite does: the replayer reads what any backend returns
NO_AIOSQLITE = pytest.mark.parametrize(
    "backend_url",
    ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
SYNC = durable.Registry()
SYNC_CHANGED = durable.Registry()


@durable.step(name="tr.double")
def double(n: int) -> int:
    return n * 2


@durable.step(name="tr.triple")
def triple(n: int) -> int:
    return n * 3


@durable.workflow(name="tr.sync", registry=SYNC)
def sync_flow(n: int) -> int:
    return double(n) + 1


@durable.workflow(name="tr.sync", registry=SYNC_CHANGED)
def sync_flow_changed(n: int) -> int:
    return triple(n) + 1


@durable.workflow(name="tr.sync.output", registry=durable.Registry())
def sync_flow_other_output(n: int) -> int:
    return double(n) + 2


async def record(
    url: str, registry: durable.Registry, wf: Any, workflow_id: str
) -> WorkflowSnapshot:
    """Run one execution of ``wf`` to its end and return its history, read back."""
    async with durable.Runtime(durable.connect(url), registry=registry, app_version="v1") as rt:
        await rt.run(wf, 10, workflow_id=workflow_id)
        return as_snapshot((await rt.get_workflow(workflow_id), await rt.list_steps(workflow_id)))


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines())


@pytest.fixture
def effects(tmp_path: Path) -> Iterator[Path]:
    """patchprog's steps log their runs here during the test."""
    log = tmp_path / "effects.log"
    patchprog.LOG[:] = [log]
    yield log
    patchprog.LOG.clear()


@NO_AIOSQLITE
async def test_the_replayer_passes_patched_code_and_catches_divergences(
    backend_url: str, effects: Path
) -> None:
    old = await record(backend_url, patchprog.OLD, patchprog.order_old, "o")
    new = await record(backend_url, patchprog.NEW, patchprog.order_new, "n")
    ran = count_lines(effects)
    assert new.steps[0].name == "durable.patch:fee-v2" and old.code_version == "v1"

    for history, output in ((old, [11, 110]), (new, [12, 120])):
        result = await replay_async(patchprog.order_new, history, app_version="v2")
        assert result.ok and result.complete and result.output == output
        assert (result.recorded_version, result.running_version) == ("v1", "v2")
    assert (await replay_async(patchprog.order_clean, new)).ok  # the cleanup replays the marker

    with pytest.raises(NonDeterminismError) as renamed:  # a change without a patch
        await replay_async(patchprog.order_diverged, old, app_version="v2")
    assert "patchprog.fee_v2" in str(renamed.value) and "patchprog.fee_v1" in str(renamed.value)
    assert "code version v1" in str(renamed.value) and "version v2" in str(renamed.value)
    missing = await replay_async(patchprog.order_old, new, check=False)  # old code, marker kept
    assert not missing.ok and "durable.patch:fee-v2" in str(missing.divergence)
    too_early = await replay_async(patchprog.order_clean, old, check=False)
    assert not too_early.ok and "patchprog.fee_v1" in str(too_early.divergence)
    assert count_lines(effects) == ran  # no step body ran during the replays


async def test_an_execution_in_flight_replays_up_to_where_it_is(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'flight.db'}"
    registry = durable.Registry()

    @durable.workflow(name="tr.flight", registry=registry)
    async def flight(n: int) -> list[Any]:
        fee = await patchprog.fee_v1(n)
        return [fee, await durable.recv("go")]

    async with durable.Runtime(durable.connect(url), registry=registry) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.01)
        await rt.enqueue(flight, 1, workflow_id="f")
        with pytest.raises(TimeoutError):  # it waits for its message
            await rt.result("f", timeout=0.5)
        history = as_snapshot((await rt.get_workflow("f"), await rt.list_steps("f")))
    result = await replay_async(flight, history)
    assert result.ok and not result.complete and result.replayed == 2
    assert result.describe().startswith(
        "f (tr.flight): ok, replayed up to position 1, where it is in flight ("
    )
    ended = dataclasses.replace(result, status=WorkflowStatus.CANCELLED)
    assert "up to position 1, where the execution ended (cancelled)" in ended.describe()


async def test_new_code_that_continues_as_new_before_the_recorded_point_diverges(
    tmp_path: Path,
) -> None:
    """A deploy whose code continues as new before the point an execution in flight reached
    (its recorded steps after that point dropped) is a divergence, for the replayer and for
    the worker, as when the new code returns there: the worker continued as new, silently, and
    the replayer said ok."""
    url = f"sqlite:///{tmp_path / 'continued.db'}"
    old, new = durable.Registry(), durable.Registry()

    @durable.workflow(name="tr.continued", registry=old)
    async def before(n: int) -> list[Any]:
        return [await patchprog.fee_v1(n), await patchprog.fee_v2(n), await durable.recv("go")]

    @durable.workflow(name="tr.continued", registry=new)
    async def after(n: int) -> list[Any]:
        if n >= 100:
            return ["next run", n]
        await patchprog.fee_v1(n)
        durable.continue_as_new(n + 100)

    async with durable.Runtime(durable.connect(url), registry=old) as rt:
        await rt.start_worker(poll_interval=0.01)
        await rt.enqueue(before, 1, workflow_id="c")
        with pytest.raises(TimeoutError):  # it waits for its message
            await rt.result("c", timeout=0.5)
        history = as_snapshot((await rt.get_workflow("c"), await rt.list_steps("c")))
    result = await replay_async(after, history, check=False)
    assert not result.ok
    assert "continued as new after 1 steps" in str(result.divergence)
    assert "patchprog.fee_v2" in str(result.divergence)
    async with durable.Runtime(durable.connect(url), registry=new) as rt:
        await rt.start_worker(poll_interval=0.01)
        await rt.send("c", "go", True)
        with pytest.raises(NonDeterminismError, match="continued as new after 1 steps"):
            await rt.result("c", timeout=WAIT)
        info = await rt.get_workflow("c")
        assert info.status is WorkflowStatus.FAILED and info.continuations == 0


def test_sync_workflows_replay_and_outputs_are_compared(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    history = asyncio.run(record(url, SYNC, sync_flow, "s"))
    assert replay(sync_flow, history).output == 21
    changed = replay(sync_flow_changed, history, check=False)
    assert not changed.ok and "tr.triple" in str(changed.divergence)
    other = dump_history(history)
    other["workflow"]["name"] = "tr.sync.output"
    result = replay(sync_flow_other_output, other, check=False)
    assert not result.ok and "returns 22" in str(result.divergence)


@NO_AIOSQLITE
async def test_a_history_file_round_trips(backend_url: str, tmp_path: Path) -> None:
    history = await record(backend_url, patchprog.NEW, patchprog.order_new, "n")
    path = tmp_path / "n.json"
    write_history_file(path, history)
    data = json.loads(path.read_text())
    assert (data["format"], data["format_version"]) == ("durable.history", 1)
    loaded = as_snapshot(path)
    assert loaded.steps == history.steps and loaded.output == history.output
    assert (loaded.id, loaded.code_version, loaded.status) == ("n", "v1", history.status)
    assert (await replay_async(patchprog.order_new, str(path))).ok
    with pytest.raises(HistoryFormatError, match="version"):
        load_history({**data, "format_version": 99})
    with pytest.raises(HistoryFormatError, match="not a durable history"):
        load_history("[]")


# -- the CLI ---------------------------------------------------------------------------------


def durable_cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def code_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modules that stand for the current code: the patched one and a diverging one."""
    (tmp_path / "code_patched.py").write_text("from patchprog import order_new\n")
    (tmp_path / "code_diverged.py").write_text("from patchprog import order_diverged\n")
    (tmp_path / "code_both.py").write_text("from patchprog import order_new, order_old\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_the_cli_exports_and_replays(tmp_path: Path, code_modules: None) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    asyncio.run(record(url, patchprog.OLD, patchprog.order_old, "o"))
    asyncio.run(record(url, patchprog.NEW, patchprog.order_new, "n"))
    exported = tmp_path / "o.json"
    done = durable_cli("workflows", "export", url, "o", "-o", str(exported))
    assert done.exit_code == 0 and json.loads(exported.read_text())["workflow"]["id"] == "o"
    shown = durable_cli("workflows", "show", url, "o")
    assert "code version v1" in shown.output

    ok = durable_cli("workflows", "replay", "--from-file", str(exported), "-m", "code_patched")
    assert ok.exit_code == 0, ok.output
    assert "o (patchprog.order): ok" in ok.output
    bad = durable_cli("workflows", "replay", "-f", str(exported), "-m", "code_diverged")
    assert bad.exit_code == 1 and "DIVERGES" in bad.output and "patchprog.fee_v1" in bad.output

    by_id = durable_cli("workflows", "replay", url, "o", "n", "-m", "code_patched")
    assert by_id.exit_code == 0 and by_id.output.count(": ok") == 2, by_id.output
    chosen = ["workflows", "replay", url, "--name", "patchprog.order", "--status", "succeeded"]
    by_filter = durable_cli(*chosen, "-m", "code_diverged")
    assert by_filter.exit_code == 1 and by_filter.output.count("DIVERGES") == 2
    unknown = durable_cli("workflows", "replay", url, "o", "-m", "json")
    assert unknown.exit_code == 1 and "no such workflow" in unknown.output
    both = CliRunner().invoke(main, ["workflows", "replay", url, "o", "-m", "code_both"])
    assert both.exit_code == 2 and "two workflows are named" in both.output
    usage = CliRunner().invoke(main, ["workflows", "replay", "-m", "code_patched"])
    assert usage.exit_code == 2 and "give a URL" in usage.output


SYNC_TAILED = durable.Registry()


@durable.workflow(name="tr.sync", registry=SYNC_TAILED)
def sync_flow_tailed(n: int) -> int:
    doubled = double(n) + 1
    if durable.patched("tr-triple-after"):  # an addition after the last recorded step
        triple(n)
    return doubled


async def test_a_patched_addition_after_a_succeeded_history_replays(tmp_path: Path) -> None:
    """A succeeded execution never reaches a patch point again: its replay on code that adds a
    patched step after its last one takes the old branch (returns as recorded), where an
    execution in flight there would take the new one."""
    history = await record(f"sqlite:///{tmp_path / 'tail.db'}", SYNC, sync_flow, "s")
    result = await replay_async(sync_flow_tailed, history)
    assert result.ok and result.complete and result.output == 21
    unpatched = durable.Registry()

    @durable.workflow(name="tr.sync", registry=unpatched)
    def sync_flow_added(n: int) -> int:
        doubled = double(n) + 1
        triple(n)  # the same addition without a patch: still a divergence
        return doubled

    assert not (await replay_async(sync_flow_added, history, check=False)).ok


ENQUEUES = durable.Registry()
ENQUEUER: list[durable.Runtime] = []  # the runtime the workflow enqueues through, as an app's


@durable.workflow(name="tr.enqueued", registry=ENQUEUES)
async def enqueued(n: int) -> int:
    return n


@durable.workflow(name="tr.enqueuer", registry=ENQUEUES)
async def enqueuer(n: int) -> list[Any]:
    runtime = ENQUEUER[0]
    one = await runtime.enqueue(enqueued, n)
    many = await runtime.enqueue_many("tr.enqueued", [(n + 1,), (n + 2,)])
    return [one, many]


async def test_a_workflow_that_enqueues_replays_without_its_runtime(tmp_path: Path) -> None:
    """Enqueues inside a workflow are recorded steps: a replay check answers them from the
    history, with the app's runtime not started (as in CI), instead of refusing."""
    runtime = durable.Runtime(
        durable.connect(f"sqlite:///{tmp_path / 'enq.db'}"), registry=ENQUEUES
    )
    ENQUEUER[:] = [runtime]
    try:
        async with runtime:
            output = await runtime.run(enqueuer, 1, workflow_id="e")
            history = as_snapshot((await runtime.get_workflow("e"), await runtime.list_steps("e")))
        result = await replay_async(enqueuer, history)
        assert result.ok and result.complete and result.output == output
        assert output == ["e/0", ["e/1/0", "e/1/1"]]
    finally:
        ENQUEUER.clear()
