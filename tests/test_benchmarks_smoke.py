"""The benchmarks in ``benchmarks/`` still run: each main function at tiny sizes, on SQLite and on
PostgreSQL. Only the shape of the results is checked, never a timing."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

OVERHEAD_ARGS = ["--steps", "5", "--repeat", "2", "--warmup", "1"]
SCALING_ARGS = [
    "--history", "20", "--window", "5", "--history-repeat", "1",
    "--finished", "200", "--steps-per-workflow", "3", "--chunk", "64",
    "--iterations", "4", "--short-steps", "3", "--warmup", "1",
]  # fmt: skip


def _benchmark(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _positive(summary: dict[str, Any]) -> None:
    assert summary["n"] >= 1
    for key in ("median", "min", "max", "p25", "p75"):
        assert summary[key] > 0, (key, summary)


def _check_document(document: dict[str, Any], path: Path, backend: str) -> None:
    assert json.loads(path.read_text())["results"].keys() == document["results"].keys()
    machine = document["machine"]
    assert machine["cpu_count"] >= 1
    assert machine["python"] and machine["sqlite_version"]
    if backend == "postgres":
        assert machine["postgres"]["server_version"] > 0
    assert list(document["results"]) == [backend]
    assert document["targets"]
    for t in document["targets"]:
        assert t["backend"] == backend
        assert isinstance(t["pass"], bool)
        assert t["value"] >= 0 and t["limit"] >= 0


def _check_overhead(document: dict[str, Any], backend: str) -> None:
    result = document["results"][backend]
    for key in (
        "floor_us",
        "floor_cpu_us",
        "round_trip_floor_us",
        "round_trip_floor_cpu_us",
        "async_step_us",
        "async_step_cpu_us",
        "async_step_end_to_end_us",
        "sync_step_us",
        "sync_step_cpu_us",
        "sync_step_end_to_end_us",
    ):
        _positive(result[key])
    assert result["async_step_us"]["n"] == 2
    assert result["async_ratio"] > 0 and result["sync_ratio"] > 0
    assert result["async_round_trip_ratio"] > 0 and result["sync_round_trip_ratio"] > 0
    assert any(
        "one-round-trip" in t["name"] or "commit floor" in t["name"] for t in document["targets"]
    )
    paired = result["paired"]
    _positive(paired["step_us"])
    _positive(paired["floor_us"])
    assert paired["step_us"]["n"] == 2 * 5
    assert paired["ratio"] > 0


def _check_scaling(document: dict[str, Any], backend: str) -> None:
    result = document["results"][backend]
    history = result["history"]
    _positive(history["early_step_us"])
    _positive(history["late_step_us"])
    assert history["early_step_us"]["n"] == history["late_step_us"]["n"] == 5
    assert history["ratio"] > 0
    finished = result["finished"]
    assert finished["finished"] == 200
    for label in ("empty", "loaded"):
        for key in ("claim_us", "run_us", "step_us"):
            _positive(finished[label][key])
        assert finished[label]["claim_us"]["n"] == 4
    for key in ("claim_ratio", "step_ratio", "run_ratio"):
        assert finished[key] > 0
    assert finished["loaded_database_bytes"] > 0
    explain = result["explain"]
    assert explain["table_rows"]["durable_workflows"] >= 200
    assert explain["table_rows"]["durable_steps"] >= 600
    for name in ("claim", "record_step"):
        info = explain[name]
        assert info["sql"].strip() and info["plan"].strip()
        assert any(s["table"] == "durable_tasks" for s in info["scans"])
        assert isinstance(info["uses_indexes"], bool)
        if backend == "postgres":
            assert any(s["index"] for s in info["scans_with_seqscan_off"])
    assert "durable_steps" in explain["record_step"]["sql"]
    assert explain["record_step"].get("matches_prebuilt_statement", True) is True


def test_step_overhead_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    bench = _benchmark("step_overhead")
    args = ["--backend", "sqlite", "--sqlite-dir", str(tmp_path), "--json", str(out)]
    document = bench.main([*args, *OVERHEAD_ARGS])
    _check_document(document, out, "sqlite")
    _check_overhead(document, "sqlite")


@pytest.mark.postgres
def test_step_overhead_postgres(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    bench = _benchmark("step_overhead")
    args = ["--backend", "postgres", "--pg-url", pg_url, "--json", str(out)]
    document = bench.main([*args, *OVERHEAD_ARGS])
    _check_document(document, out, "postgres")
    _check_overhead(document, "postgres")


def test_step_scaling_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    bench = _benchmark("step_scaling")
    args = ["--backend", "sqlite", "--sqlite-dir", str(tmp_path), "--json", str(out)]
    document = bench.main([*args, *SCALING_ARGS])
    _check_document(document, out, "sqlite")
    _check_scaling(document, "sqlite")


@pytest.mark.postgres
def test_step_scaling_postgres(pg_url: str, tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    bench = _benchmark("step_scaling")
    args = ["--backend", "postgres", "--pg-url", pg_url, "--json", str(out)]
    document = bench.main([*args, *SCALING_ARGS])
    _check_document(document, out, "postgres")
    _check_scaling(document, "postgres")


def test_import_time(tmp_path: Path) -> None:
    out = tmp_path / "import_time.json"
    document = _benchmark("import_time").main(["--quick", "--top", "5", "--json", str(out)])
    assert document["benchmark"] == "import_time"
    assert json.loads(out.read_text())["results"].keys() == {"importtime", "wall"}
    importtime, wall = document["results"]["importtime"], document["results"]["wall"]
    _positive(importtime["import_us"])
    assert importtime["import_us"]["n"] == 1
    assert importtime["modules_imported"] > 10
    for listing in ("heaviest_cumulative", "heaviest_self"):
        heaviest = importtime[listing]
        assert len(heaviest) == 5
        assert all(
            m["module"] != "durable" and m["cumulative_ms"] >= m["self_ms"] >= 0 for m in heaviest
        )
    assert importtime["heavy_packages_imported"] == []  # as tests/test_lazy_imports.py checks
    _positive(wall["import_process_us"])
    _positive(wall["bare_process_us"])
    assert wall["import_process_us"]["n"] == wall["bare_process_us"]["n"] == 3
    assert document["machine"]["cpu_count"] >= 1
    assert [t["unit"] for t in document["targets"]] == ["s", "packages", "s"]
    assert all(isinstance(t["pass"], bool) for t in document["targets"])


def _backend_args(backend: str, request: pytest.FixtureRequest) -> list[str]:
    """``--backend``, and on PostgreSQL the test's database as ``--pg-url``."""
    args = ["--backend", backend]
    if backend == "postgres":
        args += ["--pg-url", request.getfixturevalue("pg_url")]
    return args


@pytest.mark.parametrize(
    "backend", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_sleep_wakeup(
    backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*_backend_args(backend, request), "--workflows", "3", "--sleep-ms", "20"]
    assert _benchmark("sleep_wakeup").main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[:2] for row in rows] == [[backend, "3"]]
    p50, p99, most = (float(v) for v in rows[0][2:5])
    assert 0 <= p50 <= p99 <= most  # woke after its wake-up time, never before


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_sleepers(
    backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*_backend_args(backend, request), "--counts", "5,10", "--window", "0.2"]
    assert _benchmark("sleepers").main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [row[:2] for row in rows] == [[backend, "5"], [backend, "10"]]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) >= 0 and float(row[4]) > 0


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_fanout(
    backend: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*_backend_args(backend, request), "--items", "20,5", "--concurrency", "4"]
    # the verdict on the rates is not judged here (tiny maps): only that both ran, in order
    assert _benchmark("fanout").main(args) in (0, 1)
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[1:3]]
    assert [row[:2] for row in rows] == [[backend, "5"], [backend, "20"]]
    assert all(float(row[2].replace(",", "")) > 0 for row in rows)
    assert lines[3].startswith(f"{backend}: 20 items at ")


def test_transactional_step_benchmark_sqlite(tmp_path: Path) -> None:
    bench = _benchmark("transactional_step")
    document = bench.main(["--backend", "sqlite", "--quick", "--sqlite-dir", str(tmp_path)])
    result = document["results"]["sqlite"]
    _positive(result["step_us"])
    _positive(result["floor_us"])
    assert result["ratio"] > 0


def test_serializers_benchmark(tmp_path: Path) -> None:
    document = _benchmark("serializers").main(["--quick", "--sqlite-dir", str(tmp_path)])
    steps = document["per_step"]
    # a step's output is serialized once and read back once (the round trip check)
    assert steps["dumps_per_step"] >= 1 and steps["loads_per_step"] >= 1
    assert steps["step_us"] > 0
    ours = document["per_call"]["durable json"]
    assert ours["dumps_us"] > 0 and ours["loads_us"] > 0 and ours["saved_per_step_us"] == 0
