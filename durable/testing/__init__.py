"""Test helpers for code that uses durable, and for authors of storage backends.

:class:`BackendContractTests` is the contract every
:class:`~durable.backends.PersistentBackend` must honour, as a pytest suite to subclass: see
:mod:`durable.testing.contract` for how to run it against your backend, whole or one area at a
time. The contract imports pytest, pytest-asyncio and time-machine; import it from test code
only. :mod:`durable.testing.benchkit` measures a backend's costs at scale (run by hand:
``python -m durable.testing.benchkit URL``); it needs none of them.

:func:`replay` (``durable.testing.replay(workflow, history)``, from
:mod:`durable.testing.replay`) replays a recorded execution against the current code of its
workflow, running nothing and writing nothing, and raises on a divergence: the check to run in
CI before deploying a change to a workflow. It needs no pytest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# the function, not its module, under the package's name (the module stays importable as
# durable.testing.replay for replay_async and the rest)
from durable.testing.replay import replay as replay

if TYPE_CHECKING:
    from durable.testing.contract import BackendContractTests

__all__ = ["BackendContractTests", "replay"]


def __getattr__(name: str) -> Any:
    # lazily, so that ``python -m durable.testing.benchkit`` does not import pytest
    if name == "BackendContractTests":
        from durable.testing.contract import BackendContractTests

        return BackendContractTests
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
