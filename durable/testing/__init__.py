"""Test helpers for code that uses durable, and for authors of storage backends.

:class:`BackendContractTests` is the contract every
:class:`~durable.backends.PersistentBackend` must honour, as a pytest suite to subclass: see
:mod:`durable.testing.contract` for how to run it against your backend, whole or one area at a
time. The contract imports pytest, pytest-asyncio and time-machine; import it from test code
only. :mod:`durable.testing.benchkit` measures a backend's costs at scale (run by hand:
``python -m durable.testing.benchkit URL``); it needs none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durable.testing.contract import BackendContractTests

__all__ = ["BackendContractTests"]


def __getattr__(name: str) -> Any:
    # lazily, so that ``python -m durable.testing.benchkit`` does not import pytest
    if name == "BackendContractTests":
        from durable.testing.contract import BackendContractTests

        return BackendContractTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
