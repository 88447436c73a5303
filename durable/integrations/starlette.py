"""durable in a Starlette or FastAPI application: a lifespan that starts a runtime (and, by
default, a worker) with the app and closes it on shutdown, and dependencies that give endpoints
the runtime or its client.

::

    import durable
    from fastapi import Depends, FastAPI
    from durable.integrations.starlette import durable_lifespan, get_client

    app = FastAPI(lifespan=durable_lifespan("sqlite:///app.db"))   # runtime + worker

    @app.post("/orders/{order_id}")
    async def start(order_id: str, client: durable.Client = Depends(get_client)) -> dict:
        return {"id": await client.enqueue(checkout, order_id)}

Async endpoints await the async methods on the app's event loop; sync endpoints (which
Starlette and FastAPI run in a thread pool) call the ``_sync`` twins
(``client.get_workflow_sync(...)``), which run on the app's loop and are safe from any number
of threads at once. Needs Starlette (``pip install 'durable-sqla[integrations]'``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.requests import HTTPConnection

from durable.backends.base import PersistentBackend
from durable.client import Client
from durable.connect import connect
from durable.errors import DurableError, InvalidArgumentError
from durable.runtime import Runtime
from durable.validation import (
    check_bool,
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
    check_queues,
)

RUNTIME_STATE = "durable_runtime"
"""The attribute of ``app.state`` that holds the started :class:`~durable.Runtime` (None when
the lifespan was given a :class:`~durable.Client`)."""
CLIENT_STATE = "durable_client"
"""The attribute of ``app.state`` that holds the client (the runtime's own, or the one given)."""

AppLifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]


class DurableLifespan:
    """A Starlette/FastAPI lifespan (``lifespan=``) that starts durable with the app; made by
    :func:`durable_lifespan`, which documents it. :attr:`runtime` and :attr:`client` are the
    objects it starts, usable from any module of the app once it has started."""

    def __init__(
        self,
        target: Runtime | Client,
        *,
        worker: bool,
        concurrency: int,
        queues: Sequence[str] | None,
        poll_interval: float,
        grace: float,
        lifespan: AppLifespan | None,
    ) -> None:
        self.runtime: Runtime | None = target if isinstance(target, Runtime) else None
        """The runtime it starts, or None when it was given a client."""
        self.client: Client = target.client if isinstance(target, Runtime) else target
        """The client endpoints use: the runtime's own, or the client it was given."""
        self._target = target
        self._worker = worker
        self._concurrency = concurrency
        self._queues = None if queues is None else list(queues)
        self._poll_interval = poll_interval
        self._grace = grace
        self._lifespan = lifespan

    def __call__(self, app: Any) -> AbstractAsyncContextManager[Mapping[str, Any] | None]:
        return self._run(app)

    @asynccontextmanager
    async def _run(self, app: Any) -> AsyncIterator[Mapping[str, Any] | None]:
        target = self._target
        owned = not target._started  # started by the caller: used, and left to the caller
        if not owned and target._loop is not asyncio.get_running_loop():
            noun = target._noun
            raise DurableError(
                f"durable_lifespan was given a {noun} already started on another event loop "
                f"(start_sync(), `with {noun}:`, or a test fixture), whose connections belong "
                f"to that loop, not the app's: give it a {noun} that is not started (or a "
                "database URL), which it starts with the app and closes at shutdown"
            )
        if owned:
            await target.start()
        worker = None
        try:
            if self._worker and self.runtime is not None:
                worker = await self.runtime.start_worker(
                    concurrency=self._concurrency,
                    queues=self._queues,
                    poll_interval=self._poll_interval,
                )
            setattr(app.state, RUNTIME_STATE, self.runtime)
            setattr(app.state, CLIENT_STATE, self.client)
            if self._lifespan is None:
                yield None
            else:  # the app's own lifespan runs inside, so its startup can use durable
                async with self._lifespan(app) as state:
                    yield state
        finally:
            if worker is not None:
                await worker.stop(self._grace)  # running executions: finish or handed back
            if owned:
                await target.close()


def durable_lifespan(
    target: str | PersistentBackend | Runtime | Client,
    *,
    worker: bool = True,
    concurrency: int = 10,
    queues: Sequence[str] | None = None,
    poll_interval: float = 1.0,
    grace: float = 30.0,
    lifespan: AppLifespan | None = None,
    **runtime_options: Any,
) -> DurableLifespan:
    """A lifespan for ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)``: on startup it
    starts a runtime (its backend connects and migrates) and, if ``worker``, a worker in it;
    on shutdown it stops the worker (running executions get ``grace`` seconds, then are handed
    back for other workers to resume) and closes the runtime. While the app runs,
    ``app.state.durable_runtime`` and ``app.state.durable_client`` hold them (see
    :func:`get_runtime`, :func:`get_client`), as do the returned object's ``runtime`` and
    ``client``.

    :param target: a database URL or a backend (a :class:`~durable.Runtime` is made over it
        with ``runtime_options``, e.g. ``executor_id``, ``claim_ttl``), a runtime of your own,
        or a :class:`~durable.Client` (a producer that runs nothing: then ``worker`` must be
        False).
    :param worker: start a worker that runs the workflows registered in the runtime's registry
        (import their modules before the app starts); False for an app that only starts and
        reads executions while separate ``durable worker`` processes run them.
    :param concurrency: ``queues``, ``poll_interval``: the worker's, as
        :meth:`Runtime.start_worker <durable.Runtime.start_worker>`.
    :param grace: seconds running executions get to finish at shutdown.
    :param lifespan: the app's own lifespan, entered after durable has started (so its
        startup may use durable) and exited before durable closes; the state it yields is the
        app's lifespan state.

    Each process of the server (e.g. each ``uvicorn --workers`` process) runs its own lifespan,
    hence its own runtime and worker, all sharing the database.

    A runtime or client given already started (on the app's event loop) is used and left
    open: whoever started it closes it. One started on another loop is refused when the app
    starts, with :class:`~durable.errors.DurableError`: its connections belong to that loop.

    :raises InvalidArgumentError: ``target`` is none of these, options are given with a runtime
        or a client, a client is given with ``worker=True``, or an option is out of range.
    :raises ConfigurationError: a malformed URL.
    """
    check_bool(worker, "worker")
    check_positive_int(concurrency, "concurrency")
    check_queues(queues, "queues")
    check_positive_float(poll_interval, "poll_interval")
    check_non_negative_float(grace, "grace")
    if lifespan is not None and not callable(lifespan):
        raise InvalidArgumentError(f"lifespan must be a lifespan function, got {lifespan!r}")
    made: Runtime | Client
    if isinstance(target, Runtime | Client):
        if runtime_options:
            raise InvalidArgumentError(
                f"options {sorted(runtime_options)} are for a URL or a backend: "
                f"configure the {type(target).__name__} itself"
            )
        if isinstance(target, Client) and worker:
            raise InvalidArgumentError(
                "a Client runs no workflow: pass worker=False, or a Runtime (or a URL) to run "
                "a worker in the app"
            )
        made = target
    elif isinstance(target, str | PersistentBackend):
        backend = connect(target) if isinstance(target, str) else target
        made = Runtime(backend, **runtime_options)
    else:
        raise InvalidArgumentError(
            "durable_lifespan needs a database URL, a PersistentBackend, a Runtime or a Client, "
            f"got {type(target).__qualname__}"
        )
    return DurableLifespan(
        made,
        worker=worker,
        concurrency=concurrency,
        queues=queues,
        poll_interval=poll_interval,
        grace=grace,
        lifespan=lifespan,
    )


def _state(conn: HTTPConnection, name: str) -> Any:
    value = getattr(conn.app.state, name, None)
    if value is None:
        raise DurableError(
            f"this app has no durable {name.removeprefix('durable_')}: create it with "
            "lifespan=durable_lifespan(...) (from durable.integrations.starlette); in a mounted "
            "sub-application, use the DurableLifespan's .runtime / .client instead"
        )
    return value


def get_runtime(request: HTTPConnection) -> Runtime:
    """The started runtime of the app that serves ``request`` (FastAPI:
    ``runtime: Runtime = Depends(get_runtime)``).

    :raises DurableError: the app was not given :func:`durable_lifespan` (or a client only), or
        it has not started.
    """
    runtime: Runtime = _state(request, RUNTIME_STATE)
    return runtime


def get_client(request: HTTPConnection) -> Client:
    """The started client of the app that serves ``request`` (FastAPI:
    ``client: Client = Depends(get_client)``): the runtime's own, or the client given to
    :func:`durable_lifespan`.

    :raises DurableError: the app was not given :func:`durable_lifespan`, or it has not started.
    """
    client: Client = _state(request, CLIENT_STATE)
    return client
