"""One area of the contract suite runs on its own: a subclass of just ClaimContract, with the
same ``backend`` fixture as the whole suite, collects that area's tests (and no other) and they
pass. Run in a fresh pytest process, as a backend author's test module would be, in
pytest-asyncio's strict mode (the documented way: an async fixture declared as such)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import durable.testing
from durable.testing.contract import BackendContractTests, ClaimContract, ContractBase

MODULE = """
import pytest_asyncio

import durable
from durable.testing.contract import ClaimContract


class TestClaimsOnly(ClaimContract):
    @pytest_asyncio.fixture
    async def backend(self):
        async with durable.connect("memory://") as backend:
            yield backend
"""


def test_names() -> None:
    assert durable.testing.BackendContractTests is BackendContractTests
    assert issubclass(BackendContractTests, ClaimContract)
    assert issubclass(ClaimContract, ContractBase)


def test_the_claims_area_runs_on_its_own(tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(MODULE)
    expected = sorted(n for n, _ in inspect.getmembers(ClaimContract) if n.startswith("test_"))
    own = {n for n in vars(ClaimContract) if n.startswith("test_")}
    assert set(expected) == own and len(own) >= 9  # nothing inherited from another area
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    names = sorted(
        line.rsplit("::", 1)[1] for line in collected.stdout.splitlines() if "::" in line
    )
    assert names == expected, collected.stdout + collected.stderr
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=strict",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"{len(expected)} passed" in ran.stdout, ran.stdout
