"""benchmarks/streams.py still runs, at tiny sizes, on every backend (its own checks: every value
read once, in order). Never a timing."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "extra"),
    [
        ("memory", []),
        ("sqlite", ["--poll-interval", "0.05"]),
        pytest.param("postgres", [], marks=pytest.mark.postgres),
    ],
)
def test_streams(
    backend: str,
    extra: list[str],
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--backend", backend, "--values", "20", "--latency-values", "5", "--pause-ms", "1"]
    if backend == "postgres":
        args += ["--pg-url", request.getfixturevalue("pg_url")]
    assert _benchmark("streams").main([*args, *extra]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[-1][0] == backend and float(rows[-1][1]) > 0
