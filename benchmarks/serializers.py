"""Would a faster JSON library make a step measurably cheaper? What durable's JSON serializer
costs per step, next to orjson and msgspec, and next to the step itself.

1. **Calls per step**: a workflow of ``--steps`` steps returning a small dict runs on a SQLite
   file with the serializer's ``dumps`` and ``loads`` counted; the step's wall time is taken
   from the same run.
2. **Cost per call**: ``dumps`` and ``loads`` of that value by durable's
   :class:`~durable.serialization.JSONSerializer` (the standard library's ``json``), by
   ``orjson`` and by ``msgspec.json`` (each skipped when not installed), medians of 5 timings.

The saving a faster library could bring, per step, is (durable's cost - the faster one's) x
calls per step, reported as a share of the step.

    python benchmarks/serializers.py [--steps 500] [--sqlite-dir DIR] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

import durable
from durable.serialization import JSONSerializer

VALUE = {"order": "o-1", "amount": 4201, "items": ["a", "b"], "ok": True}
CALLS = {"dumps": 0, "loads": 0}


class CountingJSON(JSONSerializer):
    """durable's JSON serializer, counting its calls."""

    def dumps(self, value: Any) -> str:
        CALLS["dumps"] += 1
        return super().dumps(value)

    def loads(self, text: str) -> Any:
        CALLS["loads"] += 1
        return super().loads(text)


@durable.step(name="bench.ser.step")
async def small(n: int) -> dict[str, Any]:
    return {**VALUE, "amount": 4200 + n}


@durable.workflow(name="bench.ser.flow")
async def flow(count: int) -> int:
    for n in range(count):
        await small(n)
    return count


async def per_step(url: str, count: int) -> dict[str, float]:
    backend = durable.connect(url, serializer=CountingJSON())
    async with durable.Runtime(backend, recover=False) as rt:
        await rt.run(flow, 5, workflow_id=f"warm-{uuid.uuid4()}")
        CALLS.update(dumps=0, loads=0)
        started = time.perf_counter()
        await rt.run(flow, count, workflow_id=f"ser-{uuid.uuid4()}")
        step_us = (time.perf_counter() - started) / count * 1e6
    return {
        "dumps_per_step": CALLS["dumps"] / count,
        "loads_per_step": CALLS["loads"] / count,
        "step_us": step_us,
    }


def _time(fn: Callable[[], Any], number: int) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


#: The faster libraries compared: (name, module, its dumps to bytes, its loads).
LIBRARIES = (
    ("orjson", "orjson", "dumps", "loads"),
    ("msgspec", "msgspec.json", "encode", "decode"),
)


def per_call(number: int) -> dict[str, dict[str, float]]:
    ours = JSONSerializer()
    text = ours.dumps(VALUE)
    found: dict[str, dict[str, float]] = {
        "durable json": {
            "dumps_us": _time(lambda: ours.dumps(VALUE), number),
            "loads_us": _time(lambda: ours.loads(text), number),
        }
    }
    for name, module_name, dumps_name, loads_name in LIBRARIES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # not installed: not compared
        dumps, loads = getattr(module, dumps_name), getattr(module, loads_name)
        found[name] = {
            "dumps_us": _time(lambda: dumps(VALUE).decode(), number),  # noqa: B023 (timed now)
            "loads_us": _time(lambda: loads(text), number),  # noqa: B023
        }
    return found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    count = 20 if args.quick else args.steps
    with tempfile.TemporaryDirectory(dir=args.sqlite_dir) as folder:
        steps = await per_step(bl.sqlite_url(Path(folder) / "ser.db"), count)
    calls = per_call(2_000 if args.quick else 100_000)
    ours = calls["durable json"]
    for costs in calls.values():
        saved = (ours["dumps_us"] - costs["dumps_us"]) * steps["dumps_per_step"] + (
            ours["loads_us"] - costs["loads_us"]
        ) * steps["loads_per_step"]
        costs["saved_per_step_us"] = saved
        costs["saved_share"] = saved / steps["step_us"]
    return {"benchmark": "serializers", "steps": count, "per_step": steps, "per_call": calls}


def report(document: dict[str, Any]) -> None:
    steps = document["per_step"]
    bl.print_table(
        f"serialization per step on SQLite: {steps['dumps_per_step']:.2f} dumps and "
        f"{steps['loads_per_step']:.2f} loads per step of {steps['step_us']:.0f} us",
        ["library", "dumps (us)", "loads (us)", "saved per step (us)", "share of the step"],
        [
            [
                name,
                f"{c['dumps_us']:.2f}",
                f"{c['loads_us']:.2f}",
                f"{c['saved_per_step_us']:.1f}",
                f"{c['saved_share']:.1%}",
            ]
            for name, c in document["per_call"].items()
        ],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = bl.parser(__doc__)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--sqlite-dir", default=None, help="where the SQLite file goes (a temp dir)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its table, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
