"""Test helpers for code that uses durable, and for authors of storage backends.

:class:`BackendContractTests` is the contract every
:class:`~durable.backends.PersistentBackend` must honour, as a pytest suite to subclass: see
:mod:`durable.testing.contract` for how to run it against your backend, whole or one area at a
time. The contract imports pytest, pytest-asyncio and time-machine; import it from test code
only. :mod:`durable.testing.benchkit` measures a backend's costs at scale (run by hand:
``python -m durable.testing.benchkit URL``); it needs none of them.

For testing your own workflows: the pytest plugin :mod:`durable.testing.plugin` (fixtures
``durable_runtime``, ``durable_client``, ``durable_worker``, ``durable_clock``, on wherever
durable is installed), the time-skipping clock :class:`TimeSkippingClock`
(:mod:`durable.testing.clock`), and crash injection, :func:`check_replay_safe`
(:mod:`durable.testing.crash`).

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
    from durable.testing.clock import TimeSkippingClock
    from durable.testing.contract import BackendContractTests
    from durable.testing.crash import (
        ReplayCheck,
        ReplayUnsafeError,
        check_replay_safe,
        check_replay_safe_sync,
    )

__all__ = [
    "BackendContractTests",
    "ReplayCheck",
    "ReplayUnsafeError",
    "TimeSkippingClock",
    "check_replay_safe",
    "check_replay_safe_sync",
    "replay",
]

#: What this package gives lazily (imported on first use), by the module that defines it.
_TESTKIT = {
    "TimeSkippingClock": "durable.testing.clock",
    "ReplayCheck": "durable.testing.crash",
    "ReplayUnsafeError": "durable.testing.crash",
    "check_replay_safe": "durable.testing.crash",
    "check_replay_safe_sync": "durable.testing.crash",
}


def __getattr__(name: str) -> Any:
    # lazily, so that ``python -m durable.testing.benchkit`` does not import pytest
    if name == "BackendContractTests":
        from durable.testing.contract import BackendContractTests

        return BackendContractTests
    if name in _TESTKIT:
        import importlib

        return getattr(importlib.import_module(_TESTKIT[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
