"""The behaviour every :class:`~durable.backends.PersistentBackend` must have, as pytest tests.

Subclass :class:`BackendContractTests` in a test module, give it a ``backend`` fixture, and pytest
runs the whole contract against your backend::

    import functools

    import pytest
    import pytest_asyncio

    from durable.testing import BackendContractTests
    from myproject import MyBackend


    class TestMyBackend(BackendContractTests):
        @pytest_asyncio.fixture
        async def backend(self):
            # a started backend over EMPTY storage, closed afterwards
            async with MyBackend("...fresh database...") as backend:
                yield backend

        @pytest.fixture
        def backend_factory(self):
            # optional: a picklable, zero-argument callable returning an UNSTARTED backend on
            # the same storage as ``backend``; it enables the multi-process claim tests
            return functools.partial(MyBackend, "...the same database...")

The suite is split by area of the domain, one class per area, each runnable on its own with the
same fixtures while you write that area (CONTRIBUTING.md walks through them in order):

* :class:`WorkflowContract`: workflows as records: create, round trips, read, delete, list;
* :class:`SnapshotContract`: idempotent creation, saves under an optimistic lock, refused writes;
* :class:`BatchContract`: many workflows created at once, per row as one, all or nothing;
* :class:`ClockContract`: the store's clock (``now()``) judges leases and due times;
* :class:`ClaimContract`: tasks, claims, leases, expiry, takeover, fencing, finding work;
* :class:`ExecutionContract`: begin, finish, reschedule, cancel, redrive; attempts counted;
* :class:`StepContract`: recording steps, what a retry runs again, the cost of a step;
* :class:`FanOutContract`: suspending a workflow for step tasks, waking it; both fenced
  (an expired claim too);
* :class:`MessageContract`: messages in (kept, ordered, exactly once, idempotent, fenced
  by a live claim, waits always woken) and timers by key (replaced, cancelled, fenced, due
  without polling);
* :class:`RegistryContract`: the workflow registry and executors;
* :class:`DeadlineContract`: deadlines, cancelling expired workflows, cancellation of a
  workflow's descendants, continue-as-new, listing the workflows that wait;
* :class:`ScheduleContract`: cron schedules stored, paused, listed, fired once per tick
  (compare-and-set with the enqueue) under racing schedulers, missed-tick policies;
* :class:`QueueContract`: queues with limits stored; claims within them, never beyond them
  under racing claims of one process or several;
* :class:`RetentionContract`: finished workflows past a time deleted in batches with what hangs
  off them, unfinished ones and children of unfinished parents kept, racing deleters;
* :class:`LabelContract`: labels stored with new workflows (children inherit), searched with
  the listing's filters and pages, refused when malformed, deleted with their workflow;
  workflows counted by status;
* :class:`WakeUpContract`: ``wait_for_work``;
* :class:`EventContract`: events workflows publish (latest value wins, fenced, watched);
* :class:`StreamContract`: streams workflows publish (in order, each once, closed, watched);
* :class:`ConcurrencyContract`: connections returned, atomic claims, one workflow created by
  racing creates with one idempotency key (or id), 200 concurrent calls;
* :class:`VersionContract`: the code version stored, claims filtered by code versions.
* :class:`TransactionContract`: a step's body and its record in one transaction, fenced by the
  claim (or, without ``supports_transactions``, refused).
* :class:`ForkContract`: a new execution from the first steps of another's history.
* :class:`DebounceContract`: debouncing: a burst of calls with one key is one execution with
  the last call's input, ended by a claim; racing callers and claims.

For example ``class TestMyClaims(ClaimContract)`` with the same ``backend`` fixture runs the
claims area only. A backend passes when :class:`BackendContractTests`, all of them, passes: the
runtime relies on every guarantee.

Requirements:

* The tests need ``pytest-asyncio`` and ``time-machine`` (the clock area moves this host's
  clock). They are marked ``asyncio``, so they run in its strict mode as well as in auto mode;
  in strict mode, declare an async ``backend`` fixture with ``@pytest_asyncio.fixture``.
* ``backend`` must be function-scoped and start from empty storage for every test (listing and
  task-finding tests see everything stored).
* Without ``backend_factory`` (the default returns None) the multi-process tests are skipped.
  The factory is pickled into processes started with the ``spawn`` method, so it must be
  importable: a module-level function or a :func:`functools.partial` of one, not a lambda.
* The suite works with any serializer that accepts JSON-like values (dicts with string keys,
  lists, str, int, float, bool, None) and rejects an object whose ``__reduce__`` raises.
* A backend with a ``checked_out_connections()`` method (as
  :class:`~durable.backends.SQLAlchemyBackend` has) is checked after every test to have
  returned all its connections.
* A few tests wait for claims to expire: they use TTLs of a fraction of a second and real sleeps.
  The cost check of :class:`StepContract` records a few hundred steps and compares medians; it
  has no absolute time limit. The whole suite takes some seconds per backend.
"""

from __future__ import annotations

from durable.testing.contract._support import ContractBase
from durable.testing.contract.batches import BatchContract
from durable.testing.contract.changes import ChangeFeedContract
from durable.testing.contract.claims import ClaimContract
from durable.testing.contract.clock import ClockContract
from durable.testing.contract.concurrency import ConcurrencyContract
from durable.testing.contract.deadlines import DeadlineContract
from durable.testing.contract.debounce import DebounceContract
from durable.testing.contract.events import EventContract, StreamContract
from durable.testing.contract.execution import ExecutionContract
from durable.testing.contract.fanout import FanOutContract
from durable.testing.contract.forks import ForkContract
from durable.testing.contract.labels import LabelContract
from durable.testing.contract.messages import MessageContract
from durable.testing.contract.queues import QueueContract
from durable.testing.contract.registry import RegistryContract
from durable.testing.contract.retention import RetentionContract
from durable.testing.contract.schedules import ScheduleContract
from durable.testing.contract.snapshots import SnapshotContract
from durable.testing.contract.steps import StepContract
from durable.testing.contract.transactions import TransactionContract
from durable.testing.contract.versions import VersionContract
from durable.testing.contract.wakeups import WakeUpContract
from durable.testing.contract.workflows import WorkflowContract

__all__ = [
    "BackendContractTests",
    "BatchContract",
    "ChangeFeedContract",
    "ClaimContract",
    "ClockContract",
    "ConcurrencyContract",
    "ContractBase",
    "DeadlineContract",
    "DebounceContract",
    "EventContract",
    "ExecutionContract",
    "FanOutContract",
    "ForkContract",
    "LabelContract",
    "MessageContract",
    "QueueContract",
    "RegistryContract",
    "RetentionContract",
    "ScheduleContract",
    "SnapshotContract",
    "StepContract",
    "StreamContract",
    "TransactionContract",
    "VersionContract",
    "WakeUpContract",
    "WorkflowContract",
]


class BackendContractTests(
    WorkflowContract,
    SnapshotContract,
    BatchContract,
    ClockContract,
    ClaimContract,
    ExecutionContract,
    StepContract,
    FanOutContract,
    MessageContract,
    RegistryContract,
    DeadlineContract,
    ScheduleContract,
    QueueContract,
    RetentionContract,
    LabelContract,
    WakeUpContract,
    EventContract,
    StreamContract,
    ConcurrencyContract,
    VersionContract,
    TransactionContract,
    ForkContract,
    DebounceContract,
    ChangeFeedContract,
):
    """The whole contract suite: every area. Subclass it and define a ``backend`` fixture (see
    the module's docstring); optionally a ``backend_factory`` fixture for the multi-process
    tests."""
