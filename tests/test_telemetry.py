"""OpenTelemetry (durable.telemetry) and durable's log fields, through a real worker.

* the enqueuer's span is the parent of the workflow span on the worker, through the trace
  context stored with the execution (every backend), for every attempt (a retry reads it back
  from the store); one child span per step that runs, with attributes; errors recorded;
* metrics: steps by outcome, failed attempts, claim latency, queue depth;
* the steps a workflow hands out (durable.map) get step spans in the workflow's trace;
* OpenTelemetry that raises (a span processor, a propagator, an instrument) changes no
  workflow's outcome or attempts: the error is logged (action telemetry.error) and ignored;
* log records carry ``action``, ``workflow_id`` and ``step`` as ``extra`` fields.

The SDK's in-memory exporter and reader are installed once for the process (OpenTelemetry's
providers are global); each test reads only its own workflows' spans.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import durable
import durable.runtime
from durable import overview, telemetry

WAIT = 60.0
REG = durable.Registry()
CALLS: Counter[str] = Counter()
EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader()


class FaultyProcessor(SpanProcessor):
    """A span processor that raises in the hook named by :attr:`where` (None: in none), for
    durable's spans."""

    where: str | None = None

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        if self.where == "on_start" and span.name.startswith("durable."):
            raise RuntimeError("the span processor's on_start is down")

    def on_end(self, span: ReadableSpan) -> None:
        if self.where == "on_end" and span.name.startswith("durable."):
            raise RuntimeError("the span processor's on_end is down")


FAULTY = FaultyProcessor()


@pytest.fixture(scope="module", autouse=True)
def _providers() -> Iterator[None]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    provider.add_span_processor(FAULTY)  # after the exporter: it sees every span that ends
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    assert telemetry.active is not None
    telemetry.active._unconfigured_until = 0.0  # look again now (an earlier test may have)
    assert telemetry.active.recording()
    yield


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()
    EXPORTER.clear()
    FAULTY.where = None
    assert telemetry.active is not None
    telemetry.active._reports.clear()  # each test sees its first report of a failing call


@durable.step(name="tests.otel.add")
async def add(x: int) -> int:
    CALLS["add"] += 1
    return x + 1


@durable.step(name="tests.otel.flaky")
async def flaky(x: int) -> int:
    CALLS["flaky"] += 1
    if CALLS["flaky"] == 1:
        raise ValueError("flaky the first time")
    return x * 2


@durable.workflow(
    name="tests.otel.wf.v1", registry=REG, retry=durable.RetryPolicy(3, initial_delay=0.0)
)
async def wf(x: int) -> int:
    return await flaky(await add(x))


@durable.step(name="tests.otel.add_sync")
def add_sync(x: int) -> int:
    return x + 1


@durable.workflow(name="tests.otel.sync_wf.v1", registry=REG)
def sync_wf(x: int) -> int:
    return add_sync(add_sync(x))


def runtime(url: str) -> durable.Runtime:
    return durable.Runtime(
        durable.connect(url), executor_id="otel-1", registry=REG, recover=False, poll_interval=0.02
    )


def spans_of(workflow_id: str) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    """The workflow spans (by attempt) and step spans of one execution."""
    spans = [
        s
        for s in EXPORTER.get_finished_spans()
        if (s.attributes or {}).get("durable.workflow.id") == workflow_id
    ]
    workflows = sorted(
        (s for s in spans if s.name.startswith("durable.workflow ")),
        key=lambda s: s.start_time or 0,
    )
    steps = sorted(
        (s for s in spans if s.name.startswith("durable.step ")), key=lambda s: s.start_time or 0
    )
    return workflows, steps


def metric_points(name: str) -> list[Any]:
    data = READER.get_metrics_data()
    if data is None:  # nothing measured yet in this process (the test runs first, or alone)
        return []
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


async def test_the_enqueuers_span_parents_every_attempt_and_each_step_has_a_span(
    backend_url: str,
) -> None:
    tracer = trace.get_tracer("tests")
    async with runtime(backend_url) as rt:
        with tracer.start_as_current_span("enqueue") as parent:
            workflow_id = await rt.client.enqueue(wf, 1)
        stored = (await rt.client.get_workflow(workflow_id)).trace_context
        assert stored is not None
        assert f"{parent.get_span_context().trace_id:032x}" in json.loads(stored)["traceparent"]
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        assert await rt.client.result(workflow_id, timeout=WAIT) == 4

    first, second = spans_of(workflow_id)[0]
    context = parent.get_span_context()
    for attempt, span in enumerate((first, second), start=1):
        assert span.parent is not None and span.parent.span_id == context.span_id
        assert span.context is not None and span.context.trace_id == context.trace_id
        assert span.kind is trace.SpanKind.CONSUMER
        assert span.name == "durable.workflow tests.otel.wf.v1"
        attributes = dict(span.attributes or {})
        assert attributes["durable.workflow.name"] == "tests.otel.wf.v1"
        assert attributes["durable.executor.id"] == "otel-1"
        assert attributes["durable.attempt"] == attempt
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert (first.attributes or {})["durable.outcome"] == "failed"
    assert (second.attributes or {})["durable.outcome"] == "succeeded"
    assert (second.attributes or {})["durable.replayed_steps"] == 1  # add replayed, not run

    steps = spans_of(workflow_id)[1]
    assert [(s.name, (s.attributes or {})["durable.step.position"]) for s in steps] == [
        ("durable.step tests.otel.add", 0),
        ("durable.step tests.otel.flaky", 1),  # attempt 1: failed
        ("durable.step tests.otel.flaky", 1),  # attempt 2: the failed step runs again
    ]
    assert [s.parent.span_id if s.parent else None for s in steps] == [
        first.context.span_id if first.context else None,
        first.context.span_id if first.context else None,
        second.context.span_id if second.context else None,
    ]
    assert steps[1].status.status_code is StatusCode.ERROR
    assert CALLS == {"add": 1, "flaky": 2}


async def test_an_attempt_resumed_after_its_executor_died_joins_the_enqueuers_trace(
    tmp_path: Any,
) -> None:
    """An executor claims and begins the execution, then dies (its lease runs out); the worker
    that resumes it reads the trace context from the row, not from anything in memory."""
    tracer = trace.get_tracer("tests")
    async with runtime(f"sqlite:///{tmp_path / 'crash.db'}") as rt:
        with tracer.start_as_current_span("enqueue") as parent:
            workflow_id = await rt.client.enqueue(wf, 10)
        backend = rt.backend
        claim = await backend.claim_task(
            workflow_id, durable.WORKFLOW_TASK, "dead-executor", timedelta(seconds=0.2)
        )
        assert claim is not None
        await backend.begin_execution(workflow_id, "dead-executor")  # then it dies
        await asyncio.sleep(0.3)  # its lease expires
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        assert await rt.client.result(workflow_id, timeout=WAIT) == 22
        assert (await rt.client.get_workflow(workflow_id)).interruptions == 1
    spans = spans_of(workflow_id)[0]
    assert spans and all(
        s.parent is not None and s.parent.span_id == parent.get_span_context().span_id
        for s in spans
    )


async def test_without_a_current_span_the_workflow_span_is_a_root(tmp_path: Any) -> None:
    async with runtime(f"sqlite:///{tmp_path / 'otel.db'}") as rt:
        workflow_id = await rt.client.enqueue(wf, 5)
        assert (await rt.client.get_workflow(workflow_id)).trace_context is None
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        assert await rt.client.result(workflow_id, timeout=WAIT) == 12
    workflows, steps = spans_of(workflow_id)
    assert [w.parent for w in workflows] == [None, None]
    assert len(steps) == 3


async def test_a_fork_is_parented_by_the_forkers_span() -> None:
    tracer = trace.get_tracer("tests")
    async with runtime("memory://") as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        original = await rt.client.enqueue(wf, 2)
        assert await rt.client.result(original, timeout=WAIT) == 6
        with tracer.start_as_current_span("fork") as parent:
            fork = await rt.client.fork(original, from_step=1)
        assert await rt.client.result(fork, timeout=WAIT) == 6
    (span,) = spans_of(fork)[0]
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id


async def test_a_sync_workflows_steps_are_children_of_its_span() -> None:
    async with runtime("memory://") as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        workflow_id = await rt.client.enqueue(sync_wf, 1)
        assert await rt.client.result(workflow_id, timeout=WAIT) == 3
    (span,), steps = spans_of(workflow_id)
    assert span.context is not None
    assert [(s.name, s.parent.span_id if s.parent else None) for s in steps] == [
        ("durable.step tests.otel.add_sync", span.context.span_id)
    ] * 2


def _sum(name: str, **attributes: Any) -> float:
    return sum(
        p.value
        for p in metric_points(name)
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


async def test_metrics() -> None:
    before_ok = _sum("durable.steps", **{"durable.step.name": "tests.otel.flaky",
                                         "durable.outcome": "succeeded"})  # fmt: skip
    before_failed = _sum("durable.steps", **{"durable.step.name": "tests.otel.flaky",
                                             "durable.outcome": "failed"})  # fmt: skip
    before_failures = _sum("durable.workflow.failures", **{"durable.workflow.name": wf.name})
    async with runtime("memory://") as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        workflow_id = await rt.client.enqueue(wf, 3)
        assert await rt.client.result(workflow_id, timeout=WAIT) == 8
        parked = await rt.client.enqueue("tests.otel.nobody_serves.v1", queue="parked")
        rows = await overview.report_queue_depths(rt.client)
        assert [(r.queue, r.pending) for r in rows] == [("parked", 1)]
        parked_depths = [
            p.value
            for p in metric_points("durable.queue.depth")
            if p.attributes["durable.queue"] == "parked"
            and p.attributes["durable.state"] == "pending"
        ]
        assert parked_depths == [1]
        await rt.client.cancel(parked)
        assert await overview.report_queue_depths(rt.client) == []
        # drained: reported as 0, not dropped (a dashboard kept showing the last value)
        assert ("parked", "pending", 0) in [
            (p.attributes["durable.queue"], p.attributes["durable.state"], p.value)
            for p in metric_points("durable.queue.depth")
        ]
    ok = {"durable.step.name": "tests.otel.flaky", "durable.outcome": "succeeded"}
    failed = {"durable.step.name": "tests.otel.flaky", "durable.outcome": "failed"}
    assert _sum("durable.steps", **ok) - before_ok == 1
    assert _sum("durable.steps", **failed) - before_failed == 1
    assert (
        _sum("durable.workflow.failures", **{"durable.workflow.name": wf.name}) - (before_failures)
        == 1
    )
    latencies = metric_points("durable.claim.latency")
    assert sum(p.count for p in latencies) >= 2
    assert any(p.attributes["durable.claimed"] for p in latencies)


async def test_log_records_carry_action_workflow_id_and_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="durable")
    async with runtime("memory://") as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        workflow_id = await rt.client.enqueue(wf, 4)
        assert await rt.client.result(workflow_id, timeout=WAIT) == 10
        fork = await rt.client.fork(workflow_id, from_step=1)
        await rt.client.result(fork, timeout=WAIT)
        await asyncio.sleep(0)
    by_action = {
        getattr(r, "action", None): r
        for r in caplog.records
        if getattr(r, "workflow_id", None) in (workflow_id, fork)
    }
    created = by_action["workflow.created"]
    assert created.workflow_id == workflow_id  # type: ignore[attr-defined]
    failed = by_action["step.failed"]
    assert failed.step == "tests.otel.flaky" and failed.position == 1  # type: ignore[attr-defined]
    assert by_action["workflow.retry"].levelno == logging.INFO
    forked = by_action["workflow.forked"]
    assert forked.workflow_id == fork and forked.step == 1  # type: ignore[attr-defined]
    assert forked.source_id == workflow_id  # type: ignore[attr-defined]
    assert all(isinstance(getattr(r, "action", None), str) for r in caplog.records
               if r.name.startswith("durable"))  # fmt: skip


def test_the_hooks_are_off_without_opentelemetry() -> None:
    """``telemetry.active`` is None when the API cannot be imported (checked in a fresh
    interpreter that hides it), and enqueueing then stores no trace context."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from durable import telemetry\n"
        "assert telemetry.active is None\n"
        "assert telemetry.current_trace_context() is None\n"
        "import durable\n"
        "async def main():\n"
        "    async with durable.Client('memory://') as c:\n"
        "        i = await c.enqueue('x.v1')\n"
        "        assert (await c.get_workflow(i)).trace_context is None\n"
        "import asyncio; asyncio.run(main()); print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
    assert telemetry.active is not None  # here, the API is installed


def test_durable_does_not_import_opentelemetry_before_the_application_does() -> None:
    """Installed but unused by the application: a worker runs a workflow and a client enqueues
    without importing it (a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, asyncio, durable\n"
        "from durable import telemetry\n"
        "assert telemetry.active is not None\n"
        "reg = durable.Registry()\n"
        "@durable.step(name='t.s')\n"
        "async def s(x): return x + 1\n"
        "@durable.workflow(name='t.w.v1', registry=reg)\n"
        "async def w(x): return await s(x)\n"
        "async def main():\n"
        "    rt = durable.Runtime(durable.connect('memory://'), registry=reg, recover=False)\n"
        "    async with rt:\n"
        "        await rt.start_worker(poll_interval=0.02)\n"
        "        i = await rt.client.enqueue(w, 1)\n"
        "        assert await rt.client.result(i, timeout=30) == 2\n"
        "        assert (await rt.client.get_workflow(i)).trace_context is None\n"
        "asyncio.run(main())\n"
        "assert 'opentelemetry.trace' not in sys.modules, 'imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


GATE: list[asyncio.Event] = []


@durable.step(name="tests.otel.held")
async def held() -> None:
    GATE[0].set()
    await asyncio.sleep(1.0)  # the cancel lands meanwhile: its record is refused


@durable.workflow(name="tests.otel.cancelled.v1", registry=REG)
async def cancelled_wf() -> None:
    await held()


async def test_a_cancelled_attempt_is_no_failure(tmp_path: Any) -> None:
    """A cancel (or a passed deadline) ends the attempt's span with outcome "cancelled", not as
    an error, and counts no failed attempt; the step it cut off (its record refused) counts as
    interrupted, not failed."""
    GATE[:] = [asyncio.Event()]
    before_failures = _sum(
        "durable.workflow.failures", **{"durable.workflow.name": "tests.otel.cancelled.v1"}
    )
    step = {"durable.step.name": "tests.otel.held"}
    before_failed = _sum("durable.steps", **step, **{"durable.outcome": "failed"})
    before_cut = _sum("durable.steps", **step, **{"durable.outcome": "interrupted"})
    async with runtime(f"sqlite:///{tmp_path / 'cancel.db'}") as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        workflow_id = await rt.client.enqueue(cancelled_wf)
        await asyncio.wait_for(GATE[0].wait(), WAIT)
        await rt.client.cancel(workflow_id)
        with pytest.raises(durable.WorkflowCancelledError):
            await rt.client.result(workflow_id, timeout=WAIT)

        async def ended() -> bool:
            return bool(spans_of(workflow_id)[0])

        deadline = asyncio.get_running_loop().time() + WAIT
        while not await ended():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
    (span,), _ = spans_of(workflow_id)
    assert (span.attributes or {})["durable.outcome"] == "cancelled"
    assert span.status.status_code is not StatusCode.ERROR
    name = {"durable.workflow.name": "tests.otel.cancelled.v1"}
    assert _sum("durable.workflow.failures", **name) == before_failures
    assert _sum("durable.steps", **step, **{"durable.outcome": "failed"}) == before_failed
    assert _sum("durable.steps", **step, **{"durable.outcome": "interrupted"}) == before_cut + 1


@durable.step(name="tests.otel.outage_step")
async def outage_step(x: int) -> int:
    return x + 1


@durable.workflow(name="tests.otel.outage.v1", registry=REG)
async def outage_wf(x: int) -> int:
    return await outage_step(x)


async def test_an_attempt_an_outage_ended_is_handed_back_not_failed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database cannot be reached to record a step: the attempt is handed back uncounted
    and resumes. Its span says ``handed_back`` (it said ``failed``, with status ERROR), the
    step counts as interrupted, and no failed attempt is counted (an alert on failures fired
    at every database restart)."""
    monkeypatch.setattr(durable.runtime, "OUTAGE_BACKOFF", timedelta(milliseconds=50))
    name = {"durable.workflow.name": "tests.otel.outage.v1"}
    step = {"durable.step.name": "tests.otel.outage_step"}
    before_failures = _sum("durable.workflow.failures", **name)
    before_failed = _sum("durable.steps", **step, **{"durable.outcome": "failed"})
    before_cut = _sum("durable.steps", **step, **{"durable.outcome": "interrupted"})
    async with runtime(f"sqlite:///{tmp_path / 'outage.db'}") as rt:
        record_step = rt.backend.record_step

        async def away_once(instance_id: str, record: durable.StepRecord, **kw: Any) -> None:
            if record.name == "tests.otel.outage_step" and not CALLS["away"]:
                CALLS["away"] += 1
                raise durable.BackendUnavailableError("the database went away")
            await record_step(instance_id, record, **kw)

        monkeypatch.setattr(rt.backend, "record_step", away_once)
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        workflow_id = await rt.client.enqueue(outage_wf, 1)
        assert await rt.client.result(workflow_id, timeout=WAIT) == 2
    attempts, _ = spans_of(workflow_id)
    assert [(s.attributes or {})["durable.outcome"] for s in attempts] == [
        "handed_back",
        "succeeded",
    ]
    assert attempts[0].status.status_code is not StatusCode.ERROR
    assert _sum("durable.workflow.failures", **name) == before_failures
    assert _sum("durable.steps", **step, **{"durable.outcome": "failed"}) == before_failed
    assert _sum("durable.steps", **step, **{"durable.outcome": "interrupted"}) == before_cut + 1


@durable.step(name="tests.otel.double")
async def double(x: int) -> int:
    CALLS["double"] += 1
    return x * 2


@durable.workflow(name="tests.otel.mixed.v1", registry=REG)
async def mixed_wf(x: int) -> int:
    """An async workflow with a sync step (in a thread) and an async one."""
    return await double(await add_sync.aio(x))


@durable.workflow(name="tests.otel.map.v1", registry=REG)
async def map_wf(items: list[int]) -> list[int]:
    return await durable.map(double, items)


async def test_the_steps_a_workflow_hands_out_have_spans_in_its_trace(backend_url: str) -> None:
    """durable.map's items, run by a worker from their tasks, each get a ``durable.step`` span
    (with the workflow's id and the item's position) in the enqueuer's trace, parented like the
    workflow's spans (the trace context stored with the execution); a span the item opens is a
    child of it; they count in ``durable.steps``."""
    tracer = trace.get_tracer("tests")
    ok = {"durable.step.name": "tests.otel.double", "durable.outcome": "succeeded"}
    before = _sum("durable.steps", **ok, **{"durable.workflow.name": map_wf.name})
    async with runtime(backend_url) as rt:
        with tracer.start_as_current_span("enqueue") as parent:
            workflow_id = await rt.client.enqueue(map_wf, [1, 2, 3])
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        assert await rt.client.result(workflow_id, timeout=WAIT) == [2, 4, 6]
    workflows, steps = spans_of(workflow_id)
    assert sorted((s.name, (s.attributes or {})["durable.step.position"]) for s in steps) == [
        ("durable.step tests.otel.double", position) for position in (0, 1, 2)
    ]
    context = parent.get_span_context()
    for span in [*workflows, *steps]:
        assert span.context is not None and span.context.trace_id == context.trace_id
        assert span.parent is not None and span.parent.span_id == context.span_id
    assert all(s.status.status_code is not StatusCode.ERROR for s in steps)
    assert _sum("durable.steps", **ok, **{"durable.workflow.name": map_wf.name}) - before == 3
    assert CALLS == {"double": 3}


@durable.step(name="tests.otel.item_fails")
async def item_fails(x: int) -> int:
    raise ValueError(f"item {x} fails")


@durable.workflow(name="tests.otel.map_fails.v1", registry=REG, retry=durable.RetryPolicy(1))
async def map_fails_wf() -> list[int]:
    return await durable.map(item_fails, [7])


async def test_a_handed_out_step_that_fails_has_its_error_on_its_span() -> None:
    failed = {"durable.step.name": "tests.otel.item_fails", "durable.outcome": "failed"}
    before = _sum("durable.steps", **failed)
    async with runtime("memory://") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        workflow_id = await rt.client.enqueue(map_fails_wf)
        with pytest.raises(durable.WorkflowDeadLetteredError, match="item 7 fails"):
            await rt.client.result(workflow_id, timeout=WAIT)
    (item,) = [s for s in spans_of(workflow_id)[1] if s.name.endswith("item_fails")]
    assert item.status.status_code is StatusCode.ERROR
    assert [e.name for e in item.events] == ["exception"]
    assert _sum("durable.steps", **failed) - before == 1


class Unsayable(Exception):
    """An exception whose ``str()`` raises (its ``__str__`` reads what it never got)."""

    def __str__(self) -> str:
        return f"code {self.code}"  # type: ignore[attr-defined]


@durable.step(name="tests.otel.unsayable", max_attempts=1)
async def unsayable_step() -> None:
    raise Unsayable()


@durable.workflow(name="tests.otel.unsayable.v1", registry=REG, retry=durable.RetryPolicy(1))
async def unsayable_wf(in_step: bool) -> None:
    if in_step:
        await unsayable_step()
    raise Unsayable()


@pytest.mark.parametrize("in_step", [False, True], ids=["workflow", "step"])
async def test_an_error_whose_str_raises_is_recorded_on_its_span(in_step: bool) -> None:
    """The span's status description is the error's message: an error whose ``str()`` raised
    made recording it raise in place of the step's failure (the attempt then ended on that
    AttributeError, not on the step's recorded failure). Now the outcome is the same as
    without telemetry, and the span says what the recorded error says."""
    async with runtime("memory://") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        workflow_id = await rt.client.enqueue(unsayable_wf, in_step)
        with pytest.raises(durable.WorkflowDeadLetteredError, match="str\\(\\) of this"):
            await rt.client.result(workflow_id, timeout=WAIT)
        info = await rt.client.get_workflow(workflow_id)
    assert info.error is not None and info.error.type.endswith("Unsayable")
    workflow_spans, step_spans = spans_of(workflow_id)
    failed = step_spans if in_step else workflow_spans
    assert failed and failed[-1].status.status_code is StatusCode.ERROR
    assert "str() of this Unsayable raised" in (failed[-1].status.description or "")


class FaultyPropagator(TraceContextTextMapPropagator):
    """W3C trace context, except that it raises in ``inject`` or ``extract`` (``where``)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        if self.where == "inject":
            raise RuntimeError("the propagator's inject is down")
        super().inject(carrier, context)

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        if self.where == "extract":
            raise RuntimeError("the propagator's extract is down")
        return super().extract(carrier, context)


class FaultyInstrument:
    """A counter or histogram that raises on every measurement."""

    def add(self, *_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the meter is down")

    record = add


#: What raises, and the call durable names in its report.
FAULTS = {
    "on_start": "start_span",
    "on_end": "span.end",
    "inject": "propagate.inject",
    "extract": "propagate.extract",
    "metrics": "metrics",
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_opentelemetry_that_raises_changes_no_outcome(
    fault: str,
    backend_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever raises in OpenTelemetry (a span processor's on_start or on_end, the
    propagator at enqueue or at the worker, an instrument), every workflow (async and sync
    steps in async and sync workflows, handed-out steps) succeeds on its first attempt, each
    step run once, and the error is logged once (action ``telemetry.error``), not raised."""
    caplog.set_level(logging.WARNING, logger="durable")
    tel = telemetry.active
    assert tel is not None
    if fault in ("on_start", "on_end"):
        FAULTY.where = fault
    elif fault == "metrics":
        for instrument in ("steps", "failures", "claim_latency"):
            monkeypatch.setattr(tel, instrument, FaultyInstrument())
    previous = propagate.get_global_textmap()
    if fault in ("inject", "extract"):
        propagate.set_global_textmap(FaultyPropagator(fault))
    tracer = trace.get_tracer("tests")
    try:
        async with runtime(backend_url) as rt:
            with tracer.start_as_current_span("enqueue"):
                ids = [
                    await rt.client.enqueue(mixed_wf, 1),
                    await rt.client.enqueue(sync_wf, 1),
                    await rt.client.enqueue(map_wf, [1, 2]),
                ]
            await rt.start_worker(concurrency=3, poll_interval=0.02)
            results = [await rt.client.result(i, timeout=30) for i in ids]
            infos = [await rt.client.get_workflow(i) for i in ids]
    finally:
        propagate.set_global_textmap(previous)
        FAULTY.where = None
    assert results == [4, 3, [2, 4]]
    assert [(i.status, i.attempts, i.interruptions) for i in infos] == [
        (durable.WorkflowStatus.SUCCEEDED, 1, 0)
    ] * 3
    assert CALLS == {"double": 3}
    reports = [r for r in caplog.records if getattr(r, "action", None) == "telemetry.error"]
    assert [getattr(r, "call", None) for r in reports] == [FAULTS[fault]]
    assert reports[0].name == "durable.telemetry" and reports[0].levelno == logging.WARNING
    if fault == "inject":
        assert all(i.trace_context is None for i in infos)


@durable.workflow(name="tests.otel.counter.v1", registry=REG)
async def counter(n: int) -> int:
    if n < 2:
        durable.continue_as_new(n + 1)
    return n


async def test_a_run_that_continues_as_new_ends_continued(tmp_path: Any) -> None:
    """Its span said "suspended": a continue-as-new is a suspension too, and that outcome was
    looked up first."""
    async with runtime(f"sqlite:///{tmp_path / 'continued.db'}") as rt:
        assert await rt.run(counter, 0, workflow_id="counted") == 2
    outcomes = [(s.attributes or {})["durable.outcome"] for s in spans_of("counted")[0]]
    assert outcomes == ["continued", "continued", "succeeded"]
