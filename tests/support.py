"""What many test modules share: the upper bound of a wait, and waiting for a state."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable

#: ``processes(program, *args, name=...)``, the conftest fixture: starts a real process.
Processes = Callable[..., "subprocess.Popen[bytes]"]

#: Seconds: an upper bound for anything a test waits for, never reached when green.
WAIT = 60.0


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` every 10 ms until it returns true; fail naming ``what`` after WAIT."""
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
