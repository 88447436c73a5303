"""The examples the README points to run as written, and show what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    script = EXAMPLES / name
    assert "To run:" in script.read_text()
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_quickstart_survives_a_sigkill_and_resumes(tmp_path: Path) -> None:
    done = run_example("quickstart.py", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "the process died with signal 9" in out
    effects = out.split("3. what the step bodies did, in order:")[1].splitlines()
    effects = [line.strip() for line in effects if line.startswith("  ")]
    assert effects == [
        "reserve o-1",
        "charge o-1 4200",
        "ship o-1 (started)",  # killed here, after charge's result was committed
        "ship o-1 (started)",  # the resumed run: only the interrupted step runs again
        "ship o-1 (done)",
    ]
    assert "step 2 shop.ship: succeeded, 1 attempt(s)" in out


@pytest.mark.slow
def test_backend_api_example_runs_twice(tmp_path: Path) -> None:
    for _ in range(2):  # the second run finds what the first one stored
        done = run_example("backend_api.py", tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_approval_example_waits_receives_and_times_out(tmp_path: Path) -> None:
    done = run_example("approval.py", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert out[0] == "approval-o-1 status: waiting"
    assert out[1].startswith("approval-o-1 is waiting for topic 'decision' until ")
    assert out[2] == "decision sent: True; the same mail again stored: False"
    assert out[3:6] == [
        "approval-o-1: approved (status event: approved)",
        "approval-o-2: rejected (status event: rejected)",
        "reminders sent: ['o-2']",  # o-1's timer was cancelled before it fired
    ]
    assert out[6] == (
        "approval-o-2 history: durable.set_event, durable.start_timer, durable.recv, "
        "durable.recv, orders.remind, durable.recv, durable.set_event"
    )


@pytest.mark.slow
def test_orders_example_creates_its_tables_and_reserves_stock_once(tmp_path: Path) -> None:
    done = run_example("orders.py", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "o-1 again: refused by the orders table, and no second workflow was enqueued",
        "o-1: reserved",
        "o-2: reserved",
        "o-3: rejected (out of stock)",
        "orders: {'o-1': 'reserved', 'o-2': 'reserved', 'o-3': 'rejected'}; mugs left: 1; "
        "checkouts: 3",
    ]
    again = run_example("orders.py", tmp_path)  # the same orders.db: said, not half-run
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0].startswith("this database holds the orders of an earlier")


@pytest.mark.slow
@pytest.mark.parametrize(
    "url_fixture",
    [
        pytest.param("pg_url", marks=pytest.mark.postgres, id="postgres"),
        pytest.param("mysql_url", marks=pytest.mark.mysql, id="mysql"),
    ],
)
def test_orders_example_on_a_server(
    tmp_path: Path, request: pytest.FixtureRequest, url_fixture: str
) -> None:
    done = run_example("orders.py", tmp_path, request.getfixturevalue(url_fixture))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith("mugs left: 1; checkouts: 3")
