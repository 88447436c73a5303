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

Telemetry never changes what runs: every call durable makes into OpenTelemetry (starting and
ending spans, their attributes, status and events, attaching and detaching contexts, injecting
and extracting trace contexts, measurements) is guarded. An exception there (a span processor,
propagator or exporter that raises) is logged as a WARNING on ``durable.telemetry`` with
``action`` ``telemetry.error`` and ``call`` (what raised), at most once a minute per call, and
ignored: the workflow, the step, the worker and the runtime go on as without telemetry (a span
that could not start is not recorded; its step still runs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from durable.errors import (
    BackendUnavailableError,
    ClaimLostError,
    WorkflowCancelledError,
    message_of,
)

T = TypeVar("T")

if TYPE_CHECKING:  # the optional extra: imported on first use (Telemetry._setup)
    from opentelemetry.metrics import CallbackOptions, Observation

#: The instrumentation scope's name (tracer and meter).
SCOPE = "durable"
#: Seconds between two reports of an OpenTelemetry call that raised (per call).
REPORT_EVERY = 60.0

log = logging.getLogger("durable.telemetry")
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
    """durable's tracer, meter and instruments (one per process: :data:`active`).

    Every call into OpenTelemetry is guarded (see the module's docstring): an exception there
    goes to :meth:`report` and no further."""

    def __init__(self) -> None:
        self._ready = False
        self._configured = False
        self._unconfigured_until = 0.0  # monotonic: no provider was set when last looked
        self._depths: dict[tuple[str, str], int] = {}
        self._reports: dict[str, tuple[float, int]] = {}  # call -> (next report, left out since)

    def report(self, call: str, exc: Exception) -> None:
        """``call`` (an OpenTelemetry call, or a read made only for telemetry) raised ``exc``:
        log it as a WARNING (``action`` ``telemetry.error``), at most once every
        :data:`REPORT_EVERY` seconds per ``call`` (with how many were left out since), and
        return: the caller goes on without it."""
        now = time.monotonic()
        due, left_out = self._reports.get(call, (0.0, 0))
        if now < due:
            self._reports[call] = (due, left_out + 1)
            return
        self._reports[call] = (now + REPORT_EVERY, 0)
        log.warning(
            "OpenTelemetry failed in %s (ignored: durable goes on without it)%s: %s: %s",
            call,
            f"; {left_out} more time(s) since the last report" if left_out else "",
            type(exc).__name__,
            exc,
            exc_info=exc,
            extra={"action": "telemetry.error", "call": call},
        )

    def _setup(self) -> None:
        """Import OpenTelemetry and make the tracer and instruments, on first use (callers
        guard it: the providers' code runs here)."""
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

    def _ensure_setup(self) -> bool:
        """:meth:`_setup`, guarded: whether the tracer and instruments are there."""
        try:
            self._setup()
        except Exception as exc:
            self.report("setup", exc)
            return False
        return True

    def recording(self) -> bool:
        """Whether an SDK is configured (a tracer or meter provider was set): until one is, the
        API's no-op tracer and meter would only cost time, so spans and measurements are
        skipped (looked at once a second at most; once a provider is set, it stays). False
        while OpenTelemetry fails to make durable's tracer and instruments (reported)."""
        if self._configured:
            return True
        now = time.monotonic()
        if now < self._unconfigured_until:
            return False
        self._unconfigured_until = now + 1.0
        if _API not in sys.modules:  # the application has not imported it: nothing to record
            return False
        if not self._ready and not self._ensure_setup():
            return False
        try:
            tracing = not isinstance(
                otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider
            )
            measuring = type(otel_metrics.get_meter_provider()).__name__ != "_ProxyMeterProvider"
        except Exception as exc:
            self.report("get_tracer_provider", exc)
            return False
        self._configured = tracing or measuring
        return self._configured

    # -- trace context ------------------------------------------------------------------------

    def inject(self) -> str | None:
        """The current trace context as stored text (a JSON object of the propagator's
        headers: W3C ``traceparent``, ``tracestate``), or None when no span is current (or the
        propagator failed: reported)."""
        if not self._ready:
            if _API not in sys.modules:  # then no span can be current
                return None
            if not self._ensure_setup():
                return None
        carrier: dict[str, str] = {}
        try:
            otel_propagate.inject(carrier)
            return json.dumps(carrier, sort_keys=True) if carrier else None
        except Exception as exc:
            self.report("propagate.inject", exc)
            return None

    def extract(self, stored: str | None) -> Any:
        """The context whose span is the parent of a workflow span: the stored trace context,
        else none (a new trace; not the worker's current span; also when the propagator fails:
        reported)."""
        if stored:
            try:
                carrier = json.loads(stored)
            except ValueError:
                carrier = None
            if isinstance(carrier, dict):
                try:
                    return otel_propagate.extract(carrier)
                except Exception as exc:
                    self.report("propagate.extract", exc)
        return otel_context.Context()

    # -- spans --------------------------------------------------------------------------------

    def _start_span(self, name: str, context: Any, kind: Any, attributes: dict[str, Any]) -> Any:
        """A span started (not current), or None when OpenTelemetry raised (reported)."""
        try:
            return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)
        except Exception as exc:
            self.report("start_span", exc)
            return None

    def _attach(self, span: Any) -> Any:
        """Make ``span`` current: the token to detach, or None when that raised (reported)."""
        try:
            return otel_context.attach(otel_trace.set_span_in_context(span))
        except Exception as exc:
            self.report("context.attach", exc)
            return None

    def _end(self, span: Any, token: Any) -> None:
        """Detach ``token`` (when there is one) and end ``span``, each guarded."""
        if token is not None:
            try:
                otel_context.detach(token)
            except Exception as exc:
                self.report("context.detach", exc)
        try:
            span.end()
        except Exception as exc:
            self.report("span.end", exc)

    def _record_error(self, span: Any, exc: BaseException, description: str) -> None:
        """Record ``exc`` on ``span`` with status ERROR, guarded."""
        try:
            span.record_exception(exc)
        except Exception as error:
            self.report("span.record_exception", error)
        try:
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, description))
        except Exception as error:
            self.report("span.set_status", error)

    def _set_attribute(self, span: Any, key: str, value: Any) -> None:
        try:
            span.set_attribute(key, value)
        except Exception as exc:
            self.report("span.set_attribute", exc)

    def _add(self, counter: Any, labels: dict[str, Any]) -> None:
        """Add 1 to ``counter``, guarded."""
        try:
            counter.add(1, labels)
        except Exception as exc:
            self.report("metrics", exc)

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
        """The span of one attempt, current inside the block (None inside it when none is
        recorded, or when OpenTelemetry failed to start it). An exception whose type is in
        ``outcomes`` (a sleep, a suspension) ends it with that ``durable.outcome``; any other
        records the exception, sets status ERROR and counts a failure. The block's outcome
        passes through unchanged: OpenTelemetry's own errors are reported, never raised."""
        if not self.recording():
            yield None
            return
        span = self._start_span(
            f"durable.workflow {name}",
            self.extract(trace_context),
            otel_trace.SpanKind.CONSUMER,
            {
                "durable.workflow.id": workflow_id,
                "durable.workflow.name": name,
                "durable.executor.id": executor_id,
                "durable.attempt": attempt,
                "durable.replayed_steps": replayed_steps,
            },
        )
        if span is None:  # not in the except clause: the block's errors get no __context__
            yield None
            return
        token = self._attach(span)
        try:
            yield span
        except BaseException as exc:
            outcome = next((v for k, v in outcomes.items() if isinstance(exc, k)), None)
            if outcome is not None:
                self._set_attribute(span, "durable.outcome", outcome)
            else:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                self._record_error(span, cause, message_of(cause))
                self._set_attribute(span, "durable.outcome", "failed")
                self._add(self.failures, {"durable.workflow.name": name})
            raise
        else:
            self._set_attribute(span, "durable.outcome", "succeeded")
        finally:
            self._end(span, token)

    def _start_step(
        self, workflow_id: str, step: str, position: int, context: Any = None
    ) -> tuple[Any, Any]:
        """A step's span, made current: ``(span, token)``, or ``(None, None)`` when
        OpenTelemetry failed. Its parent: the current span, or the one in ``context``."""
        if not self._ready and not self._ensure_setup():
            return None, None
        span = self._start_span(
            f"durable.step {step}",
            context,
            otel_trace.SpanKind.INTERNAL,
            {
                "durable.workflow.id": workflow_id,
                "durable.step.name": step,
                "durable.step.position": position,
            },
        )
        if span is None:
            return None, None
        return span, self._attach(span)

    def _end_step(
        self,
        span: Any,
        token: Any,
        workflow_name: str,
        step: str,
        error: BaseException | None,
    ) -> None:
        """Count the step by outcome (``error``: what it failed with, None when it succeeded)
        and end its span (when there is one), recording an :class:`Exception` on it as the
        SDK's ``start_as_current_span`` does."""
        if error is None:
            outcome = "succeeded"
        elif isinstance(error, ClaimLostError | WorkflowCancelledError | BackendUnavailableError):
            outcome = "interrupted"  # its record was refused (the execution was cancelled, or
            # another executor may run it) or met an outage; the step did not fail
        else:
            outcome = "failed"
        if self._ready:
            self._add(
                self.steps,
                {
                    "durable.step.name": step,
                    "durable.workflow.name": workflow_name,
                    "durable.outcome": outcome,
                },
            )
        if span is None:
            return
        if isinstance(error, Exception):
            self._record_error(span, error, f"{type(error).__name__}: {message_of(error)}")
        self._end(span, token)

    async def step(
        self, workflow_name: str, workflow_id: str, step: str, position: int, run: Awaitable[T]
    ) -> T:
        """Await ``run`` (a step that runs: its attempts and its record) in its span; its
        outcome passes through unchanged."""
        if not self.recording():
            return await run
        return await self._spanned(workflow_name, workflow_id, step, position, None, run)

    def step_blocking(
        self, workflow_name: str, workflow_id: str, step: str, position: int, run: Callable[[], T]
    ) -> T:
        """Call ``run`` (a sync workflow's step) in its span; its outcome passes through."""
        if not self.recording():
            return run()
        span, token = self._start_step(workflow_id, step, position)
        try:
            value = run()
        except BaseException as exc:
            self._end_step(span, token, workflow_name, step, exc)
            raise
        self._end_step(span, token, workflow_name, step, None)
        return value

    async def step_task(
        self,
        workflow_name: str,
        workflow_id: str,
        step: str,
        position: int,
        trace_context: str | None,
        run: Awaitable[BaseException | None],
    ) -> None:
        """Await ``run`` (a step a workflow handed out, :func:`durable.map`, run by a worker:
        its attempts and its record; it returns what the step failed with, or None) in the
        step's span, whose parent is the workflow's stored ``trace_context`` (as for its
        attempts' spans: the enqueuer's trace). Counted as a step that runs."""
        if not self.recording():
            await run
            return
        context = self.extract(trace_context)
        await self._spanned(
            workflow_name, workflow_id, step, position, context, run, returns_failure=True
        )

    async def _spanned(
        self,
        workflow_name: str,
        workflow_id: str,
        step: str,
        position: int,
        context: Any,
        run: Awaitable[T],
        *,
        returns_failure: bool = False,
    ) -> T:
        """Await ``run`` in a step's span (its parent: the current span, or the one in
        ``context``): what it raises ends the span as the step's failure, and with
        ``returns_failure`` what it returns too (an exception, or None when it succeeded)."""
        span, token = self._start_step(workflow_id, step, position, context)
        try:
            value = await run
        except BaseException as exc:
            self._end_step(span, token, workflow_name, step, exc)
            raise
        error = cast("BaseException | None", value) if returns_failure else None
        self._end_step(span, token, workflow_name, step, error)
        return value

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
            if self._ready:
                try:
                    self.claim_latency.record(
                        time.perf_counter() - start, {"durable.claimed": bool(taken and taken[0])}
                    )
                except Exception as exc:
                    self.report("metrics", exc)

    def set_queue_depths(self, depths: dict[tuple[str, str], int]) -> None:
        """The executions per ``(queue, state)`` as just read: the gauge reports these, and 0
        for those it reported before that are missing now (a queue drained: a series that
        just stopped would leave a dashboard showing its last value)."""
        self._depths = {key: 0 for key in self._depths} | dict(depths)

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
        active._ensure_setup()


def current_trace_context() -> str | None:
    """The trace context to store with an execution enqueued now (None without OpenTelemetry or
    without a current span)."""
    return active.inject() if active is not None else None


__all__ = ["SCOPE", "Telemetry", "active", "current_trace_context", "prepare"]
