"""A durable program that tests/test_crash_recovery.py kills with SIGKILL and starts again.

It runs, in one process, several executions of a five-step checkout workflow, each either the
async workflow of async steps or the sync workflow of sync steps (``kind``), and can freeze each
execution at a chosen *crash point*, where the test kills it. ``--mode`` is the application
around the runtime: ``async`` (``async with runtime`` and ``await runtime.run``) or ``sync``
(``with runtime`` and ``runtime.run_sync`` from threads, as in a Flask or Django app)::

    python crashprog.py --url sqlite:///app.db --mode async --executor-id A --tag run1 \\
        --log effects.log --events events.log --out result-run1.json \\
        --plan '{"w-1": {"kind": "sync", "order": "o-1", "pause": {"point": "inside", "step": 2}}}'

Two files record what happens; both are appended line by line with flush and fsync, so a line
written before the kill is on disk:

* the side-effect log (``--log``) stands for the outside world a step acts on: every step body
  writes ``<workflow id> <step> started <tag>:<pid>`` when it begins and
  ``<workflow id> <step> done <tag>:<pid>`` just before it returns. A step whose side effect
  happened twice shows two ``done`` lines.
* the events file (``--events``) is what the test synchronizes on and checks the run with:
  ``PAUSED``/``RESUMED``, ``CHECKPOINT`` (a step's record committed), ``CLAIM`` (ok or refused)
  and ``EXTEND`` (a heartbeat; both timed when the call starts, so the lease they give lasts at
  least until that time + ttl), ``BEGIN`` (``begin_execution`` returned):
  ``<kind> <workflow id> <detail> <executor> <tag> <time>``.

Crash points (``pause.point``, at step index ``pause.step``, 0-based):

* ``before``: in the workflow body, just before it calls step k (steps < k are checkpointed);
* ``inside``: in step k's body, after its ``started`` line;
* ``before_checkpoint``: step k returned (its ``done`` line is written), its record not yet;
* ``after_checkpoint``: just after step k's record committed (``record_step`` returned).

A paused execution writes ``PAUSED`` and waits until it is killed, or until the file given as
``--release`` appears (then it writes ``RESUMED`` and goes on: a test can freeze the process with
SIGSTOP meanwhile and make it a zombie that wakes up after another executor took over). The event
loop stays free (sync pauses sleep in their worker thread, async ones poll with asyncio.sleep),
so the lease heartbeat goes on. The hooks live in a subclass of the SQLAlchemy backend and in
this program's workflows: durable itself is not modified.

When every execution has finished, their results are written to ``--out`` as JSON
(``{workflow id: {"ok": result} | {"error": "Type: message"}}``); the exit status is 0 when all
succeeded, 3 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from progkit import append

import durable
from durable.models import WORKFLOW_TASK

STEPS = ("reserve", "charge", "pack", "ship", "notify")
ASYNC_WORKFLOW = "crashprog.checkout.async.v1"
SYNC_WORKFLOW = "crashprog.checkout.sync.v1"


class Config:
    log: Path
    events: Path
    tag: str
    pauses: dict[str, tuple[str, int]]
    release: Path | None


CONFIG = Config()


def effect(step: str, phase: str) -> None:
    """The step's side effect on the outside world."""
    append(CONFIG.log, f"{durable.workflow_id()} {step} {phase} {CONFIG.tag}:{os.getpid()}")


def event(
    kind: str, workflow_id: str, detail: object, executor: str = "-", at: float | None = None
) -> None:
    at = time.time() if at is None else at
    append(CONFIG.events, f"{kind} {workflow_id} {detail} {executor} {CONFIG.tag} {at:.6f}")


def released() -> bool:
    return CONFIG.release is not None and CONFIG.release.exists()


def pause(workflow_id: str, point: str, index: int) -> None:
    """If the plan freezes ``workflow_id`` here, say so in the events and wait until the release
    file appears (without one, until the process is killed)."""
    if CONFIG.pauses.get(workflow_id) != (point, index):
        return
    event("PAUSED", workflow_id, f"{point}:{index}")
    while not released():
        time.sleep(0.02)
    event("RESUMED", workflow_id, f"{point}:{index}")


async def pause_async(workflow_id: str, point: str, index: int) -> None:
    """:func:`pause` on the event loop, which stays free meanwhile (the heartbeat goes on)."""
    if CONFIG.pauses.get(workflow_id) != (point, index):
        return
    event("PAUSED", workflow_id, f"{point}:{index}")
    while not released():  # noqa: ASYNC110 - polls a file that another process creates
        await asyncio.sleep(0.02)
    event("RESUMED", workflow_id, f"{point}:{index}")


def apply(name: str, value: str) -> str:
    return f"{name}({value})"


# -- async: an async workflow of async steps ----------------------------------------------------


def make_async_step(index: int, name: str) -> durable.AsyncStep[[str], str]:
    @durable.step(name=f"async.{name}")
    async def body(value: str) -> str:
        effect(name, "started")
        await pause_async(durable.workflow_id(), "inside", index)
        result = apply(name, value)
        effect(name, "done")
        return result

    return body


ASYNC_STEPS = [make_async_step(i, name) for i, name in enumerate(STEPS)]


@durable.workflow(name=ASYNC_WORKFLOW)
async def checkout_async(order_id: str) -> dict[str, Any]:
    outputs = []
    value = order_id
    for index, step in enumerate(ASYNC_STEPS):
        await pause_async(durable.workflow_id(), "before", index)
        value = await step(value)
        outputs.append(value)
    return {"order_id": order_id, "steps": outputs}


# -- sync: a sync workflow of sync steps -------------------------------------------------------


def make_sync_step(index: int, name: str) -> durable.SyncStep[[str], str]:
    @durable.step(name=f"sync.{name}")
    def body(value: str) -> str:
        effect(name, "started")
        pause(durable.workflow_id(), "inside", index)
        result = apply(name, value)
        effect(name, "done")
        return result

    return body


SYNC_STEPS = [make_sync_step(i, name) for i, name in enumerate(STEPS)]


@durable.workflow(name=SYNC_WORKFLOW)
def checkout_sync(order_id: str) -> dict[str, Any]:
    outputs = []
    value = order_id
    for index, step in enumerate(SYNC_STEPS):
        pause(durable.workflow_id(), "before", index)
        value = step(value)
        outputs.append(value)
    return {"order_id": order_id, "steps": outputs}


# -- the backend, with hooks around its writes -------------------------------------------------


class HookedBackend(durable.SQLAlchemyBackend):
    """The SQLAlchemy backend, reporting claims, begins and checkpoints to the events file and
    pausing around a checkpoint where the plan says so."""

    async def claim_task(
        self, instance_id: str, task_id: str, worker_id: str, ttl: timedelta, **options: Any
    ) -> durable.TaskClaim | None:
        at = time.time()
        claim = await super().claim_task(instance_id, task_id, worker_id, ttl, **options)
        event("CLAIM", instance_id, "ok" if claim else "refused", worker_id, at=at)
        return claim

    async def claim_available_tasks(
        self, worker_id: str, limit: int, ttl: timedelta, **filters: Any
    ) -> list[durable.TaskClaim]:
        at = time.time()
        claims = await super().claim_available_tasks(worker_id, limit, ttl, **filters)
        for claim in claims:
            event("CLAIM", claim.instance_id, "ok-recover", worker_id, at=at)
        return claims

    async def extend_task_claim(
        self, instance_id: str, task_id: str, worker_id: str, ttl: timedelta
    ) -> durable.TaskClaim:
        """A heartbeat. The event's time is taken before the call: the lease it renews lasts
        at least until then + ttl."""
        at = time.time()
        try:
            claim = await super().extend_task_claim(instance_id, task_id, worker_id, ttl)
        except durable.DurableError as exc:
            event("EXTEND", instance_id, type(exc).__name__, worker_id, at=at)
            raise
        event("EXTEND", instance_id, "ok", worker_id, at=at)
        return claim

    async def begin_execution(
        self, instance_id: str, worker_id: str, *, task_id: str = WORKFLOW_TASK
    ) -> durable.WorkflowSnapshot:
        snapshot = await super().begin_execution(instance_id, worker_id, task_id=task_id)
        event("BEGIN", instance_id, f"history={len(snapshot.steps)}", worker_id)
        return snapshot

    async def record_step(
        self,
        instance_id: str,
        step: durable.StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        await pause_async(instance_id, "before_checkpoint", step.position)
        await super().record_step(instance_id, step, worker_id=worker_id, task_id=task_id)
        event("CHECKPOINT", instance_id, step.position, worker_id)
        await pause_async(instance_id, "after_checkpoint", step.position)

    def record_step_blocking(
        self,
        instance_id: str,
        step: durable.StepRecord,
        *,
        worker_id: str,
        task_id: str = WORKFLOW_TASK,
    ) -> None:
        """How sync workflows record their steps, from their own thread (the heartbeat goes on
        on the event loop while they are frozen here)."""
        pause(instance_id, "before_checkpoint", step.position)
        super().record_step_blocking(instance_id, step, worker_id=worker_id, task_id=task_id)
        event("CHECKPOINT", instance_id, step.position, worker_id)
        pause(instance_id, "after_checkpoint", step.position)


# -- main ----------------------------------------------------------------------------------------


def outcome(future_result: Any = None, error: BaseException | None = None) -> dict[str, Any]:
    if error is not None:
        return {"error": f"{type(error).__qualname__}: {error}"}
    return {"ok": future_result}


def runtime_for(args: argparse.Namespace) -> durable.Runtime:
    return durable.Runtime(
        HookedBackend(args.url),
        executor_id=args.executor_id,
        claim_ttl=args.claim_ttl,
        heartbeat_interval=args.heartbeat_interval,
        poll_interval=args.poll_interval,
    )


WORKFLOWS = {"async": checkout_async, "sync": checkout_sync}


async def main_async(args: argparse.Namespace, plan: dict[str, Any]) -> dict[str, Any]:
    """An async application: ``async with runtime`` and ``await runtime.run(...)``."""
    async with runtime_for(args) as runtime:
        done = await asyncio.gather(
            *(
                runtime.run(WORKFLOWS[spec["kind"]], spec["order"], workflow_id=workflow_id)
                for workflow_id, spec in plan.items()
            ),
            return_exceptions=True,
        )
    return {
        workflow_id: outcome(error=r) if isinstance(r, BaseException) else outcome(r)
        for workflow_id, r in zip(plan, done, strict=True)
    }


def main_sync(args: argparse.Namespace, plan: dict[str, Any]) -> dict[str, Any]:
    """A sync application (Flask, Django): ``with runtime`` and ``runtime.run_sync(...)`` from
    request threads."""
    with runtime_for(args) as runtime, ThreadPoolExecutor(len(plan)) as pool:
        futures = {
            workflow_id: pool.submit(
                runtime.run_sync,
                WORKFLOWS[spec["kind"]],
                spec["order"],
                workflow_id=workflow_id,
            )
            for workflow_id, spec in plan.items()
        }
        results = {}
        for workflow_id, future in futures.items():
            error = future.exception()
            results[workflow_id] = outcome(error=error) if error else outcome(future.result())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["async", "sync"], required=True)
    parser.add_argument("--executor-id", required=True)
    parser.add_argument("--tag", required=True, help="this run's name in the log lines")
    parser.add_argument("--log", type=Path, required=True, help="the side-effect log")
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plan", required=True, help="JSON: {id: {kind, order, pause}}")
    parser.add_argument("--claim-ttl", type=float, default=30.0)
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--release", type=Path, default=None, help="its creation ends pauses")
    args = parser.parse_args(argv)
    plan: dict[str, Any] = json.loads(args.plan)
    CONFIG.log, CONFIG.events, CONFIG.tag = args.log, args.events, args.tag
    CONFIG.release = args.release
    CONFIG.pauses = {
        workflow_id: (spec["pause"]["point"], spec["pause"]["step"])
        for workflow_id, spec in plan.items()
        if spec.get("pause")
    }
    event("START", "-", args.mode, args.executor_id)
    run = main_sync if args.mode == "sync" else lambda a, p: asyncio.run(main_async(a, p))
    results = run(args, plan)
    partial = args.out.with_suffix(".partial")
    partial.write_text(json.dumps(results, indent=2), encoding="utf-8")
    partial.replace(args.out)
    failed = {workflow_id: r for workflow_id, r in results.items() if "ok" not in r}
    for workflow_id, r in failed.items():
        print(f"{workflow_id}: {r['error']}", file=sys.stderr)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
