"""How long ``import durable`` takes, and which modules it pulls in.

Two measures, each in fresh interpreters (``sys.executable``, from the repository's folder):

* **-X importtime**: ``python -X importtime -c "import durable"``, ``--importtime-runs`` times
  (5) after one discarded run (which also writes any missing bytecode). Per module, the median
  of its self and cumulative microseconds over the runs; the figure is ``durable``'s cumulative
  time, the heaviest modules (by cumulative and by self time) are listed, and so are the
  packages that only a database needs (Alembic, psycopg, SQLAlchemy's ORM and asyncio
  extension, aiosqlite) if the import loaded any: it should load none of them (the SQL backend is
  imported when a database is first used).
* **wall**: ``python -c "import durable"`` and ``python -c "pass"``, alternated, ``--runs``
  times each (15): the median wall time of each process, and their difference (the import net
  of the interpreter's own start).

Targets: ``durable``'s cumulative import time at most ``--limit`` seconds (0.25), none of those
packages loaded; the wall difference is reported against the same limit, as a check.

    python benchmarks/import_time.py [--runs 15] [--importtime-runs 5] [--top 15]
        [--limit 0.25] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl

MODULE = "durable"
#: Packages that only a database needs; ``import durable`` should load none of them.
HEAVY = ("alembic", "psycopg", "sqlalchemy.orm", "sqlalchemy.ext.asyncio", "aiosqlite")


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=bl.REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """``-X importtime``'s lines as (module, depth, self us, cumulative us), in import order."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), depth, int(self_us), int(cumulative_us)))
    return rows


def measure_importtime(runs: int, top: int) -> dict[str, Any]:
    _python("-X", "importtime", "-c", f"import {MODULE}")  # warm-up: bytecode, disk cache
    self_us: dict[str, list[int]] = {}
    cumulative_us: dict[str, list[int]] = {}
    depth: dict[str, int] = {}
    totals: list[float] = []
    for i in range(runs):
        rows = parse_importtime(_python("-X", "importtime", "-c", f"import {MODULE}").stderr)
        for name, level, own, cumulative in rows:
            self_us.setdefault(name, []).append(own)
            cumulative_us.setdefault(name, []).append(cumulative)
            depth.setdefault(name, level)
        [root] = [c for name, level, _, c in rows if name == MODULE and level == 0]
        totals.append(root)
        bl.log(f"-X importtime run {i + 1}/{runs}: import {MODULE} {root / 1000:.1f} ms")
    medians = {
        name: (statistics.median(self_us[name]), statistics.median(cumulative_us[name]))
        for name in self_us
    }

    def heaviest(index: int) -> list[dict[str, Any]]:
        ranked = sorted(
            (n for n in medians if n != MODULE), key=lambda n: medians[n][index], reverse=True
        )
        return [
            {
                "module": name,
                "depth": depth[name],
                "self_ms": round(medians[name][0] / 1000, 2),
                "cumulative_ms": round(medians[name][1] / 1000, 2),
            }
            for name in ranked[:top]
        ]

    return {
        "runs": runs,
        "modules_imported": len(medians),
        "import_us": bl.summary(totals),
        "heaviest_cumulative": heaviest(1),
        "heaviest_self": heaviest(0),
        "heavy_packages_imported": [p for p in HEAVY if p in medians],
    }


def measure_wall(runs: int) -> dict[str, Any]:
    """Median wall time of fresh interpreters that import durable, and of ones that do not."""
    samples: dict[str, list[float]] = {"import": [], "bare": []}
    code = {"import": f"import {MODULE}", "bare": "pass"}
    _python("-c", code["import"])  # warm-up
    for _ in range(runs):
        for kind in ("import", "bare"):
            started = time.perf_counter()
            _python("-c", code[kind])
            samples[kind].append((time.perf_counter() - started) * 1e6)
    net = statistics.median(samples["import"]) - statistics.median(samples["bare"])
    bl.log(f"wall: {net / 1000:.1f} ms more than a bare interpreter (median of {runs})")
    return {
        "runs": runs,
        "import_process_us": bl.summary(samples["import"]),
        "bare_process_us": bl.summary(samples["bare"]),
        "import_net_us": round(net, 2),
    }


def evaluate(results: dict[str, Any], limit_s: float) -> list[dict[str, Any]]:
    importtime, wall = results["importtime"], results["wall"]
    return [
        bl.target(
            f"import {MODULE} (-X importtime, median) <= {limit_s:g} s",
            importtime["import_us"]["median"] / 1e6,
            limit_s,
            "s",
            backend="python",
        ),
        bl.target(
            "database-only packages imported = 0",
            len(importtime["heavy_packages_imported"]),
            0,
            "packages",
            backend="python",
        ),
        bl.target(
            f"import {MODULE} (wall, net of the interpreter's start) <= {limit_s:g} s",
            max(wall["import_net_us"], 0.0) / 1e6,
            limit_s,
            "s",
            backend="python",
            headline=False,
        ),
    ]


def report(document: dict[str, Any]) -> None:
    importtime, wall = document["results"]["importtime"], document["results"]["wall"]
    ms = 1000.0
    bl.print_table(
        f"import {MODULE}",
        ["measure", "runs", "median ms", "min ms", "max ms"],
        [
            (
                "-X importtime (cumulative)",
                importtime["runs"],
                importtime["import_us"]["median"] / ms,
                importtime["import_us"]["min"] / ms,
                importtime["import_us"]["max"] / ms,
            ),
            *(
                (
                    f"wall: {label}",
                    wall["runs"],
                    wall[key]["median"] / ms,
                    wall[key]["min"] / ms,
                    wall[key]["max"] / ms,
                )
                for label, key in (
                    (f"python -c 'import {MODULE}'", "import_process_us"),
                    ("python -c pass", "bare_process_us"),
                )
            ),
            ("wall: the difference of the medians", wall["runs"], wall["import_net_us"] / ms),
        ],
    )
    bl.print_table(
        "Heaviest modules (-X importtime, median over the runs)",
        ["module", "depth", "cumulative ms", "self ms"],
        [
            (m["module"], m["depth"], m["cumulative_ms"], m["self_ms"])
            for m in importtime["heaviest_cumulative"]
        ],
    )
    heavy = importtime["heavy_packages_imported"]
    print(f"\ndatabase-only packages imported: {', '.join(heavy) if heavy else 'none'}")
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, help="fresh interpreters per wall measure (15)")
    parser.add_argument("--importtime-runs", type=int, help="-X importtime runs (5)")
    parser.add_argument("--top", type=int, default=15, help="heaviest modules listed (15)")
    parser.add_argument("--limit", type=float, default=0.25, help="the target, seconds (0.25)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="few runs, to check it runs")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 15
    if args.importtime_runs is None:
        args.importtime_runs = 1 if args.quick else 5
    if args.runs < 1 or args.importtime_runs < 1 or args.top < 1 or args.limit <= 0:
        parser.error("--runs, --importtime-runs, --top and --limit must be positive")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    git_at_start = bl.git_state()
    # Subprocesses, one at a time: nothing here needs the event loop but benchlib's main().
    importtime = await asyncio.to_thread(measure_importtime, args.importtime_runs, args.top)
    wall = await asyncio.to_thread(measure_wall, args.runs)
    results = {"importtime": importtime, "wall": wall}
    return {
        "benchmark": "import_time",
        "config": {
            "module": MODULE,
            "runs": args.runs,
            "importtime_runs": args.importtime_runs,
            "top": args.top,
            "limit_s": args.limit,
            "quick": args.quick,
            "python": sys.executable,
        },
        "machine": {
            **bl.machine_info(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "git_at_start": git_at_start,
            "code_changed_during_run": git_at_start != bl.git_state(),
        },
        "results": results,
        "targets": evaluate(results, args.limit),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
