"""What a workflow waits for: ``Client.waiting`` and ``Client.list_waiting``.

* a sleeping workflow says "sleeping until T" (T its recorded wake-up time), on every backend;
  once it woke and finished, it waits for nothing;
* a workflow whose last step is a pending ``durable.recv`` (recorded here as the receive records
  it: the topic as input, the deadline or None as output) says "waiting for topic X";
* ``list_waiting`` lists them, by kind, newest first, in pages; a bad kind is named.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from support import eventually

import durable
from durable.errors import InvalidArgumentError
from durable.inspection import RECV_STEP, Waiting
from durable.models import WORKFLOW_TASK, StepRecord, StepStatus, WorkflowStatus
from durable.timers import SLEEP_STEP

REG = durable.Registry()
WAIT = 60.0


@durable.step(name="insp.work")
async def work(x: int) -> int:
    return x + 1


@durable.workflow(name="insp.napper", registry=REG)
async def napper(x: int, seconds: float) -> int:
    a = await work(x)
    await durable.sleep(seconds)
    return await work(a)


def runtime(backend: durable.PersistentBackend) -> durable.Runtime:
    return durable.Runtime(
        backend, executor_id="insp", registry=REG, poll_interval=0.01, claim_ttl=5.0
    )


async def receiving(
    backend: durable.PersistentBackend, workflow_id: str, until: str | None
) -> None:
    """Make ``workflow_id`` wait as a receive does: a pending ``durable.recv`` step, handed back."""
    await backend.create_workflow(
        durable.WorkflowSnapshot(id=workflow_id, name="insp.recv"),
        task=durable.TaskSpec(instance_id=workflow_id, name="insp.recv"),
    )
    assert await backend.claim_task(workflow_id, WORKFLOW_TASK, "w", timedelta(seconds=30))
    await backend.begin_execution(workflow_id, "w")
    await backend.record_step(
        workflow_id,
        StepRecord(
            position=0, name=RECV_STEP, status=StepStatus.PENDING, input="decision", output=until
        ),
        worker_id="w",
    )
    await backend.reschedule_workflow(
        workflow_id, worker_id="w", run_after=timedelta(days=1), consume_attempt=False
    )


async def test_what_a_workflow_waits_for(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        client = rt.client
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        sleeper = await rt.enqueue(napper, 1, 3600.0, workflow_id="sleeper")

        async def asleep() -> bool:
            return await client.waiting(sleeper) is not None

        await eventually(asleep, "the workflow to sleep")
        waiting = await client.waiting(sleeper)
        assert isinstance(waiting, Waiting)
        steps = await client.list_steps(sleeper)
        wake = datetime.fromisoformat(steps[-1].output)
        assert (waiting.kind, waiting.until, waiting.topic, waiting.position) == (
            "sleep",
            wake,
            None,
            1,
        )
        assert str(waiting) == f"sleeping until {wake.isoformat()}"
        assert waiting.workflow is not None and waiting.workflow.name == "insp.napper"

        await receiving(rt.backend, "receiver", None)
        await receiving(rt.backend, "bounded", "2030-01-02T03:04:05+00:00")
        receiver = await client.waiting("receiver")
        assert receiver is not None and (receiver.kind, receiver.topic) == ("message", "decision")
        assert receiver.until is None and str(receiver) == "waiting for topic 'decision'"
        bounded = await client.waiting("bounded")
        assert bounded is not None
        assert str(bounded) == "waiting for topic 'decision' until 2030-01-02T03:04:05+00:00"

        assert [w.workflow_id for w in await client.list_waiting()] == [
            "bounded",
            "receiver",
            "sleeper",
        ]
        assert [w.workflow_id for w in await client.list_waiting(kind="sleep")] == ["sleeper"]
        first = await client.list_waiting(kind="message", limit=1)
        assert [w.workflow_id for w in first] == ["bounded"]
        rest = await client.list_waiting(kind="message", cursor=first.next_cursor)
        assert [w.workflow_id for w in rest] == ["receiver"]
        with pytest.raises(InvalidArgumentError, match="kind"):
            await client.list_waiting(kind="sleeping")

        quick = await rt.enqueue(napper, 1, 0.05, workflow_id="quick")
        assert await rt.result(quick, timeout=WAIT) == 3
        assert await client.waiting(quick) is None
        assert (await client.get_workflow(sleeper)).status is WorkflowStatus.PENDING


def test_waiting_is_public() -> None:
    assert durable.Waiting is Waiting
    assert SLEEP_STEP == "durable.sleep" and RECV_STEP == "durable.recv"
