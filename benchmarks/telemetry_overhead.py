"""What OpenTelemetry costs a durable step: benchmarks/step_overhead.py run in three modes,
interleaved round by round (so that a noisy machine slows every mode alike), each in a fresh
interpreter:

* ``off``: OpenTelemetry hidden (``import opentelemetry`` fails, as when the ``otel`` extra is
  not installed): ``durable.telemetry.active`` is None and every hook is one ``is None`` check;
* ``api``: ``opentelemetry-api`` importable, no SDK configured (the API's no-op tracer and
  meter are called);
* ``sdk``: the SDK configured (a ``TracerProvider`` that samples every span and exports none,
  a ``MeterProvider`` without readers): the cost of making the spans and measurements.

The figures per mode are medians over ``--rounds`` of step_overhead's median per-step times
(async steps in an async workflow, sync steps in a sync workflow) and of its paired ratio (an
async step over a bare commit taken alternately in the same workflow: the figure least moved by
a busy machine).

With ``--hooks``, the step hook alone instead (no database): ``telemetry.active.step(...)``
around a no-op coroutine, minus the bare coroutine, per call, in each mode (``off``: the
``is None`` check the step path makes).

    python benchmarks/telemetry_overhead.py [--backend sqlite|postgres] [--steps 300]
        [--repeat 3] [--rounds 3] [--pg-url postgresql+psycopg://...] [--hooks]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRELUDE = {
    "off": "import sys; sys.modules['opentelemetry'] = None\n",
    "api": "",
    "sdk": (
        "from opentelemetry import metrics, trace\n"
        "from opentelemetry.sdk.metrics import MeterProvider\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "metrics.set_meter_provider(MeterProvider())\n"
    ),
}
CHECK = {
    "off": "from durable import telemetry; assert telemetry.active is None\n",
    "api": "from durable import telemetry; assert telemetry.active is not None\n",
    "sdk": "from durable import telemetry; assert telemetry.active is not None\n",
}


def one(mode: str, args: argparse.Namespace, out: Path) -> dict[str, float]:
    argv = [
        str(HERE / "step_overhead.py"),
        "--backend", args.backend, "--steps", str(args.steps), "--repeat", str(args.repeat),
        "--json", str(out),
    ]  # fmt: skip
    if args.pg_url:
        argv += ["--pg-url", args.pg_url]
    code = (
        PRELUDE[mode]
        + CHECK[mode]
        + f"import runpy, sys; sys.argv = {argv!r}\n"
        + f"runpy.run_path({argv[0]!r}, run_name='__main__')\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL, cwd=HERE.parent
    )
    result = json.loads(out.read_text())["results"][args.backend]
    return {
        "async_step_us": result["async_step_us"]["median"],
        "sync_step_us": result["sync_step_us"]["median"],
        "paired_ratio": result["paired"]["ratio"],
    }


HOOK = """
import asyncio, statistics, time
from durable import telemetry
tel = telemetry.active
async def noop():
    return 1
async def main():
    n, runs = 20000, []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            await noop()
        base = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(n):
            if tel is None:
                await noop()
            else:
                await tel.step("wf", "id", "s", i, noop())
        runs.append((time.perf_counter() - t - base) / n * 1e6)
    print(round(statistics.median(runs), 2))
asyncio.run(main())
"""


def hooks() -> None:
    print("the step hook alone, per call (us; median of 5 x 20,000)")
    for mode in PRELUDE:
        done = subprocess.run(
            [sys.executable, "-c", PRELUDE[mode] + CHECK[mode] + HOOK],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        print(f"{mode:<6} {done.stdout.strip():>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--hooks", action="store_true", help="time the step hook alone")
    args = parser.parse_args()
    if args.hooks:
        hooks()
        return
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in PRELUDE}
    with tempfile.TemporaryDirectory(prefix="durable-otel-bench-") as tmp:
        for n in range(args.rounds):
            for mode in PRELUDE:
                runs[mode].append(one(mode, args, Path(tmp) / f"{mode}-{n}.json"))
    figures = {
        mode: {
            key: round(statistics.median(r[key] for r in rs), 1)
            for key in ("async_step_us", "sync_step_us", "paired_ratio")
        }
        for mode, rs in runs.items()
    }
    print(f"per-step time, {args.backend}, median of {args.rounds} rounds (us)")
    print(f"{'mode':<6} {'async step':>12} {'sync step':>12} {'step/floor':>12}")
    for mode, f in figures.items():
        print(
            f"{mode:<6} {f['async_step_us']:>12} {f['sync_step_us']:>12} {f['paired_ratio']:>11}x"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"backend": args.backend, "figures": figures}))


if __name__ == "__main__":
    main()
