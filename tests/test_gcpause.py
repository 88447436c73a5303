"""durable.gcpause: the cyclic collector paused while a batch is built, and always restored."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

import durable
import durable.executions
from durable.executions import _plan_row
from durable.gcpause import collector_paused


@pytest.fixture
def collector() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_paused_inside_restored_after_even_on_error(collector: None) -> None:
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the inner one leaves it to the outer
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), collector_paused():
        raise KeyError("x")
    assert gc.isenabled()


def test_a_collector_the_application_disabled_stays_disabled(collector: None) -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


@durable.workflow(name="tests.gcpause.echo.v1")
async def echo(n: int) -> int:
    return n


async def test_enqueue_many_pauses_it_while_planning_not_while_reading_the_rows(
    collector: None, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[bool] = []
    planned: list[bool] = []

    def rows() -> Iterator[tuple[int]]:  # the application's code: the collector stays on
        for n in range(3):
            read.append(gc.isenabled())
            yield (n,)

    def plan_row(*args: Any, **kwargs: Any) -> Any:  # one row's planning
        planned.append(gc.isenabled())
        return _plan_row(*args, **kwargs)

    monkeypatch.setattr(durable.executions, "_plan_row", plan_row)
    async with durable.Client(durable.connect(sqlite_url)) as client:
        assert len(await client.enqueue_many(echo, rows())) == 3
        assert read == [True] * 3 and planned == [False] * 3 and gc.isenabled()
        with pytest.raises(durable.InvalidArgumentError):  # a bad row: refused, restored
            await client.enqueue_many(echo, [(1,), "not a row"])
        assert gc.isenabled()
