"""Exactly once, proven with SIGKILL: tests/txcrashprog.py is killed at every point of an
enqueue in the application's transaction and of a transactional step (before and after each
commit), then started again, on SQLite files and PostgreSQL, sync and async. After recovery
the application's tables show each effect exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from durable.backends.sql.schema import steps, workflows

PROGRAM = Path(__file__).with_name("txcrashprog.py")
pytestmark = pytest.mark.slow


def start(url: str, mode: str, events: Path, pause: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                *(sys.executable, str(PROGRAM), "--url", url, "--mode", mode),
                *("--events", str(events), "--pause", pause),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def kill_at(url: str, mode: str, events: Path, point: str, log: Path) -> None:
    """Run the program until it reports that it paused at ``point``, then SIGKILL it."""
    process = start(url, mode, events, point, log)
    deadline = time.monotonic() + 60
    try:
        while f"PAUSED {point} {process.pid}" not in (
            events.read_text() if events.exists() else ""
        ):
            if process.poll() is not None:
                raise AssertionError(f"exited before {point}: {log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"never reached {point}: {log.read_text()}")
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL


def state(url: str) -> dict[str, object]:
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    try:
        with engine.connect() as conn:
            return {
                "orders": conn.execute(sa.text("SELECT id, status FROM app_orders")).all(),
                "ledger": [
                    r[0] for r in conn.execute(sa.text("SELECT entry FROM app_ledger ORDER BY id"))
                ],
                "workflows": conn.execute(sa.select(workflows.c.id, workflows.c.status)).all(),
                "steps": [
                    r[0] for r in conn.execute(sa.select(steps.c.position).order_by("position"))
                ],
            }
    finally:
        engine.dispose()


def crash_everywhere(url: str, mode: str, tmp_path: Path) -> None:
    events, log = tmp_path / "events.log", tmp_path / "program.log"

    kill_at(url, mode, events, "enqueue_before_commit", log)
    s = state(url)
    assert (s["orders"], s["workflows"]) == ([], []), s  # neither the order nor its workflow

    kill_at(url, mode, events, "enqueue_after_commit", log)
    s = state(url)
    assert s["orders"] == [("o-1", "new")] and len(s["workflows"]) == 1, s  # both
    assert s["ledger"] == [], s

    kill_at(url, mode, events, "tx_before_commit", log)  # its body had written its line
    s = state(url)
    assert (s["ledger"], s["steps"]) == ([], []), s

    kill_at(url, mode, events, "tx_after_commit", log)  # its line and its record, together
    s = state(url)
    assert (s["ledger"], s["steps"]) == (["debit o-1"], [0]), s

    done = start(url, mode, events, "none", log)
    assert done.wait(60) == 0, log.read_text()
    s = state(url)
    assert s["ledger"] == ["debit o-1", "credit o-1"], s  # each effect exactly once
    assert s["orders"] == [("o-1", "paid")], s
    assert s["workflows"] == [("checkout-o-1", "succeeded")], s
    assert s["steps"] == [0, 1], s


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sqlite_file_every_crash_point(mode: str, sqlite_url: str, tmp_path: Path) -> None:
    crash_everywhere(sqlite_url, mode, tmp_path)


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_postgres_every_crash_point(mode: str, pg_url: str, tmp_path: Path) -> None:
    crash_everywhere(pg_url, mode, tmp_path)
