"""Debouncing end to end: ``enqueue(..., debounce=, debounce_key=)`` with a worker running (a
burst is one execution, run once, with the last call's arguments; the next call after it
started is a new burst), callers in several processes racing on PostgreSQL, and the checks of
the arguments."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import durable
from durable.errors import InvalidArgumentError
from durable.models import WORKFLOW_TASK

HERE = Path(__file__).parent
RUNS: list[str] = []


@durable.workflow(name="test.debounce.notify.v1")
async def notify(customer: str, n: int) -> str:
    RUNS.append(f"{customer}:{n}")
    return f"{customer}:{n}"


async def test_a_burst_runs_once_with_the_last_arguments(backend_url: str) -> None:
    RUNS.clear()
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        await rt.start_worker(poll_interval=0.05)
        ids = []
        for n in range(5):
            ids.append(
                # the quiet time is far longer than the 50 ms between calls, so that a slow
                # machine (an enqueue taking long) does not end the burst between two calls
                await rt.enqueue(
                    notify, "c-42", n, debounce=timedelta(seconds=1.5), debounce_key="c-42"
                )
            )
            await asyncio.sleep(0.05)
        assert len(set(ids)) == 1
        assert await rt.result(ids[0], timeout=20) == "c-42:4"
        assert RUNS == ["c-42:4"]
        assert len((await rt.list_workflows()).items) == 1
        # started and finished: the next call is a new burst
        again = await rt.client.enqueue(notify, "c-42", 5, debounce=0.05, debounce_key="c-42")
        assert again != ids[0]
        assert await rt.result(again, timeout=20) == "c-42:5"
        assert RUNS == ["c-42:4", "c-42:5"]


HOLDER: list[durable.Runtime] = []


@durable.workflow(name="test.debounce.parent.v1")
async def parent() -> list[str]:
    """Debounced enqueues inside a workflow: recorded steps, one burst."""
    rt = HOLDER[0]
    # a quiet time far above a step's duration on a loaded machine: the three calls are one burst
    return [
        await rt.enqueue(notify, "p", n, debounce=1.5, debounce_key="from-parent") for n in range(3)
    ]


async def test_debounced_enqueues_inside_a_workflow_are_one_burst(backend_url: str) -> None:
    RUNS.clear()
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        HOLDER[:] = [rt]
        await rt.start_worker(poll_interval=0.05)
        wid = await rt.client.enqueue(parent)
        ids = await rt.result(wid, timeout=20)
        assert len(set(ids)) == 1
        assert ids[0].startswith(f"{wid}/")  # the derived id of the first enqueue step
        assert await rt.result(ids[0], timeout=20) == "p:2"
        assert RUNS == ["p:2"]


def test_enqueue_sync_debounces() -> None:
    with durable.Client("memory://") as client:
        first = client.enqueue_sync("wf", 1, debounce=30, debounce_key="k")
        second = client.enqueue_sync("wf", 2, debounce=30, debounce_key="k")
        other = client.enqueue_sync("wf", 3, debounce=30, debounce_key="k2")
        assert first == second != other
        assert client.get_workflow_sync(first).input == {"args": [2], "kwargs": {}}


async def test_a_timeout_counts_from_the_last_call() -> None:
    async with durable.Client("memory://") as client:
        first = await client.enqueue("wf", 1, debounce=30, debounce_key="k", timeout=60)
        before = (await client.get_workflow(first)).deadline
        await asyncio.sleep(0.01)
        again = await client.enqueue("wf", 2, debounce=30, debounce_key="k", timeout=60)
        after = (await client.get_workflow(again)).deadline
        assert again == first
        assert before is not None and after is not None and after > before


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"debounce": 5}, "debounce_key"),
        ({"debounce_key": "k"}, "debounce"),
        ({"debounce": 0, "debounce_key": "k"}, "debounce"),
        ({"debounce": -1.5, "debounce_key": "k"}, "debounce"),
        ({"debounce": "5", "debounce_key": "k"}, "debounce"),
        ({"debounce": 5, "debounce_key": ""}, "debounce_key"),
        ({"debounce": 5, "debounce_key": 42}, "debounce_key"),
        ({"debounce": 5, "debounce_key": "k", "workflow_id": "w"}, "workflow_id"),
        ({"debounce": 5, "debounce_key": "k", "idempotency_key": "i"}, "idempotency_key"),
        (
            {"debounce": 5, "debounce_key": "k", "run_after": datetime.now(UTC)},
            "run_after",
        ),
        ({"debounce": 5, "debounce_key": "k", "delay": 1}, "delay"),
    ],
)
async def test_bad_arguments_are_refused(options: dict[str, object], named: str) -> None:
    async with durable.Client("memory://") as client:
        with pytest.raises(InvalidArgumentError, match=named):
            await client.enqueue("wf", 1, **options)  # type: ignore[arg-type]
        assert (await client.list_workflows()).items == []
    async with durable.Runtime(durable.connect("memory://"), recover=False) as rt:
        with pytest.raises(InvalidArgumentError, match=named):
            await rt.enqueue(notify, "c", 1, **options)  # type: ignore[arg-type]


class Callers:
    """Caller processes (``debounceprog.py``), each making debounced enqueues of one key in
    phases; every process starts a phase at once (:meth:`phase`)."""

    def __init__(self, url: str, go: Path, processes: int, counts: list[int]) -> None:
        self.go = go
        self.phases = 0
        self.procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "debounceprog.py"),
                    "--url",
                    url,
                    "--key",
                    "k",
                    "--go",
                    str(go),
                    "--counts",
                    ",".join(map(str, counts)),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]
        for proc in self.procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"

    def phase(self) -> list[str]:
        """Start the next phase in every process; the ids their enqueues returned."""
        (self.go / f"go-{self.phases}").touch()
        self.phases += 1
        ids = []
        for proc in self.procs:
            assert proc.stdout is not None
            while (line := proc.stdout.readline().strip()) != "end":
                assert line, "a caller process ended early"
                ids.append(line)
        return ids

    def close(self) -> None:
        for proc in self.procs:
            proc.communicate(timeout=30)
            assert proc.returncode == 0


@pytest.mark.postgres
@pytest.mark.slow
def test_callers_in_several_processes_make_one_execution_per_burst(
    pg_url: str, tmp_path: Path
) -> None:
    with durable.Client(pg_url) as client:
        callers = Callers(pg_url, tmp_path, processes=3, counts=[20, 10])
        first = callers.phase()
        assert len(first) == 60 and len(set(first)) == 1
        (burst,) = set(first)
        workflows = client.list_workflows_sync().items
        assert [w.id for w in workflows] == [burst]
        stored = workflows[0].input["args"][0]
        assert stored.rsplit("-", 1)[1] == "19"  # the last call of one of the processes

        # a worker claims the burst's execution: the next calls are one new burst
        async def claim() -> None:
            claimed = await client.backend.claim_task(
                burst, WORKFLOW_TASK, "worker", timedelta(seconds=60)
            )
            assert claimed is not None

        client.blocking(claim())
        second = callers.phase()
        callers.close()
        assert len(second) == 30 and len(set(second)) == 1 and burst not in second
        assert len(client.list_workflows_sync().items) == 2
        assert client.get_workflow_sync(burst).input["args"][0] == stored
