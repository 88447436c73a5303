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

    python benchmarks/telemetry_overhead.py [--backend sqlite|postgres] [--steps 300]
        [--repeat 3] [--rounds 3] [--pg-url postgresql+psycopg://...]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
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
