"""``durable events``: the change feed on the command line (a page, reading on with --after,
--json, --follow with --count, a bad --after)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from durable.backends.sql import SQLAlchemyBackend
from durable.cli import main
from durable.models import StepRecord, TaskSpec, WorkflowSnapshot, WorkflowStatus


def durable(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'events.db'}"


def fill(url: str) -> None:
    """Two workflows: one created, one started, with a step, finished."""

    async def run() -> None:
        async with SQLAlchemyBackend(url) as backend:
            await backend.create_workflow(WorkflowSnapshot(id="a", name="cli.wf"))
            await backend.create_workflow(
                WorkflowSnapshot(id="b", name="cli.wf"),
                task=TaskSpec(instance_id="b", name="cli.wf"),
            )
            assert await backend.claim_task("b", "workflow", "w", 60.0) is not None
            await backend.begin_execution("b", "w")
            await backend.record_step("b", StepRecord(position=0, name="add"), worker_id="w")
            await backend.finish_workflow("b", worker_id="w", status=WorkflowStatus.SUCCEEDED)

    asyncio.run(run())


def test_a_page_then_reading_on(url: str) -> None:
    fill(url)
    result = durable("events", url)
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(f[1], f[2]) for f in lines] == [
        ("created", "a"),
        ("created", "b"),
        ("started", "b"),
        ("step_recorded", "b"),
        ("finished", "b"),
    ]
    assert lines[3][5] == "0:add"
    assert f"--after {lines[-1][0]}" in result.stderr
    rest = durable("events", url, "--after", lines[1][0], "--json")
    assert rest.exit_code == 0
    found = json.loads(rest.stdout)
    assert [(e["kind"], e["workflow_id"]) for e in found] == [
        ("started", "b"),
        ("step_recorded", "b"),
        ("finished", "b"),
    ]
    assert found[-1]["status"] == "succeeded"
    assert durable("events", url, "--after", lines[-1][0], "--json").stdout.strip() == "[]"


def test_follow_prints_json_lines_up_to_the_count(url: str) -> None:
    fill(url)
    result = durable("events", url, "--follow", "--count", "3", "--json", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["kind"] for e in found] == ["created", "created", "started"]
    assert [e["position"] for e in found] == sorted(e["position"] for e in found)


def test_a_negative_after_is_refused(url: str) -> None:
    fill(url)
    result = durable("events", url, "--after", "-1")
    assert result.exit_code == 2
    assert "--after" in result.stderr


def test_count_without_follow_is_refused(url: str) -> None:
    """--count stops a --follow; without it, it was silently ignored."""
    fill(url)
    result = durable("events", url, "--count", "1")
    assert result.exit_code == 2
    assert "--count goes with --follow" in result.stderr


def test_json_positions_page_on_exactly(url: str) -> None:
    """PostgreSQL's positions pass 2^53, which JSON readers (jq, JavaScript) round: paging on
    with the position they read back re-read events, or could skip some. A position that
    large is written as a string of its digits."""
    fill(url)
    first = json.loads(durable("events", url, "--limit", "2", "--json").stdout)
    position = first[-1]["position"]
    exact = int(position)
    if exact > 2**53 - 1:
        assert isinstance(position, str)
    rest = json.loads(durable("events", url, "--after", str(position), "--json").stdout)
    assert rest and all(int(e["position"]) > exact for e in rest)
    assert len(first) + len(rest) == len(json.loads(durable("events", url, "--json").stdout))
