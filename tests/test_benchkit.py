"""The backend kit (durable.testing.benchkit) runs, at tiny sizes, on every backend kind, and
reports every figure; nothing is timed against a limit. Also: it imports without pytest, and
benchmarks/backend_kit.py drives it."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import durable
from durable.testing.benchkit import KitSizes, main, run_kit

TINY = KitSizes(
    small_history=3,
    large_history=40,
    finished=120,
    concurrency=12,
    rounds=2,
    samples=4,
    warmup=1,
    setup_concurrency=4,
)
KEYS = {
    "step.small",
    "step.large",
    "step.ratio",
    "claim.empty",
    "claim.finished",
    "claim.ratio",
    "setup.finished_s",
    "concurrent.calls_per_s",
    "concurrent.p50_ms",
    "concurrent.p99_ms",
}


async def test_the_kit_reports_every_figure(backend_url: str) -> None:
    lines: list[str] = []
    figures = await run_kit(lambda: durable.connect(backend_url), TINY, echo=lines.append)
    assert set(figures) == KEYS
    assert all(f.value > 0 for f in figures.values()), figures
    assert len(lines) == len(KEYS) + 1 and "backend kit" in lines[0]
    # what it stored: the finished workflows, and its own, all finished
    async with durable.connect(backend_url) as backend:
        if backend_url.startswith("memory://"):
            return  # another process's memory
        done = await backend.list_snapshots(status="succeeded", limit=1000)
        expected = TINY.finished + 2 + 2 * (TINY.warmup + TINY.samples)
        expected += TINY.concurrency * TINY.rounds
        assert len(done) == expected
        assert await backend.find_available_tasks("anyone", 10) == []


def test_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    figures = main(["memory://", "--history", "30", "--finished", "50", "--concurrency", "5",
                    "--rounds", "1", "--samples", "3", "--warmup", "1"])  # fmt: skip
    assert set(figures) == KEYS
    out = capsys.readouterr().out
    assert "record_step, 30 steps of history" in out and "50 finished workflows" in out


def test_the_command_line_on_a_store_not_empty(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run twice on one store: the second run says the store is not empty, as a usage message
    (it was a RuntimeError's traceback)."""
    sizes = ["--history", "5", "--finished", "5", "--concurrency", "2", "--rounds", "1",
             "--samples", "2", "--warmup", "1"]  # fmt: skip
    main([sqlite_url, *sizes])
    with pytest.raises(SystemExit) as stopped:
        main([sqlite_url, *sizes])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "InvalidArgumentError" in err and "give the kit an empty store" in err
    assert "Traceback" not in err


def test_it_imports_without_pytest() -> None:
    code = "import sys, durable.testing.benchkit; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_benchmark_script_on_memory_and_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    kit = importlib.import_module("backend_kit")
    tiny = ["--finished", "30", "--history", "20", "--concurrency", "4", "--rounds", "1",
            "--samples", "2", "--warmup", "1", "--sqlite-dir", str(tmp_path)]  # fmt: skip
    for backend in ("memory", "sqlite"):
        results = kit.main(["--backend", backend, *tiny])
        assert set(results) == {backend} and set(results[backend]) == KEYS
    assert "== sqlite" in capsys.readouterr().out


@pytest.mark.postgres
def test_the_benchmark_script_on_postgres(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    kit = importlib.import_module("backend_kit")
    tiny = ["--finished", "30", "--history", "20", "--concurrency", "4", "--rounds", "1",
            "--samples", "2", "--warmup", "1", "--pg-url", pg_url]  # fmt: skip
    results = kit.main(["--backend", "postgres", *tiny])
    assert set(results["postgres"]) == KEYS
