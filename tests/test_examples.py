"""The examples the README points to run as written, and again on the state they left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_quickstart_runs_twice(tmp_path: Path) -> None:
    script = EXAMPLES / "quickstart.py"
    assert "To run:" in script.read_text()
    for _ in range(2):  # the second run finds what the first one stored
        done = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
