"""The kill storm: worker processes SIGKILLed hundreds of times while they drain a queue.

Four worker processes serve a SQLite file or a PostgreSQL database. Every 100-300 ms the test
SIGKILLs a random one and starts it again at once, half the time under the same executor id
(it must be allowed to start, since the old process is dead, and it resumes its work at once)
and half the time under a new one (its old work is taken over when its leases expire). The
test enqueues workflows of four steps throughout, so that there is always work mid-step.

At the end every workflow succeeded, and no step ran after its outcome was recorded. That is
checked exactly, not by counting: each step body (``workerprog.storm_step``), before its side
effect, reads from the database whether its own outcome is already recorded, writes that with
the side effect, and returns a token of its own, which the checkpoint keeps. So:

* no side effect may say "already recorded": a body that started after its checkpoint
  committed would have seen it (checkpoints are never removed, and each look is a fresh
  read of committed data);
* the recorded token of every step is one of the side effects, for that step.

A step may run more than once only when its earlier runs were interrupted before their outcome
was recorded (their process was killed, or lost its lease); those extra runs are counted, and
there must be some, or the storm did not hit anything.

Worker processes are forked by a "zygote" (``workerprog.py zygote``) that has imported durable
once: starting a Python process that imports durable costs about a second of CPU, and hundreds
of them would not fit in the time this test may take. The kills are real SIGKILLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import durable

PROG = Path(__file__).with_name("workerprog.py")
STORM = "workerprog.storm.v1"  # served by workerprog.py, not registered here
STEPS = 4  # workerprog.STORM_STEPS
WORKERS = 4
KILLS = 120  # per database
TTL = 1.5  # the workers' lease duration
# each step sleeps this long after its side effect: long enough that a kill finds steps in
# their pause (at 0.02 s, on a quick machine, the two workflows enqueued after each kill were
# done before the next one, and a storm of 120 kills interrupted 0 to 8 steps: the check that
# it hit something failed about one run in three; at 0.1 s, 166 to 210)
PAUSE = 0.1
WAIT = 120.0  # an upper bound for the end of the drain, never reached when green


class Zygote:
    """``workerprog.py zygote``: forks, kills and stops worker processes on request."""

    def __init__(self, workdir: Path, url: str, log: Path) -> None:
        self.stderr_path = workdir / "stderr-zygote.txt"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(PROG),
                "zygote",
                "--url",
                url,
                "--log",
                str(log),
                "--claim-ttl",
                str(TTL),
                "--concurrency",
                "4",
                "--poll-interval",
                "0.05",
            ],
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.workers: set[int] = set()  # the pids of its live workers

    def _ask(self, command: str) -> str:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(command + "\n")
        stdin.flush()
        answer = stdout.readline().strip()
        if not answer:
            pytest.fail(f"the zygote died on {command!r}:\n{self.output()}")
        return answer

    def start(self, executor_id: str) -> int:
        pid = int(self._ask(f"start {executor_id}"))
        self.workers.add(pid)
        return pid

    def kill(self, pid: int) -> None:
        assert self._ask(f"kill {pid}") == "killed"
        self.workers.discard(pid)

    def stop(self) -> dict[str, Any]:
        summary: dict[str, Any] = json.loads(self._ask("stop"))
        assert self.process.wait(timeout=WAIT) == 0
        self._close()
        return summary

    def abort(self) -> None:
        """Kill the workers and the zygote (a failed test leaves no process behind)."""
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()

    def _close(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self._stderr):
            if stream is not None:
                stream.close()

    def output(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def lines_in(log: Path) -> int:
    return log.read_bytes().count(b"\n")


async def steps_begun_after(log: Path, seen: int, *, limit: float) -> int:
    """The number of lines of the effects log, once it has more than ``seen`` (or after
    ``limit`` seconds, whatever it has)."""
    deadline = time.monotonic() + limit
    while True:
        count = lines_in(log)
        if count > seen or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.01)


def read_effects(log: Path) -> list[tuple[str, int, int, str, bool]]:
    """``(workflow id, position, pid, token, already recorded)`` for every step body run."""
    effects = []
    for line in log.read_text(encoding="utf-8").split("\n")[:-1]:  # complete lines only
        workflow_id, position, pid, token, recorded = line.split(" ")
        effects.append((workflow_id, int(position), int(pid), token, recorded == "1"))
    return effects


def looks_recorded(url: str, workflow_id: str, position: int) -> str:
    """What a storm step's look into the database says about a step ("1": recorded)."""
    looked = subprocess.run(
        [sys.executable, str(PROG), "recorded", "--url", url, workflow_id, str(position)],
        check=True,
        capture_output=True,
        text=True,
    )
    return looked.stdout.strip()


@pytest.mark.slow
async def test_kill_storm_loses_nothing_and_runs_no_completed_step_again(
    db_url: str, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    log = tmp_path / "effects.log"
    log.touch()
    producer = durable.Runtime(
        durable.connect(db_url),
        executor_id="storm-producer",
        recover=False,
        registry=durable.Registry(),  # no code: enqueue by name only
    )
    ids: list[str] = []

    async def enqueue(count: int) -> None:
        for _ in range(count):
            # the default retry policy: attempts interrupted by a kill are counted apart from
            # failed ones (interruptions, limited by the workflow's max_recoveries)
            ids.append(await producer.enqueue(STORM, PAUSE, served_elsewhere=True))

    async with producer:
        zygote = Zygote(tmp_path, db_url, log)
        try:
            await enqueue(20)
            names = [f"w{k}" for k in range(WORKERS)]
            pids = [zygote.start(name) for name in names]
            same_id_restarts = 0
            started = 0  # steps begun so far (lines of the effects log)
            for kill in range(KILLS):
                await asyncio.sleep(rng.uniform(0.1, 0.3))
                # a kill lands while steps run: wait (a little) for one to begin since the last
                # kill, so that a slow machine, where restarted workers take long to claim
                # again, does not turn the storm into kills of idle processes
                started = await steps_begun_after(log, started, limit=1.0)
                k = rng.randrange(WORKERS)
                # half the kills go to a worker that has just begun a step (its body pauses
                # after its effect): so that some land inside a step whatever the machine's
                # pace; the others go to any worker (idle, claiming, starting up)
                latest = {pid for _, _, pid, _, _ in read_effects(log)[-WORKERS:]}
                stepping = [i for i, pid in enumerate(pids) if pid in latest]
                if stepping and rng.random() < 0.5:
                    k = rng.choice(stepping)
                zygote.kill(pids[k])
                if kill % 2 == 0:  # half under the same id, half under a new one
                    same_id_restarts += 1
                else:
                    names[k] = f"w{k}-{kill}"
                pids[k] = zygote.start(names[k])
                await enqueue(2)
            storm_over = time.monotonic()
            # drain: the survivors finish everything (orphaned leases expire after TTL)
            for workflow_id in ids:
                info = await producer.get_workflow(workflow_id)
                while not info.status.is_terminal:
                    if time.monotonic() - storm_over > WAIT:
                        pytest.fail(f"{workflow_id} did not finish: {info}\n{zygote.output()}")
                    await asyncio.sleep(0.05)
                    info = await producer.get_workflow(workflow_id)
            summary = zygote.stop()
        except BaseException:
            zygote.abort()
            raise
        infos = {w: await producer.get_workflow(w) for w in ids}

    context = f"(seed {seed}, {len(ids)} workflows)"
    assert summary == {"unexpected": []}, f"{summary} {context}\n{zygote.output()}"
    assert same_id_restarts == KILLS // 2
    failed = {w: (i.status, i.error) for w, i in infos.items()}
    failed = {w: v for w, v in failed.items() if v[0] is not durable.WorkflowStatus.SUCCEEDED}
    assert failed == {}, context

    effects = read_effects(log)
    runs: dict[tuple[str, int], list[str]] = defaultdict(list)
    for workflow_id, position, _pid, token, recorded in effects:
        # the exact check: no body started after its step's outcome was recorded
        assert not recorded, f"step {position} of {workflow_id} ran after its checkpoint {context}"
        runs[workflow_id, position].append(token)
    for workflow_id, info in infos.items():
        assert isinstance(info.output, list) and len(info.output) == STEPS, info
        for position, token in enumerate(info.output):
            # the recorded outcome is that of one of the runs of this very step
            assert token in runs[workflow_id, position], (workflow_id, position, context)
    assert set(runs) == {(w, p) for w in ids for p in range(STEPS)}
    # the look the steps take is not blind: it sees a recorded step, and only that
    for position, expected in ((STEPS - 1, "1"), (STEPS, "0")):
        assert looks_recorded(db_url, ids[0], position) == expected
    rerun = sum(len(tokens) - 1 for tokens in runs.values())
    assert rerun > 0, f"no step was interrupted: the storm hit nothing {context}"
    print(
        f"{KILLS} kills, {len(ids)} workflows, {len(effects)} step runs, {rerun} re-runs of "
        f"interrupted steps {context}",
        file=sys.stderr,
    )
