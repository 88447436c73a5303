"""Registering workflows and steps: one name runs one function, and what can be decorated.

* Default names (``module:qualname``) that do not single out a function (a factory's nested
  definitions, lambdas, bound methods) used to let a second function silently replace the first
  in the registry, so a worker ran the second for the first's executions; it is refused now,
  while a module reloaded still replaces its definitions (see :mod:`durable.registry`).
* Callables that are not plain functions (``functools.partial``, objects with a ``__call__``,
  ``staticmethod`` objects) used to fail with ``AttributeError`` or run as the wrong kind of
  step; they work with a ``name=``, or are refused at decoration, saying what to do.

Worker runs use a SQLite file (the registry is the same whatever the backend). Tests that
define steps under their default names inside a function run once per process: that is the
point (a second run would be another function under the same default name).
"""

from __future__ import annotations

import functools
import importlib
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

import durable
from durable.registry import default_registry
from durable.versioning import source_version

WAIT = 30


def runtime(url: str, registry: durable.Registry) -> durable.Runtime:
    return durable.Runtime(durable.connect(url), registry=registry, recover=False)


async def test_a_factory_s_workflows_under_their_default_name_are_refused(sqlite_url: str) -> None:
    """``make(1)`` and ``make(2)`` are both ``...make.<locals>.w``: the second was registered in
    the first's place, and a worker ran ``make(2)``'s code for ``enqueue(make(1))``."""
    registry = durable.Registry()

    def make(n: int, name: str | None = None) -> durable.AsyncWorkflow[[], int]:
        @durable.workflow(registry=registry, name=name)
        async def w() -> int:
            return n

        return w

    first = make(1)
    with pytest.raises(durable.ConfigurationError) as caught:
        make(2)
    assert repr(first.name) in str(caught.value)
    assert "defined inside a function" in str(caught.value)
    assert "Pass name=" in str(caught.value)
    assert registry.get(first.name) is first
    # named apart, each runs its own code where a worker runs it by name
    named = [make(n, name=f"tests.registration.made.v{n}") for n in (2, 3)]
    async with runtime(sqlite_url, registry) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.05)
        ids = [await rt.enqueue(w) for w in (first, *named)]
        assert [await rt.result(i, timeout=WAIT) for i in ids] == [1, 2, 3]


async def test_a_factory_s_steps_under_their_default_name_are_refused(sqlite_url: str) -> None:
    """Steps too: a worker runs a handed-out call (``durable.map``) by the step's name, so the
    second ``add`` used to run for the first's calls."""
    registry = durable.Registry()

    def make(n: int) -> durable.AsyncStep[[int], int]:
        @durable.step
        async def add(x: int) -> int:
            return x + n

        return add

    one = make(1)
    with pytest.raises(durable.ConfigurationError, match="Pass name="):
        make(10)
    assert default_registry.get_step(one.name) is one

    @durable.workflow(name="tests.registration.fan.v1", registry=registry)
    async def fan(items: list[int]) -> list[int]:
        return await durable.map(one, items)

    async with runtime(sqlite_url, registry) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.05)
        assert await rt.result(await rt.enqueue(fan, [1, 2]), timeout=WAIT) == [2, 3]


def test_lambdas_and_bound_methods_under_their_default_name_are_refused() -> None:
    registry = durable.Registry()
    durable.workflow(registry=registry)(lambda: 1)
    with pytest.raises(durable.ConfigurationError, match=r"<lambda>'.*a lambda"):
        durable.workflow(registry=registry)(lambda: 2)
    durable.step(lambda x: x)
    with pytest.raises(durable.ConfigurationError, match="a lambda"):
        durable.step(lambda x: -x)

    cheap, dear = Pricer(), Pricer()
    made = durable.step(cheap.price)
    assert durable.step(cheap.price).name == made.name  # the same instance's: replaced
    with pytest.raises(durable.ConfigurationError, match="a bound method"):
        durable.step(dear.price)


class Pricer:
    def price(self, x: int) -> int:
        return x


async def test_a_reloaded_module_replaces_its_workflows_and_steps(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``importlib.reload`` (a notebook cell run again) defines the same module-level functions
    again: they replace the old ones under their default names, and workers run the new code.
    An explicit ``name=`` is taken at its word: the same definition registering it again
    replaces it too."""
    module = f"durable_reload_probe_{uuid.uuid4().hex}"
    source = tmp_path / f"{module}.py"
    text = textwrap.dedent(
        """
        import durable

        @durable.step
        async def bump(x: int) -> int:
            return x + INCREMENT

        @durable.workflow
        async def flow(x: int) -> int:
            return await bump(x)

        @durable.workflow(name=NAME)
        async def named(x: int) -> int:
            return x * INCREMENT
        """
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"tests.registration.{module}.v1"
    source.write_text(f"INCREMENT = 1\nNAME = {name!r}\n{text}")
    try:
        old = importlib.import_module(module)
        source.write_text(f"INCREMENT = 100\nNAME = {name!r}\n{text}")
        importlib.invalidate_caches()
        new = importlib.reload(old)
        assert default_registry.get(f"{module}:flow") is new.flow
        assert default_registry.get(name) is new.named
        assert default_registry.get_step(f"{module}:bump") is new.bump
        registry = durable.Registry()
        registry.register(new.flow)
        async with runtime(sqlite_url, registry) as rt:
            await rt.start_worker(concurrency=1, poll_interval=0.05)
            assert await rt.result(await rt.enqueue(f"{module}:flow", 1), timeout=WAIT) == 101
    finally:
        sys.modules.pop(module, None)


async def _add(a: int, b: int) -> int:
    return a + b


def _sync_add(a: int, b: int) -> int:
    return a + b


class AsyncAdder:
    """Adds its amount (an object whose ``__call__`` is async)."""

    def __init__(self, amount: int) -> None:
        self.amount = amount
        self.name = "not the step's name"  # update_wrapper used to copy it over the step's

    async def __call__(self, x: int) -> int:
        return x + self.amount


class SyncAdder:
    def __init__(self, amount: int) -> None:
        self.amount = amount

    def __call__(self, x: int) -> int:
        return x + self.amount


class Service:
    @staticmethod
    @durable.step(name="tests.registration.service.double")
    async def double(x: int) -> int:
        return 2 * x


@pytest.mark.parametrize(
    ("decorator", "fn"),
    [
        (durable.step, functools.partial(_add, 1)),
        (durable.step, AsyncAdder(1)),
        (durable.workflow, functools.partial(_add, 1)),
        (durable.workflow, SyncAdder(1)),
        (durable.transaction, functools.partial(_sync_add, 1)),
    ],
    ids=["step-partial", "step-object", "workflow-partial", "workflow-object", "transaction"],
)
def test_a_callable_without_a_qualname_needs_a_name(decorator: Any, fn: Any) -> None:
    """It used to raise ``AttributeError: ... '__qualname__'`` from the decorator."""
    with pytest.raises(durable.InvalidArgumentError, match=r"has no qualname: pass name="):
        decorator(fn)


def test_a_staticmethod_object_is_refused_with_the_order_that_works() -> None:
    """``durable.step(staticmethod(async_fn))`` used to make a *sync* step (a staticmethod is
    no coroutine function) whose calls returned an un-awaited coroutine."""
    for decorator in (durable.step, durable.workflow):
        with pytest.raises(durable.InvalidArgumentError, match="put @staticmethod above"):
            decorator(staticmethod(_add))  # type: ignore[operator]


async def test_named_callables_run_as_the_kind_their_call_is(sqlite_url: str) -> None:
    """A named object with an ``async def __call__`` is an async step (it used to be taken
    for a sync one, and awaiting it raised ``AttributeError: __name__``) or workflow; a
    partial of an ``async def`` is async; a sync callable object called without ``.aio`` is
    refused with a DurableError (it raised ``AttributeError: __name__``). The object's
    attributes do not replace the step's, its code version is its class's source, and a
    partial workflow is described by its function's docstring."""
    registry = durable.Registry()
    adder = durable.step(name="tests.registration.adder")(AsyncAdder(10))
    partial = durable.step(name="tests.registration.partial")(functools.partial(_add, 100))
    sync_adder = durable.step(name="tests.registration.sync_adder")(SyncAdder(1000))
    assert isinstance(adder, durable.AsyncStep) and isinstance(partial, durable.AsyncStep)
    assert adder.name == "tests.registration.adder"

    @durable.workflow(name="tests.registration.calls.v1", registry=registry)
    async def calls(x: int) -> list[int]:
        return [
            await adder(x),
            await partial(x),
            await Service.double(x),
            await Service().double(x),
        ]

    @durable.workflow(name="tests.registration.direct.v1", registry=registry)
    async def direct(x: int) -> int:
        return await sync_adder(x)  # type: ignore[misc]

    made = durable.workflow(name="tests.registration.object.v1", registry=registry)(AsyncAdder(5))
    again = durable.workflow(name="tests.registration.object.v2", registry=registry)(AsyncAdder(6))
    assert isinstance(made, durable.AsyncWorkflow)
    assert made.code_version() == again.code_version() == source_version(AsyncAdder)
    partial_wf = durable.workflow(name="tests.registration.partial.v1", registry=registry)(
        functools.partial(_add, 1)
    )
    assert partial_wf.description is None  # _add has no docstring; not functools.partial's

    async with runtime(sqlite_url, registry) as rt:
        assert await rt.run(calls, 1, workflow_id="calls") == [11, 101, 2, 2]
        steps = await rt.client.list_steps("calls")
        assert [s.name for s in steps] == [
            "tests.registration.adder",
            "tests.registration.partial",
            "tests.registration.service.double",
            "tests.registration.service.double",
        ]
        with pytest.raises(durable.DurableError, match=r"write `await step\.aio\(\.\.\.\)`"):
            await rt.run(direct, 1)
        await rt.start_worker(concurrency=1, poll_interval=0.05)
        assert await rt.result(await rt.enqueue(made, 1), timeout=WAIT) == 6
