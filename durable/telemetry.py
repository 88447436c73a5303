"""OpenTelemetry for durable: spans for workflows and steps, the enqueuer's trace context carried
to the worker, and a few metrics. Optional: install the ``otel`` extra
(``pip install 'durable-sqla[otel]'``, which brings ``opentelemetry-api``) and configure an SDK
in the application as for any library; durable only uses the API.

What is recorded (names are stable):

* **Spans.** ``durable.workflow <name>`` for each attempt of an execution a worker runs (kind
  CONSUMER), whose parent is the span that was current where the execution was enqueued
  (:attr:`~durable.models.WorkflowInfo.trace_context`, stored with the execution, so a resume
  after a crash, on another worker, joins the same trace); inside it ``durable.step <name>``
  for each decorated step (``@durable.step``, :func:`durable.run_step`) that runs (replayed
  steps do not run and get none; the workflow span counts them in ``durable.replayed_steps``).
  Attributes: ``durable.workflow.id``, ``durable.workflow.name``, ``durable.executor.id``,
  ``durable.attempt``; a step span ``durable.step.name`` and ``durable.step.position``.
  An exception that ends a span is recorded on it, with status ERROR; a workflow that sleeps,
  waits for fanned-out calls or continues as new ends its span with ``durable.outcome`` set
  (``sleeping``, ``suspended``, ``continued``), not as an error.
* **Metrics** (meter ``durable``): ``durable.steps`` (counter; ``durable.step.name``,
  ``durable.workflow.name``, ``durable.outcome`` = ``succeeded`` | ``failed``),
  ``durable.workflow.failures`` (counter of failed attempts; ``durable.workflow.name``),
  ``durable.claim.latency`` (histogram, seconds a worker's claim of work took; ``durable.claimed``:
  whether it took any), ``durable.queue.depth`` (gauge; ``durable.queue``, ``durable.state`` =
  ``pending`` | ``running``, set whenever :func:`durable.overview.queue_rows` reads the
  queues: the web view, ``durable queues``, or :func:`durable.overview.report_queue_depths`).

No cost without OpenTelemetry: :data:`active` is None when ``opentelemetry-api`` cannot be
imported, and every hook is one ``if telemetry.active is not None`` on the hot path. With it
installed, durable still never imports it before the application does (``import durable`` and a
worker's start stay as fast): until ``opentelemetry.trace`` is imported, no span can be current
and no provider configured, so the hooks return at once. With the
API installed and no SDK configured (no tracer or meter provider set), spans and measurements
are skipped too (:meth:`Telemetry.recording`); the trace context of an enqueue is still stored
(a context propagated from an incoming request may be valid without an SDK here).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from durable.errors import ClaimLostError, WorkflowCancelledError

T = TypeVar("T")

if TYPE_CHECKING:  # the optional extra: imported on first use (Telemetry._setup)
    from opentelemetry.metrics import CallbackOptions, Observation

#: The instrumentation scope's name (tracer and meter).
SCOPE = "durable"
#: Imported by an application that uses OpenTelemetry (to configure it, or to start a span):
#: until it is, nothing can be recorded and no span can be current, so durable does nothing.
_API = "opentelemetry.trace"
# OpenTelemetry's modules, imported by Telemetry._setup on first use
otel_context: Any = None
otel_propagate: Any = None
otel_metrics: Any = None
otel_trace: Any = None


def _installed() -> bool:
    """Whether ``opentelemetry-api`` can be imported, without importing it (importing it reads
    package entry points: tens of milliseconds that ``import durable`` does not pay)."""
    try:
        return importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["opentelemetry"] is None
        return False


class Telemetry:
    """durable's tracer, meter and instruments (one per process: :data:`active`)."""

    def __init__(self) -> None:
        self._ready = False
        self._configured = False
        self._unconfigured_until = 0.0  # monotonic: no provider was set when last looked
        self._depths: dict[tuple[str, str], int] = {}

    def _setup(self) -> None:
        """Import OpenTelemetry and make the tracer and instruments, on first use."""
        if self._ready:
            return
        global otel_context, otel_metrics, otel_propagate, otel_trace
        from opentelemetry import context, metrics, propagate, trace

        otel_context, otel_metrics, otel_propagate, otel_trace = context, metrics, propagate, trace
        self.tracer = trace.get_tracer(SCOPE)
        meter = metrics.get_meter(SCOPE)
        self.steps = meter.create_counter(
            "durable.steps", unit="{step}", description="Steps run (not replayed), by outcome"
        )
        self.failures = meter.create_counter(
            "durable.workflow.failures",
            unit="{attempt}",
            description="Workflow attempts that ended with an error",
        )
        self.claim_latency = meter.create_histogram(
            "durable.claim.latency", unit="s", description="How long a worker's claim of work took"
        )
        meter.create_observable_gauge(
            "durable.queue.depth",
            callbacks=[self._observe_depths],
            unit="{execution}",
            description="Executions waiting (pending) and running per queue, as last read",
        )
        self._ready = True

    def recording(self) -> bool:
        """Whether an SDK is configured (a tracer or meter provider was set): until one is, the
        API's no-op tracer and meter would only cost time, so spans and measurements are
        skipped (looked at once a second at most; once a provider is set, it stays)."""
        if self._configured:
            return True
        now = time.monotonic()
        if now < self._unconfigured_until:
            return False
        if _API not in sys.modules:  # the application has not imported it: nothing to record
            self._unconfigured_until = now + 1.0
            return False
        if not self._ready:
            self._setup()
        tracing = not isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider)
        measuring = type(otel_metrics.get_meter_provider()).__name__ != "_ProxyMeterProvider"
        self._configured = tracing or measuring
        self._unconfigured_until = now + 1.0
        return self._configured

    # -- trace context ------------------------------------------------------------------------

    def inject(self) -> str | None:
        """The current trace context as stored text (a JSON object of the propagator's
        headers: W3C ``traceparent``, ``tracestate``), or None when no span is current."""
        if not self._ready:
            if _API not in sys.modules:  # then no span can be current
                return None
            self._setup()
        carrier: dict[str, str] = {}
        otel_propagate.inject(carrier)
        return json.dumps(carrier, sort_keys=True) if carrier else None

    @staticmethod
    def extract(stored: str | None) -> Any:
        """The context whose span is the parent of a workflow span: the stored trace context,
        else none (a new trace; not the worker's current span)."""
        if stored:
            try:
                carrier = json.loads(stored)
            except ValueError:
                carrier = None
            if isinstance(carrier, dict):
                return otel_propagate.extract(carrier)
        return otel_context.Context()

    # -- spans --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def workflow_span(
        self,
        name: str,
        workflow_id: str,
        *,
        executor_id: str,
        attempt: int,
        trace_context: str | None,
        replayed_steps: int,
        outcomes: dict[type[BaseException], str],
    ) -> Iterator[Any]:
        """The span of one attempt, current inside the block. An exception whose type is in
        ``outcomes`` (a sleep, a suspension) ends it with that ``durable.outcome``; any other
        records the exception, sets status ERROR and counts a failure."""
        if not self.recording():
            yield None
            return
        span = self.tracer.start_span(
            f"durable.workflow {name}",
            context=self.extract(trace_context),
            kind=otel_trace.SpanKind.CONSUMER,
            attributes={
                "durable.workflow.id": workflow_id,
                "durable.workflow.name": name,
                "durable.executor.id": executor_id,
                "durable.attempt": attempt,
                "durable.replayed_steps": replayed_steps,
            },
        )
        token = otel_context.attach(otel_trace.set_span_in_context(span))
        try:
            yield span
        except BaseException as exc:
            outcome = next((v for k, v in outcomes.items() if isinstance(exc, k)), None)
            if outcome is not None:
                span.set_attribute("durable.outcome", outcome)
            else:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                span.record_exception(cause)
                span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, str(cause)))
                span.set_attribute("durable.outcome", "failed")
                self.failures.add(1, {"durable.workflow.name": name})
            raise
        else:
            span.set_attribute("durable.outcome", "succeeded")
        finally:
            otel_context.detach(token)
            span.end()

    @contextlib.contextmanager
    def _step_span(
        self, workflow_name: str, workflow_id: str, step: str, position: int
    ) -> Iterator[None]:
        if not self._ready:
            self._setup()
        labels = {"durable.step.name": step, "durable.workflow.name": workflow_name}
        with self.tracer.start_as_current_span(
            f"durable.step {step}",
            attributes={
                "durable.workflow.id": workflow_id,
                "durable.step.name": step,
                "durable.step.position": position,
            },
        ):
            try:
                yield
            except (ClaimLostError, WorkflowCancelledError):  # its record was refused: the
                # execution was cancelled, or another executor may run it; the step did not fail
                self.steps.add(1, {**labels, "durable.outcome": "interrupted"})
                raise
            except BaseException:
                self.steps.add(1, {**labels, "durable.outcome": "failed"})
                raise
            self.steps.add(1, {**labels, "durable.outcome": "succeeded"})

    async def step(
        self, workflow_name: str, workflow_id: str, step: str, position: int, run: Awaitable[T]
    ) -> T:
        """Await ``run`` (a step that runs: its attempts and its record) in its span."""
        if not self.recording():
            return await run
        with self._step_span(workflow_name, workflow_id, step, position):
            return await run

    def step_blocking(
        self, workflow_name: str, workflow_id: str, step: str, position: int, run: Callable[[], T]
    ) -> T:
        """Call ``run`` (a sync workflow's step) in its span."""
        if not self.recording():
            return run()
        with self._step_span(workflow_name, workflow_id, step, position):
            return run()

    # -- metrics ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def claiming(self) -> Iterator[list[int]]:
        """Time a worker's claim; the caller appends how many tasks it took."""
        taken: list[int] = []
        if not self.recording():
            yield taken
            return
        start = time.perf_counter()
        try:
            yield taken
        finally:
            self.claim_latency.record(
                time.perf_counter() - start, {"durable.claimed": bool(taken and taken[0])}
            )

    def set_queue_depths(self, depths: dict[tuple[str, str], int]) -> None:
        """The executions per ``(queue, state)`` as just read: the gauge reports these (and
        no longer reports queues missing from them)."""
        self._depths = dict(depths)

    def _observe_depths(self, _options: CallbackOptions) -> list[Observation]:
        from opentelemetry.metrics import Observation

        return [
            Observation(n, {"durable.queue": queue, "durable.state": state})
            for (queue, state), n in self._depths.items()
        ]


#: durable's telemetry, or None when OpenTelemetry is not installed (then every hook is skipped).
active: Telemetry | None = Telemetry() if _installed() else None


async def prepare() -> None:
    """Make durable's tracer and instruments now if the application uses OpenTelemetry (it
    imported it): runtimes and clients call it when they start, so that no claim or step does
    it while it holds a lease. Durable never imports OpenTelemetry itself before the
    application does (importing it reads package metadata: tens to hundreds of milliseconds)."""
    if active is not None and not active._ready and _API in sys.modules:
        active._setup()


def current_trace_context() -> str | None:
    """The trace context to store with an execution enqueued now (None without OpenTelemetry or
    without a current span)."""
    return active.inject() if active is not None else None


__all__ = ["SCOPE", "Telemetry", "active", "current_trace_context", "prepare"]
