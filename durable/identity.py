"""Executor identity: one live process per executor id.

Leases are held by executor id, and a claim is re-entrant for its holder, so that a process
restarted under the same id resumes its unfinished work at once instead of waiting for its
leases to expire. Two *live* processes under one id would therefore run the same step at the same
time. To prevent that, every start of a runtime is an *incarnation* with a token of its own, and
:meth:`Runtime.start <durable.Runtime.start>` takes the id over only when the process recorded
under it is gone:

* it stopped cleanly, or its heartbeats stopped for longer than
  :data:`~durable.models.STALE_AFTER_HEARTBEATS` of its own heartbeat intervals (by then its
  leases have lapsed as well);
* or it ran on this host and that process no longer exists: its pid is gone, is a zombie, or now
  belongs to a process started at another time (a recycled pid; known where ``/proc`` tells a
  process's start time, i.e. on Linux).

Otherwise the start fails with :class:`~durable.errors.ExecutorIdInUseError`. Heartbeats and the
clean stop are fenced by the incarnation, so a process that was presumed dead and comes back
cannot pass itself off as the one that took its id over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path

from durable.models import ExecutorInfo


def hostname() -> str:
    return socket.gethostname()


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()[:8]
    return ""


def _process_state(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of a process from ``/proc/<pid>/stat``, None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold anything: split after it
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]  # field 3 (state) and field 22 (start time, ticks since boot)


def process_token(pid: int) -> str:
    """Tells a process apart from a later one with the same pid: the boot and the process's start
    time, where the system tells them (else empty)."""
    state = _process_state(pid)
    return f"{_boot_id()}.{state[1]}" if state is not None else ""


def new_incarnation() -> str:
    """A token for this start of this process: ``<process token>/<random>``."""
    return f"{process_token(os.getpid())}/{uuid.uuid4().hex}"


def process_alive(pid: int, incarnation: str) -> bool:
    """Whether the process that recorded ``incarnation`` under ``pid`` on this host still
    runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    state = _process_state(pid)
    if state is None:
        return True  # no way to tell more: presume it is the same process
    if state[0] in ("Z", "X"):
        return False  # a zombie (killed, not reaped yet) or dead
    recorded = incarnation.partition("/")[0]
    return not recorded or recorded == process_token(pid)


def in_use(known: ExecutorInfo, here: str) -> bool:
    """Whether the process recorded in ``known`` may still run (seen from host ``here``)."""
    if known.stopped_at is not None or known.stale:
        return False
    if known.hostname != here:
        return True  # fresh heartbeats from another host: presumed alive
    return process_alive(known.pid, known.incarnation)
