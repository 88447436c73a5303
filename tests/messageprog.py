"""A worker process that tests/test_messages.py starts and kills while a workflow waits for
messages, and at a receive.

``serve`` runs ``durable.worker.serve`` on a runtime whose registry holds :data:`MAILBOX`: a
step, then ``count`` times a receive on topic ``in`` followed by a step that handles the value::

    python messageprog.py serve --url sqlite:///app.db --executor-id worker-1 \\
        --log effects.log [--kill-at received|commit --marker kill.marker]

Each step body appends ``<workflow id> <step> <value> <pid>`` to the side-effect log (``--log``)
with flush and fsync, so that a line written before a SIGKILL is on disk.

``--kill-at`` makes the process SIGKILL itself once (the first time, while ``--marker`` does not
exist; it is created just before):

* ``commit``: inside the receive's transaction, after the message was taken and the receive
  recorded, before the commit (the transaction is lost: the message must still be there);
* ``received``: right after the receive committed, before the workflow goes on (the receive is
  recorded: the replay must return the same message and take no other).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from progkit import append, runtime_for, serve_command

import durable
import durable.worker
from durable.backends.sql.backend import SQLAlchemyBackend
from durable.backends.sql.messages import Messages
from durable.models import RECV_STEP, ReceiveStatus, StepStatus

MAILBOX = "messageprog.mailbox.v1"
REGISTRY = durable.Registry()
LOG: list[Path] = []  # the side-effect log, set by main()


@durable.step(name="mailbox.before")
async def before() -> None:
    append(LOG[0], f"{durable.workflow_id()} before - {os.getpid()}")


@durable.step(name="mailbox.handle")
async def handle(value: Any) -> Any:
    append(LOG[0], f"{durable.workflow_id()} handle {value} {os.getpid()}")
    return value


@durable.workflow(name=MAILBOX, registry=REGISTRY)
async def mailbox(count: int) -> list[Any]:
    await before()
    handled = []
    for _ in range(count):
        handled.append(await handle(await durable.recv("in")))
    return handled


def die_once(marker: Path) -> None:
    if marker.exists():
        return
    marker.touch()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(kill_at: str, marker: Path) -> None:
    """Make this process kill itself at ``kill_at`` (see the module's docstring)."""
    if kill_at == "commit":
        write_step = Messages._msg_write_step

        def before_commit(self: Any, conn: Any, instance_id: str, step: Any, now: Any) -> None:
            write_step(self, conn, instance_id, step, now)
            if step.name == RECV_STEP and step.status is StepStatus.SUCCEEDED:
                die_once(marker)

        Messages._msg_write_step = before_commit  # type: ignore[method-assign]
    elif kill_at == "received":
        receive = SQLAlchemyBackend.receive_message

        async def after_commit(self: Any, *args: Any, **kwargs: Any) -> Any:
            receipt = await receive(self, *args, **kwargs)
            if receipt.status is ReceiveStatus.RECEIVED:
                die_once(marker)
            return receipt

        SQLAlchemyBackend.receive_message = after_commit  # type: ignore[method-assign]


async def serve(args: argparse.Namespace) -> int:
    runtime = runtime_for(args, REGISTRY)
    return await durable.worker.serve(runtime, concurrency=4, poll_interval=args.poll_interval)


def main(argv: list[str] | None = None) -> int:
    parser, _, serve_cmd = serve_command(__doc__, claim_ttl=2.0, poll_interval=0.1)
    serve_cmd.add_argument("--log", type=Path, required=True)
    serve_cmd.add_argument("--kill-at", choices=["none", "commit", "received"], default="none")
    serve_cmd.add_argument("--marker", type=Path, default=Path("kill.marker"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(levelname)s %(message)s")
    LOG.append(args.log)
    arm(args.kill_at, args.marker)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
