"""Exactly-once work in the backend's own database: a step's body and its record in one
transaction, fenced by the claim (:meth:`~PersistentBackend.run_transactional_step`), and the
capability flag (:attr:`~PersistentBackend.supports_transactions`). A backend without the
capability refuses every such operation with ConfigurationError, before doing anything.

The body gets an opaque connection here (what it is depends on the backend); the tests check
what the contract promises about the step's record. That the body's own writes commit or roll
back with it is checked, with real application tables, in durable's own test suite."""

from __future__ import annotations

from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import ClaimLostError, ConfigurationError, StepAlreadyRecordedError
from durable.models import StepRecord, StepStatus
from durable.testing.contract._support import ContractBase, running


def _record(position: int) -> Any:
    def record(value: Any) -> StepRecord:
        return StepRecord(
            position=position, name="tx", status=StepStatus.SUCCEEDED, output=value, attempts=1
        )

    return record


class Boom(Exception):
    pass


class TransactionContract(ContractBase):
    """A step's body and its record in one transaction, fenced by the claim; or refused."""

    async def test_without_the_capability_everything_is_refused(
        self, backend: PersistentBackend
    ) -> None:
        if backend.supports_transactions:
            pytest.skip("the backend supports transactions")
        ran: list[Any] = []
        with pytest.raises(ConfigurationError, match="supports_transactions"):
            await backend.run_transactional_step(
                "wf", ran.append, _record(0), worker_id="w1", is_async=False
            )
        with pytest.raises(ConfigurationError):
            backend.enqueue_in_transaction(object(), [])
        with pytest.raises(ConfigurationError):
            backend.send_in_transaction(object(), "wf", "topic", 1)
        with pytest.raises(ConfigurationError):
            await backend.own_database_identity()
        assert ran == []
        assert (
            backend.run_transactional_step_blocking("wf", ran.append, _record(0), worker_id="w1")
            is None
        )

    async def test_the_body_and_its_record_commit_together(
        self, backend: PersistentBackend
    ) -> None:
        if not backend.supports_transactions:
            pytest.skip("the backend does not support transactions")
        await running(backend, "wf", "w1")
        seen: list[Any] = []

        def body(conn: Any) -> dict[str, int]:
            seen.append(conn)
            return {"n": 1}

        made = await backend.run_transactional_step("wf", body, _record(0), worker_id="w1")
        assert made.output == {"n": 1} and len(seen) == 1 and seen[0] is not None
        [stored] = await backend.list_steps("wf")
        assert (stored.position, stored.status, stored.output) == (
            0,
            StepStatus.SUCCEEDED,
            {"n": 1},
        )

    async def test_a_failing_body_records_nothing_and_raises_its_own_error(
        self, backend: PersistentBackend
    ) -> None:
        if not backend.supports_transactions:
            pytest.skip("the backend does not support transactions")
        await running(backend, "wf", "w1")

        def body(conn: Any) -> None:
            raise Boom("no")

        with pytest.raises(Boom):
            await backend.run_transactional_step("wf", body, _record(0), worker_id="w1")
        assert await backend.list_steps("wf") == []

    async def test_fenced_by_the_claim_and_never_recorded_twice(
        self, backend: PersistentBackend
    ) -> None:
        if not backend.supports_transactions:
            pytest.skip("the backend does not support transactions")
        await running(backend, "wf", "w1")
        with pytest.raises(ClaimLostError):
            await backend.run_transactional_step("wf", lambda c: 1, _record(0), worker_id="w2")
        assert await backend.list_steps("wf") == []
        await backend.run_transactional_step("wf", lambda c: 1, _record(0), worker_id="w1")
        with pytest.raises(StepAlreadyRecordedError):
            await backend.run_transactional_step("wf", lambda c: 2, _record(0), worker_id="w1")
        assert [s.output for s in await backend.list_steps("wf")] == [1]
