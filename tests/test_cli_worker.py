"""`durable worker MODULE:RUNTIME` in a real process, and `durable workflows ...`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import durable
from durable.cli import main
from durable.models import WORKFLOW_TASK

APP = """
import durable

@durable.step
async def shout(text: str) -> str:
    return text.upper()

@durable.workflow(name="cli.shout.v1")
async def shouting(text: str) -> str:
    return await shout(text) + "!"

runtime = durable.Runtime(durable.connect({url!r}), executor_id="cli-worker", claim_ttl=5)
"""


async def produce(url: str) -> str:
    """Enqueue by name and wait for the result, without importing the workflow's code."""
    async with durable.Runtime(
        durable.connect(url), registry=durable.Registry(), recover=False, poll_interval=0.05
    ) as producer:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the worker registers its names when it starts
            if "cli.shout.v1" in [w.name for w in await producer.registered_workflows()]:
                break
            await asyncio.sleep(0.05)
        wid = await producer.enqueue("cli.shout.v1", "hello")
        assert await producer.result(wid, timeout=30) == "HELLO!"
        return wid


def start_worker(tmp_path: Path, target: str, *options: str) -> subprocess.Popen[str]:
    """``durable worker TARGET OPTIONS`` in ``tmp_path`` (where the app's module is)."""
    durable_bin = Path(sys.executable).with_name("durable")
    return subprocess.Popen(
        [str(durable_bin), "worker", target, *options],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stderr_at_exit(proc: subprocess.Popen[str], *, timeout: float = 30) -> str:
    """What the worker wrote to stderr once it exited within ``timeout`` (else it is killed,
    and ``TimeoutExpired`` raised)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_worker_command_runs_enqueued_work_and_stops_on_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(APP.format(url=url)))
    proc = start_worker(tmp_path, "cliapp:runtime", "--concurrency", "2", "--poll-interval", "0.1")
    try:
        wid = asyncio.run(produce(url))
    finally:
        proc.send_signal(signal.SIGTERM)
        err = stderr_at_exit(proc)
    assert proc.returncode == 0, err
    assert "stopped after 1 execution(s)" in err
    # without -v it still says what it serves (durable's INFO lines are shown by default)
    assert "worker cli-worker started: serving cli.shout.v1" in err

    runner = CliRunner()
    listed = runner.invoke(main, ["workflows", "list", url, "--status", "succeeded"])
    assert listed.exit_code == 0 and wid in listed.output and "cli.shout.v1" in listed.output
    steps = runner.invoke(main, ["workflows", "steps", url, wid])
    assert steps.exit_code == 0 and "succeeded" in steps.output and "cli-worker" in steps.output
    got = runner.invoke(main, ["workflows", "get", url, wid])
    assert got.exit_code == 0 and '"output": "HELLO!"' in got.output
    retried = runner.invoke(main, ["workflows", "retry", url, wid])
    assert retried.exit_code == 1 and "only failed" in retried.output


@pytest.mark.slow
def test_worker_command_counts_what_recovery_resumed(tmp_path: Path) -> None:
    """An execution that a dead executor started is resumed by the worker's runtime when it
    starts (recovery), not claimed by its worker: the closing line counts it too."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    (tmp_path / "cliapp.py").write_text(textwrap.dedent(APP.format(url=url)))

    async def started_by_a_dead_executor() -> None:
        async with durable.Client(url) as client:
            await client.enqueue("cli.shout.v1", "hi", workflow_id="half")
            backend = client.backend
            await backend.claim_task("half", WORKFLOW_TASK, "dead", timedelta(seconds=0.1))
            await backend.begin_execution("half", "dead")
        await asyncio.sleep(0.2)  # its lease runs out

    asyncio.run(started_by_a_dead_executor())
    proc = start_worker(tmp_path, "cliapp:runtime", "--poll-interval", "0.1")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = CliRunner().invoke(main, ["workflows", "get", url, "half"])
            if '"status": "succeeded"' in got.output:
                break
            time.sleep(0.1)
        assert '"output": "HI!"' in got.output, got.output
    finally:
        proc.send_signal(signal.SIGTERM)
        err = stderr_at_exit(proc)
    assert proc.returncode == 0, err
    assert "resuming 1 workflow(s)" in err
    assert "stopped after 1 execution(s)" in err


STUCK_APP = """
import pathlib, threading
import durable

@durable.step
def never_returns(marker: str) -> None:
    pathlib.Path(marker).write_text("started")
    threading.Event().wait()  # a sync call that never returns (a socket without a timeout)

@durable.workflow(name="cli.stuck.v1")
def stuck(marker: str) -> None:
    never_returns(marker)

runtime = durable.Runtime(durable.connect({url!r}), executor_id="cli-stuck", claim_ttl=5)
"""


def worker_in_a_stuck_step(
    tmp_path: Path, name: str, grace: str
) -> tuple[str, str, subprocess.Popen[str]]:
    """A ``durable worker`` (``--grace``) of an app named ``<name>app`` on a SQLite file, once
    it runs a sync step that never returns: the URL, the execution's id, the process."""
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    marker = tmp_path / "started"
    (tmp_path / f"{name}app.py").write_text(textwrap.dedent(STUCK_APP.format(url=url)))
    with durable.Client(url) as client:
        wid = client.enqueue_sync("cli.stuck.v1", str(marker))
    proc = start_worker(tmp_path, f"{name}app:runtime", "--grace", grace, "--poll-interval", "0.1")
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        proc.kill()
    assert marker.exists(), f"the step did not start: {stderr_at_exit(proc)}"
    return url, wid, proc


@pytest.mark.slow
def test_a_worker_whose_sync_step_never_returns_still_exits_after_its_grace(
    tmp_path: Path,
) -> None:
    """The interpreter waits at exit for the threads that run sync steps: one that never
    returns kept ``durable worker`` alive after SIGTERM for good, though it had said it
    stopped and handed the execution back. It now exits once the grace period is over, and
    says which step it left running, and where."""
    url, wid, proc = worker_in_a_stuck_step(tmp_path, "stuck", "1")
    proc.send_signal(signal.SIGTERM)
    err = stderr_at_exit(proc)
    assert proc.returncode == 0, err
    assert "handed back 1 unfinished execution(s)" in err
    assert "exiting without waiting for 1 sync step(s) still running" in err
    assert "stuckapp.py:8 in never_returns" in err
    with durable.Client(url) as client:  # handed back: pending, its lease released
        info = client.get_workflow_sync(wid)
        assert info.status is durable.WorkflowStatus.PENDING


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_ends_the_worker_at_once_during_a_long_sync_step(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """A second SIGINT (Ctrl-C twice) while a sync step runs stopped nothing at once: it
    became a KeyboardInterrupt ("Aborted!", exit status 1), and the interpreter then waited at
    exit for the step's thread, for good with a step that never returns. Now either signal,
    sent again during the grace period, ends the process at once, by that signal."""
    url, wid, proc = worker_in_a_stuck_step(tmp_path, "twice", "120")
    proc.send_signal(sig)  # the graceful stop: it waits up to --grace for the step
    time.sleep(0.5)
    assert proc.poll() is None, "the first signal did not wait for the running step"
    proc.send_signal(sig)
    sent = time.monotonic()
    try:
        err = stderr_at_exit(proc, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit at once on the second signal")
    assert time.monotonic() - sent < 5
    assert proc.returncode == -sig, err
    assert f"second {sig.name}: exiting at once" in err
    with durable.Client(url) as client:  # not handed back: its lease lapses, then it resumes
        assert client.get_workflow_sync(wid).status is durable.WorkflowStatus.RUNNING


DYING_APP = """
import pathlib, threading
import durable
from durable.backends import SQLAlchemyBackend

STARTED = threading.Event()


class Fatal(BaseException):
    pass


class DyingBackend(SQLAlchemyBackend):
    async def claim_available_tasks(self, *args, **kwargs):
        if STARTED.is_set():
            raise Fatal("the loop dies")
        return await super().claim_available_tasks(*args, **kwargs)

    async def claim_and_begin_tasks(self, *args, **kwargs):
        if STARTED.is_set():
            raise Fatal("the loop dies")
        return await super().claim_and_begin_tasks(*args, **kwargs)


@durable.step
def never_returns(marker: str) -> None:
    pathlib.Path(marker).write_text("started")
    STARTED.set()
    threading.Event().wait()


@durable.workflow(name="cli.stuck.v1")
def stuck(marker: str) -> None:
    never_returns(marker)


runtime = durable.Runtime(DyingBackend({url!r}), executor_id="cli-dying", claim_ttl=5)
"""


@pytest.mark.slow
def test_a_worker_that_stops_on_an_error_does_not_wait_for_a_stuck_step(
    tmp_path: Path,
) -> None:
    """The worker's loop dies (exit status 1) while a sync step that never returns runs: the
    error is printed, then the process ends instead of waiting for the step's thread."""
    url = f"sqlite:///{tmp_path / 'dying.db'}"
    (tmp_path / "dyingstuck.py").write_text(textwrap.dedent(DYING_APP.format(url=url)))
    with durable.Client(url) as client:
        client.enqueue_sync("cli.stuck.v1", str(tmp_path / "started"))
    proc = start_worker(tmp_path, "dyingstuck:runtime", "--grace", "1", "--poll-interval", "0.05")
    err = stderr_at_exit(proc)
    assert proc.returncode == 1, err
    assert "worker cli-dying stopped claiming work" in err
    assert "Fatal: the loop dies" in err
    assert "exiting without waiting for 1 sync step(s) still running" in err
    assert "dyingstuck.py" in err and "in never_returns" in err


def test_worker_command_rejects_a_bad_target(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["worker", "no_such_module_xyz:runtime"])
    assert result.exit_code == 2 and "cannot import" in result.output
    result = runner.invoke(main, ["worker", "os:sep"])
    assert result.exit_code == 2 and "not a durable.Runtime" in result.output
    # a function that needs arguments: named, not a TypeError's traceback
    result = runner.invoke(main, ["worker", "json:dumps"])
    assert result.exit_code == 2 and "json:dumps takes arguments" in result.output
    assert os.sep  # the module imported fine; its attribute is not a runtime


HOSTILE_APP = """
import durable

@durable.workflow(name="cli.hostile.v1")
async def hostile() -> None:
    raise ValueError("declined\\x1b]0;owned\\x07\\x1b[2J done\\n"
                     "2026-01-01 00:00:00,000 INFO  [durable.worker] forged")

runtime = durable.Runtime(durable.connect({url!r}), executor_id="cli-hostile", claim_ttl=5)
"""


@pytest.mark.slow
def test_the_worker_log_escapes_control_characters_of_a_stored_error(tmp_path: Path) -> None:
    """A dead letter's log line holds the workflow's error message: its escape sequences (a
    terminal title, a screen clear) are written as escapes, not sent to whatever shows stderr."""
    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    (tmp_path / "hostileapp.py").write_text(textwrap.dedent(HOSTILE_APP.format(url=url)))
    with durable.Client(url) as client:
        wid = client.enqueue_sync("cli.hostile.v1", max_attempts=1)
    proc = start_worker(tmp_path, "hostileapp:runtime", "--poll-interval", "0.05")
    try:
        with (
            durable.Client(url) as client,
            pytest.raises(durable.errors.WorkflowDeadLetteredError),
        ):
            client.result_sync(wid, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        err = stderr_at_exit(proc)
    assert proc.returncode == 0, err
    assert f"workflow {wid} (cli.hostile.v1) was dead-lettered" in err
    assert "ValueError: declined\\x1b]0;owned\\x07\\x1b[2J done" in err
    assert "\x1b" not in err and "\x07" not in err
    # a line break in the message cannot start a line that reads as another record
    assert "done\\n2026-01-01 00:00:00,000 INFO  [durable.worker] forged" in err
    assert not any(line.startswith("2026-01-01") for line in err.splitlines())
