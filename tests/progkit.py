"""What the worker programs that the tests start and kill (``tests/*prog.py``) share: the
side-effect log's durable append, the ``serve`` command's common options, and the runtime they
build from them. The programs run as scripts, so this directory is on their ``sys.path``; the
tests import it the same way (pytest puts ``tests/`` there)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import durable


def append(path: Path, line: str) -> None:
    """Append one line and make it durable before going on (append + flush + fsync), so that a
    line written before a SIGKILL is on disk."""
    with path.open("a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def serve_command(
    doc: str | None, *, claim_ttl: float, poll_interval: float | None = None
) -> tuple[argparse.ArgumentParser, Any, argparse.ArgumentParser]:
    """The program's parser (described by the first line of ``doc``), its subcommands, and
    their ``serve`` command with ``--url``, ``--executor-id``, ``--claim-ttl`` (default
    ``claim_ttl``) and, given ``poll_interval``, ``--poll-interval`` (that default); the
    program adds its own options and commands."""
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve")
    serve_cmd.add_argument("--url", required=True)
    serve_cmd.add_argument("--executor-id", required=True)
    serve_cmd.add_argument("--claim-ttl", type=float, default=claim_ttl)
    if poll_interval is not None:
        serve_cmd.add_argument("--poll-interval", type=float, default=poll_interval)
    return parser, commands, serve_cmd


def runtime_for(
    args: argparse.Namespace,
    registry: durable.Registry,
    backend: durable.PersistentBackend | None = None,
    **options: Any,
) -> durable.Runtime:
    """The runtime of ``serve``'s options: on ``backend`` (default: a connection to
    ``--url``), under ``--executor-id`` with ``--claim-ttl``, running ``registry``'s
    workflows; ``options`` go to :class:`durable.Runtime` as they are."""
    return durable.Runtime(
        backend if backend is not None else durable.connect(args.url),
        executor_id=args.executor_id,
        claim_ttl=args.claim_ttl,
        registry=registry,
        **options,
    )
