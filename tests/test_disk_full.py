"""A SQLite file whose disk is full is a database unavailable for now, not a statement
refused: an enqueue raises ``BackendUnavailableError`` (which producers retry) and writes
nothing, and a worker hands the cut-off attempt back uncounted and runs it again once there is
room, so healthy workflows do not use up their attempts (or fail for good) on a full disk.
The disk is a small tmpfs mounted for the test (root only)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import durable


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` bytes free."""
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


@durable.step
async def large(n: int) -> str:
    return "x" * 300_000


@durable.workflow(max_attempts=1)
async def one_attempt(n: int) -> int:
    return len(await large(n)) + n


@durable.workflow
async def noop() -> None:
    return None


async def test_a_full_disk_is_unavailable_and_costs_no_attempt(small_disk: Path) -> None:
    url = f"sqlite:///{small_disk / 'durable.db'}"
    async with durable.Runtime(durable.connect(url)) as runtime:
        await runtime.enqueue(noop, workflow_id="before")  # the file and its WAL exist
        filler = fill(small_disk, leave=64 * 1024)
        with pytest.raises(durable.BackendUnavailableError, match=r"takes no writes now.*full"):
            for n in range(200):  # until the room left is used
                await runtime.enqueue(
                    noop, workflow_id=f"while-full-{n}", labels={"pad": "y" * 200}
                )
        worker = await runtime.start_worker()
        filler.unlink()
        fill(small_disk, leave=128 * 1024)  # room to enqueue, not to record the step
        wid = await runtime.enqueue(one_attempt, 7)
        await asyncio.sleep(1.5)  # the record fails on the full disk: the attempt is handed back
        assert (await runtime.get_workflow(wid)).attempts == 0
        (small_disk / "filler").unlink()
        assert await runtime.result(wid, timeout=20) == 300_007
        info = await runtime.get_workflow(wid)
        assert (info.status.value, info.attempts) == ("succeeded", 1)
        await worker.stop()
