"""The worker benchmarks in ``benchmarks/`` (throughput, latency, contention, memory, vs_dbos,
step_concurrency, vs_queues)
still run: each one's ``--quick`` mode, made smaller still, on SQLite and on PostgreSQL. Only the
shape of the results is checked, never a timing. Every one starts processes, hence ``slow``."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow

SIZES = {
    "throughput": ["--workflows", "6", "--trivial", "6", "--processes", "1,2",
                   "--concurrency", "2"],
    "latency": ["--samples", "4", "--poll-samples", "2", "--warmup", "1"],
    "contention": ["--tasks", "60", "--processes", "3", "--batch", "7"],
    "memory": ["--workflows", "40", "--concurrency", "4"],
    "vs_dbos": ["--steps", "3", "--workflows", "4", "--concurrency", "2"],
    "step_concurrency": ["--steps", "4", "--concurrent", "3", "--repeat", "1", "--warmup", "0"],
    "vs_queues": ["--jobs", "6", "--single", "2", "--samples", "2", "--warmup", "0",
                  "--concurrency", "2", "--pgqueuer-batch", "3"],
}  # fmt: skip


def _benchmark(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _run(name: str, backend: str, tmp_path: Path, url_args: list[str]) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    args = ["--quick", "--backend", backend, "--json", str(out), *url_args, *SIZES[name]]
    document: dict[str, Any] = _benchmark(name).main(args)
    assert document["benchmark"] == name
    assert json.loads(out.read_text())["results"].keys() == document["results"].keys()
    assert list(document["results"]) == [backend]
    machine = document["machine"]
    assert machine["cpu_count"] >= 1 and machine["python"]
    assert len(machine["load_average_at_start"]) == 3
    if backend == "postgres":
        assert machine["postgres"]["server_version"] > 0
    assert document["targets"]
    for t in document["targets"]:
        assert t["backend"] == backend
        assert isinstance(t["pass"], bool)
        assert t["value"] >= 0 and t["limit"] >= 0
    return document


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def bench(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[str], dict[str, Any]]:
    """Runs a benchmark, by name, at smoke sizes on this test's database."""
    if backend == "sqlite":
        url_args = ["--sqlite-dir", str(tmp_path)]
    else:
        url_args = ["--pg-url", str(request.getfixturevalue("pg_url"))]
    return lambda name: _run(name, backend, tmp_path, url_args)


def _distribution(d: dict[str, Any], n: int) -> None:
    assert d["n"] == n
    assert d["min"] <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"]


# -- throughput ---------------------------------------------------------------------------------


def _check_throughput(document: dict[str, Any], backend: str) -> None:
    result = document["results"][backend]
    runs = result["runs"]
    assert [(r["workload"], r["processes"]) for r in runs] == [
        ("three-step", 1),
        ("three-step", 2),
        ("trivial", 1),
        ("trivial", 2),
    ]
    for r in runs:
        assert r["workflows"] == 6 and r["not_succeeded"] == 0
        assert r["statuses"] == {"succeeded": 6}
        assert sum(r["per_worker_completed"]) == 6
        assert len(r["per_worker_completed"]) == r["processes"]
        assert r["enqueue"]["count"] == 6 and r["enqueue"]["per_second"] > 0
        assert r["workflows_per_second"] > 0 and r["active_workflows_per_second"] > 0
        assert r["steps_per_second"] == pytest.approx(
            r["workflows_per_second"] * r["steps_per_workflow"], rel=0.01
        )
    assert set(result["scaling"]) == {"three-step", "trivial"}
    assert result["scaling"]["trivial"]["1"] == 1.0


def test_throughput(bench: Callable[[str], dict[str, Any]], backend: str) -> None:
    _check_throughput(bench("throughput"), backend)


# -- latency ------------------------------------------------------------------------------------


def _check_latency(document: dict[str, Any], backend: str) -> None:
    cases = document["results"][backend]["cases"]
    paths = [(c["where"], c["path"]) for c in cases]
    if backend == "postgres":
        assert paths == [
            ("another process", "LISTEN/NOTIFY"),
            ("same process", "in-process wake-up"),
        ]
    else:
        assert paths == [("another process", "polling"), ("same process", "in-process wake-up")]
        assert cases[0]["poll_interval"] == 0.1 and not cases[0]["target_applies"]
    for case in cases:
        n = 2 if case["path"] == "polling" else 4
        for key in (
            "from_call_ms",
            "from_commit_ms",
            "enqueue_ms",
            "commit_to_begin_ms",
            "begin_to_step_ms",
        ):
            _distribution(case[key], n)
        assert len(case["samples_ms"]) == n
    assert len(document["targets"]) == sum(c["target_applies"] for c in cases)


def test_latency(bench: Callable[[str], dict[str, Any]], backend: str) -> None:
    _check_latency(bench("latency"), backend)


# -- contention ---------------------------------------------------------------------------------


def _check_contention(document: dict[str, Any], backend: str) -> None:
    result = document["results"][backend]
    assert result["creation"]["count"] == 60
    assert [r["mode"] for r in result["rounds"]] == ["claim", "claim + complete"]
    for r in result["rounds"]:
        assert r["tasks"] == r["claims"] == 60
        assert r["claimed_twice"] == r["missed"] == r["unknown"] == 0
        assert r["database"]["ok"] is True
        assert sum(r["per_process_claims"]) == 60 and len(r["per_process_claims"]) == 3
        assert r["claims_per_second"] > 0
        assert r["claim_call_ms"]["n"] == r["claim_calls"] - r["errors"]
    assert all(t["pass"] for t in document["targets"])  # correctness, not speed


def test_contention(bench: Callable[[str], dict[str, Any]], backend: str) -> None:
    _check_contention(bench("contention"), backend)


# -- memory -------------------------------------------------------------------------------------


def _check_memory(document: dict[str, Any], backend: str) -> None:
    r = document["results"][backend]
    assert r["workflows"] == 40 and r["not_succeeded"] == 0
    assert set(r["rss_at_mb"]) == {"10", "50", "100"}
    assert all(v > 0 for v in r["rss_at_mb"].values())
    assert r["done_at_mark"]["100"] == 40
    assert r["rss_peak_mb"] >= max(r["rss_at_mb"].values())
    assert r["growth_mb"] == pytest.approx(r["rss_at_mb"]["100"] - r["rss_at_mb"]["10"], abs=0.02)
    assert r["samples"] and r["samples"][-1]["done"] == 40
    assert r["worker"]["completed"] == 40


def test_memory(bench: Callable[[str], dict[str, Any]], backend: str) -> None:
    _check_memory(bench("memory"), backend)


# -- vs_dbos ------------------------------------------------------------------------------------


def _check_vs_dbos(document: dict[str, Any], backend: str) -> None:
    r = document["results"][backend]
    overhead = r["overhead"]
    for system in ("durable", "dbos"):
        for shape in ("async", "sync"):
            summary = overhead[f"{system}_{shape}_step_us"]
            assert summary["n"] == 1 and summary["median"] > 0
    assert overhead["async_ratio"] > 0 and overhead["sync_ratio"] > 0
    mine = r["throughput"]["durable"]
    assert mine["workflows"] == 4 and mine["not_succeeded"] == 0
    [theirs] = r["throughput"]["dbos"]
    assert theirs["polling_interval"] == 1.0
    assert theirs["workflows"] == 4 and theirs["not_succeeded"] == 0
    assert theirs["statuses"] == {"SUCCESS": 4}
    assert theirs["ratio"] > 0
    assert document["machine"]["dbos"]
    assert len(document["targets"]) == 3


def _require_dbos() -> None:
    """Skip without DBOS (README's `pip install -e '.[test]'` has none), except under CI, whose
    .ci/run installs the bench extra: there a missing DBOS is a failure, not a silent skip."""
    try:
        import dbos  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):  # as tests/conftest.py treats a missing PostgreSQL
            pytest.fail("CI is set but dbos is not installed: .ci/run installs '.[test,bench]'")
        pytest.skip("dbos is not installed (pip install -e '.[bench]')")


def test_vs_dbos(bench: Callable[[str], dict[str, Any]], backend: str) -> None:
    _require_dbos()
    _check_vs_dbos(bench("vs_dbos"), backend)


# -- step_concurrency ---------------------------------------------------------------------------


def test_step_concurrency(bench: Callable[[str], dict[str, Any]], backend: str) -> None:
    document = bench("step_concurrency")
    r = document["results"][backend]
    assert (r["steps"], r["concurrent"]) == (4, 3)
    assert r["statuses"] == {"succeeded": 1 + 3}
    for key in ("single_steps_per_second", "single_body_steps_per_second"):
        assert r[key] > 0
    assert r["concurrent_steps_per_second"] > 0 and r["speedup"] > 0
    assert len(r["rounds"]["single"]) == len(r["rounds"]["concurrent"]) == 1
    assert [t["unit"] for t in document["targets"]] == ["x"]


# -- vs_queues (PostgreSQL only) -----------------------------------------------------------------


def _require(*packages: str) -> None:
    """Skip without the optional competitors (the bench extra), except under CI, as for DBOS."""
    import importlib.util

    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {missing} not installed: .ci/run installs '.[test,bench]'")
        pytest.skip(f"{missing} not installed (pip install -e '.[bench]')")


def _vs_queues(tmp_path: Path, pg_url: str, systems: str) -> dict[str, Any]:
    url_args = ["--pg-url", pg_url, "--systems", systems]
    return _run("vs_queues", "postgres", tmp_path, url_args)


def _check_drain_and_latency(document: dict[str, Any], labels: list[str]) -> None:
    r = document["results"]["postgres"]
    assert [d["label"] for d in r["drain"]] == labels
    assert [lat["label"] for lat in r["latency"]] == labels
    for d in r["drain"]:
        assert d["jobs"] == 6 and d["completed"] == 6
        assert d["succeeded"] in (6, None)  # PgQueuer keeps no success record by default
        assert d["enqueue_single"]["count"] == 2 and d["enqueue_single"]["per_second"] > 0
        assert d["enqueue_bulk"]["count"] == 4 and d["enqueue_bulk"]["per_second"] > 0
        assert d["drain_per_second"] > 0
    for lat in r["latency"]:
        _distribution(lat["latency_ms"], 2)
        _distribution(lat["enqueue_call_ms"], 2)


@pytest.mark.postgres
def test_vs_queues_durable(tmp_path: Path, pg_url: str) -> None:
    document = _vs_queues(tmp_path, pg_url, "durable")
    _check_drain_and_latency(document, ["durable (one-step workflow)"])
    assert [t["pass"] for t in document["targets"]] == [True]  # every job succeeded


@pytest.mark.postgres
def test_vs_queues_pgqueuer_and_procrastinate(tmp_path: Path, pg_url: str) -> None:
    _require("pgqueuer", "asyncpg", "procrastinate")
    document = _vs_queues(tmp_path, pg_url, "durable,pgqueuer,procrastinate")
    _check_drain_and_latency(
        document,
        [
            "durable (one-step workflow)",
            "PgQueuer, batch 10 (default)",
            "PgQueuer, batch 3",
            "procrastinate",
        ],
    )
    assert document["machine"]["pgqueuer"] and document["machine"]["procrastinate"]
    names = [t["name"] for t in document["targets"]]
    assert any("PgQueuer drain" in n for n in names)
    assert any("p50" in n for n in names)
