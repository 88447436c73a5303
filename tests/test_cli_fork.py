"""``durable workflows fork URL ID --from-step N``: a new execution with the first N steps
copied, its id printed; a bad step or id is an error (exit status 1) naming what was wrong and
writing nothing. ``resume`` resumes (a redrive) as ``retry`` does."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner, Result

from durable.backends.sql import SQLAlchemyBackend
from durable.cli import main
from durable.models import StepRecord, TaskSpec, WorkflowSnapshot, WorkflowStatus


def durable(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def stored(url: str) -> None:
    """A failed workflow with three steps."""

    async def fill() -> None:
        async with SQLAlchemyBackend(url) as backend:
            await backend.create_workflow(
                WorkflowSnapshot(
                    id="failed-1",
                    name="cli.wf",
                    status=WorkflowStatus.FAILED,
                    input={"args": [1], "kwargs": {}},
                    steps=tuple(
                        StepRecord(position=p, name=f"s{p}", output=p * 10) for p in range(3)
                    ),
                ),
                task=TaskSpec(instance_id="failed-1", name="cli.wf"),
            )

    asyncio.run(fill())


def steps_of(url: str, workflow_id: str) -> list[tuple[int, str, object]]:
    async def read() -> list[tuple[int, str, object]]:
        async with SQLAlchemyBackend(url) as backend:
            return [(s.position, s.name, s.output) for s in await backend.list_steps(workflow_id)]

    return asyncio.run(read())


def test_fork_and_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fork.db'}"
    stored(url)
    result = durable("workflows", "fork", url, "failed-1", "--from-step", "2", "--id", "f-1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "f-1\n"
    assert steps_of(url, "f-1") == [(0, "s0", 0), (1, "s1", 10)]

    new = durable("workflows", "fork", url, "failed-1", "--from-step", "0")
    assert new.exit_code == 0, new.output
    assert steps_of(url, new.stdout.strip()) == []

    too_far = durable("workflows", "fork", url, "failed-1", "--from-step", "4", "--id", "f-2")
    assert too_far.exit_code == 1
    assert "from_step=4 is out of range for workflow 'failed-1'" in too_far.stderr
    assert "between 0 and 3" in too_far.stderr
    missing = durable("workflows", "fork", url, "nope", "--from-step", "0")
    assert missing.exit_code == 1 and "nope" in missing.stderr
    taken = durable("workflows", "fork", url, "failed-1", "--from-step", "0", "--id", "f-1")
    assert taken.exit_code == 1 and "f-1" in taken.stderr
    assert durable("workflows", "fork", url, "failed-1").exit_code == 2  # --from-step required
    assert steps_of(url, "f-1") == [(0, "s0", 0), (1, "s1", 10)]

    # an id given twice is acted on once (the second was refused, exit status 1, after the
    # first had done the job)
    resumed = durable("workflows", "resume", url, "failed-1", "failed-1")
    assert resumed.exit_code == 0, resumed.output
    assert resumed.stdout == "failed-1: pending\n"
    assert steps_of(url, "failed-1") == [(0, "s0", 0), (1, "s1", 10), (2, "s2", 20)]
