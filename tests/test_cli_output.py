"""The CLI's output for people and scripts: tables in a terminal, tab-separated lines in a pipe,
``--json`` everywhere a command lists; ``workflows list`` filters; ``workflows show`` (the step
timeline), ``watch``, ``resume``; ``durable executors``. Over SQLite files (and PostgreSQL)
filled by real workflow runs (tests/webdata.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import webdata
from click.testing import CliRunner, Result

import durable
from durable import cli_actions, cli_output, cli_workflows
from durable.cli import main
from durable.cli_output import bar, parse_duration, seconds


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def as_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fill(url: str, orders: int = 3) -> None:
    """webdata.fill with its retry counts fresh (each filled database gets its retried step),
    and put back as they were for other test modules."""
    saved = dict(webdata.FLAKY)
    webdata.FLAKY.clear()
    try:
        asyncio.run(webdata.fill(url, orders))
    finally:
        webdata.FLAKY.clear()
        webdata.FLAKY.update(saved)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file with real runs of webdata's workflows (made once; tests that change it
    work on a copy, :func:`copy`)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'filled.db'}"
    fill(url)
    return url


@pytest.fixture
def copy(filled: str, tmp_path: Path) -> str:
    target = tmp_path / "copy.db"
    shutil.copy(filled.removeprefix("sqlite:///"), target)
    return f"sqlite:///{target}"


def ids(rows: list[dict[str, Any]]) -> set[str]:
    return {row["id"] for row in rows}


def test_list_json_is_a_list_of_objects_with_iso_times(filled: str) -> None:
    rows = as_json("workflows", "list", filled)
    assert {"order-0", "order-1", "order-2", "broken-7", "parent-40", "nap-5"} <= ids(rows)
    for row in rows:
        created = datetime.fromisoformat(row["created_at"])
        assert created.utcoffset() is not None
        assert row["status"] in {s.value for s in durable.WorkflowStatus}
    broken = next(r for r in rows if r["id"] == "broken-7")
    assert broken["status"] == "failed" and "malformed" in broken["error"]["message"]
    newest_first = [datetime.fromisoformat(r["created_at"]) for r in rows]
    assert newest_first == sorted(newest_first, reverse=True)


def test_list_filters(filled: str) -> None:
    every = as_json("workflows", "list", filled)
    assert ids(as_json("workflows", "list", filled, "--status", "failed")) == {"broken-7"}
    named = as_json("workflows", "list", filled, "--name", "web.order.v1")
    assert {r["name"] for r in named} == {"web.order.v1"} and len(named) == 5  # 3, child, queued
    slow = as_json("workflows", "list", filled, "--queue", "slow")
    assert [r["queue"] for r in slow] == ["slow"] and len(slow) == 1
    assert ids(as_json("workflows", "list", filled, "--since", "1h")) == ids(every)
    assert as_json("workflows", "list", filled, "--until", "1h") == []
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert as_json("workflows", "list", filled, "--since", later) == []
    # --since cuts where the listing crosses it: the three newest only
    third = datetime.fromisoformat(every[2]["created_at"]).isoformat()
    assert ids(as_json("workflows", "list", filled, "--since", third)) == ids(every[:3])
    assert len(as_json("workflows", "list", filled, "--queue", "default", "--limit", "2")) == 2
    both = as_json("workflows", "list", filled, "--status", "succeeded", "--status", "failed")
    assert {r["status"] for r in both} == {"succeeded", "failed"}


@pytest.mark.parametrize("bad", ["5x", "1 hour", "-1h", "0s", "yesterday"])
def test_a_bad_duration_is_a_usage_error_naming_the_option(filled: str, bad: str) -> None:
    result = run("workflows", "list", filled, "--since", bad)
    assert result.exit_code == 2
    assert "--since" in result.output and "duration" in result.output
    assert run("workflows", "list", filled, "--until", bad).exit_code == 2


def test_plain_lines_in_a_pipe_and_a_table_in_a_terminal(
    filled: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    piped = run("workflows", "list", filled, "--status", "failed")
    assert piped.stdout.splitlines()[0].split("\t")[:3] == ["broken-7", "web.broken.v1", "failed"]
    monkeypatch.setattr(cli_output, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "200")  # rich's width where stdout is not a terminal
    table = run("workflows", "list", filled, "--status", "failed")
    assert table.exit_code == 0
    assert "\t" not in table.stdout
    header = next(line for line in table.stdout.splitlines() if "status" in line)
    assert "id" in header and "queue" in header and "created" in header
    assert "broken-7" in table.stdout and "failed" in table.stdout
    steps = run("workflows", "steps", filled, "order-0")
    assert "web.flaky" in steps.stdout and "attempts" in steps.stdout


def test_steps_waiting_messages_get_and_executors_as_json(filled: str) -> None:
    steps = as_json("workflows", "steps", filled, "order-0")
    assert [s["attempts"] for s in steps] == [1, 2, 1]
    assert [s["attempts"] for s in steps] == [1, 2, 1]
    assert all(datetime.fromisoformat(s["completed_at"]) for s in steps)
    assert "serialized_output" not in steps[0]
    waiting = as_json("workflows", "waiting", filled)
    assert [(w["workflow_id"], w["kind"], w["name"]) for w in waiting] == [
        ("nap-5", "sleep", "web.nap.v1")
    ]
    assert waiting[0]["text"].startswith("sleeping until ")
    assert "workflow" not in waiting[0] and datetime.fromisoformat(waiting[0]["until"])
    assert as_json("workflows", "messages", filled, "order-0") == []
    got = run("workflows", "get", filled, "order-0")
    header = json.loads(got.stdout)
    assert header["output"] == {"n": 0, "result": "stored 2"}
    assert datetime.fromisoformat(header["completed_at"]).utcoffset() is not None
    queues = as_json("queues", filled)
    assert [(q["queue"], q["pending"], q["running"]) for q in queues] == [
        ("default", 1, 0),  # nap-5
        ("slow", 1, 0),
    ]
    assert datetime.fromisoformat(queues[1]["oldest"]).utcoffset() is not None
    assert run("queues", filled).stdout.splitlines()[1].startswith("slow\tpending=1\trunning=0\t")
    executors = as_json("executors", filled)
    assert [(e["id"], e["state"]) for e in executors] == [("web-test-1", "stopped")]


def test_show_ends_a_cancelled_sleep_with_the_workflow(copy: str) -> None:
    """A workflow cancelled while it slept: its sleep stays pending in the history, and
    ``show`` says it was left unfinished, with a duration that stops at the cancel instead of
    growing with every look."""
    url = copy
    assert run("workflows", "cancel", url, "nap-5").exit_code == 0
    looks = []
    for _ in range(2):
        shown = run("workflows", "show", url, "nap-5").stdout
        assert "sleeping until" not in shown
        (line,) = [row for row in shown.splitlines() if "durable.sleep" in row]
        assert "unfinished (cancelled)" in line
        looks.append(line)
        time.sleep(0.05)
    assert looks[0] == looks[1]  # the duration is fixed


def test_show_says_how_many_children_there_are_beyond_those_it_lists(
    copy: str, tmp_path: Path
) -> None:
    """``show`` (and the web page) list the newest 200 children: with 201, the CLI said
    "children (200):" and the page gave no sign of more."""
    from starlette.testclient import TestClient

    from durable.models import WorkflowSnapshot
    from durable.web import create_app

    async def spawn() -> None:
        backend = durable.connect(copy)
        await backend.start()
        try:
            await backend.create_workflows(
                [
                    (WorkflowSnapshot(id=f"many/{i}", name="kid.v1", parent_id="order-0"), None)
                    for i in range(201)
                ]
            )
        finally:
            await backend.close()

    asyncio.run(spawn())
    shown = run("workflows", "show", copy, "order-0").stdout
    assert "children (201, the newest 200 shown):" in shown
    assert sum(1 for line in shown.splitlines() if "kid.v1" in line) == 200
    with TestClient(create_app(copy)) as web:
        page = web.get("/workflows/order-0").text
    assert "(201, the newest 200 shown)" in page


def test_show_draws_the_step_timeline(filled: str) -> None:
    shown = run("workflows", "show", filled, "order-0")
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0] == "order-0  web.order.v1  succeeded"
    start = lines.index("steps (3):")
    steps = lines[start + 1 : start + 4]
    for position, (line, name) in enumerate(
        zip(steps, ["web.fetch", "web.flaky", "web.store"], strict=True)
    ):
        assert line.split()[:3] == [str(position), name, "succeeded"]
        assert "web-test-1" in line and line.count("|") == 2 and "#" in line
    assert "x2" in steps[1]  # the retried step's attempts
    parent = run("workflows", "show", filled, "parent-40").stdout
    assert "children (1):" in parent and "parent-40/1  web.order.v1  succeeded" in parent
    assert "child parent-40/1" in parent
    assert "sleeping until " in run("workflows", "show", filled, "nap-5").stdout
    broken = run("workflows", "show", filled, "broken-7").stdout
    assert "error     builtins.ValueError: order 7 is malformed" in broken
    assert "failed (reruns)" in broken
    missing = run("workflows", "show", filled, "nobody")
    assert missing.exit_code == 1 and "nobody" in missing.stderr


def test_watch_counts_by_status(filled: str) -> None:
    once = run("workflows", "watch", filled, "--once")
    assert once.exit_code == 0, once.output
    counts = dict(item.split("=") for item in once.stdout.split())
    every = as_json("workflows", "list", filled)
    for status in durable.WorkflowStatus:
        assert int(counts[status.value]) == sum(r["status"] == status.value for r in every)
    twice = run("workflows", "watch", filled, "--count", "2", "--interval", "0.1")
    assert twice.stdout.splitlines() == [once.stdout.strip()] * 2


def test_resume_is_retry(copy: str) -> None:
    queued = as_json("workflows", "list", copy, "--queue", "slow")[0]["id"]
    assert run("workflows", "cancel", copy, queued).stdout.strip() == f"{queued}: cancelled"
    assert run("workflows", "resume", copy, queued).stdout.strip() == f"{queued}: pending"
    # not finished (resumed already; a child its parent's resume resumed): nothing to do, as
    # a cancel of a finished one; it exited 1 after the first act had done the job
    again = run("workflows", "resume", copy, queued)
    assert again.exit_code == 0 and again.stdout.strip() == f"{queued}: pending"
    assert "not finished (pending): nothing to resume" in again.stderr
    assert run("workflows", "resume", copy, "broken-7").stdout.strip() == "broken-7: pending"
    refused = run("workflows", "resume", copy, "order-0")
    assert refused.exit_code == 1 and "order-0" in refused.stderr


def test_bulk_cancel_and_retry_by_filter(copy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queued = as_json("workflows", "list", copy, "--queue", "slow")[0]["id"]
    unconfirmed = run("workflows", "cancel", copy, "--queue", "slow")
    assert unconfirmed.exit_code == 2 and "this would cancel 1 execution(s)" in unconfirmed.output
    assert "--yes" in unconfirmed.output
    assert as_json("workflows", "list", copy, "--queue", "slow")[0]["status"] == "pending"

    cancelled = run("workflows", "cancel", copy, "--queue", "slow", "--yes")
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.splitlines() == [f"{queued}: cancelled"]
    assert "1 of 1 execution(s): cancel done" in cancelled.stderr
    nothing = run("workflows", "cancel", copy, "--queue", "slow", "--yes")  # none unfinished
    assert nothing.exit_code == 0 and "nothing to cancel" in nothing.stderr

    monkeypatch.setattr(cli_actions, "stdin_is_terminal", lambda: True)
    declined = CliRunner().invoke(main, ["workflows", "resume", copy, "--queue", "slow"], "n\n")
    assert declined.exit_code == 1 and "Resume 1 execution(s)?" in declined.output
    assert as_json("workflows", "list", copy, "--queue", "slow")[0]["status"] == "cancelled"
    monkeypatch.setattr(cli_actions, "stdout_is_terminal", lambda: True)  # a progress bar
    resumed = CliRunner().invoke(main, ["workflows", "resume", copy, "--queue", "slow"], "y\n")
    assert resumed.exit_code == 0, resumed.output
    assert "1 of 1 execution(s): resume done" in resumed.stderr
    assert "resume" in resumed.stdout and "100%" in resumed.stdout  # the bar, not the lines
    monkeypatch.undo()
    assert as_json("workflows", "list", copy, "--queue", "slow")[0]["status"] == "pending"

    retried = run("workflows", "retry", copy, "--name", "web.broken.v1", "--yes")
    assert retried.exit_code == 0 and "broken-7: pending" in retried.stdout
    # a succeeded execution cannot be retried: each is reported, the others go on, status 1
    refused = run("workflows", "retry", copy, "--status", "succeeded", "--limit", "2", "--yes")
    assert refused.exit_code == 1
    assert refused.stderr.count("could not retry") == 2
    assert "0 of 2 execution(s): retry done" in refused.stderr


def test_actions_by_id(copy: str) -> None:
    two = run("workflows", "cancel", copy, "nap-5", "order-0")
    assert two.stdout.splitlines() == ["nap-5: cancelled", "order-0: succeeded"]
    both = run("workflows", "cancel", copy, "nap-5", "--status", "pending")
    assert both.exit_code == 2 and "ids or filters, not both" in both.output
    neither = run("workflows", "retry", copy)
    assert neither.exit_code == 2 and "filters" in neither.output
    missing = run("workflows", "retry", copy, "nobody")
    assert missing.exit_code == 1 and "nobody" in missing.stderr
    # a finished execution is left as it was: said so (not "cancel done"), not an error
    assert "order-0: already finished (succeeded): nothing to cancel" in two.stderr
    assert two.exit_code == 0
    bulk = run("workflows", "cancel", copy, "--status", "succeeded", "--limit", "2", "--yes")
    assert bulk.exit_code == 0, bulk.output
    assert bulk.stderr.count("already finished (succeeded): nothing to cancel") == 2
    assert "0 of 2 execution(s): cancel done (2 had already finished: unchanged)" in bulk.stderr
    # an id that is refused does not stop the ones after it (each says how it went)
    some = run("workflows", "cancel", copy, "order-1", "nobody", "order-2")
    assert some.exit_code == 1
    assert some.stdout.splitlines() == ["order-1: succeeded", "order-2: succeeded"]
    assert "nobody: could not cancel: no workflow with id 'nobody'" in some.stderr


def test_watch_in_a_terminal(filled: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_workflows, "stdout_is_terminal", lambda: True)
    watched = run("workflows", "watch", filled, "--count", "2", "--interval", "0.1")
    assert watched.exit_code == 0, watched.output
    assert "succeeded=" in watched.stdout and "failed=1" in watched.stdout


def test_schedules_list_as_json(copy: str) -> None:
    with durable.Client(copy) as client:
        client.create_schedule_sync("nightly", "0 2 * * *", "web.order.v1", timezone="UTC")
    [schedule] = as_json("schedules", "list", copy)
    assert (schedule["name"], schedule["cron"], schedule["paused"]) == (
        "nightly",
        "0 2 * * *",
        False,
    )
    assert datetime.fromisoformat(schedule["next_run_at"]).hour == 2


@pytest.mark.postgres
def test_on_postgres(pg_url: str) -> None:
    fill(pg_url, orders=2)
    assert ids(as_json("workflows", "list", pg_url, "--status", "failed")) == {"broken-7"}
    assert len(as_json("workflows", "list", pg_url, "--queue", "slow")) == 1
    assert as_json("workflows", "list", pg_url, "--until", "1h") == []
    steps = as_json("workflows", "steps", pg_url, "order-1")
    assert [s["attempts"] for s in steps] == [1, 2, 1]
    shown = run("workflows", "show", pg_url, "order-1").stdout
    assert "steps (3):" in shown and "web.flaky" in shown
    assert "succeeded=" in run("workflows", "watch", pg_url, "--once").stdout


def test_durations_bars_and_seconds() -> None:
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    assert parse_duration("7d") == timedelta(days=7)
    for bad in ("", "h", "1y", "-1h", "0m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert bar(0, 10, 10, width=10) == "#" * 10
    assert bar(5, 5, 10, width=10) == " " * 5 + "#" * 5
    assert bar(9.99, 0.001, 10, width=10) == " " * 9 + "#"  # at least one character
    assert bar(0, 0, 0, width=4) == "#   "
    assert bar(-5, 20, 10, width=10) == "#" * 10  # recorded before a redrive's start: clamped
    assert [seconds(v) for v in (None, 0.25, 12.34, 245, 7800)] == [
        "-",
        "250ms",
        "12.3s",
        "4m05s",
        "2h10m",
    ]


EVIL = durable.Registry()
#: An error message that would set a terminal's title, clear it and turn it red.
ESCAPES = "declined \x1b]0;PWNED\x07\x1b[2J\x1b[31m"


@durable.workflow(name="cli.evil.v1", registry=EVIL, max_attempts=1)
async def evil(text: str) -> None:
    raise ValueError(text)


def test_stored_values_cannot_drive_the_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids that look like rich's markup are shown as they are (they crashed the table, or
    changed what it showed), and a stored error's escapes are shown as escapes in a terminal;
    a pipe still gets the values themselves."""
    url = f"sqlite:///{tmp_path / 'evil.db'}"

    async def fill_evil() -> None:
        runtime = durable.Runtime(durable.connect(url), registry=EVIL, executor_id="evil")
        async with runtime:
            for workflow_id in ("markup-[/]-close", "markup-[bold red]red"):
                with pytest.raises(ValueError):
                    await runtime.run(evil, ESCAPES, workflow_id=workflow_id)

    asyncio.run(fill_evil())
    piped = run("workflows", "show", url, "markup-[/]-close")
    assert ESCAPES in piped.stdout  # as stored, byte for byte
    for module in (cli_output, cli_workflows):
        monkeypatch.setattr(module, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "300")
    table = run("workflows", "list", url)
    assert table.exit_code == 0, table.output
    assert "markup-[/]-close" in table.stdout and "markup-[bold red]red" in table.stdout
    assert "\x1b" not in table.stdout.replace("\x1b[1m", "").replace("\x1b[0m", "")
    shown = run("workflows", "show", url, "markup-[/]-close")
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "declined \\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31m" in shown.stdout


def test_bidirectional_controls_are_shown_as_escapes_in_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored id with a right-to-left override (or an isolate) read in a terminal as another
    id ("invoice-\u202etxt.exe" shows as "invoice-exe.txt"): a terminal now shows the controls
    as escapes; a pipe still gets the id as stored."""
    url = f"sqlite:///{tmp_path / 'bidi.db'}"
    wid = "invoice-\u202etxt.exe \u2066x\u2069"
    with durable.Client(url) as client:
        client.enqueue_sync("demo.v1", 1, workflow_id=wid, delay=3600)
    assert run("workflows", "list", url).stdout.split("\t")[0] == wid
    for module in (cli_output, cli_workflows):
        monkeypatch.setattr(module, "stdout_is_terminal", lambda: True)
    monkeypatch.setenv("COLUMNS", "300")
    for shown in (run("workflows", "list", url), run("workflows", "show", url, wid)):
        assert shown.exit_code == 0, shown.output
        assert "invoice-\\u202etxt.exe \\u2066x\\u2069" in shown.stdout
        assert not {"\u202e", "\u2066", "\u2069"} & set(shown.stdout)


def test_a_pipe_gets_the_stored_values_byte_for_byte(tmp_path: Path) -> None:
    """Tab-separated lines in a pipe are for scripts: an id holding a terminal's colour codes
    is printed as stored (click strips them unless told not to), so that it can be fed back."""
    url = f"sqlite:///{tmp_path / 'ansi.db'}"
    wid = "job-\x1b[1mbold\x1b[0m"
    with durable.Client(url) as client:
        client.enqueue_sync("demo.v1", 1, workflow_id=wid, delay=3600)
    script = str(Path(sys.executable).with_name("durable"))

    def piped(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [script, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
        assert done.returncode == 0, done.stderr
        return done

    listed = piped("workflows", "list", url).stdout
    assert listed.split("\t")[0] == wid
    assert piped("workflows", "show", url, wid).stdout.startswith(f"{wid}  demo.v1  pending")
    assert json.loads(piped("workflows", "get", url, wid).stdout)["id"] == wid
    assert f"\t{wid}\t" in piped("events", url).stdout
    assert piped("workflows", "cancel", url, wid).stdout == f"{wid}: cancelled\n"
    # the same through click's test runner (which strips colour codes unless told not to)
    assert run("workflows", "list", url).stdout.split("\t")[0] == wid


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["workflows", "list", "URL", "--status", "bogus"], "--status"),
        (["workflows", "cancel", "URL", "--status", "bogus", "--yes"], "--status"),
        (["workflows", "list", "URL", "--limit", "99999999999999999999"], "--limit"),
        (["workflows", "waiting", "URL", "--limit", "2147483648"], "--limit"),
        (["workflows", "fork", "URL", "order-0", "--from-step", "-1"], "--from-step"),
        (["worker", "nowhere:runtime", "--grace", "-5"], "--grace"),
        (["worker", "nowhere:runtime", "--poll-interval", "nan"], "--poll-interval"),
        (["gc", "URL", "--older-than", "1s", "--pause", "nan", "--dry-run"], "--pause"),
        (["gc", "URL", "--older-than", "1s", "--batch", "2147483648"], "--batch"),
        (["workflows", "watch", "URL", "--interval", "nan", "--count", "2"], "--interval"),
        (["workflows", "watch", "URL", "--interval", "inf", "--count", "2"], "--interval"),
        (["events", "URL", "--follow", "--interval", "nan", "--count", "1"], "--interval"),
        (["executors", "URL", "--stale-after", "inf"], "--stale-after"),
        (["queues", "set", "URL", "q", "--concurrency", "99999999999"], "--concurrency"),
        (["queues", "set", "URL", "q", "--rate-limit", "5/nan"], "--rate-limit"),
        (["queues", "set", "URL", "q", "--rate-limit", "0/60"], "--rate-limit"),
    ],
)
def test_a_bad_option_value_is_a_usage_error_naming_it(
    copy: str, args: list[str], option: str
) -> None:
    """``durable --help``: exit status 2 on a usage error, 1 when the command fails. A value
    out of an option's range (nan included: it passes every comparison) is a usage error, and
    nothing is done."""
    before = as_json("workflows", "list", copy)
    result = CliRunner().invoke(main, [copy if a == "URL" else a for a in args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert as_json("workflows", "list", copy) == before


ODD = durable.Registry()


@durable.step(name="cli.odd.ratios")
async def odd_ratios() -> list[float]:
    return [float("nan"), -float("inf")]


@durable.workflow(name="cli.odd.v1", registry=ODD)
async def odd_floats() -> dict[str, Any]:
    step = await odd_ratios()
    return {"ratio": float("inf"), "step": step, "fine": 0.5}


def strict_json(text: str) -> Any:
    """``text`` read by a strict parser: NaN, Infinity and -Infinity are not JSON."""

    def refuse(token: str) -> None:
        raise AssertionError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json(tmp_path: Path) -> None:
    """``--json`` (and ``get``, ``events --follow --json``, ``export``) print strict JSON: a
    non-finite float is written as the string "NaN", "Infinity" or "-Infinity"."""
    url = f"sqlite:///{tmp_path / 'odd.db'}"

    async def fill_odd() -> None:
        async with durable.Runtime(durable.connect(url), registry=ODD, executor_id="odd") as rt:
            await rt.run(odd_floats, workflow_id="odd-1")

    asyncio.run(fill_odd())
    expected = {"ratio": "Infinity", "step": ["NaN", "-Infinity"], "fine": 0.5}
    [listed] = strict_json(run("workflows", "list", url, "--json").stdout)
    assert listed["output"] == expected
    assert strict_json(run("workflows", "get", url, "odd-1").stdout)["output"] == expected
    [step] = strict_json(run("workflows", "steps", url, "odd-1", "--json").stdout)
    assert step["output"] == ["NaN", "-Infinity"]
    followed = run("events", url, "--follow", "--json", "--count", "4").stdout.splitlines()
    assert [strict_json(line)["kind"] for line in followed][-1] == "finished"
    exported = run("workflows", "export", url, "odd-1").stdout
    assert strict_json(exported)["workflow"]["id"] == "odd-1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "9999999d"], "before the year 1"),
        (["--since", "99999999999d"], "too long a duration"),
        (["--until", "9999-12-31T23:59:59-14:00"], "not a time in UTC's range"),
    ],
)
def test_times_out_of_range_are_usage_errors(filled: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["workflows", "list", filled, *args])
    assert result.exit_code == 2 and message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_file_errors_are_one_line(filled: str, tmp_path: Path) -> None:
    exported = CliRunner().invoke(
        main, ["workflows", "export", filled, "order-0", "-o", str(tmp_path / "no" / "x.json")]
    )
    assert exported.exit_code == 1 and "cannot write" in exported.output
    assert isinstance(exported.exception, SystemExit)
    not_json = tmp_path / "history.json"
    not_json.write_text("hello\n")
    replayed = CliRunner().invoke(main, ["workflows", "replay", "-m", "json", "-f", str(not_json)])
    assert replayed.exit_code == 1 and "must be JSON" in replayed.output, replayed.output
    assert isinstance(replayed.exception, SystemExit)
    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes(b'{"format": "durable.history", "x": "\xff\xfe"}')
    binary = CliRunner().invoke(main, ["workflows", "replay", "-m", "json", "-f", str(not_utf8)])
    assert binary.exit_code == 1 and "must be JSON (UTF-8)" in binary.output, binary.output
    assert str(not_utf8) in binary.output and "Traceback" not in binary.output
    assert isinstance(binary.exception, SystemExit)
    aged = CliRunner().invoke(main, ["gc", filled, "--older-than", "99999999999d", "--dry-run"])
    assert aged.exit_code == 2 and "too long a duration" in aged.output
    # a duration that Python holds but the API refuses: a usage error naming the option
    aged = CliRunner().invoke(main, ["gc", filled, "--older-than", "99999999d", "--dry-run"])
    assert aged.exit_code == 2 and "'--older-than'" in aged.output, aged.output
    assert "too long a duration: at most 100 years" in aged.output
    beyond = CliRunner().invoke(main, ["events", filled, "--after", str(2**64), "--json"])
    assert beyond.exit_code == 0 and json.loads(beyond.stdout or "[]") == []


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 to ``target`` that the test can cut (every connection dropped,
    new ones refused, as while a database server restarts) and restore, on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        assert self.listener is not None
        with contextlib.suppress(OSError):  # wakes the accepting thread (close alone does not)
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.listener = None
        with self.lock:
            links, self.links = self.links, []
        for link in links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
            link.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.links += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.mark.postgres
def test_watch_rides_out_a_database_outage(pg_url: str, tmp_path: Path) -> None:
    """``watch`` refreshes until Ctrl-C: a refresh that cannot reach the database is reported
    (once per outage) and the refreshes go on; it does not exit at the first one that fails."""
    fill(pg_url, orders=1)
    real = sa.make_url(pg_url)
    proxy = CuttableProxy((real.host or "127.0.0.1", real.port or 5432))
    url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    durable_script = str(Path(sys.executable).with_name("durable"))
    with out.open("w") as stdout, err.open("w") as stderr:
        watch = subprocess.Popen(
            [durable_script, "workflows", "watch", url, "--interval", "0.2"],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )

    def wait_for(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert watch.poll() is None, f"watch exited ({watch.returncode}): {err.read_text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    try:
        wait_for(lambda: out.read_text().count("succeeded=") >= 2, "the first refreshes")
        proxy.cut()
        wait_for(lambda: "cannot reach the database" in err.read_text(), "the outage noted")
        time.sleep(3)  # refreshes fail meanwhile: it keeps going
        assert watch.poll() is None, err.read_text()
        before = out.read_text().count("succeeded=")
        proxy.restore()
        wait_for(lambda: out.read_text().count("succeeded=") > before + 1, "refreshes again")
        assert "can be reached again" in err.read_text()
        assert err.read_text().count("cannot reach the database") == 1  # once per outage
    finally:
        watch.terminate()
        watch.wait(timeout=30)
