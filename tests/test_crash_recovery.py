"""Real crashes: the product invariant "a completed step never runs again".

tests/crashprog.py runs five-step checkout workflows and freezes each execution at a crash point
(before a step, inside a step, between a step's return and its checkpoint, just after its
checkpoint committed); the test kills the process with SIGKILL and starts the program again, with
the same executor id (it resumes at once) or with another one and a short lease (it must wait for
the dead executor's lease to expire, then takes over). The program's side-effect log, written
with fsync by the step bodies, is the outside world: from it and from the stored history the
tests check that

* every step whose checkpoint committed before the kill ran exactly once, ever;
* the step interrupted before its checkpoint ran again (at-least-once for that step, and for
  no other), and nothing else happened;
* the workflow finished with the right result, and its stored steps are all succeeded, with the
  right outputs, recorded by the executor that ran them.

Also: executions killed again and again; zombies (an executor frozen with SIGSTOP, so without
heartbeat, while another takes over, then woken up: its late writes are refused, and it must not
start a step the other one completed: it checks its lease before every step); and fencing in one
process, two runtimes racing for one execution: the one whose lease expired mid-step cannot
record that step, and the stored outcomes are the new holder's.

Everything here is marked ``slow`` (processes, leases); PostgreSQL cases also ``postgres``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import durable
from durable.models import WORKFLOW_TASK, StepStatus, WorkflowStatus

pytestmark = pytest.mark.slow

PROG = Path(__file__).with_name("crashprog.py")
STEPS = ("reserve", "charge", "pack", "ship", "notify")
WAIT = 60.0  # seconds: an upper bound for anything the tests wait for, never reached when green

# Every crash point, at the first step, in the middle and at the last one. "after_checkpoint" at
# the last step leaves every step recorded but the workflow unfinished.
SCENARIOS = [
    ("before", 0),
    ("before", 2),
    ("inside", 1),
    ("inside", 4),
    ("before_checkpoint", 3),
    ("after_checkpoint", 0),
    ("after_checkpoint", 4),
]

Pause = tuple[str, int] | None


# -- the oracle ------------------------------------------------------------------------------------


def expected_outputs(order: str) -> list[str]:
    outputs, value = [], order
    for name in STEPS:
        value = f"{name}({value})"
        outputs.append(value)
    return outputs


def expected_result(order: str) -> dict[str, Any]:
    return {"order_id": order, "steps": expected_outputs(order)}


@dataclass
class RunPlan:
    """One start of the program for one workflow: who runs it, and where it is frozen."""

    tag: str
    executor: str
    pause: Pause


@dataclass
class Expected:
    effects: list[tuple[str, str]] = field(default_factory=list)  # (step, phase)
    checkpoints: list[int] = field(default_factory=list)


def simulate(pauses: list[Pause]) -> list[Expected]:
    """What each run must do, given where each one is frozen: replay what is checkpointed, run
    the rest in order until the crash point. This is the specification under test."""
    committed = 0
    runs = []
    for pause in pauses:
        run = Expected()
        for index in range(committed, len(STEPS)):
            name = STEPS[index]
            if pause == ("before", index):
                break
            run.effects.append((name, "started"))
            if pause == ("inside", index):
                break
            run.effects.append((name, "done"))
            if pause == ("before_checkpoint", index):
                break
            run.checkpoints.append(index)
            committed = index + 1
            if pause == ("after_checkpoint", index):
                break
        runs.append(run)
    return runs


# -- the program's files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    workflow_id: str
    step: str
    phase: str
    tag: str
    pid: int


@dataclass(frozen=True)
class Event:
    kind: str
    workflow_id: str
    detail: str
    executor: str
    tag: str
    at: float


def read_effects(path: Path) -> list[Effect]:
    if not path.exists():
        return []
    effects = []
    for line in path.read_text(encoding="utf-8").splitlines():
        workflow_id, step, phase, marker = line.split(" ")
        tag, pid = marker.split(":")
        effects.append(Effect(workflow_id, step, phase, tag, int(pid)))
    return effects


def read_events(path: Path) -> list[Event]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        kind, workflow_id, detail, executor, tag, at = line.split(" ")
        events.append(Event(kind, workflow_id, detail, executor, tag, float(at)))
    return events


class Program:
    """One run of tests/crashprog.py as a subprocess."""

    def __init__(
        self,
        workdir: Path,
        *,
        url: str,
        mode: str,
        executor: str,
        tag: str,
        plan: dict[str, dict[str, Any]],
        claim_ttl: float,
        heartbeat_interval: float | None = None,
        release: Path | None = None,
    ) -> None:
        self.tag = tag
        self.out = workdir / f"result-{tag}.json"
        self.stderr = workdir / f"stderr-{tag}.txt"
        command = [
            sys.executable,
            str(PROG),
            *("--url", url, "--mode", mode, "--executor-id", executor, "--tag", tag),
            *("--log", str(workdir / "effects.log"), "--events", str(workdir / "events.log")),
            *("--out", str(self.out), "--plan", json.dumps(plan)),
            *("--claim-ttl", str(claim_ttl), "--poll-interval", "0.05"),
            *(("--heartbeat-interval", str(heartbeat_interval)) if heartbeat_interval else ()),
            *(("--release", str(release)) if release else ()),
        ]
        with self.stderr.open("wb") as stderr:
            self.process = subprocess.Popen(
                command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )

    def output(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(
                f"{self.tag} exited early with status {self.process.returncode}:\n{self.output()}"
            )

    def kill(self) -> float:
        """SIGKILL: no cleanup, no lease released, nothing flushed. Returns when it happened."""
        self.check_alive()
        killed_at = time.time()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=WAIT)
        assert self.process.returncode == -signal.SIGKILL
        return killed_at

    def finish(self, expected_status: int = 0) -> dict[str, Any]:
        """Wait for the exit (0: every execution succeeded, 3: some did not); its results."""
        try:
            status = self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.tag} did not finish within {WAIT} s:\n{self.output()}")
        if status != expected_status:
            pytest.fail(f"{self.tag} exited with status {status}:\n{self.output()}")
        results: dict[str, Any] = json.loads(self.out.read_text(encoding="utf-8"))
        return results


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Program]]:
    """Start crashprog.py runs in ``tmp_path``; any still alive at the end is killed."""
    started: list[Program] = []

    def start(**options: Any) -> Program:
        program = Program(tmp_path, **options)
        started.append(program)
        return program

    yield start
    for program in started:
        if program.process.poll() is None:
            program.process.kill()
            program.process.wait()


def wait_until(condition: Callable[[], bool], what: str, *alive: Program) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        for program in alive:
            program.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_paused(events_path: Path, workflow_ids: set[str], program: Program) -> None:
    def paused() -> bool:
        events = read_events(events_path)
        return {e.workflow_id for e in events if e.kind == "PAUSED" and e.tag == program.tag} >= (
            workflow_ids
        )

    wait_until(paused, f"{program.tag} to reach its crash points", program)


def stored(url: str, workflow_ids: list[str]) -> dict[str, Any]:
    """Each workflow's header and steps, read through a runtime of this process."""

    async def read() -> dict[str, Any]:
        runtime = durable.Runtime(
            durable.connect(url),
            executor_id="inspector",
            recover=False,
            registry=durable.Registry(),
        )
        async with runtime:
            return {
                w: (await runtime.get_workflow(w), await runtime.list_steps(w))
                for w in workflow_ids
            }

    return asyncio.run(read())


def check_history(
    workdir: Path,
    workflow_id: str,
    kind: str,
    order: str,
    runs: list[RunPlan],
    results: dict[str, Any],
    state: dict[str, Any],
) -> None:
    """Everything the runs of ``workflow_id`` did, against :func:`simulate`'s specification."""
    expected = simulate([run.pause for run in runs])
    effects = [e for e in read_effects(workdir / "effects.log") if e.workflow_id == workflow_id]
    events = [e for e in read_events(workdir / "events.log") if e.workflow_id == workflow_id]
    checkpointed_by: dict[int, str] = {}

    for run, spec in zip(runs, expected, strict=True):
        checkpoints = [int(e.detail) for e in events if e.kind == "CHECKPOINT" and e.tag == run.tag]
        # the crash point is where we meant it (the premise of everything below)
        assert checkpoints == spec.checkpoints, f"{workflow_id}: checkpoints of {run.tag}"
        for position in checkpoints:
            assert position not in checkpointed_by, f"{workflow_id}: step {position} recorded twice"
            checkpointed_by[position] = run.executor
        # exactly what the run had to do, and nothing more
        actual = [(e.step, e.phase) for e in effects if e.tag == run.tag]
        assert actual == spec.effects, f"{workflow_id}: side effects of {run.tag}"
        assert len({e.pid for e in effects if e.tag == run.tag}) <= 1

    # THE INVARIANT: a step whose checkpoint committed never ran again, in any later run
    for position, name in enumerate(STEPS):
        done = [e.tag for e in effects if e.step == name and e.phase == "done"]
        started = [e.tag for e in effects if e.step == name and e.phase == "started"]
        committed_in = next(
            r.tag for r, s in zip(runs, expected, strict=True) if position in s.checkpoints
        )
        assert done[-1] == committed_in and started[-1] == committed_in, (
            f"{workflow_id}: step {name} ran after its checkpoint committed in {committed_in}: "
            f"started in {started}, done in {done}"
        )
        assert done.count(committed_in) == 1

    assert results[workflow_id] == {"ok": expected_result(order)}, workflow_id
    info, steps = state[workflow_id]
    assert info.status is WorkflowStatus.SUCCEEDED
    assert info.output == expected_result(order)
    assert info.executor_id == runs[-1].executor
    # begun once by each run: one attempt, resumed by each run after the first, whose executor
    # was killed (interrupted attempts are counted apart from failed ones)
    assert (info.attempts, info.interruptions) == (1, len(runs) - 1)
    assert [(s.position, s.name, s.status, s.output, s.attempts, s.executor_id) for s in steps] == [
        (position, f"{kind}.{name}", StepStatus.SUCCEEDED, output, 1, checkpointed_by[position])
        for position, (name, output) in enumerate(zip(STEPS, expected_outputs(order), strict=True))
    ], workflow_id


#: The fixture each database's URL comes from.
URL_FIXTURES = {"sqlite": "sqlite_url", "postgres": "pg_url", "mysql": "mysql_backend_url"}


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A SQLite file, a fresh PostgreSQL database or an empty MySQL/MariaDB one."""
    return str(request.getfixturevalue(URL_FIXTURES[request.param]))


# -- crash at every point, restart, check ----------------------------------------------------------


POSTGRES = pytest.mark.postgres


@pytest.mark.parametrize(
    ("db", "restart", "mode"),
    [
        # every process runs both workflow kinds (async steps, sync steps); each restart kind
        # runs under both application modes, and on both databases
        ("sqlite", "same-executor", "async"),
        ("sqlite", "takeover", "sync"),
        pytest.param("postgres", "same-executor", "sync", marks=POSTGRES),
        pytest.param("postgres", "takeover", "async", marks=POSTGRES),
        pytest.param("mysql", "takeover", "sync", marks=pytest.mark.mysql),
    ],
)
def test_a_completed_step_never_runs_again(
    request: pytest.FixtureRequest,
    db: str,
    restart: str,
    mode: str,
    spawn: Callable[..., Program],
    tmp_path: Path,
) -> None:
    """One process runs an execution per crash point and workflow kind (async steps, sync steps)
    and is killed when all are frozen there; the next run finishes them all."""
    db_url = str(request.getfixturevalue(URL_FIXTURES[db]))
    takeover = restart == "takeover"
    ttl = 1.0 if takeover else 30.0
    heartbeat = 0.2  # well within the lease, even on a busy machine
    ids = {
        f"{kind}-{point}-{step}": (kind, (point, step))
        for kind in ("async", "sync")
        for point, step in SCENARIOS
    }
    orders = {workflow_id: f"o-{workflow_id}" for workflow_id in ids}
    first_plan = {
        w: {"kind": kind, "order": orders[w], "pause": {"point": p, "step": k}}
        for w, (kind, (p, k)) in ids.items()
    }
    second_plan = {w: {"kind": kind, "order": orders[w]} for w, (kind, _) in ids.items()}
    second_executor = "exec-B" if takeover else "exec-A"
    events_path = tmp_path / "events.log"

    def start(executor: str, tag: str, plan: dict[str, Any]) -> Program:
        return spawn(
            url=db_url,
            mode=mode,
            executor=executor,
            tag=tag,
            plan=plan,
            claim_ttl=ttl,
            heartbeat_interval=heartbeat,
        )

    first = start("exec-A", "run1", first_plan)
    wait_paused(events_path, set(ids), first)
    if takeover:
        # B starts while A is alive (frozen at its crash points, but its heartbeat keeps its
        # leases): B is refused, for longer than a lease lasts, and begins nothing. Except where
        # A is frozen inside a step's write: a write that waits longer than claim_ttl is taken
        # for stalled and its lease left to lapse (tests/test_stalled_write.py), so B may take
        # those over once it has, and a loaded machine may start B only after that
        in_write = {w for w, (_, (point, _)) in ids.items() if point.endswith("_checkpoint")}
        held = set(ids) - in_write
        second = start(second_executor, "run2", second_plan)

        def b_refused_past_the_first_leases() -> bool:
            events = read_events(events_path)
            claimed = max(e.at for e in events if e.kind == "CLAIM" and e.tag == "run1")
            refused = {
                e.workflow_id
                for e in events
                if e.kind == "CLAIM" and e.tag == "run2" and e.detail == "refused"
            }
            return refused >= held and time.time() > claimed + ttl + 0.2

        wait_until(b_refused_past_the_first_leases, "exec-B to be refused", first, second)
        begun = {
            e.workflow_id for e in read_events(events_path) if e.kind == "BEGIN" and e.tag == "run2"
        }
        assert not begun & held
        killed_at = first.kill()
    else:
        killed_at = first.kill()
        second = start(second_executor, "run2", second_plan)
    results = second.finish()

    events = read_events(events_path)
    begins = [e for e in events if e.kind == "BEGIN" and e.tag == "run2"]
    assert sorted(e.workflow_id for e in begins) == sorted(ids)  # each begun once
    for begin in begins:
        if takeover:
            # not before the dead executor's lease expired: its last claim or heartbeat started
            # at `renewed`, so the lease lasted at least until renewed + ttl; and promptly after
            renewed = max(
                e.at
                for e in events
                if e.workflow_id == begin.workflow_id
                and e.tag == "run1"
                and (e.kind, e.detail)
                in {("CLAIM", "ok"), ("CLAIM", "ok-recover"), ("EXTEND", "ok")}
            )
            assert renewed + ttl - 0.01 <= begin.at <= killed_at + ttl + 10, begin
        else:
            # its own lease: taken back at once, long before it would expire
            assert begin.at < killed_at + ttl / 2
    if not takeover:
        assert not [
            e for e in read_events(events_path) if e.tag == "run2" and e.detail == "refused"
        ]

    state = stored(db_url, list(ids))
    for workflow_id, (_, pause) in ids.items():
        runs = [RunPlan("run1", "exec-A", pause), RunPlan("run2", second_executor, None)]
        kind = ids[workflow_id][0]
        check_history(tmp_path, workflow_id, kind, orders[workflow_id], runs, results, state)


def test_crash_after_crash_each_step_runs_once(
    sqlite_url: str, spawn: Callable[..., Program], tmp_path: Path
) -> None:
    """Executions killed three times at different points, restarted each time, finish having
    run each checkpointed step once. (SQLite: the runtime's replay is the same on PostgreSQL,
    which the tests above cover.)"""
    db_url = sqlite_url
    pauses: list[Pause] = [("before", 1), ("inside", 2), ("after_checkpoint", 3), None]
    runs = [RunPlan(f"run{i + 1}", "exec-A", pause) for i, pause in enumerate(pauses)]
    ids = {f"{kind}-again": kind for kind in ("async", "sync")}
    results: dict[str, Any] = {}
    for run in runs:
        plan: dict[str, Any] = {w: {"kind": kind, "order": f"o-{w}"} for w, kind in ids.items()}
        if run.pause is not None:
            for spec in plan.values():
                spec["pause"] = {"point": run.pause[0], "step": run.pause[1]}
        program = spawn(
            url=db_url, mode="async", executor=run.executor, tag=run.tag, plan=plan, claim_ttl=30.0
        )
        if run.pause is None:
            results = program.finish()
        else:
            wait_paused(tmp_path / "events.log", set(ids), program)
            program.kill()
    state = stored(db_url, list(ids))
    for workflow_id in ids:
        check_history(
            tmp_path, workflow_id, ids[workflow_id], f"o-{workflow_id}", runs, results, state
        )


# -- zombies: a frozen executor wakes up after another one took over -------------------------------


def run_zombie(
    db_url: str, spawn: Callable[..., Program], tmp_path: Path, scenarios: list[tuple[str, int]]
) -> None:
    """exec-A freezes (SIGSTOP: no progress, no heartbeat) at each crash point; exec-B takes over
    once A's lease expires and finishes every execution; then A wakes up (SIGCONT) and goes on
    from where it was. Whatever A then tries to record is refused, so the stored history is
    right; and A must start no step: every step is by then completed by B."""
    ttl, heartbeat = 1.0, 0.2
    ids = {
        f"zombie-{kind}-{point}-{step}": (point, step)
        for kind in ("async", "sync")
        for point, step in scenarios
    }
    kinds = {workflow_id: workflow_id.split("-")[1] for workflow_id in ids}
    orders = {workflow_id: f"o-{workflow_id}" for workflow_id in ids}
    release = tmp_path / "release"
    zombie = spawn(
        url=db_url,
        mode="async",
        executor="exec-A",
        tag="run1",
        plan={
            w: {"kind": kinds[w], "order": orders[w], "pause": {"point": p, "step": k}}
            for w, (p, k) in ids.items()
        },
        claim_ttl=ttl,
        heartbeat_interval=heartbeat,
        release=release,
    )
    wait_paused(tmp_path / "events.log", set(ids), zombie)
    os.kill(zombie.process.pid, signal.SIGSTOP)
    try:
        taker = spawn(
            url=db_url,
            mode="async",
            executor="exec-B",
            tag="run2",
            plan={w: {"kind": kinds[w], "order": orders[w]} for w in ids},
            claim_ttl=ttl,
            heartbeat_interval=heartbeat,
        )
        results_b = taker.finish()
    finally:
        release.touch()
        os.kill(zombie.process.pid, signal.SIGCONT)
    results_a = zombie.finish(expected_status=3)
    state = stored(db_url, list(ids))

    effects = read_effects(tmp_path / "effects.log")
    events = read_events(tmp_path / "events.log")
    violations = []
    for workflow_id, pause in ids.items():
        order = orders[workflow_id]
        before_freeze, by_b = simulate([pause, None])
        # A's late writes were all refused: it recorded nothing after it froze
        assert results_a[workflow_id]["error"].startswith("ClaimLostError:"), workflow_id
        checkpoints_a = [
            int(e.detail)
            for e in events
            if e.workflow_id == workflow_id and e.kind == "CHECKPOINT" and e.tag == "run1"
        ]
        assert checkpoints_a == before_freeze.checkpoints, workflow_id
        # B did what was left, once, and its outcomes are the ones stored
        assert results_b[workflow_id] == {"ok": expected_result(order)}, workflow_id
        actual_b = [
            (e.step, e.phase) for e in effects if e.workflow_id == workflow_id and e.tag == "run2"
        ]
        assert actual_b == by_b.effects, workflow_id
        info, steps = state[workflow_id]
        assert (info.status, info.output, info.executor_id) == (
            WorkflowStatus.SUCCEEDED,
            expected_result(order),
            "exec-B",
        ), workflow_id
        assert [(s.name, s.status, s.output, s.executor_id) for s in steps] == [
            (
                f"{kinds[workflow_id]}.{name}",
                StepStatus.SUCCEEDED,
                output,
                "exec-A" if position in before_freeze.checkpoints else "exec-B",
            )
            for position, (name, output) in enumerate(
                zip(STEPS, expected_outputs(order), strict=True)
            )
        ], workflow_id
        # A, awake, may finish the step body it was in (at-least-once for an interrupted step),
        # and must start nothing: every other step is completed by B
        point, index = pause
        in_flight = [(STEPS[index], "done")] if point == "inside" else []
        actual_a = [
            (e.step, e.phase) for e in effects if e.workflow_id == workflow_id and e.tag == "run1"
        ]
        if actual_a != before_freeze.effects + in_flight:
            violations.append(
                f"{workflow_id}: after losing its lease, exec-A did "
                f"{actual_a[len(before_freeze.effects) :]}, steps exec-B had completed"
            )
    assert not violations, "\n".join(violations)


def test_a_zombie_step_in_flight_is_not_recorded(
    db_url: str, spawn: Callable[..., Program], tmp_path: Path
) -> None:
    """Frozen inside a step, or between a step's return and its checkpoint: awake, A finishes
    that step's body at most, its record is refused, and it goes no further."""
    run_zombie(db_url, spawn, tmp_path, [("inside", 2), ("before_checkpoint", 2)])


def test_a_zombie_starts_no_step_after_losing_its_lease(
    sqlite_url: str, spawn: Callable[..., Program], tmp_path: Path
) -> None:
    """Frozen before a step, or just after a checkpoint: awake, A must not run the next step,
    which B has completed meanwhile. (SQLite: the gap is in the runtime, not the backend.)"""
    run_zombie(sqlite_url, spawn, tmp_path, [("before", 2), ("after_checkpoint", 1)])


# -- fencing: two runtimes race for one execution --------------------------------------------------


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def race_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue(URL_FIXTURES[request.param]))


def spy(backend: durable.PersistentBackend, calls: list[tuple[Any, ...]]) -> None:
    """Record the backend's fenced writes and claims (whoever makes them) in ``calls``."""
    record_step, finish_workflow, claim_task = (
        backend.record_step,
        backend.finish_workflow,
        backend.claim_task,
    )

    async def recording_step(
        instance_id: str, step: durable.StepRecord, *, worker_id: str, task_id: str = WORKFLOW_TASK
    ) -> None:
        try:
            await record_step(instance_id, step, worker_id=worker_id, task_id=task_id)
        except durable.DurableError as exc:
            calls.append(("record_step", worker_id, step.position, exc))
            raise
        calls.append(("record_step", worker_id, step.position, None))

    async def recording_finish(instance_id: str, *, worker_id: str, **options: Any) -> Any:
        try:
            info = await finish_workflow(instance_id, worker_id=worker_id, **options)
        except durable.DurableError as exc:
            calls.append(("finish_workflow", worker_id, None, exc))
            raise
        calls.append(("finish_workflow", worker_id, None, None))
        return info

    async def recording_claim(
        instance_id: str, task_id: str, worker_id: str, ttl: Any, **options: Any
    ) -> Any:
        started = time.monotonic()
        claim = await claim_task(instance_id, task_id, worker_id, ttl, **options)
        calls.append(("claim_task", worker_id, (started, time.monotonic()), claim is not None))
        return claim

    backend.record_step = recording_step  # type: ignore[method-assign]
    backend.finish_workflow = recording_finish  # type: ignore[method-assign]
    backend.claim_task = recording_claim  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "a_wakes",
    [
        # B is inside the same step, whose position has no record yet: only the lease refuses A
        "while-b-runs-the-same-step",
        # B has recorded that step and runs the next one
        "while-b-runs-a-later-step",
        # B has finished the workflow: nobody holds it any more
        "after-b-finished",
    ],
)
async def test_fencing_a_step_outliving_its_lease_is_not_recorded(
    race_url: str, a_wakes: str
) -> None:
    """A's step blocks longer than A's lease, with A's heartbeat effectively off; B takes the
    execution over after expiry and finishes it. When A's step returns, its record is refused
    with ClaimLostError (its lease is renewed first, and the renewal is refused): A records
    nothing more, and the stored outcomes are B's."""
    ttl_a = 3.0  # B must meet it live: its start on a loaded machine can take a while
    registry = durable.Registry()
    executions: list[str] = []
    a_inside, release_a = asyncio.Event(), asyncio.Event()
    b_waiting, release_b = asyncio.Event(), asyncio.Event()

    async def b_waits_here(where: str) -> None:
        if a_wakes == f"while-b-runs-{where}":
            b_waiting.set()
            await release_b.wait()

    @durable.step(name="tests.race.prepare")
    async def prepare(order: str) -> str:
        executions.append("prepare")
        return f"prepared({order})"

    @durable.step(name="tests.race.slow")
    async def slow(value: str) -> str:
        call = f"slow#{sum(e.startswith('slow') for e in executions) + 1}"
        executions.append(call)
        if call == "slow#1":  # A's call: it outlives A's lease
            a_inside.set()
            await release_a.wait()
        else:  # B's call
            await b_waits_here("the-same-step")
        return f"{call}({value})"

    @durable.step(name="tests.race.last")
    async def last(value: str) -> str:
        executions.append("last")  # only B gets here
        await b_waits_here("a-later-step")
        return f"last({value})"

    @durable.workflow(name="tests.race.v1", registry=registry)
    async def race(order: str) -> str:
        return await last(await slow(await prepare(order)))

    calls: list[tuple[Any, ...]] = []
    if race_url == "memory://":
        backend_a = backend_b = durable.connect(race_url)  # one store, two runtimes
        spy(backend_a, calls)
    else:
        backend_a, backend_b = durable.connect(race_url), durable.connect(race_url)
        spy(backend_a, calls)
        spy(backend_b, calls)
    runtime_a = durable.Runtime(
        backend_a,
        executor_id="exec-A",
        claim_ttl=ttl_a,
        recover=False,
        registry=registry,
    )
    # no heartbeat during the test, so the lease just expires (the constructor refuses an
    # interval that is not below the lease: set past its check)
    runtime_a.heartbeat_interval = 3600
    runtime_b = durable.Runtime(
        backend_b,
        executor_id="exec-B",
        claim_ttl=30,
        recover=False,
        poll_interval=0.02,
        registry=registry,
    )
    workflow_id = "race-1"
    winner = "last(slow#2(prepared(o-1)))"

    async with runtime_a, runtime_b, asyncio.timeout(WAIT):
        run_a = asyncio.create_task(runtime_a.run(race, "o-1", workflow_id=workflow_id))
        await a_inside.wait()
        run_b = asyncio.create_task(runtime_b.run(race, "o-1", workflow_id=workflow_id))
        if a_wakes.startswith("while-b-runs"):
            await b_waiting.wait()
            release_a.set()
            with pytest.raises(durable.ClaimLostError) as lost:
                await run_a
            assert lost.value.holder == "exec-B"
            release_b.set()
            assert await run_b == winner
        else:
            assert await run_b == winner
            release_a.set()
            with pytest.raises(durable.ClaimLostError) as lost:
                await run_a
            assert lost.value.holder is None  # finished: nobody holds it any more
        assert lost.value.worker_id == "exec-A"

        # B waited for A's lease to expire, and was refused while it was live
        claims = [c for c in calls if c[0] == "claim_task"]
        a_claimed = next(c[2][0] for c in claims if c[1] == "exec-A" and c[3])
        b_claimed = next(c[2][1] for c in claims if c[1] == "exec-B" and c[3])
        assert any(c[1] == "exec-B" and not c[3] for c in claims)
        assert b_claimed >= a_claimed + ttl_a - 0.01

        # A recorded its first step and wrote nothing else: its late step's record was not
        # even sent (the lease's local window had passed, and its renewal found B holding the
        # execution, or nobody); the fence that refuses it when sent is the contract suite's
        writes = [c for c in calls if c[0] != "claim_task"]
        a_writes = [(c[0], c[2], type(c[3]).__name__) for c in writes if c[1] == "exec-A"]
        assert a_writes == [("record_step", 0, "NoneType")]
        # B replayed A's first step and recorded the rest
        b_writes = [(c[0], c[2], c[3]) for c in writes if c[1] == "exec-B"]
        assert b_writes == [
            ("record_step", 1, None),
            ("record_step", 2, None),
            ("finish_workflow", None, None),
        ]
        assert executions == ["prepare", "slow#1", "slow#2", "last"]

        info = await runtime_a.get_workflow(workflow_id)
        assert (info.status, info.output, info.executor_id) == (
            WorkflowStatus.SUCCEEDED,
            winner,
            "exec-B",
        )
        steps = await runtime_a.list_steps(workflow_id)
        assert [(s.name, s.status, s.output, s.executor_id) for s in steps] == [
            ("tests.race.prepare", StepStatus.SUCCEEDED, "prepared(o-1)", "exec-A"),
            ("tests.race.slow", StepStatus.SUCCEEDED, "slow#2(prepared(o-1))", "exec-B"),
            ("tests.race.last", StepStatus.SUCCEEDED, winner, "exec-B"),
        ]
        # A, asked again, returns B's result and runs nothing
        assert await runtime_a.run(race, "o-1", workflow_id=workflow_id) == winner
        assert executions == ["prepare", "slow#1", "slow#2", "last"]
