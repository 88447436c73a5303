"""durable: workflows whose every step is persisted, so they survive crashes and restarts.

:class:`SQLAlchemyBackend` is imported on first use (module ``__getattr__``), so that
``import durable`` does not import SQLAlchemy's asyncio extension, psycopg or Alembic
(``benchmarks/import_time.py`` measures it). :class:`Runtime` and :class:`Worker` are imported
on first use too, so that a producer using :class:`Client` does not load the execution machinery.
"""

from __future__ import annotations

import typing as _typing

from durable.backends.base import PersistentBackend
from durable.backends.memory import InMemoryBackend
from durable.client import Client, Enqueue
from durable.connect import connect
from durable.context import StepGuard, step_guard, workflow_id
from durable.continuation import continue_as_new
from durable.errors import (
    BackendError,
    BackendUnavailableError,
    ClaimLostError,
    ConcurrentUpdateError,
    ConfigurationError,
    CorruptRowError,
    DeadlineExceededError,
    DurableError,
    ExecutorIdInUseError,
    InvalidArgumentError,
    NonDeterminismError,
    NonRetryableError,
    NotFoundError,
    NothingToServeError,
    SchemaVersionError,
    SerializationError,
    StepAlreadyRecordedError,
    StepError,
    StepTimeoutError,
    TaskNotFoundError,
    UnknownWorkflowError,
    WorkerCrashedError,
    WorkflowAlreadyExistsError,
    WorkflowCancelledError,
    WorkflowDeadLetteredError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowNotFoundError,
)
from durable.inspection import Waiting
from durable.models import (
    WORKFLOW_TASK,
    AvailableTask,
    ErrorInfo,
    ExecutorInfo,
    Page,
    RegisteredWorkflow,
    StepRecord,
    StepStatus,
    TaskClaim,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.registry import Registry, default_registry
from durable.retry import RetryPolicy
from durable.serialization import JSONSerializer, PickleSerializer, Serializer
from durable.step import AsyncStep, Step, SyncStep, map, run_step, step
from durable.timers import sleep, sleep_sync, sleep_until, sleep_until_sync
from durable.workflow import AsyncWorkflow, SyncWorkflow, Workflow, workflow

if _typing.TYPE_CHECKING:
    from durable.backends.sql.backend import SQLAlchemyBackend
    from durable.runtime import Runtime
    from durable.worker import Worker

__all__ = [
    "WORKFLOW_TASK",
    "AsyncStep",
    "AsyncWorkflow",
    "AvailableTask",
    "BackendError",
    "BackendUnavailableError",
    "ClaimLostError",
    "Client",
    "ConcurrentUpdateError",
    "ConfigurationError",
    "CorruptRowError",
    "DeadlineExceededError",
    "DurableError",
    "Enqueue",
    "ErrorInfo",
    "ExecutorIdInUseError",
    "ExecutorInfo",
    "InMemoryBackend",
    "InvalidArgumentError",
    "JSONSerializer",
    "NonDeterminismError",
    "NonRetryableError",
    "NotFoundError",
    "NothingToServeError",
    "Page",
    "PersistentBackend",
    "PickleSerializer",
    "RegisteredWorkflow",
    "Registry",
    "RetryPolicy",
    "Runtime",
    "SQLAlchemyBackend",
    "SchemaVersionError",
    "SerializationError",
    "Serializer",
    "Step",
    "StepAlreadyRecordedError",
    "StepError",
    "StepGuard",
    "StepRecord",
    "StepStatus",
    "StepTimeoutError",
    "SyncStep",
    "SyncWorkflow",
    "TaskClaim",
    "TaskNotFoundError",
    "TaskSpec",
    "UnknownWorkflowError",
    "Waiting",
    "Worker",
    "WorkerCrashedError",
    "Workflow",
    "WorkflowAlreadyExistsError",
    "WorkflowCancelledError",
    "WorkflowDeadLetteredError",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "WorkflowSnapshot",
    "WorkflowStatus",
    "connect",
    "continue_as_new",
    "default_registry",
    "map",
    "run_step",
    "sleep",
    "sleep_sync",
    "sleep_until",
    "sleep_until_sync",
    "step",
    "step_guard",
    "workflow",
    "workflow_id",
]


def __getattr__(name: str) -> _typing.Any:
    if name == "SQLAlchemyBackend":
        from durable.backends.sql.backend import SQLAlchemyBackend

        return SQLAlchemyBackend
    if name == "Runtime":
        from durable.runtime import Runtime

        return Runtime
    if name == "Worker":
        from durable.worker import Worker

        return Worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
