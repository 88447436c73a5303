"""What a worker logs, at which level: its start at INFO (with what it serves), a failed attempt
and a failed execution at WARNING, a dead letter at ERROR, so that a worker run with the default
logging (WARNING) shows its failures; and a worker with nothing to serve is refused at start."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import durable
from durable.cli import main

REG = durable.Registry()


@durable.workflow(
    name="tl.doomed.v1",
    registry=REG,
    retry=durable.RetryPolicy(max_attempts=2, initial_delay=0.0),
)
async def doomed(x: int) -> int:
    raise RuntimeError(f"doomed {x}")


@durable.workflow(name="tl.refused.v1", registry=REG)
async def refused(x: int) -> int:
    raise durable.NonRetryableError(f"refused {x}")


@durable.step(name="tl.noted")
async def noted(x: int) -> int:
    return x + 1


CUT_REG = durable.Registry()


@durable.workflow(name="tl.cut_off.v1", registry=CUT_REG)
async def cut_off(x: int) -> int:
    return await noted(x)


def worker_records(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "durable.worker" and getattr(r, "action", None) == action
    ]


async def test_levels_of_a_workers_start_failures_and_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="durable")
    async with durable.Runtime(
        durable.connect("memory://"), registry=REG, recover=False, executor_id="tl-1"
    ) as rt:
        worker = await rt.start_worker(concurrency=2, poll_interval=0.02)
        dead = await rt.enqueue(doomed, 1)
        failed = await rt.enqueue(refused, 2)
        with pytest.raises(durable.WorkflowDeadLetteredError):
            await rt.result(dead, timeout=30)
        with pytest.raises(durable.NonRetryableError):
            await rt.result(failed, timeout=30)
        await worker.stop()

    (started,) = worker_records(caplog, "worker.started")
    assert started.levelno == logging.INFO
    assert "worker tl-1 started: serving tl.doomed.v1, tl.refused.v1" in started.getMessage()

    (retry,) = worker_records(caplog, "worker.retry")
    assert retry.levelno == logging.WARNING and retry.workflow_id == dead  # type: ignore[attr-defined]
    assert "failed an attempt" in retry.getMessage()
    assert "RuntimeError: doomed 1" in retry.getMessage()

    (letter,) = worker_records(caplog, "worker.dead_letter")
    assert letter.levelno == logging.ERROR and letter.workflow_id == dead  # type: ignore[attr-defined]
    assert "dead-lettered" in letter.getMessage() and "doomed 1" in letter.getMessage()

    (failure,) = worker_records(caplog, "worker.failed")
    assert failure.levelno == logging.WARNING and failure.workflow_id == failed  # type: ignore[attr-defined]
    assert "NonRetryableError: refused 2" in failure.getMessage()

    # nothing about failures hides at INFO or below
    quiet = [
        r
        for r in caplog.records
        if r.name == "durable.worker" and r.levelno <= logging.INFO and r is not started
    ]
    assert not [r for r in quiet if r.getMessage().count("doomed") or "refused" in r.getMessage()]


async def test_an_attempt_an_outage_cut_off_is_not_logged_as_a_failure(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime warns once that it hands the attempt back; the worker says at DEBUG that the
    attempt ended so, not that it failed."""
    monkeypatch.setattr(durable.runtime, "OUTAGE_BACKOFF", timedelta(milliseconds=20))
    caplog.set_level(logging.DEBUG, logger="durable")
    backend = durable.connect("memory://")
    record_step = backend.record_step
    cuts: list[str] = []

    async def flaky_record(instance_id: str, step: durable.StepRecord, **kw: Any) -> None:
        if not cuts:
            cuts.append(instance_id)
            raise durable.BackendUnavailableError("the database went away")
        await record_step(instance_id, step, **kw)

    monkeypatch.setattr(backend, "record_step", flaky_record)
    async with durable.Runtime(backend, registry=CUT_REG, recover=False, executor_id="tl-2") as rt:
        worker = await rt.start_worker(concurrency=1, poll_interval=0.02)
        wid = await rt.enqueue(cut_off, 1)
        assert await rt.result(wid, timeout=30) == 2
        await worker.stop()
    assert cuts == [wid]
    (ended,) = worker_records(caplog, "worker.outage")
    assert ended.levelno == logging.DEBUG and ended.workflow_id == wid  # type: ignore[attr-defined]
    assert "handed back uncounted" in ended.getMessage()
    assert "the database went away" in ended.getMessage()
    assert not worker_records(caplog, "worker.retry")
    (warned,) = [r for r in caplog.records if getattr(r, "action", None) == "workflow.outage"]
    assert warned.levelno == logging.WARNING and warned.name == "durable.runtime"


AWAY_REG = durable.Registry()
AWAY: list[asyncio.Event] = []


@durable.step(name="tl.away")
async def away_step() -> str:
    AWAY[0].set()
    await asyncio.sleep(60)
    return "never"


@durable.workflow(name="tl.away.v1", registry=AWAY_REG)
async def away_wf() -> str:
    return await away_step()


async def test_a_hand_back_the_database_refused_is_said(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopped while the database is away cannot hand its executions back: each is
    said to wait for its lease (it only said "handed back N unfinished execution(s)", and the
    executions then stayed running until their leases expired)."""
    AWAY[:] = [asyncio.Event()]
    caplog.set_level(logging.INFO, logger="durable")
    backend = durable.connect("memory://")

    async def away(*args: Any, **kwargs: Any) -> Any:
        raise durable.BackendUnavailableError("the database went away")

    async with durable.Runtime(backend, registry=AWAY_REG, recover=False, executor_id="tl-3") as rt:
        worker = await rt.start_worker(concurrency=1, poll_interval=0.02)
        wid = await rt.enqueue(away_wf)
        await asyncio.wait_for(AWAY[0].wait(), 30)
        monkeypatch.setattr(backend, "reschedule_workflow", away)
        await worker.stop(grace=0)
    (said,) = [
        r for r in caplog.records if getattr(r, "action", None) == "workflow.not_handed_back"
    ]
    assert said.levelno == logging.WARNING and said.workflow_id == wid  # type: ignore[attr-defined]
    assert "the database went away" in said.getMessage() and "lease expires" in said.getMessage()


async def test_a_worker_with_no_workflow_to_serve_is_refused() -> None:
    async with durable.Runtime(
        durable.connect("memory://"), registry=durable.Registry(), recover=False
    ) as rt:
        with pytest.raises(durable.NothingToServeError, match="no workflow is registered"):
            await rt.start_worker()
        assert rt._workers == []
    async with durable.Runtime(durable.connect("memory://"), registry=REG, recover=False) as rt:
        with pytest.raises(durable.NothingToServeError, match="names is empty"):
            await rt.start_worker(names=[])
        # no queue to claim from: refused, not a worker that claims nothing and says nothing
        with pytest.raises(durable.InvalidArgumentError, match="queues is empty"):
            await rt.start_worker(queues=[])
        with pytest.raises(durable.InvalidArgumentError, match="queues is empty"):
            await durable.worker.serve(rt, queues=())
        assert rt._workers == []
        assert isinstance(durable.NothingToServeError(), durable.ConfigurationError)


EMPTY_APP = """
import durable

runtime = durable.Runtime(durable.connect("memory://"), registry=durable.Registry())
"""


def test_durable_worker_with_nothing_to_serve_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "emptyapp.py").write_text(textwrap.dedent(EMPTY_APP))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(main, ["worker", "emptyapp:runtime"])
    assert result.exit_code == 1, result.output
    assert "cannot start a worker: no workflow is registered" in result.output


HELD: list[Any] = []
CANCELLED_REG = durable.Registry()  # its own: the test above lists REG's names


@durable.step(name="tl.held")
async def held_step() -> None:
    HELD[0].set()
    await asyncio.sleep(2.0)  # heartbeats (every 0.1 s) find the task gone meanwhile


@durable.workflow(name="tl.cancelled.v1", registry=CANCELLED_REG)
async def cancelled_while_running() -> None:
    await held_step()


async def test_a_cancel_of_a_running_execution_is_no_lost_lease(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The heartbeat that finds the task deleted by a cancel says so at INFO, not as a lost
    lease at WARNING (what an operator would investigate)."""
    caplog.set_level(logging.DEBUG, logger="durable")
    HELD[:] = [asyncio.Event()]
    async with durable.Runtime(
        durable.connect(f"sqlite:///{tmp_path / 'cancel.db'}"),
        registry=CANCELLED_REG,
        claim_ttl=0.3,
        heartbeat_interval=0.1,
        recover=False,
    ) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        wid = await rt.enqueue(cancelled_while_running)
        await asyncio.wait_for(HELD[0].wait(), 30)
        await rt.cancel(wid)
        with pytest.raises(durable.WorkflowCancelledError):
            await rt.result(wid, timeout=30)
    gone = [r for r in caplog.records if getattr(r, "action", None) == "heartbeat.lost"]
    assert gone and all(r.levelno == logging.INFO for r in gone)
    assert "was cancelled, or ended elsewhere" in gone[0].getMessage()
    assert not [r for r in caplog.records if "lost the lease" in r.getMessage()]


LONG_REG = durable.Registry()


@durable.step(name="tl.long_step", retry=durable.RetryPolicy(max_attempts=1))
async def long_step(size: int) -> int:
    raise ValueError("s" * size)


@durable.workflow(
    name="tl.long.v1",
    registry=LONG_REG,
    retry=durable.RetryPolicy(max_attempts=2, initial_delay=0.0),
)
async def long_message(size: int) -> int:
    with contextlib.suppress(ValueError):
        await long_step(size)
    raise RuntimeError("w" * size)


async def test_a_long_error_message_is_cut_in_the_log_lines_kept_whole_in_the_record(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """An error's message of megabytes made log lines of megabytes (the step's failure, the
    attempt's retry, the worker's report): each line now carries its first 2,000 characters
    and says how long it was; the stored error keeps it all."""
    caplog.set_level(logging.DEBUG, logger="durable")
    size = 100_000
    async with durable.Runtime(
        durable.connect(f"sqlite:///{tmp_path / 'long.db'}"), registry=LONG_REG, recover=False
    ) as rt:
        worker = await rt.start_worker(poll_interval=0.02)
        wid = await rt.enqueue(long_message, size)
        with pytest.raises(durable.WorkflowDeadLetteredError):
            await rt.result(wid, timeout=30)
        await worker.stop()
        info = await rt.get_workflow(wid)
        assert info.error is not None and info.error.message == "w" * size
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("durable")]
    cut = [line for line in lines if f"({size} characters)" in line]
    # the step's failure (twice: once an attempt), the attempt's retry, the worker's two reports
    assert len(cut) >= 5, lines
    assert max(len(line) for line in lines) < 2_500
