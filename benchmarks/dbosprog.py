"""DBOS Transact processes for ``vs_dbos.py`` (not a benchmark itself; needs ``pip install dbos``).

DBOS keeps one instance per process, so each DBOS configuration runs in its own process,
started by ``vs_dbos.py`` through :func:`workerlib.child_command` (``python -c``). Commands:

* ``agent --url URL``: launches DBOS (listening to no queue) and answers lines on stdin:
  ``async N`` / ``sync N`` run a workflow of ``N`` no-op steps (``async def`` steps in an
  ``async def`` workflow, or plain ``def`` ones) and print one JSON line: the wall and CPU time
  inside the workflow's body, from before its first step to after its last, and the whole call;
  ``quit`` stops.
* ``enqueue --url URL --count N``: launches DBOS (listening to no queue, so nothing runs here),
  registers the queue ``bench`` and enqueues ``N`` three-step workflows one after the other;
  prints the time it took.
* ``work --url URL``: imports everything, says ``ready``, waits for ``go`` on stdin, then
  launches DBOS listening to the queue ``bench`` (so it starts dequeuing), and runs until
  ``stop`` on stdin; prints its CPU time.

The workflows mirror ``workerlib``'s: ``pipeline(n)`` is three no-op steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from dbos import DBOS, DBOSConfig

QUEUE = "bench"
APP_VERSION = "durable-bench-1"


@DBOS.step()
def noop(i: int) -> int:
    return i


@DBOS.step()
async def anoop(i: int) -> int:
    return i


@DBOS.workflow()
def sync_steps(n: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        noop(i)
    return time.perf_counter() - wall, time.process_time() - cpu


@DBOS.workflow()
async def async_steps(n: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await anoop(i)
    return time.perf_counter() - wall, time.process_time() - cpu


@DBOS.step()
def inc(x: int) -> int:
    return x + 1


@DBOS.step()
def double(x: int) -> int:
    return x * 2


@DBOS.step()
def dec(x: int) -> int:
    return x - 3


@DBOS.workflow()
def pipeline(n: int) -> int:
    """Three no-op steps (plain ``def``: DBOS runs queued workflows on its thread pool)."""
    return dec(double(inc(n)))


def configure(url: str) -> None:
    config: DBOSConfig = {
        "name": "durable-bench",
        "system_database_url": url,
        "application_version": APP_VERSION,
        "log_level": "WARNING",
    }
    DBOS(config=config)


def agent(args: argparse.Namespace) -> None:
    configure(args.url)
    DBOS.listen_queues([])
    DBOS.launch()
    try:
        print("ready", flush=True)
        for line in sys.stdin:
            command = line.split()
            if not command or command[0] == "quit":
                break
            shape, n = command[0], int(command[1])
            started = time.perf_counter()
            if shape == "async":
                wall, cpu = asyncio.run(async_steps(n))
            else:
                wall, cpu = sync_steps(n)
            whole = time.perf_counter() - started
            print(json.dumps({"wall": wall, "cpu": cpu, "whole": whole}), flush=True)
    finally:
        DBOS.destroy()


def enqueue(args: argparse.Namespace) -> dict[str, Any]:
    configure(args.url)
    DBOS.listen_queues([])
    DBOS.launch()
    try:
        queue = DBOS.register_queue(
            QUEUE,
            worker_concurrency=args.concurrency,
            polling_interval_sec=args.polling,
            on_conflict="always_update",
        )
        started = time.perf_counter()
        for i in range(args.count):
            queue.enqueue(pipeline, i)
        seconds = time.perf_counter() - started
    finally:
        DBOS.destroy()
    return {"count": args.count, "seconds": round(seconds, 4), "per_second": args.count / seconds}


def work(args: argparse.Namespace) -> dict[str, Any]:
    configure(args.url)
    DBOS.listen_queues([QUEUE])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return {"aborted": True}
    go, cpu = time.time(), time.process_time()
    DBOS.launch()
    try:
        sys.stdin.readline()  # "stop", or the end of stdin
    finally:
        DBOS.destroy()
    return {"go": go, "cpu_seconds": round(time.process_time() - cpu, 4)}


def child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="dbosprog")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("agent", "enqueue", "work"):
        command = commands.add_parser(name)
        command.add_argument("--url", required=True)
        command.add_argument("--count", type=int, default=0)
        command.add_argument("--concurrency", type=int, default=16)
        command.add_argument("--polling", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.command == "agent":
        agent(args)
        return 0
    report = enqueue(args) if args.command == "enqueue" else work(args)
    print(json.dumps(report), flush=True)
    return 0
