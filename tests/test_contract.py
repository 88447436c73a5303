"""The backend contract suite (:mod:`durable.testing`) against every backend kind we ship:
memory://, a SQLite file through both drivers, and PostgreSQL (marked ``postgres``)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable

import pytest

import durable
from durable.backends.base import PersistentBackend
from durable.backends.memory import InMemoryBackend
from durable.testing import BackendContractTests
from durable.testing.contract import BatchContract, LabelContract


class TestContract(BackendContractTests):
    @pytest.fixture
    async def backend(self, backend_url: str) -> AsyncIterator[PersistentBackend]:
        async with durable.connect(backend_url) as backend:
            yield backend

    @pytest.fixture
    def backend_factory(self, backend_url: str) -> Callable[[], PersistentBackend] | None:
        if backend_url.startswith("memory://"):
            return None  # one process's memory cannot be shared
        return functools.partial(durable.connect, backend_url)


class RowByRow(InMemoryBackend):
    """A backend that keeps the interface's default create_workflows (one create_workflow a
    row), as CONTRIBUTING allows a third party's to."""

    create_workflows = PersistentBackend.create_workflows


class TestTheDefaultBatch(LabelContract, BatchContract):
    """The areas that create batches, on the interface's default create_workflows: what it
    promises (a refused row named as ``inputs[i]``) holds there too."""

    @pytest.fixture
    async def backend(self) -> AsyncIterator[PersistentBackend]:
        async with RowByRow() as backend:
            yield backend


def test_no_contract_test_hides_another() -> None:
    """The suite is many mixins of one class: two tests of one name in two of them leave only
    one to run (the one first in the method resolution order), silently. Two pairs did
    (the change feed's and retention's bad arguments, queue limits' and schedules' storage)."""
    defined: dict[str, type] = {}
    for cls in BackendContractTests.__mro__:
        for name in vars(cls):
            if name.startswith("test_"):
                first = defined.setdefault(name, cls)
                assert first is cls, f"{name} is in both {first.__name__} and {cls.__name__}"
