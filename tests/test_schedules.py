"""Cron schedules: the issue's figure (a schedule every second, three worker processes, each
tick run exactly once, none missing) on a SQLite file and on PostgreSQL; ticks after downtime
by policy and across daylight-saving changes, on a fake clock; the Client's and the CLI's
operations; bad input."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import durable
from durable.cli import main
from durable.cron import due_ticks, next_tick
from durable.models import MissedTicks
from durable.scheduler import Scheduler
from durable.scheduling import declared_schedules

HERE = Path(__file__).parent
PARIS = "Europe/Paris"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


class Clock:
    """A fake clock for the memory backend, moved by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@durable.workflow(name="test.schedules.report.v1", registry=durable.Registry())
async def report(region: str = "eu", *, scheduled_at: str) -> str:
    return f"{region}@{scheduled_at}"


# -- the figure ---------------------------------------------------------------------------------


def _run_figure(url: str, tmp_path: Path, seconds: float) -> None:
    log = tmp_path / "ticks.log"
    log.touch()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "scheduleprog.py"),
                "--url",
                url,
                "--executor-id",
                f"w{n}",
                "--log",
                str(log),
            ],
            cwd=HERE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    try:
        # the figure's time counts from the first tick: on a loaded machine starting three
        # interpreters (imports, migrations) takes a while, and no tick is due before a worker runs
        up = time.monotonic() + 120
        while not log.read_text() and time.monotonic() < up:
            time.sleep(0.1)
        time.sleep(seconds)
        infos = asyncio.run(_stop_schedule_and_drain(url))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    schedule, workflows = infos
    ticks = sorted(datetime.fromisoformat(w.input["kwargs"]["scheduled_at"]) for w in workflows)
    assert len(ticks) >= seconds - 5, f"only {len(ticks)} ticks in {seconds}s"
    first = ticks[0]
    assert ticks == [first + timedelta(seconds=n) for n in range(len(ticks))], "a tick is missing"
    assert schedule.last_tick_at == ticks[-1]
    assert all(w.status is durable.WorkflowStatus.SUCCEEDED for w in workflows)
    ran = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert ran == Counter(t.isoformat() for t in ticks), "a tick ran twice, or not at all"
    won = [err.count("schedule scheduleprog.tick.v1 fired") for err in errors]
    assert sum(1 for n in won if n) >= 2, f"fires won per process: {won}: no race happened"


async def _stop_schedule_and_drain(url: str) -> tuple[durable.ScheduleInfo, list[Any]]:
    """Pause the schedule, then wait until every execution it enqueued has finished."""
    async with durable.Client(url) as client:
        await client.pause_schedule("scheduleprog.tick.v1")
        await asyncio.sleep(1.5)  # a fire that read the schedule before the pause has committed
        deadline = time.monotonic() + 60
        while True:
            items = (await client.list_workflows(limit=1000)).items
            if all(i.status.is_terminal for i in items) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        return await client.get_schedule("scheduleprog.tick.v1"), items


@pytest.mark.slow
def test_every_second_with_three_workers_on_sqlite(sqlite_url: str, tmp_path: Path) -> None:
    _run_figure(sqlite_url, tmp_path, 30)  # the figure: 30 s


@pytest.mark.slow
@pytest.mark.postgres
def test_every_second_with_three_workers_on_postgres(pg_url: str, tmp_path: Path) -> None:
    _run_figure(pg_url, tmp_path, 30)


@pytest.mark.slow
def test_a_scheduler_killed_mid_fire_loses_and_repeats_no_tick(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Workers are SIGKILLed, one after another, while they fire an every-second schedule:
    the advance and the enqueue are one transaction, so the ticks stay contiguous and each is
    enqueued once (whoever fired it)."""
    log = tmp_path / "ticks.log"
    log.touch()

    def start(n: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                sys.executable,
                str(HERE / "scheduleprog.py"),
                "--url",
                sqlite_url,
                "--executor-id",
                f"k{n}",
                "--log",
                str(log),
            ],
            cwd=HERE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    survivor = start(0)
    try:
        for n in range(1, 6):
            victim = start(n)
            time.sleep(2.0 + 0.3 * n)
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=30)
        schedule, workflows = asyncio.run(_stop_schedule_and_drain(sqlite_url))
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=60)
    ticks = sorted(datetime.fromisoformat(w.input["kwargs"]["scheduled_at"]) for w in workflows)
    first = ticks[0]
    assert ticks == [first + timedelta(seconds=n) for n in range(len(ticks))]
    assert schedule.last_tick_at == ticks[-1]
    ran = {line.split()[0] for line in log.read_text().splitlines()}
    assert ran == {t.isoformat() for t in ticks}, "a tick never ran"


# -- ticks, policies and time zones, on a fake clock -------------------------------------------


def test_due_ticks_by_policy() -> None:
    since = utc(2030, 1, 1, 0, 0)
    late = utc(2030, 1, 1, 3, 0, 30)  # the 03:00 tick is 30 s late: it runs in every policy
    hourly = "0 * * * *"
    kwargs: dict[str, Any] = {"since": since, "now": late, "max_catchup": 2}
    assert due_ticks(hourly, "UTC", missed=MissedTicks.SKIP, **kwargs) == [utc(2030, 1, 1, 3)]
    assert due_ticks(hourly, "UTC", missed=MissedTicks.LATEST, **kwargs) == [utc(2030, 1, 1, 3)]
    assert due_ticks(hourly, "UTC", missed=MissedTicks.ALL, **kwargs) == [
        utc(2030, 1, 1, 1),
        utc(2030, 1, 1, 2),
        utc(2030, 1, 1, 3),
    ]
    quiet = utc(2030, 1, 1, 3, 30)  # no tick in the last minute: only missed ones
    kwargs["now"] = quiet
    assert due_ticks(hourly, "UTC", missed=MissedTicks.SKIP, **kwargs) == []
    assert due_ticks(hourly, "UTC", missed=MissedTicks.LATEST, **kwargs) == [utc(2030, 1, 1, 3)]
    assert due_ticks(hourly, "UTC", missed=MissedTicks.ALL, **kwargs) == [
        utc(2030, 1, 1, 2),
        utc(2030, 1, 1, 3),
    ]
    # a year behind on an every-second schedule: bounded work
    far = due_ticks(
        "* * * * * *",
        "UTC",
        since=utc(2029, 1, 1),
        now=quiet,
        missed=MissedTicks.ALL,
        max_catchup=5,
    )
    assert len(far) == 5 + 61


def test_daylight_saving_in_paris() -> None:
    """02:00 in Paris: on the day clocks jump from 02:00 to 03:00 it runs at 03:00 (01:00
    UTC); on the day 02:00 happens twice it runs once, the first time."""
    ticks = []
    at = utc(2026, 3, 27, 12)
    for _ in range(4):
        found = next_tick("0 2 * * *", PARIS, at)
        assert found is not None
        ticks.append(found)
        at = found
    assert ticks == [
        utc(2026, 3, 28, 1),  # CET: UTC+1
        utc(2026, 3, 29, 1),  # the jump: 03:00 CEST
        utc(2026, 3, 30, 0),  # CEST: UTC+2
        utc(2026, 3, 31, 0),
    ]
    autumn = []
    at = utc(2026, 10, 23, 12)
    for _ in range(3):
        found = next_tick("0 2 * * *", PARIS, at)
        assert found is not None
        autumn.append(found)
        at = found
    assert autumn == [utc(2026, 10, 24, 0), utc(2026, 10, 25, 0), utc(2026, 10, 26, 1)]


@pytest.mark.parametrize("cron", ["*/5 * * * *", "0 * * * *", "* * * * * *", "30 1 * * *"])
def test_every_tick_of_the_repeated_hour_runs_once(cron: str) -> None:
    """New York, 2025-11-02: 01:00 to 02:00 happens twice (EDT, then EST). A scheduler looking
    just after each tick, as a worker does, finds that tick due, in both passes of the hour;
    those of the second pass were all dropped (the backwards walk started an hour early)."""
    zone = "America/New_York"
    at = utc(2025, 11, 2, 4, 30)
    ran: list[datetime] = []
    while at < utc(2025, 11, 2, 7, 30):
        tick = next_tick(cron, zone, at)
        assert tick is not None
        if tick >= utc(2025, 11, 2, 7, 30):
            break
        ran += due_ticks(
            cron,
            zone,
            since=tick,
            now=tick + timedelta(milliseconds=300),
            missed=MissedTicks.SKIP,
            max_catchup=10,
        )
        at = tick
        if cron.count(" ") == 5 and tick >= utc(2025, 11, 2, 6, 2):  # seconds: a sample
            at = max(at, utc(2025, 11, 2, 6, 59, 50))
    expected = next_tick(cron, zone, utc(2025, 11, 2, 4, 30))
    assert ran and ran[0] == expected
    assert len(ran) == len(set(ran))  # none twice
    second_pass = [t for t in ran if utc(2025, 11, 2, 6) <= t < utc(2025, 11, 2, 7)]
    if cron == "30 1 * * *":  # a fixed local time that happens twice runs once, the first
        assert ran == [utc(2025, 11, 2, 5, 30)]
    elif cron == "* * * * * *":
        assert len(second_pass) >= 120
    else:
        assert len(second_pass) == 60 // (5 if cron.startswith("*/5") else 60)


async def test_downtime_by_policy_on_a_fake_clock() -> None:
    clock = Clock(utc(2030, 1, 1, 0, 0, 10))
    backend = durable.InMemoryBackend(clock=clock)
    async with durable.Client(backend) as client:
        for policy in MissedTicks:
            await client.create_schedule(
                policy.value, "0 * * * *", report, ["eu"], missed=policy, max_catchup=3
            )
        scheduler = Scheduler(backend)
        clock.now = utc(2030, 1, 1, 5, 20)  # five hourly ticks passed while nothing ran
        await scheduler.run_once()
        fired: dict[str, list[str]] = {p.value: [] for p in MissedTicks}
        for info in (await client.list_workflows(limit=100)).items:
            fired[info.id.split(":")[1]].append(info.input["kwargs"]["scheduled_at"][11:16])
        assert {k: sorted(v) for k, v in fired.items()} == {
            "skip": [],
            "latest": ["05:00"],
            "all": ["03:00", "04:00", "05:00"],
        }
        for schedule in await client.list_schedules():
            assert schedule.next_run_at == utc(2030, 1, 1, 6)
        # on time from now on: one run per tick for each
        clock.now = utc(2030, 1, 1, 6, 0, 1)
        await scheduler.run_once()
        await scheduler.run_once()
        assert len((await client.list_workflows(limit=100)).items) == 4 + 3


async def test_a_tick_gets_the_workflow_s_timeout_as_an_enqueue_of_the_function_does() -> None:
    """A scheduled workflow's ``timeout`` was ignored by its ticks (they ran with no deadline,
    while an enqueue of the function got one): the firing scheduler, which has the workflow,
    now gives each tick its deadline from the store's clock."""
    registry = durable.Registry()

    @durable.scheduled("0 * * * *", registry=registry)
    @durable.workflow(name="test.schedules.timed.v1", registry=registry, timeout=90)
    async def timed(*, scheduled_at: str) -> None: ...

    clock = Clock(utc(2030, 1, 1, 0, 59, 50))
    backend = durable.InMemoryBackend(clock=clock)
    async with durable.Runtime(backend, registry=registry) as runtime:
        clock.now = utc(2030, 1, 1, 1, 0, 5)
        await Scheduler(backend, registry).run_once()
        [tick] = (await runtime.client.list_workflows()).items
        assert tick.deadline == utc(2030, 1, 1, 1, 1, 35)  # fired at 01:00:05, 90 s
        enqueued = await runtime.get_workflow(await runtime.enqueue(timed, scheduled_at="x"))
        assert enqueued.deadline == tick.deadline


async def test_a_trigger_from_a_runtime_gets_the_workflow_s_timeout_and_retries() -> None:
    """``trigger_schedule`` ran the workflow with no deadline and 3 attempts, even from a
    runtime that has its code; a client of its own (no code) still gives neither."""
    registry = durable.Registry()

    @durable.scheduled("0 0 1 1 *", name="yearly", registry=registry)
    @durable.workflow(
        name="test.schedules.triggered.v1", registry=registry, timeout=90, max_attempts=7
    )
    async def triggered(*, scheduled_at: str) -> None: ...

    clock = Clock(utc(2030, 6, 1, 12))
    backend = durable.InMemoryBackend(clock=clock)
    async with durable.Runtime(backend, registry=registry) as runtime:
        info = await runtime.client.trigger_schedule("yearly")
        assert info.deadline == utc(2030, 6, 1, 12, 1, 30)
        assert info.max_attempts == 7
        async with durable.Client(backend) as client:
            clock.now += timedelta(seconds=1)
            bare = await client.trigger_schedule("yearly")
            assert bare.deadline is None and bare.max_attempts == 3


async def test_a_paris_schedule_across_the_spring_change() -> None:
    clock = Clock(utc(2026, 3, 27, 12))
    backend = durable.InMemoryBackend(clock=clock)
    async with durable.Client(backend) as client:
        await client.create_schedule("nightly", "0 2 * * *", report, timezone=PARIS)
        scheduler = Scheduler(backend)
        for hour in range(4 * 24):  # four days, looked at every hour
            clock.now = utc(2026, 3, 27, 12) + timedelta(hours=hour)
            await scheduler.run_once()
        ticks = sorted(
            i.input["kwargs"]["scheduled_at"] for i in (await client.list_workflows()).items
        )
    # each tick was seen on time (the scheduler looks on the hour), so each ran once
    assert ticks == [
        "2026-03-28T01:00:00+00:00",
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:00:00+00:00",
        "2026-03-31T00:00:00+00:00",
    ]


# -- the Client and the CLI ----------------------------------------------------------------------


def test_client_operations_sync(sqlite_url: str) -> None:
    with durable.Client(sqlite_url) as client:
        made = client.create_schedule_sync(
            "reports", "30 6 * * MON-FRI", report, ["us"], timezone="America/New_York"
        )
        assert made.workflow == "test.schedules.report.v1" and made.args == ["us"]
        assert made.next_run_at is not None and made.next_run_at > datetime.now(UTC)
        assert client.pause_schedule_sync("reports").paused is True
        resumed = client.resume_schedule_sync("reports")
        assert resumed.paused is False and resumed.next_run_at is not None
        run = client.trigger_schedule_sync("reports")
        assert run.name == "test.schedules.report.v1"
        assert run.input["args"] == ["us"] and "scheduled_at" in run.input["kwargs"]
        assert run.id.startswith("schedule:reports:trigger:")
        assert [s.name for s in client.list_schedules_sync()] == ["reports"]
        # created again with another definition: updated in place, pause kept
        client.pause_schedule_sync("reports")
        again = client.create_schedule_sync("reports", "0 7 * * *", report)
        assert again.cron == "0 7 * * *" and again.paused is True and again.args == []
        assert client.delete_schedule_sync("reports") is True
        assert client.delete_schedule_sync("reports") is False
        with pytest.raises(durable.ScheduleNotFoundError):
            client.get_schedule_sync("reports")
        with pytest.raises(durable.ScheduleNotFoundError):
            client.trigger_schedule_sync("reports")


def test_cli_schedules(sqlite_url: str) -> None:
    with durable.Client(sqlite_url) as client:
        client.create_schedule_sync("nightly", "0 2 * * *", report, timezone=PARIS)
    runner = CliRunner()
    listed = runner.invoke(main, ["schedules", "list", sqlite_url])
    assert listed.exit_code == 0, listed.output
    assert "nightly\ttest.schedules.report.v1\t0 2 * * *\tEurope/Paris\tactive\tnext=" in (
        listed.output
    )
    paused = runner.invoke(main, ["schedules", "pause", sqlite_url, "nightly"])
    assert paused.exit_code == 0 and "\tpaused\t" in paused.output
    resumed = runner.invoke(main, ["schedules", "resume", sqlite_url, "nightly"])
    assert resumed.exit_code == 0 and "\tactive\t" in resumed.output
    triggered = runner.invoke(main, ["schedules", "trigger", sqlite_url, "nightly"])
    assert triggered.exit_code == 0 and "schedule:nightly:trigger:" in triggered.output
    assert triggered.output.strip().endswith(": pending")
    deleted = runner.invoke(main, ["schedules", "delete", sqlite_url, "nightly"])
    assert deleted.exit_code == 0 and "nightly: deleted" in deleted.output
    missing = runner.invoke(main, ["schedules", "delete", sqlite_url, "nightly"])
    assert missing.exit_code == 1 and "no schedule named 'nightly'" in missing.output
    unknown = runner.invoke(main, ["schedules", "pause", sqlite_url, "nope"])
    assert unknown.exit_code == 1 and "no schedule named 'nope'" in unknown.output


async def test_declared_schedules_are_stored_when_a_runtime_starts() -> None:
    registry = durable.Registry()

    @durable.scheduled("*/5 * * * *", timezone=PARIS, args=["x"], registry=registry)
    @durable.scheduled("0 0 * * *", name="midnight", missed="all", registry=registry)
    @durable.workflow(name="test.schedules.declared.v1", registry=registry)
    async def declared(arg: str = "", *, scheduled_at: str) -> None: ...

    backend = durable.InMemoryBackend()
    async with durable.Runtime(backend, registry=registry) as runtime:
        stored = {s.name: s for s in await runtime.client.list_schedules()}
    assert set(stored) == {"midnight", "test.schedules.declared.v1"}
    assert stored["test.schedules.declared.v1"].args == ["x"]
    assert stored["test.schedules.declared.v1"].timezone == PARIS
    assert stored["midnight"].missed is MissedTicks.ALL


_DEPLOY = """
import asyncio, logging, sys
import durable

logging.basicConfig(level=logging.INFO)
url, deploy = sys.argv[1], sys.argv[2]
reg = durable.Registry()

@durable.workflow(name="deploy.nightly.v1", registry=reg)
async def nightly(*, scheduled_at: str) -> None: ...

if deploy == "1":  # two schedules declared on the workflow
    durable.scheduled("0 2 * * *", name="nightly", registry=reg)(nightly)
    durable.scheduled("0 3 * * *", name="audit", registry=reg)(nightly)
elif deploy == "2":  # "nightly" renamed "nightly-utc", "audit" removed
    durable.scheduled("0 2 * * *", name="nightly-utc", registry=reg)(nightly)

async def main() -> None:
    async with durable.Runtime(durable.connect(url), registry=reg) as runtime:
        if deploy == "1":  # and one from a client, for the same workflow
            await runtime.client.create_schedule("by-hand", "0 4 * * *", nightly)

asyncio.run(main())
"""


def test_a_deploy_deletes_the_declared_schedules_its_code_dropped(tmp_path: Path) -> None:
    """A schedule declared in code, then removed or renamed in the next deploy, stops firing
    when the new code starts (it used to be stored forever and fire every tick); a schedule
    created from a client for the same workflow, and one of a workflow the new code does not
    serve, are kept."""
    url = f"sqlite:///{tmp_path / 'app.db'}"

    def deploy(n: str) -> subprocess.CompletedProcess[str]:
        run = subprocess.run(
            [sys.executable, "-c", _DEPLOY, url, n], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        return run

    def stored() -> dict[str, bool]:
        async def read() -> dict[str, bool]:
            async with durable.Client(url) as client:
                return {s.name: s.declared for s in await client.list_schedules()}

        return asyncio.run(read())

    deploy("1")
    assert stored() == {"nightly": True, "audit": True, "by-hand": False}
    second = deploy("2")
    assert stored() == {"nightly-utc": True, "by-hand": False}
    assert "schedule audit deleted: its workflow deploy.nightly.v1 is served here" in second.stderr
    deploy("1")  # rolled back: both come back, the renamed one goes, the client's one stays
    assert stored() == {"nightly": True, "audit": True, "by-hand": False}
    deploy("other")  # serves the workflow, declares nothing: every declared one goes
    assert stored() == {"by-hand": False}


async def test_a_runtime_keeps_the_declared_schedules_of_workflows_it_does_not_serve() -> None:
    here, there = durable.Registry(), durable.Registry()

    @durable.scheduled("*/5 * * * *", registry=here)
    @durable.workflow(name="test.schedules.here.v1", registry=here)
    async def served_here(*, scheduled_at: str) -> None: ...

    @durable.workflow(name="test.schedules.there.v1", registry=there)
    async def served_there(*, scheduled_at: str) -> None: ...

    backend = durable.InMemoryBackend()
    async with durable.Runtime(backend, registry=here):
        pass
    async with durable.Runtime(backend, registry=there, executor_id="there") as runtime:
        kept = await runtime.client.list_schedules()
    assert [(s.name, s.declared) for s in kept] == [("test.schedules.here.v1", True)]


async def test_a_schedule_fires_only_where_its_workflow_is_served() -> None:
    """A scheduler fires the schedules of the workflows its runtime serves, declared in code or
    created from a client: their ticks get the workflow's timeout and retry policy. A schedule
    whose workflow no running code serves any more (removed in a deploy) fires nowhere: it used
    to enqueue an execution every tick that no worker would ever run."""
    here, there = durable.Registry(), durable.Registry()

    @durable.scheduled("0 * * * *", registry=here)
    @durable.workflow(name="test.schedules.served.v1", registry=here, timeout=90)
    async def served(*, scheduled_at: str) -> None: ...

    @durable.workflow(name="test.schedules.elsewhere.v1", registry=there)
    async def elsewhere(*, scheduled_at: str) -> None: ...

    clock = Clock(utc(2030, 1, 1, 0, 59, 50))
    backend = durable.InMemoryBackend(clock=clock)
    async with durable.Runtime(backend, registry=here) as runtime:  # stores the declared one
        await runtime.client.create_schedule("by-hand", "0 * * * *", "test.schedules.served.v1")
        await backend.put_schedule(  # declared by code since removed, with its workflow
            durable.ScheduleInfo(
                name="gone",
                workflow="test.schedules.removed.v1",
                cron="0 * * * *",
                timezone="UTC",
                declared=True,
                next_run_at=utc(2030, 1, 1, 1),
            )
        )
        clock.now = utc(2030, 1, 1, 1, 0, 5)
        assert await Scheduler(backend, there).run_once() is None  # serves neither
        assert (await runtime.client.list_workflows()).items == []
        await Scheduler(backend, here).run_once()
        ticks = (await runtime.client.list_workflows()).items
        assert sorted(t.id.split(":")[1] for t in ticks) == ["by-hand", "test.schedules.served.v1"]
        assert {t.deadline for t in ticks} == {utc(2030, 1, 1, 1, 1, 35)}  # its 90 s timeout
        by_name = {s.name: s for s in await runtime.client.list_schedules()}
        assert by_name["gone"].next_run_at == utc(2030, 1, 1, 1)  # still due: nobody fired it
        assert by_name["by-hand"].next_run_at == utc(2030, 1, 1, 2)


async def test_a_workers_scheduler_fires_only_what_the_worker_claims() -> None:
    """A worker that claims some of its registry's workflows (``names=``, a workflow disabled
    here) or some queues fires only those schedules: the others' ticks were enqueued for no
    worker, piling up until one came."""
    registry = durable.Registry()

    @durable.scheduled("0 * * * *", registry=registry)
    @durable.workflow(name="test.schedules.claimed.v1", registry=registry)
    async def claimed(*, scheduled_at: str) -> None: ...

    @durable.scheduled("0 * * * *", registry=registry)
    @durable.workflow(name="test.schedules.other.v1", registry=registry)
    async def other(*, scheduled_at: str) -> None: ...

    clock = Clock(utc(2030, 1, 1, 0, 59, 50))
    backend = durable.InMemoryBackend(clock=clock)

    def ticks() -> list[str]:
        return sorted(w.name for w in backend._workflows.values())

    async with durable.Runtime(backend, registry=registry, recover=False) as rt:
        only = await rt.start_worker(names=["test.schedules.claimed.v1"], poll_interval=60)
        elsewhere = await rt.start_worker(queues=["elsewhere"], poll_interval=60)
        clock.now = utc(2030, 1, 1, 1, 0, 5)
        await elsewhere.scheduler.run_once()  # its queue is none of theirs
        assert ticks() == []
        await only.scheduler.run_once()
        assert ticks() == ["test.schedules.claimed.v1"]
        registry.disable("test.schedules.claimed.v1")
        clock.now = utc(2030, 1, 1, 2, 0, 5)
        await only.scheduler.run_once()
        assert ticks() == ["test.schedules.claimed.v1"]  # disabled here: not fired
        await only.stop()
        await elsewhere.stop()


async def test_schedules_left_to_others_do_not_keep_a_scheduler_from_its_own() -> None:
    """Schedules that a scheduler leaves (no workflow of its) stay due, so they come first in
    every look: more of them than a look reads must not keep its own schedule from firing."""
    registry = durable.Registry()

    @durable.workflow(name="test.schedules.mine.v1", registry=registry)
    async def mine(*, scheduled_at: str) -> None: ...

    clock = Clock(utc(2030, 1, 1, 0, 0, 30))
    backend = durable.InMemoryBackend(clock=clock)
    async with durable.Client(backend) as client:
        for n in range(130):
            await backend.put_schedule(
                durable.ScheduleInfo(
                    name=f"a-other-{n:03}",
                    workflow="test.schedules.others.v1",
                    cron="* * * * *",
                    timezone="UTC",
                    next_run_at=utc(2030, 1, 1),
                )
            )
        await client.create_schedule("z-mine", "* * * * *", mine)
        clock.now = utc(2030, 1, 1, 0, 1, 1)  # z-mine's first tick, after the others'
        scheduler = Scheduler(backend, registry)
        await scheduler.run_once()  # reads the first 100, all others'
        await scheduler.run_once()  # reads past the ones it left
        [tick] = (await client.list_workflows()).items
        assert tick.id == "schedule:z-mine:2030-01-01T00:01:00+00:00"


async def test_a_schedule_goes_to_the_registry_its_workflow_was_registered_in() -> None:
    """Without ``registry=`` of its own, ``@durable.scheduled`` declares the schedule where
    ``@durable.workflow(registry=...)`` put the workflow (it used to go to the default
    registry, which the runtime serving the workflow never read: nothing ever ticked, and
    nothing said why)."""
    registry = durable.Registry()

    @durable.scheduled("*/5 * * * *")
    @durable.workflow(name="test.schedules.own-registry.v1", registry=registry)
    async def own(*, scheduled_at: str) -> None: ...

    assert own.registry is registry
    async with durable.Runtime(durable.InMemoryBackend(), registry=registry) as runtime:
        stored = await runtime.client.list_schedules()
    assert [(s.name, s.workflow) for s in stored] == [
        ("test.schedules.own-registry.v1", "test.schedules.own-registry.v1")
    ]
    async with durable.Runtime(durable.InMemoryBackend()) as default_runtime:
        assert "test.schedules.own-registry.v1" not in {
            s.name for s in await default_runtime.client.list_schedules()
        }


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "every day"}, "cron"),
        ({"cron": ""}, "cron"),
        ({"cron": 5}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"timezone": "Europe"}, "timezone"),  # a directory of the zone database: OSError
        ({"timezone": "Europe/" + "x" * 300}, "timezone"),  # a name too long for a file
        ({"missed": "sometimes"}, "missed"),
        ({"workflow": "no.such.workflow.v1"}, "workflow"),
        ({"workflow": 42}, "workflow"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"max_catchup": 0}, "max_catchup"),
        ({"args": "abc"}, "args"),
        ({"kwargs": {"scheduled_at": "x"}}, "kwargs"),
        ({"kwargs": {1: 2}}, "kwargs"),
    ],
)
async def test_bad_input_names_the_argument(kwargs: dict[str, Any], named: str) -> None:
    call: dict[str, Any] = {"name": "s", "cron": "0 2 * * *", "workflow": report}
    call.update(kwargs)
    async with durable.Client("memory://") as client:
        with pytest.raises(durable.InvalidArgumentError, match=named):
            await client.create_schedule(**call)
        assert await client.list_schedules() == []


def test_bad_decorations() -> None:
    with pytest.raises(durable.InvalidArgumentError, match="cron"):
        durable.scheduled("not cron")
    with pytest.raises(durable.InvalidArgumentError, match="timezone"):
        durable.scheduled("0 2 * * *", timezone="Nowhere/City")
    with pytest.raises(durable.InvalidArgumentError, match="missed"):
        durable.scheduled("0 2 * * *", missed="never")
    with pytest.raises(durable.InvalidArgumentError, match=r"above @durable\.workflow"):

        @durable.scheduled("0 2 * * *")
        async def plain() -> None: ...

    # every tick would fail at once: it takes no scheduled_at, or not the schedule's args
    registry = durable.Registry()
    with pytest.raises(durable.InvalidArgumentError, match="add a scheduled_at parameter"):

        @durable.scheduled("0 2 * * *", registry=registry)
        @durable.workflow(name="tests.sched.no_tick.v1", registry=registry)
        async def no_tick() -> None: ...

    with pytest.raises(durable.InvalidArgumentError, match=r"args=\('a', 'b'\)"):

        @durable.scheduled("0 2 * * *", args=["a", "b"], registry=registry)
        @durable.workflow(name="tests.sched.one_arg.v1", registry=registry)
        async def one_arg(x: str, *, scheduled_at: str) -> None: ...

    @durable.scheduled("0 2 * * *", args=["a"], registry=registry)  # these fit
    @durable.workflow(name="tests.sched.fits.v1", registry=registry)
    async def fits(x: str, **tick: str) -> None: ...

    # stacked without names: both would be named after the workflow, the later one replacing
    # the earlier (the 17:00 schedule was dropped without a word)
    with pytest.raises(durable.ConfigurationError, match=r"give each @durable\.scheduled"):

        @durable.scheduled("0 9 * * *", registry=registry)
        @durable.scheduled("0 17 * * *", registry=registry)
        @durable.workflow(name="tests.sched.twice.v1", registry=registry)
        async def twice(*, scheduled_at: str) -> None: ...

    @durable.scheduled("0 9 * * *", name="morning", registry=registry)  # named: both kept
    @durable.scheduled("0 17 * * *", name="evening", registry=registry)
    @durable.workflow(name="tests.sched.named_twice.v1", registry=registry)
    async def named_twice(*, scheduled_at: str) -> None: ...

    assert {"morning", "evening"} <= {d.name for d in declared_schedules(registry)}


@durable.workflow(name="tests.sched.no_tick_param.v1", registry=durable.Registry())
async def no_tick_param(x: int) -> None: ...


@pytest.mark.parametrize(
    ("workflow", "args", "kwargs", "named"),
    [
        (no_tick_param, [1], {}, "scheduled_at"),  # no scheduled_at parameter
        (report, ["eu", "us"], {}, r"args=\('eu', 'us'\)"),  # one positional too many
        (report, ["eu"], {"region": "us"}, "region"),  # the same argument twice
    ],
)
async def test_create_schedule_refuses_a_workflow_that_cannot_take_its_ticks(
    sqlite_url: str, workflow: Any, args: list[Any], kwargs: dict[str, Any], named: str
) -> None:
    """``create_schedule`` given the decorated workflow checks that it can take the schedule's
    arguments and ``scheduled_at``, as ``@durable.scheduled`` and an enqueue of the function do:
    it used to store the schedule, and every tick failed with a ``TypeError``."""
    async with durable.Client(sqlite_url) as client:
        with pytest.raises(durable.InvalidArgumentError, match=named) as refused:
            await client.create_schedule("s", "0 2 * * *", workflow, args, kwargs)
        assert "create_schedule('s')" in str(refused.value)
        assert await client.list_schedules() == []  # nothing stored
        await client.create_schedule("s", "0 2 * * *", report, ["eu"])  # one that fits
        assert [s.name for s in await client.list_schedules()] == ["s"]


async def test_an_unreadable_schedule_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(utc(2030, 1, 1, 0, 0, 30))
    backend = durable.InMemoryBackend(clock=clock)
    async with backend:
        due = utc(2030, 1, 1)
        bad = durable.ScheduleInfo(
            name="a-bad", workflow="w", cron="nonsense", timezone="UTC", next_run_at=due
        )
        good = durable.ScheduleInfo(
            name="b-good", workflow="w", cron="* * * * *", timezone="UTC", next_run_at=due
        )
        await backend.put_schedule(bad)
        await backend.put_schedule(good)
        await Scheduler(backend).run_once()
        assert [w.id for w in (await backend.list_snapshots()).items] == [
            "schedule:b-good:2030-01-01T00:00:00+00:00"
        ]
        assert (await backend.get_schedule("a-bad")).next_run_at == due
    assert "schedule a-bad cannot be read" in caplog.text


class SlowClock(Clock):
    """A clock that moves on by ``step`` at each reading: a scheduler whose every look takes
    that long."""

    def __init__(self, now: datetime, step: timedelta) -> None:
        super().__init__(now)
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now


async def test_a_backlog_of_due_schedules_is_fired_look_after_look_none_missed() -> None:
    """Many schedules on one tick (one per tenant at 02:00): a look reads 100, and the scheduler
    waited its interval before the next one, so the later ones were more than 60 s late when
    it reached them and their tick was skipped as missed, though it had been running all
    along. It now looks again at once, and judges every look of a backlog at the first one's
    time."""
    clock = SlowClock(utc(2030, 1, 1, 1, 59, 59), timedelta(0))
    backend = durable.InMemoryBackend(clock=clock)
    async with durable.Client(backend) as client:
        for n in range(250):
            await client.create_schedule(f"tenant-{n:03}", "0 2 * * *", report, ["eu"])
        clock.now = utc(2030, 1, 1, 2, 0, 1)
        clock.step = timedelta(seconds=1)  # each reading of the clock: a second later
        stopping = asyncio.Event()
        scheduler = Scheduler(backend)
        running = asyncio.create_task(scheduler.run(stopping, interval=30))
        try:
            for _ in range(200):
                if scheduler.fired == 250:
                    break
                await asyncio.sleep(0.01)
        finally:
            stopping.set()
            await running
        assert scheduler.fired == 250
        for schedule in await client.list_schedules():
            assert schedule.next_run_at == utc(2030, 1, 2, 2)


def test_the_next_tick_inside_a_repeated_hour_is_after_it() -> None:
    """Clocks go back at 03:00 CEST on 2027-10-31 (to 02:00 CET): from the second 02:15, the
    next tick of 02:30 was the first 02:30, an hour before."""
    second_quarter_past_two = utc(2027, 10, 31, 1, 15)  # 02:15 CET
    after = next_tick("30 2 * * *", "Europe/Paris", second_quarter_past_two)
    assert after == utc(2027, 11, 1, 1, 30)  # the next day's 02:30 CET (it ran once, at 00:30Z)
    assert next_tick("*/20 2 * * *", "Europe/Paris", second_quarter_past_two) == utc(
        2027, 10, 31, 1, 20
    )


async def test_max_catchup_is_at_most_what_one_firing_runs() -> None:
    async with durable.Client("memory://") as client:
        with pytest.raises(durable.InvalidArgumentError, match="max_catchup"):
            await client.create_schedule(
                "every", "* * * * * *", report, ["eu"], missed="all", max_catchup=5000
            )


@pytest.mark.parametrize("zone", ["localtime", "Factory"])
async def test_the_hosts_zone_setting_is_no_time_zone(zone: str) -> None:
    """``localtime`` (a link to the host's ``/etc/localtime``) was accepted: workers on hosts
    set to other zones computed other ticks for one schedule."""
    async with durable.Client("memory://") as client:
        with pytest.raises(durable.InvalidArgumentError, match="IANA name"):
            await client.create_schedule("local", "0 2 * * *", report, ["eu"], timezone=zone)
