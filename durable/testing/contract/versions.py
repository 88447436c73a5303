"""Code versions: the version an execution records (:attr:`WorkflowInfo.code_version
<durable.models.WorkflowInfo.code_version>`) round-trips, and claims filtered by versions
(``versions=``, ``Runtime(serve_versions=...)``) leave other versions' workflow tasks alone
while unknown versions, step tasks and unfiltered claims are not affected."""

from __future__ import annotations

from datetime import timedelta

from durable.backends.base import PersistentBackend
from durable.models import QueueInfo, TaskSpec
from durable.testing.contract._support import ContractBase, create, ids_of

TTL = timedelta(seconds=30)


class VersionContract(ContractBase):
    """``code_version`` stored; the ``versions`` filter of
    :meth:`~durable.backends.PersistentBackend.claim_available_tasks` and
    :meth:`~durable.backends.PersistentBackend.claim_and_begin_tasks`."""

    async def test_the_code_version_round_trips(self, backend: PersistentBackend) -> None:
        await create(backend, "v", code_version="src-0123456789abcdef")
        await create(backend, "none")
        assert (await backend.get_workflow("v")).code_version == "src-0123456789abcdef"
        assert (await backend.get_workflow("none")).code_version is None
        assert (await backend.load_snapshot("v")).code_version == "src-0123456789abcdef"

    async def test_a_filtered_claim_takes_only_its_versions(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "v1", code_version="v1")
        await create(backend, "v2", code_version="v2")
        await create(backend, "unknown")
        await create(backend, "fan", code_version="v1", task=False)
        await backend.add_task(TaskSpec(instance_id="fan", task_id="step:0", name="s"))
        claimed = await backend.claim_available_tasks("w", 10, TTL, versions=["v2", "v3"])
        assert sorted(ids_of(claimed)) == ["fan", "unknown", "v2"]
        assert await backend.claim_available_tasks("w3", 10, TTL, versions=[]) == []
        rest = await backend.claim_available_tasks("w2", 10, TTL)  # unfiltered
        assert ids_of(rest) == ["v1"]

    async def test_claim_and_begin_filters_by_version_too(self, backend: PersistentBackend) -> None:
        await create(backend, "v1", code_version="v1")
        await create(backend, "v2", code_version="v2")
        begun = await backend.claim_and_begin_tasks("w", 10, TTL, versions=["v1"])
        assert [c.instance_id for c, _ in begun] == ["v1"]
        began = await backend.claim_and_begin_tasks("w", 10, TTL)
        assert [c.instance_id for c, _ in began] == ["v2"]

    async def test_a_queue_with_limits_filters_by_version_too(
        self, backend: PersistentBackend
    ) -> None:
        """A worker serving some versions takes only theirs from a queue with limits as well
        (``claim_queue_tasks``), and unknown versions as the ordinary claims do."""
        await backend.put_queue(QueueInfo(name="limited", concurrency=10))
        await create(backend, "v1", code_version="v1", queue="limited")
        await create(backend, "v2", code_version="v2", queue="limited")
        await create(backend, "unknown", queue="limited")
        claimed = await backend.claim_queue_tasks("w", "limited", 10, TTL, versions=["v2"])
        assert sorted(ids_of(claimed)) == ["unknown", "v2"]
        rest = await backend.claim_queue_tasks("w2", "limited", 10, TTL)
        assert ids_of(rest) == ["v1"]
