"""A worker process (and a producer process) that tests/test_workers.py starts, kills and stops.

``serve`` runs ``durable.worker.serve`` on a runtime whose registry holds one three-step workflow,
:data:`PIPELINE`, until SIGTERM or SIGINT (or until it is killed)::

    python workerprog.py serve --url sqlite:///app.db --executor-id worker-1 --log steps.log \\
        --claim-ttl 2 --concurrency 4

Every step body appends ``<workflow id> <step> <pid> <time>`` to the side-effect log (``--log``)
when it starts, with flush and fsync, so a line written before a SIGKILL is on disk. The step
``b`` sleeps for the workflow's ``pause`` argument, so that a test can catch a worker mid-step
(unless the worker runs with ``--no-pause``).

``zygote`` forks such workers on request (and kills them), for tests that kill hundreds of them
(tests/test_kill_storm.py); its workers also serve :data:`STORM`, whose steps check, before their
side effect, that their outcome is not recorded yet.

It also serves :data:`OUTAGE` and :data:`OUTAGE_SYNC` (tests/test_outage.py), three steps that
each append ``<workflow id> <step> <token> <pid> <time>`` to the log (one write in append mode,
no fsync: these workers are not killed) and return the token, so that a test can tell which
execution of a step its recorded result came from.

``enqueue`` is a producer without the workflow's code: it waits for a go file, then enqueues the
pipeline by name for every key of ``--keys``, ``--copies`` times each, all at once (concurrent
tasks), each with that key as its idempotency key, and writes the ids it got back as JSON::

    python workerprog.py enqueue --url ... --keys k1,k2 --copies 4 --ready r.txt --go go.txt \\
        --out ids.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from progkit import append, serve_command

import durable
import durable.worker

PIPELINE = "workerprog.pipeline.v1"
OUTAGE = "workerprog.outage.v1"
OUTAGE_SYNC = "workerprog.outage.sync.v1"
REGISTRY = durable.Registry()
LOG: list[Path] = []  # the side-effect log, set by main()
NO_PAUSE: list[bool] = []  # set by --no-pause: step b does not sleep in this process


def effect(step: str) -> None:
    append(LOG[0], f"{durable.workflow_id()} {step} {os.getpid()} {time.time():.6f}")


@durable.step(name="a")
async def step_a(n: int) -> int:
    effect("a")
    return n + 1


@durable.step(name="b")
async def step_b(x: int, pause: float) -> int:
    effect("b")
    if pause and not NO_PAUSE:
        await asyncio.sleep(pause)
    return x * 2


@durable.step(name="c")
async def step_c(x: int) -> int:
    effect("c")
    return x - 3


@durable.workflow(name=PIPELINE, registry=REGISTRY)
async def pipeline(n: int, pause: float = 0.0) -> dict[str, Any]:
    a = await step_a(n)
    b = await step_b(a, pause)
    return {"n": n, "out": await step_c(b)}


# -- the kill storm (tests/test_kill_storm.py) -----------------------------------------------

STORM = "workerprog.storm.v1"
STORM_STEPS = 4
CHECKPOINTS: list[Any] = []  # a function (workflow id, position) -> recorded?, set by main()


@durable.step(name="storm")
async def storm_step(position: int, pause: float) -> str:
    """Before its side effect, look in the database whether this step's outcome is already
    recorded (it never may be: a completed step never runs again); then append
    ``<workflow id> <position> <pid> <token> <recorded 0|1>`` and return the token, which the
    checkpoint keeps: the test tells the execution whose outcome was recorded from the others."""
    workflow_id = durable.workflow_id()
    recorded = CHECKPOINTS[0](workflow_id, position)
    token = uuid.uuid4().hex
    append(LOG[0], f"{workflow_id} {position} {os.getpid()} {token} {int(recorded)}")
    await asyncio.sleep(pause)
    return token


@durable.workflow(name=STORM, registry=REGISTRY)
async def storm(pause: float) -> list[str]:
    return [await storm_step(position, pause) for position in range(STORM_STEPS)]


def checkpoint_reader(url: str) -> Any:
    """A function that tells whether a step's outcome is recorded, on its own connection (a
    plain driver connection in autocommit mode: each look sees every committed checkpoint)."""
    query = (
        "SELECT count(*) FROM durable_steps WHERE workflow_id = {p} AND position = {p} "
        "AND status <> 'pending'"
    )
    if url.startswith("sqlite"):
        import sqlite3

        path = url.split(":///", 1)[1]
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        sql = query.format(p="?")
    else:
        import psycopg

        conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))  # type: ignore[assignment]
        conn.autocommit = True  # type: ignore[attr-defined]
        sql = query.format(p="%s")

    def recorded(workflow_id: str, position: int) -> bool:
        return bool(conn.execute(sql, (workflow_id, position)).fetchone()[0])

    return recorded


def expected(n: int) -> dict[str, Any]:
    """What :func:`pipeline` returns for ``n``."""
    return {"n": n, "out": (n + 1) * 2 - 3}


def note(step: str) -> str:
    """Log that ``step`` of the current workflow runs, under a new token, and return it."""
    token = uuid.uuid4().hex
    line = f"{durable.workflow_id()} {step} {token} {os.getpid()} {time.time():.6f}\n"
    fd = os.open(LOG[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write of a short line: lines never interleave
    finally:
        os.close(fd)
    return token


#: Outages interrupt attempts, and each costs one (until the runtime stops counting them):
#: plenty of attempts, retried at once.
OUTAGE_RETRY = durable.RetryPolicy(max_attempts=100, initial_delay=0.1, backoff_rate=1.0)


@durable.step(name="outage.a")
async def outage_a() -> str:
    return note("a")


@durable.step(name="outage.b")
async def outage_b(pause: float) -> str:
    token = note("b")
    await asyncio.sleep(pause)
    return token


@durable.step(name="outage.c")
async def outage_c() -> str:
    return note("c")


@durable.workflow(name=OUTAGE, registry=REGISTRY, retry=OUTAGE_RETRY)
async def outage(pause: float) -> list[str]:
    return [await outage_a(), await outage_b(pause), await outage_c()]


@durable.step(name="outage.sync.a")
def outage_sync_a() -> str:
    return note("a")


@durable.step(name="outage.sync.b")
def outage_sync_b(pause: float) -> str:
    token = note("b")
    time.sleep(pause)
    return token


@durable.step(name="outage.sync.c")
def outage_sync_c() -> str:
    return note("c")


@durable.workflow(name=OUTAGE_SYNC, registry=REGISTRY, retry=OUTAGE_RETRY)
def outage_sync(pause: float) -> list[str]:
    return [outage_sync_a(), outage_sync_b(pause), outage_sync_c()]


def wait_for_file(path: Path) -> None:
    while not path.exists():
        time.sleep(0.002)


async def serve(args: argparse.Namespace) -> int:
    runtime = durable.Runtime(
        durable.connect(args.url),
        executor_id=args.executor_id,
        claim_ttl=args.claim_ttl,
        registry=REGISTRY,
    )
    # a worker forked by the zygote blocks SIGTERM until serve() handles it: serve() installs
    # its handlers before its first await, and a SIGTERM that came meanwhile is delivered then
    asyncio.get_running_loop().call_soon(
        signal.pthread_sigmask, signal.SIG_UNBLOCK, {signal.SIGTERM}
    )
    return await durable.worker.serve(
        runtime, concurrency=args.concurrency, poll_interval=args.poll_interval, grace=args.grace
    )


async def enqueue(args: argparse.Namespace) -> dict[str, list[str]]:
    runtime = durable.Runtime(
        durable.connect(args.url),
        executor_id=f"producer-{os.getpid()}",
        recover=False,
        registry=durable.Registry(),  # no code: enqueue by name only
    )
    keys = args.keys.split(",")
    async with runtime:
        append(args.ready, str(os.getpid()))
        await asyncio.to_thread(wait_for_file, args.go)
        calls = [
            runtime.enqueue(PIPELINE, 1, idempotency_key=key, served_elsewhere=True)
            for _ in range(args.copies)
            for key in keys
        ]
        ids = await asyncio.gather(*calls)
    results: dict[str, list[str]] = {key: [] for key in keys}
    for call, workflow_id in enumerate(ids):
        results[keys[call % len(keys)]].append(workflow_id)
    return results


def zygote(args: argparse.Namespace) -> int:
    """Fork worker processes on request, for a test that kills hundreds of them: importing
    durable takes about a second of CPU, a fork of this process (durable imported, no thread, no
    connection, no event loop) a few milliseconds. Commands on stdin, one per line, each
    answered by one line on stdout:

    * ``start <executor id>``: fork a worker serving under that id; answers its pid;
    * ``kill <pid>``: SIGKILL that worker and reap it (it is dead when the answer comes);
      answers ``killed``;
    * ``stop``: SIGTERM every worker, reap them, answer a JSON object
      ``{"unexpected": [[pid, status], ...]}`` (workers that ended other than by a kill
      command, or not with status 0 on ``stop``) and exit.
    """
    import aiosqlite  # noqa: F401
    import alembic.runtime.migration
    import alembic.script  # noqa: F401
    import psycopg  # noqa: F401

    # imported once here, not in every worker (durable imports its SQL backend lazily)
    import durable.backends.sql.backend
    import durable.backends.sql.migrate  # noqa: F401

    children: set[int] = set()
    unexpected: list[tuple[int, int]] = []

    def reap_exited() -> None:
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                unexpected.append((pid, status))

    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        reap_exited()
        if command == "start":
            # a stop may come before the worker handles SIGTERM (it is still starting): the
            # worker is forked with SIGTERM blocked, held until serve() handles it (see serve)
            # rather than the default death
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            pid = os.fork()
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            if pid == 0:  # the worker
                code = 1
                try:
                    devnull = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(devnull, 0)
                    os.dup2(2, 1)  # stdout is the zygote's answers to the test
                    args.executor_id = arg
                    LOG.append(args.log)
                    CHECKPOINTS.append(checkpoint_reader(args.url))
                    asyncio.run(serve(args))
                    code = 0
                except BaseException:
                    logging.exception("worker %s failed", arg)
                finally:
                    sys.stderr.flush()
                    os._exit(code)
            children.add(pid)
            answer = str(pid)
        elif command == "kill":
            pid = int(arg)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            children.discard(pid)
            if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
                unexpected.append((pid, status))
            answer = "killed"
        elif command == "stop":
            for pid in children:
                os.kill(pid, signal.SIGTERM)
            for pid in children:
                _, status = os.waitpid(pid, 0)
                if status != 0:
                    unexpected.append((pid, status))
            print(json.dumps({"unexpected": unexpected}), flush=True)
            return 0
        else:
            answer = f"unknown command {command!r}"
        print(answer, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, commands, serve_cmd = serve_command(__doc__, claim_ttl=2.0, poll_interval=0.1)
    serve_cmd.add_argument("--log", type=Path, required=True)
    serve_cmd.add_argument("--concurrency", type=int, default=4)
    serve_cmd.add_argument("--grace", type=float, default=5.0)
    serve_cmd.add_argument("--no-pause", action="store_true", help="step b does not sleep")
    recorded_cmd = commands.add_parser("recorded", help="print 1 if the step is recorded")
    recorded_cmd.add_argument("--url", required=True)
    recorded_cmd.add_argument("workflow_id")
    recorded_cmd.add_argument("position", type=int)
    zygote_cmd = commands.add_parser("zygote")
    zygote_cmd.add_argument("--url", required=True)
    zygote_cmd.add_argument("--log", type=Path, required=True)
    zygote_cmd.add_argument("--claim-ttl", type=float, default=2.0)
    zygote_cmd.add_argument("--concurrency", type=int, default=4)
    zygote_cmd.add_argument("--poll-interval", type=float, default=0.1)
    zygote_cmd.add_argument("--grace", type=float, default=5.0)
    enqueue_cmd = commands.add_parser("enqueue")
    enqueue_cmd.add_argument("--url", required=True)
    enqueue_cmd.add_argument("--keys", required=True, help="comma-separated idempotency keys")
    enqueue_cmd.add_argument("--copies", type=int, default=4)
    enqueue_cmd.add_argument("--ready", type=Path, required=True, help="appended when ready")
    enqueue_cmd.add_argument("--go", type=Path, required=True, help="start when this exists")
    enqueue_cmd.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(process)d %(levelname)s %(message)s")
    if args.command == "serve":
        LOG.append(args.log)
        CHECKPOINTS.append(checkpoint_reader(args.url))
        if args.no_pause:
            NO_PAUSE.append(True)
        asyncio.run(serve(args))
        return 0
    if args.command == "zygote":
        return zygote(args)
    if args.command == "recorded":
        print(int(checkpoint_reader(args.url)(args.workflow_id, args.position)))
        return 0
    ids = asyncio.run(enqueue(args))
    partial = args.out.with_suffix(".partial")
    partial.write_text(json.dumps(ids), encoding="utf-8")
    partial.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
