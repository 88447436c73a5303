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
    NotSupportedError,
    QueueNotFoundError,
    RaisedToStopError,
    ScheduleNotFoundError,
    SchemaVersionError,
    SerializationError,
    StepAlreadyRecordedError,
    StepError,
    StepTimeoutError,
    StreamClosedError,
    TaskNotFoundError,
    TransactionEndedError,
    UnknownWorkflowError,
    WorkerCrashedError,
    WorkflowAlreadyExistsError,
    WorkflowCancelledError,
    WorkflowDeadLetteredError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowFinishedError,
    WorkflowNotFoundError,
)
from durable.events import set_event, set_event_sync
from durable.inspection import Waiting
from durable.messages import (
    cancel_timer,
    cancel_timer_sync,
    recv,
    recv_sync,
    send,
    send_sync,
    start_timer,
    start_timer_sync,
)
from durable.models import (
    WORKFLOW_TASK,
    AvailableTask,
    ChangeEvent,
    ChangeKind,
    ErrorInfo,
    ExecutorInfo,
    Message,
    MissedTicks,
    Page,
    QueueInfo,
    Receipt,
    ReceiveStatus,
    RegisteredWorkflow,
    ScheduleInfo,
    StepRecord,
    StepStatus,
    TaskClaim,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.outbox import enqueue_in, send_in
from durable.patching import deprecate_patch, patched
from durable.queues import Queue
from durable.registry import Registry, default_registry
from durable.retention import Retention
from durable.retry import RetryPolicy
from durable.scheduling import scheduled
from durable.serialization import JSONSerializer, PickleSerializer, Serializer
from durable.step import AsyncStep, Step, SyncStep, map, run_step, step
from durable.streams import close_stream, close_stream_sync, write_stream, write_stream_sync
from durable.timers import sleep, sleep_sync, sleep_until, sleep_until_sync
from durable.transactional import (
    AsyncTransactionStep,
    SyncTransactionStep,
    TransactionStep,
    transaction,
)
from durable.workflow import AsyncWorkflow, SyncWorkflow, Workflow, workflow

if _typing.TYPE_CHECKING:
    from durable.backends.sql.backend import SQLAlchemyBackend
    from durable.runtime import Runtime
    from durable.worker import Worker

__all__ = [
    "WORKFLOW_TASK",
    "AsyncStep",
    "AsyncTransactionStep",
    "AsyncWorkflow",
    "AvailableTask",
    "BackendError",
    "BackendUnavailableError",
    "ChangeEvent",
    "ChangeKind",
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
    "Message",
    "MissedTicks",
    "NonDeterminismError",
    "NonRetryableError",
    "NotFoundError",
    "NotSupportedError",
    "NothingToServeError",
    "Page",
    "PersistentBackend",
    "PickleSerializer",
    "Queue",
    "QueueInfo",
    "QueueNotFoundError",
    "RaisedToStopError",
    "Receipt",
    "ReceiveStatus",
    "RegisteredWorkflow",
    "Registry",
    "Retention",
    "RetryPolicy",
    "Runtime",
    "SQLAlchemyBackend",
    "ScheduleInfo",
    "ScheduleNotFoundError",
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
    "StreamClosedError",
    "SyncStep",
    "SyncTransactionStep",
    "SyncWorkflow",
    "TaskClaim",
    "TaskNotFoundError",
    "TaskSpec",
    "TransactionEndedError",
    "TransactionStep",
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
    "WorkflowFinishedError",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "WorkflowSnapshot",
    "WorkflowStatus",
    "cancel_timer",
    "cancel_timer_sync",
    "close_stream",
    "close_stream_sync",
    "connect",
    "continue_as_new",
    "default_registry",
    "deprecate_patch",
    "enqueue_in",
    "map",
    "patched",
    "recv",
    "recv_sync",
    "run_step",
    "scheduled",
    "send",
    "send_in",
    "send_sync",
    "set_event",
    "set_event_sync",
    "sleep",
    "sleep_sync",
    "sleep_until",
    "sleep_until_sync",
    "start_timer",
    "start_timer_sync",
    "step",
    "step_guard",
    "transaction",
    "workflow",
    "workflow_id",
    "write_stream",
    "write_stream_sync",
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
