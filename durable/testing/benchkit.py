"""A backend's costs at scale, measured by hand: the figures the contract suite cannot time.

The contract suite (:mod:`durable.testing.contract`) says what a backend must do, and checks
that a step's cost does not grow with the history; it never times anything against a limit.
This kit prints what the operations cost, at sizes a production store reaches:

* **a step at 3,000 vs 10 steps of history**: ``record_step`` on two workflows, one with
  ``large_history`` recorded steps and one with ``small_history``, in turns; medians, and their
  ratio (about 1 for a backend that appends one row per step);
* **a claim with 100,000 finished workflows vs none**: ``claim_available_tasks`` of one new task,
  on the empty store, then after ``finished`` workflows have run to the end (created with their
  task and one step, claimed, finished: the rows a real store keeps); medians and ratio;
* **throughput under 200 concurrent calls**: ``concurrency`` coroutines each running
  ``rounds`` small workflows through the backend (create with a task, claim, two steps, read,
  finish: six calls), all at once; calls per second and call latencies.

Give it an **empty** store: it writes about ``finished`` + ``concurrency`` x ``rounds``
workflows. From the command line (any URL :func:`durable.connect` knows)::

    python -m durable.testing.benchkit sqlite:///kit.db [--history 3000] [--finished 100000]
        [--concurrency 200] [--rounds 5] [--samples 50]

or from code, for a backend of your own::

    figures = asyncio.run(run_kit(lambda: MyBackend("..."), KitSizes(finished=10_000)))

A finished workflow is what one leaves by the contract: its header (succeeded), one step, no task.
durable's SQL backends get them in bulk (the rows their own ``create_workflow`` would write, 5,000
per transaction: some seconds per 100,000); any other backend through its public
``create_workflow``, ``setup_concurrency`` calls at a time (the kit prints how long it took).
Figures on a shared or busy machine are indicative: compare ratios, and run twice. This module
needs neither pytest nor anything beyond durable.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from durable.backends.base import PersistentBackend
from durable.errors import DurableError, InvalidArgumentError
from durable.models import WORKFLOW_TASK, StepRecord, TaskSpec, WorkflowSnapshot, WorkflowStatus

TTL = timedelta(minutes=5)
_T0 = datetime(2024, 1, 1, tzinfo=UTC)
W = WORKFLOW_TASK


@dataclass(frozen=True)
class KitSizes:
    """How big each measurement is. The defaults are the sizes the kit is meant for."""

    small_history: int = 10
    large_history: int = 3_000
    finished: int = 100_000
    concurrency: int = 200
    rounds: int = 5
    samples: int = 50
    """Timed calls per figure (after ``warmup`` untimed ones)."""
    warmup: int = 5
    setup_concurrency: int = 32
    """Finished workflows made at once while loading the store."""


@dataclass(frozen=True)
class Figure:
    """One measured figure: ``value`` in ``unit``, with what it is."""

    key: str
    label: str
    value: float
    unit: str


class _Report:
    def __init__(self, echo: Callable[[str], Any]) -> None:
        self.echo = echo
        self.figures: dict[str, Figure] = {}

    def add(self, key: str, label: str, value: float, unit: str) -> None:
        self.figures[key] = Figure(key, label, value, unit)
        self.echo(f"  {label:<52} {_format(value)} {unit}")


def _format(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


async def _timed(call: Awaitable[Any]) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


def _us(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1e6


async def _in_parallel(count: int, width: int, make: Callable[[int], Awaitable[Any]]) -> None:
    """Run ``make(i)`` for i in range(count), at most ``width`` at once."""
    next_index = iter(range(count))

    async def lane() -> None:
        for i in next_index:
            await make(i)

    await asyncio.gather(*(lane() for _ in range(min(width, count))))


def _step(position: int, **fields: Any) -> StepRecord:
    return StepRecord(position=position, name="kit.step", output={"p": position}, **fields)


async def _create(backend: PersistentBackend, instance_id: str, **fields: Any) -> None:
    snapshot = WorkflowSnapshot(id=instance_id, name="kit", **fields)
    _, created = await backend.create_workflow(
        snapshot, task=TaskSpec(instance_id=instance_id, name="kit")
    )
    if not created:
        raise InvalidArgumentError(f"{instance_id!r} exists already: give the kit an empty store")


async def step_costs(backend: PersistentBackend, sizes: KitSizes, report: _Report) -> None:
    """record_step at ``large_history`` vs ``small_history`` steps, in turns."""
    histories = {"kit-steps-small": sizes.small_history, "kit-steps-large": sizes.large_history}
    for instance_id, size in histories.items():
        await _create(backend, instance_id, steps=tuple(_step(p) for p in range(size)))
        await backend.claim_task(instance_id, W, "kit-stepper", TTL)
    positions = dict(histories)
    costs: dict[str, list[float]] = {instance_id: [] for instance_id in histories}
    for n in range(sizes.warmup + sizes.samples):
        order = list(histories) if n % 2 else list(reversed(histories))
        for instance_id in order:
            call = backend.record_step(
                instance_id, _step(positions[instance_id]), worker_id="kit-stepper"
            )
            positions[instance_id] += 1
            spent = await _timed(call)
            if n >= sizes.warmup:
                costs[instance_id].append(spent)
    small, large = _us(costs["kit-steps-small"]), _us(costs["kit-steps-large"])
    report.add("step.small", f"record_step, {sizes.small_history:,} steps of history", small, "µs")
    report.add("step.large", f"record_step, {sizes.large_history:,} steps of history", large, "µs")
    report.add("step.ratio", "  ratio (large / small)", large / small, "x")
    for instance_id in histories:
        await backend.finish_workflow(
            instance_id, worker_id="kit-stepper", status=WorkflowStatus.SUCCEEDED
        )


async def claim_cost(backend: PersistentBackend, sizes: KitSizes, prefix: str) -> float:
    """Median µs of claiming one task (just created) with ``claim_available_tasks``."""
    samples: list[float] = []
    for n in range(sizes.warmup + sizes.samples):
        instance_id = f"{prefix}-{n}"
        await _create(backend, instance_id)
        started = time.perf_counter()
        claims = await backend.claim_available_tasks("kit-claimer", 1, TTL)
        spent = time.perf_counter() - started
        if [c.instance_id for c in claims] != [instance_id]:
            raise RuntimeError(f"claimed {claims!r}, expected {instance_id!r} alone")
        if n >= sizes.warmup:
            samples.append(spent)
        await backend.finish_workflow(
            instance_id, worker_id="kit-claimer", status=WorkflowStatus.SUCCEEDED
        )
    return _us(samples)


def _finished(i: int) -> WorkflowSnapshot:
    """What a workflow that ran to the end leaves, by the contract: its header, succeeded with
    its output, its step, and no task (finish_workflow removes it)."""
    stamp = _T0 + timedelta(seconds=i)
    return WorkflowSnapshot(
        id=f"kit-done-{i:07d}",
        name="kit",
        status=WorkflowStatus.SUCCEEDED,
        input={"i": i},
        output=i,
        executor_id="kit-loader",
        attempts=1,
        created_at=stamp,
        started_at=stamp,
        completed_at=stamp,
        steps=(_step(0, started_at=stamp, completed_at=stamp),),
    )


async def _load_through_the_interface(
    backend: PersistentBackend, count: int, sizes: KitSizes
) -> None:
    async def one(i: int) -> None:
        _, created = await backend.create_workflow(_finished(i))
        if not created:
            raise InvalidArgumentError(
                f"kit-done-{i:07d} exists already: give the kit an empty store"
            )

    await _in_parallel(count, sizes.setup_concurrency, one)


async def _load_sql_in_bulk(backend: Any, count: int, sizes: KitSizes) -> None:
    """durable's SQL backends: the same rows create_workflow would write (built by the
    backend's own row builders), inserted 5,000 workflows per transaction."""
    import sqlalchemy as sa

    from durable.backends.sql import schema

    def insert(first: int, last: int) -> Callable[[sa.Connection], None]:
        def run(conn: sa.Connection) -> None:
            snapshots = [_finished(i) for i in range(first, last)]
            now = snapshots[-1].completed_at
            conn.execute(
                sa.insert(schema.workflows),
                [backend._workflow_row(s.header(), now, 1) for s in snapshots],
            )
            conn.execute(
                sa.insert(schema.steps),
                [backend._step_row(s.id, t, now) for s in snapshots for t in s.steps],
            )

        return run

    chunk = 5_000
    for first in range(0, count, chunk):
        await backend._run(insert(first, min(count, first + chunk)), what="load the kit")


async def load_finished(backend: PersistentBackend, sizes: KitSizes) -> float:
    """Store ``sizes.finished`` finished workflows; returns the seconds it took. durable's SQL
    backends are loaded in bulk; any other backend through :meth:`create_workflow`,
    ``setup_concurrency`` calls at a time."""
    from durable.backends.sql import SQLAlchemyBackend

    started = time.perf_counter()
    if isinstance(backend, SQLAlchemyBackend):
        await _load_sql_in_bulk(backend, sizes.finished, sizes)
    else:
        await _load_through_the_interface(backend, sizes.finished, sizes)
    return time.perf_counter() - started


async def throughput(backend: PersistentBackend, sizes: KitSizes, report: _Report) -> None:
    """``concurrency`` coroutines at once, each running ``rounds`` small workflows."""
    latencies: list[float] = []

    async def call(awaitable: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        result = await awaitable
        latencies.append(time.perf_counter() - started)
        return result

    async def lane(lane_no: int) -> None:
        worker = f"kit-lane-{lane_no}"
        for r in range(sizes.rounds):
            instance_id = f"kit-load-{lane_no}-{r}"
            snapshot = WorkflowSnapshot(id=instance_id, name="kit", input=r)
            spec = TaskSpec(instance_id=instance_id, name="kit")
            await call(backend.create_workflow(snapshot, task=spec))
            if await call(backend.claim_task(instance_id, W, worker, TTL)) is None:
                raise RuntimeError(f"could not claim {instance_id!r}")
            await call(backend.record_step(instance_id, _step(0), worker_id=worker))
            await call(backend.record_step(instance_id, _step(1), worker_id=worker))
            await call(backend.get_workflow(instance_id))
            await call(
                backend.finish_workflow(
                    instance_id, worker_id=worker, status=WorkflowStatus.SUCCEEDED, output=r
                )
            )

    started = time.perf_counter()
    await asyncio.gather(*(lane(n) for n in range(sizes.concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    label = f"{sizes.concurrency} concurrent callers"
    report.add(
        "concurrent.calls_per_s", f"{label}: calls per second", len(latencies) / elapsed, "/s"
    )
    report.add(
        "concurrent.p50_ms", f"{label}: call latency, median", _quantile(latencies, 0.5), "ms"
    )
    report.add("concurrent.p99_ms", f"{label}: call latency, p99", _quantile(latencies, 0.99), "ms")


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def run_kit(
    factory: Callable[[], PersistentBackend],
    sizes: KitSizes = KitSizes(),
    *,
    echo: Callable[[str], Any] = print,
) -> dict[str, Figure]:
    """Measure the backend ``factory()`` builds (unstarted, over an empty store): start it,
    print each figure as it is measured, close it. Returns the figures by key: ``step.small``,
    ``step.large``, ``step.ratio``, ``claim.empty``, ``claim.finished``, ``claim.ratio``,
    ``setup.finished_s``, ``concurrent.calls_per_s``, ``concurrent.p50_ms``,
    ``concurrent.p99_ms``."""
    report = _Report(echo)
    async with factory() as backend:
        echo(f"durable backend kit: {type(backend).__name__}")
        await step_costs(backend, sizes, report)
        empty = await claim_cost(backend, sizes, "kit-claim-empty")
        report.add("claim.empty", "claim 1 task, no finished workflows", empty, "µs")
        seconds = await load_finished(backend, sizes)
        per_second = sizes.finished / seconds if seconds else 0.0
        report.add(
            "setup.finished_s",
            f"  (setup: {sizes.finished:,} finished workflows, {per_second:,.0f}/s)",
            seconds,
            "s",
        )
        loaded = await claim_cost(backend, sizes, "kit-claim-loaded")
        report.add(
            "claim.finished", f"claim 1 task, {sizes.finished:,} finished workflows", loaded, "µs"
        )
        report.add("claim.ratio", "  ratio (finished / none)", loaded / empty, "x")
        await throughput(backend, sizes, report)
    return report.figures


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` an option per :class:`KitSizes` field (``--history``, ``--finished``, ...),
    defaulting to the kit's sizes."""
    defaults = KitSizes()
    parser.add_argument("--history", type=int, default=defaults.large_history)
    parser.add_argument("--small-history", type=int, default=defaults.small_history)
    parser.add_argument("--finished", type=int, default=defaults.finished)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--samples", type=int, default=defaults.samples)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--setup-concurrency", type=int, default=defaults.setup_concurrency)


def sizes_from_arguments(args: argparse.Namespace) -> KitSizes:
    """The sizes parsed by a parser that :func:`add_size_arguments` prepared."""
    return KitSizes(
        small_history=args.small_history,
        large_history=args.history,
        finished=args.finished,
        concurrency=args.concurrency,
        rounds=args.rounds,
        samples=args.samples,
        warmup=args.warmup,
        setup_concurrency=args.setup_concurrency,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Figure]:
    """``python -m durable.testing.benchkit URL [options]``: run the kit on the store at URL."""
    parser = argparse.ArgumentParser(
        prog="python -m durable.testing.benchkit",
        description="Measure a durable backend's costs at scale, on an EMPTY store.",
    )
    parser.add_argument("url", help="a URL durable.connect() knows (memory://, sqlite:///...)")
    add_size_arguments(parser)
    args = parser.parse_args(argv)
    sizes = sizes_from_arguments(args)
    from durable.connect import connect

    try:
        return asyncio.run(run_kit(lambda: connect(args.url), sizes))
    except DurableError as exc:  # a store not empty, a URL not known: said, not a traceback
        parser.exit(1, f"{parser.prog}: {type(exc).__name__}: {exc}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
