"""Changing workflows safely: ``durable.patched`` / ``durable.deprecate_patch``, the code
version each execution records, workers that serve only their versions.

* an execution that passed the patch point under the old code replays the old branch on the
  new code (its history has no marker there); a new one takes the new branch and records the
  marker; after the cleanup (``deprecate_patch``) both kinds still replay, and new ones record
  nothing; sync and async workflows, every backend;
* the same across a real crash: a process SIGKILLed mid-workflow under the old code, resumed by
  a process running the patched code (SQLite file, PostgreSQL): the old branch, no step again;
* a change made without a patch is still detected, and the error names both code versions;
* each execution records its code version (the source hash, the workflow's ``version``, the
  runtime's ``app_version``), shown by ``get_workflow``;
* a claim filtered by versions leaves other versions' executions alone (every backend, and
  PostgreSQL's one-statement claim-and-begin), an unfiltered one takes them; a runtime with
  ``serve_versions=True`` runs its own version's executions only.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import patchprog
import pytest

import durable
from durable.errors import InvalidArgumentError, NonDeterminismError
from durable.models import RECV_STEP, StepStatus, WorkflowStatus
from durable.versioning import source_version

WAIT = 30.0
#: the heavier tests skip aiosqlite (the same SQL as sqlite; the contract covers its claims)
NO_AIOSQLITE = pytest.mark.parametrize(
    "backend_url",
    ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
PROG = Path(__file__).with_name("patchprog.py")
MARKER = "durable.patch:fee-v2"

# -- the same workflow in three versions of the code, sync and async ----------------------------

S_OLD, S_NEW, S_CLEAN = durable.Registry(), durable.Registry(), durable.Registry()
A_OLD, A_NEW, A_CLEAN = durable.Registry(), durable.Registry(), durable.Registry()


@durable.step(name="tp.sync.fee_v1")
def sfee_v1(amount: int) -> int:
    return amount + 1


@durable.step(name="tp.sync.fee_v2")
def sfee_v2(amount: int) -> int:
    return amount + 2


@durable.workflow(name="tp.sync.order", registry=S_OLD)
def sorder_old(amount: int) -> list[Any]:
    fee = sfee_v1(amount)
    return [fee, durable.recv_sync("go")]


@durable.workflow(name="tp.sync.order", registry=S_NEW)
def sorder_new(amount: int) -> list[Any]:
    fee = sfee_v2(amount) if durable.patched("fee-v2") else sfee_v1(amount)
    return [fee, durable.recv_sync("go")]


@durable.workflow(name="tp.sync.order", registry=S_CLEAN)
def sorder_clean(amount: int) -> list[Any]:
    durable.deprecate_patch("fee-v2")
    fee = sfee_v2(amount)
    return [fee, durable.recv_sync("go")]


@durable.workflow(name="tp.async.order", registry=A_OLD)
async def aorder_old(amount: int) -> list[Any]:
    fee = await patchprog.fee_v1(amount)
    return [fee, await durable.recv("go")]


@durable.workflow(name="tp.async.order", registry=A_NEW)
async def aorder_new(amount: int) -> list[Any]:
    if durable.patched("fee-v2"):
        fee = await patchprog.fee_v2(amount)
    else:
        fee = await patchprog.fee_v1(amount)
    return [fee, await durable.recv("go")]


@durable.workflow(name="tp.async.order", registry=A_CLEAN)
async def aorder_clean(amount: int) -> list[Any]:
    durable.deprecate_patch("fee-v2")
    fee = await patchprog.fee_v2(amount)
    return [fee, await durable.recv("go")]


CODE = {
    "sync": {"old": S_OLD, "new": S_NEW, "clean": S_CLEAN, "name": "tp.sync.order"},
    "async": {"old": A_OLD, "new": A_NEW, "clean": A_CLEAN, "name": "tp.async.order"},
}


class Deploys:
    """Runtimes on one store, one after the other, each with one version of the code (the
    memory store is shared by instance; a SQL store is opened anew by each)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._memory = durable.connect(url) if url.startswith("memory") else None

    def backend(self) -> durable.PersistentBackend:
        return self._memory or durable.connect(self.url)

    def runtime(self, registry: durable.Registry, **options: Any) -> durable.Runtime:
        backend = self.backend()
        options.setdefault("executor_id", f"deploy-{id(registry)}")
        return durable.Runtime(
            backend, registry=registry, poll_interval=0.01, claim_ttl=5.0, **options
        )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def waiting(rt: durable.Runtime, workflow_id: str) -> bool:
    """The execution waits for its message, and nobody holds it."""
    steps = await rt.list_steps(workflow_id)
    info = await rt.get_workflow(workflow_id)
    return (
        info.status is WorkflowStatus.PENDING
        and bool(steps)
        and steps[-1].name == RECV_STEP
        and steps[-1].status is StepStatus.PENDING
    )


async def start_waiting(
    deploys: Deploys, registry: durable.Registry, name: str, ids: list[str]
) -> None:
    """Start executions ``ids`` under ``registry``'s code and leave them waiting for "go"."""
    async with deploys.runtime(registry) as rt:
        await rt.start_worker(concurrency=4, poll_interval=0.01)
        for i in ids:
            await rt.enqueue(name, 10, workflow_id=i)
        for i in ids:
            await eventually(lambda i=i: waiting(rt, i), f"{i} to wait")  # type: ignore[misc]


async def finish(rt: durable.Runtime, ids: list[str]) -> dict[str, Any]:
    for i in ids:
        await rt.send(i, "go", "went")
    return {i: await rt.result(i, timeout=WAIT) for i in ids}


@pytest.mark.parametrize("kind", ["sync", "async"])
@NO_AIOSQLITE
async def test_patched_keeps_old_executions_on_the_old_branch(backend_url: str, kind: str) -> None:
    code = CODE[kind]
    name = str(code["name"])
    deploys = Deploys(backend_url)
    # phase 0: the old code; "old" passes the fee step and waits
    await start_waiting(deploys, code["old"], name, ["old"])  # type: ignore[arg-type]
    # phase 1: the patched code; "new" starts under it and waits too
    await start_waiting(deploys, code["new"], name, ["new"])  # type: ignore[arg-type]
    async with deploys.runtime(code["new"]) as rt:  # type: ignore[arg-type]
        await rt.start_worker(concurrency=4, poll_interval=0.01)
        new_steps = [s.name for s in await rt.list_steps("new")]
        old_steps = [s.name for s in await rt.list_steps("old")]
        # phase 1 again: "new2" starts and waits, to be finished by the cleanup's code
        await rt.enqueue(name, 10, workflow_id="new2")
        await eventually(lambda: waiting(rt, "new2"), "new2 to wait")
        results = await finish(rt, ["old", "new"])
    assert results == {"old": [11, "went"], "new": [12, "went"]}
    assert new_steps[0] == MARKER and MARKER not in old_steps
    # phase 2: the cleanup; a new execution records no marker, "new2" replays its marker
    async with deploys.runtime(code["clean"]) as rt:  # type: ignore[arg-type]
        await rt.start_worker(concurrency=4, poll_interval=0.01)
        await rt.enqueue(name, 10, workflow_id="clean")
        await eventually(lambda: waiting(rt, "clean"), "clean to wait")
        results = await finish(rt, ["new2", "clean"])
        clean_steps = [s.name for s in await rt.list_steps("clean")]
        new2_steps = [s.name for s in await rt.list_steps("new2")]
    assert results == {"new2": [12, "went"], "clean": [12, "went"]}
    assert MARKER not in clean_steps and new2_steps[0] == MARKER


async def test_patched_outside_a_workflow_is_the_new_code() -> None:
    assert durable.patched("fee-v2") is True
    assert durable.deprecate_patch("fee-v2") is None
    with pytest.raises(InvalidArgumentError, match="patch id"):
        durable.patched("")


@NO_AIOSQLITE
async def test_a_change_without_a_patch_is_detected_with_both_versions(backend_url: str) -> None:
    deploys = Deploys(backend_url)
    old = durable.Registry()
    new = durable.Registry()

    @durable.workflow(name="tp.renamed", registry=old)
    async def before(amount: int) -> list[Any]:
        return [await patchprog.fee_v1(amount), await durable.recv("go")]

    @durable.workflow(name="tp.renamed", registry=new)
    async def after(amount: int) -> list[Any]:
        return [await patchprog.fee_v2(amount), await durable.recv("go")]

    async with deploys.runtime(old, app_version="v1") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        await rt.enqueue("tp.renamed", 1, workflow_id="r")
        await eventually(lambda: waiting(rt, "r"), "r to wait")
    async with deploys.runtime(new, app_version="v2") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        await rt.send("r", "go")
        with pytest.raises(NonDeterminismError) as caught:
            await rt.result("r", timeout=WAIT)
    message = str(caught.value)
    assert "patchprog.fee_v2" in message and "patchprog.fee_v1" in message
    assert "started by code version v1" in message and "is version v2" in message


# -- code versions ---------------------------------------------------------------------------

VERSIONED = durable.Registry()


@durable.workflow(name="tp.hashed", registry=VERSIONED)
async def hashed(n: int) -> int:
    return n


@durable.workflow(name="tp.pinned", registry=VERSIONED, version="2024-06")
async def pinned(n: int) -> int:
    return n


async def test_each_execution_records_its_code_version(backend_url: str) -> None:
    deploys = Deploys(backend_url)
    async with deploys.runtime(VERSIONED) as rt:
        await rt.run(hashed, 1, workflow_id="h")
        await rt.run(pinned, 1, workflow_id="p")
        await rt.enqueue("tp.hashed", 1, workflow_id="by-name")  # the runtime has the code
        async with durable.Client(deploys.backend()) as client:  # a producer without the code
            await client.enqueue("tp.hashed", 1, workflow_id="unknown")
        recorded = {
            i: (await rt.get_workflow(i)).code_version for i in ("h", "p", "by-name", "unknown")
        }
    async with deploys.runtime(VERSIONED, app_version="1.4.2", executor_id="app") as rt:
        await rt.run(hashed, 1, workflow_id="a")
        await rt.run(pinned, 1, workflow_id="ap")
        recorded.update({i: (await rt.get_workflow(i)).code_version for i in ("a", "ap")})
    assert recorded == {
        "h": source_version(hashed.fn),
        "p": "2024-06",
        "by-name": source_version(hashed.fn),
        "unknown": None,
        "a": "1.4.2",
        "ap": "2024-06",
    }
    assert recorded["h"].startswith("src-") and len(recorded["h"]) == 20  # type: ignore[union-attr]


def test_version_options_are_checked() -> None:
    backend = durable.connect("memory://")
    with pytest.raises(InvalidArgumentError, match="serve_versions"):
        durable.Runtime(backend, serve_versions="v1")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="app_version"):
        durable.Runtime(backend, app_version="x" * 65)
    with pytest.raises(InvalidArgumentError, match="version"):
        durable.workflow(name="tp.bad", version="", registry=durable.Registry())


async def test_a_filtered_claim_leaves_other_versions_alone(backend_url: str) -> None:
    deploys = Deploys(backend_url)
    async with deploys.runtime(VERSIONED, app_version="v1", executor_id="producer") as rt:
        await rt.enqueue(hashed, 1, workflow_id="one")
        async with durable.Client(deploys.backend()) as client:  # no version: anyone's
            await client.enqueue("tp.hashed", 2, workflow_id="unknown")
        backend = rt.backend
        ttl = timedelta(seconds=30)
        other = await backend.claim_and_begin_tasks("w2", 10, ttl, versions=["v2"])
        assert [c.instance_id for c, _ in other] == ["unknown"]
        mine = await backend.claim_and_begin_tasks("w1", 10, ttl, versions=["v1", "v3"])
        assert [c.instance_id for c, _ in mine] == ["one"]
        await rt.enqueue(hashed, 3, workflow_id="two")
        claimed = await backend.claim_available_tasks("w3", 10, ttl, include_own=False)
        assert [c.instance_id for c in claimed] == ["two"]  # unfiltered: whatever the version


@NO_AIOSQLITE
async def test_a_runtime_serves_only_its_own_versions(backend_url: str) -> None:
    deploys = Deploys(backend_url)
    async with deploys.runtime(VERSIONED, app_version="v1", executor_id="old-app") as rt:
        await rt.enqueue(hashed, 1, workflow_id="from-v1")
    new = deploys.runtime(VERSIONED, app_version="v2", serve_versions=True, executor_id="new-app")
    async with new as rt:
        assert rt.claim_versions() == sorted(["2024-06", "v2", source_version(hashed.fn)])
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        await rt.enqueue(hashed, 2, workflow_id="from-v2")
        assert await rt.result("from-v2", timeout=WAIT) == 2
        # a producer with the same code and no app_version records its source's hash: the
        # worker has that code, so it runs it (before, it stayed pending for good)
        async with durable.Client(deploys.backend()) as producer:
            await producer.enqueue(hashed, 5, workflow_id="from-a-client")
            assert (await producer.get_workflow("from-a-client")).code_version == (
                source_version(hashed.fn)
            )
        assert await rt.result("from-a-client", timeout=WAIT) == 5
        async with durable.Client(deploys.backend(), app_version="v2") as producer:
            await producer.enqueue(hashed, 6, workflow_id="from-a-v2-client")
        assert await rt.result("from-a-v2-client", timeout=WAIT) == 6
        assert (await rt.get_workflow("from-a-v2-client")).code_version == "v2"
        await rt.enqueue(pinned, 3, workflow_id="pinned")
        assert await rt.result("pinned", timeout=WAIT) == 3
        left = await rt.get_workflow("from-v1")
    assert left.status is WorkflowStatus.PENDING and left.code_version == "v1"
    async with deploys.runtime(VERSIONED, app_version="v1", executor_id="old-app") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        assert await rt.result("from-v1", timeout=WAIT) == 1
    with pytest.raises(InvalidArgumentError, match="app_version"):
        durable.Client("memory://", app_version="")


# -- a real crash across a deploy --------------------------------------------------------------


def run_prog(url: str, code: str, ids: list[str], log: Path, *, kill: bool = False) -> Any:
    args = [sys.executable, str(PROG), "--url", url, "--code", code, "--log", str(log)]
    args += [a for i in ids for a in ("--workflow-id", i)] + (["--kill"] if kill else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if kill:
        assert done.returncode == -signal.SIGKILL, done.stderr
        return None
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def crash_then_patch(url: str, tmp_path: Path) -> None:
    log = tmp_path / "effects.log"
    # the old code passes the fee step, then its process is SIGKILLed inside the next step
    run_prog(url, "old", ["o-1"], log, kill=True)
    # the patched code resumes it: the old branch (fee_v1 replayed, not run again); then a
    # new execution under the patched code takes the new branch
    assert run_prog(url, "new", ["o-1", "n-1"], log) == [[11, 110], [12, 120]]
    lines = [line.rsplit(" ", 1)[0] for line in log.read_text().splitlines()]
    assert lines == ["fee_v1 10", "hold 11", "hold 11", "fee_v2 10", "hold 12"]


@pytest.mark.slow
def test_a_killed_old_execution_resumes_on_patched_code_sqlite(
    sqlite_url: str, tmp_path: Path
) -> None:
    crash_then_patch(sqlite_url, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_old_execution_resumes_on_patched_code_postgres(
    pg_url: str, tmp_path: Path
) -> None:
    crash_then_patch(pg_url, tmp_path)


@NO_AIOSQLITE
async def test_recovery_resumes_only_the_versions_served(backend_url: str) -> None:
    deploys = Deploys(backend_url)
    async with deploys.runtime(A_OLD, app_version="v1", executor_id="v1-app") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        await rt.enqueue("tp.async.order", 10, workflow_id="started")
        await eventually(lambda: waiting(rt, "started"), "started to wait")
    async with durable.Client(deploys.backend()) as client:  # with no worker running
        await client.send("started", "go", "went")  # due now, started before: recovery's
    options: dict[str, Any] = {"serve_versions": True, "recover": False}
    async with deploys.runtime(A_OLD, app_version="v2", executor_id="v2-app", **options) as rt:
        assert await rt.recover() == []
    async with deploys.runtime(A_OLD, app_version="v1", executor_id="v1-app", **options) as rt:
        assert await rt.recover() == ["started"]
        assert await rt.result("started", timeout=WAIT) == [11, "went"]


# -- one patch id checked at two places of one change -------------------------------------------

T_OLD, T_NEW = durable.Registry(), durable.Registry()


@durable.step(name="tp.twice.reserve_v1")
async def reserve_v1(n: int) -> str:
    return f"r1-{n}"


@durable.step(name="tp.twice.reserve_v2")
async def reserve_v2(n: int) -> str:
    return f"r2-{n}"


@durable.step(name="tp.twice.release_v1")
async def release_v1(reservation: str) -> str:
    return f"release1({reservation})"


@durable.step(name="tp.twice.release_v2")
async def release_v2(reservation: str) -> str:
    return f"release2({reservation})"


@durable.workflow(name="tp.twice.order", registry=T_OLD)
async def twice_old(n: int) -> list[Any]:
    reservation = await reserve_v1(n)
    await durable.recv("go")
    return [reservation, await release_v1(reservation)]


@durable.workflow(name="tp.twice.order", registry=T_NEW)
async def twice_new(n: int) -> list[Any]:
    # one change, checked where it reserves and again where it releases
    reservation = await (reserve_v2(n) if durable.patched("res-v2") else reserve_v1(n))
    await durable.recv("go")
    if durable.patched("res-v2"):
        return [reservation, await release_v2(reservation)]
    return [reservation, await release_v1(reservation)]


@NO_AIOSQLITE
async def test_a_patch_checked_twice_takes_one_branch_per_execution(backend_url: str) -> None:
    """An execution that passed the first check under the old code and reaches the second one
    under the new code takes the old branch there too (the first check decided), and a new
    execution takes the new branch at both with one marker."""
    deploys = Deploys(backend_url)
    await start_waiting(deploys, T_OLD, "tp.twice.order", ["old"])
    await start_waiting(deploys, T_NEW, "tp.twice.order", ["new"])
    async with deploys.runtime(T_NEW) as rt:
        await rt.start_worker(concurrency=4, poll_interval=0.01)
        results = await finish(rt, ["old", "new"])
        steps = {i: [s.name for s in await rt.list_steps(i)] for i in ("old", "new")}
    assert results == {"old": ["r1-10", "release1(r1-10)"], "new": ["r2-10", "release2(r2-10)"]}
    assert steps["old"] == ["tp.twice.reserve_v1", RECV_STEP, "tp.twice.release_v1"]
    marker = "durable.patch:res-v2"
    assert steps["new"] == [marker, "tp.twice.reserve_v2", RECV_STEP, "tp.twice.release_v2"]


# -- a receive whose topic changed in flight --------------------------------------------------

TOPIC_OLD, TOPIC_NEW = durable.Registry(), durable.Registry()


@durable.workflow(name="tp.topic.order", registry=TOPIC_OLD)
async def topic_old(amount: int) -> list[Any]:
    fee = await patchprog.fee_v1(amount)
    return [fee, await durable.recv("go")]


@durable.workflow(name="tp.topic.order", registry=TOPIC_NEW)
async def topic_new(amount: int) -> list[Any]:
    fee = await patchprog.fee_v1(amount)
    return [fee, await durable.recv("start")]  # renamed without a patch


@NO_AIOSQLITE
async def test_a_receive_on_another_topic_than_recorded_is_detected(backend_url: str) -> None:
    """An execution waiting on topic "go" resumed by code that receives on "start" (a change
    without a patch) fails with NonDeterminismError naming both topics, instead of waiting
    for ever on a topic nobody sends while "go"'s message stays queued."""
    deploys = Deploys(backend_url)
    await start_waiting(deploys, TOPIC_OLD, "tp.topic.order", ["t"])
    async with deploys.runtime(TOPIC_NEW) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        await rt.send("t", "go", "went")
        with pytest.raises(NonDeterminismError, match=r"'start'.*'go'"):
            await rt.result("t", timeout=WAIT)
