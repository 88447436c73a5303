"""Processes that tests/test_streams.py and tests/test_events.py start (and kill): a worker whose
workflows publish events and streams, and readers of them.

``serve`` runs ``durable.worker.serve`` on a runtime whose registry holds :data:`TOKENS` (a
step, then a stream write, ``n`` times; then the stream is closed) and :data:`APPROVAL` (an
event set, a durable sleep, the event set again)::

    python streamprog.py serve --url sqlite:///app.db --executor-id worker-1

``get-event`` prints the event's value as JSON (``get_event_sync`` from a sync client);
``read-stream`` prints each value of a stream as a JSON line as it comes, flushed, then ``END``
(``read_stream_sync``)::

    python streamprog.py get-event --url ... --id approval-1 --key status --timeout 30
    python streamprog.py read-stream --url ... --id tokens-1 --key tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from progkit import runtime_for, serve_command

import durable
import durable.worker

TOKENS = "streamprog.tokens.v1"
APPROVAL = "streamprog.approval.v1"
REGISTRY = durable.Registry()


@durable.step(name="tokens.think")
async def think(i: int, pause: float) -> int:
    await asyncio.sleep(pause)
    return i


@durable.workflow(name=TOKENS, registry=REGISTRY)
async def tokens(n: int, pause: float) -> int:
    for i in range(n):
        value = await think(i, pause)
        await durable.write_stream("tokens", value)
    await durable.close_stream("tokens")
    return n


@durable.workflow(name=APPROVAL, registry=REGISTRY)
async def approval(seconds: float) -> str:
    await durable.set_event("status", "waiting")
    await durable.sleep(seconds)
    await durable.set_event("status", "done")
    return "ok"


async def serve(args: argparse.Namespace) -> int:
    runtime = runtime_for(args, REGISTRY)
    return await durable.worker.serve(runtime, concurrency=4, poll_interval=0.05)


def get_event(args: argparse.Namespace) -> None:
    with durable.Client(args.url, poll_interval=0.05) as client:
        value: Any = client.get_event_sync(args.id, args.key, timeout=args.timeout)
    print(json.dumps(value), flush=True)


def read_stream(args: argparse.Namespace) -> None:
    with durable.Client(args.url, poll_interval=0.05) as client:
        for value in client.read_stream_sync(args.id, args.key):
            print(json.dumps(value), flush=True)
    print("END", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser, commands, _ = serve_command(__doc__, claim_ttl=2.0)
    event_cmd = commands.add_parser("get-event")
    stream_cmd = commands.add_parser("read-stream")
    for cmd in (event_cmd, stream_cmd):
        cmd.add_argument("--url", required=True)
        cmd.add_argument("--id", required=True)
        cmd.add_argument("--key", required=True)
    event_cmd.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(levelname)s %(message)s")
    if args.command == "serve":
        asyncio.run(serve(args))
    elif args.command == "get-event":
        get_event(args)
    else:
        read_stream(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
