"""A step's record reads its backend's clock once: the time it stamps the step with
(``completed_at``) is the time its lease is checked at (the statement's ``c_now``), as for a
start and a finish (their ``p_ts``), where each read its clock twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from durable.backends.sql import SQLAlchemyBackend
from durable.models import StepRecord, StepStatus, WorkflowStatus
from durable.testing.contract._support import LONG, W, create


class CountingClock:
    """A clock one microsecond later at every read, which counts its reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.start = datetime.now(UTC)

    def __call__(self) -> datetime:
        self.reads += 1
        return self.start + timedelta(microseconds=self.reads)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


async def test_a_step_record_a_start_and_a_finish_read_the_clock_once(url: str) -> None:
    clock = CountingClock()
    backend = SQLAlchemyBackend(url)
    backend.use_clock(clock)
    await backend.start()
    try:
        await create(backend, "wf")
        assert await backend.claim_task("wf", W, "w1", LONG) is not None

        before = clock.reads
        await backend.begin_execution("wf", "w1")
        assert clock.reads == before + 1

        before = clock.reads
        record = StepRecord(position=0, name="s", status=StepStatus.SUCCEEDED, output=1)
        await backend.record_step("wf", record, worker_id="w1")
        assert clock.reads == before + 1
        stored = await backend.get_step("wf", 0)
        assert stored is not None
        assert stored.completed_at == clock.start + timedelta(microseconds=before + 1)

        before = clock.reads
        info = await backend.finish_workflow(
            "wf", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=1
        )
        assert clock.reads == before + 1
        assert info.completed_at == clock.start + timedelta(microseconds=before + 1)
    finally:
        await backend.close()
