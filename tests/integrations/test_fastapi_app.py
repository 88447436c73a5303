"""examples/fastapi_app.py, run for real: its endpoints start a workflow and read its status
while the worker that durable's lifespan started runs it, on SQLite and PostgreSQL; then what
durable.integrations.starlette promises besides (composition with the app's own lifespan, a
client-only app, clear errors)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import fastapi_app
import httpx2 as httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import durable
from durable.integrations.starlette import (
    DurableLifespan,
    durable_lifespan,
    get_client,
    get_runtime,
)


def receipt(order_id: str, quantity: int) -> dict[str, Any]:
    amount = 250 * quantity
    return {"order_id": order_id, "amount": amount, "receipt": f"charge-{order_id}-{amount}"}


def test_an_endpoint_starts_a_workflow_the_apps_worker_runs_it(durable_url: str) -> None:
    app = fastapi_app.create_app(durable_url, executor_id="web-1", poll_interval=0.05)
    with TestClient(app) as web:
        started = web.post("/orders/o-1", params={"quantity": 3})
        assert started.status_code == 202, started.text
        assert started.json() == {"workflow_id": "order-o-1"}
        # the same order again is the same execution
        assert web.post("/orders/o-1", params={"quantity": 3}).json() == started.json()
        done = web.get("/workflows/order-o-1", params={"wait": 30})
        assert done.status_code == 200
        assert done.json() == {
            "workflow_id": "order-o-1",
            "status": "succeeded",
            "result": receipt("o-1", 3),
        }
        missing = web.get("/workflows/order-nope")
        assert missing.status_code == 404 and "order-nope" in missing.json()["detail"]
    # shut down: the runtime is closed, and the record is in the database for anyone
    with durable.Client(durable_url) as client:
        steps = client.list_steps_sync("order-o-1")
        assert [s.name for s in steps] == ["examples.fastapi.price", "examples.fastapi.charge"]
        assert {s.executor_id for s in steps} == {"web-1"}  # the app's own worker ran them


async def test_concurrent_requests_from_the_thread_pool(durable_url: str) -> None:
    # the status endpoint is sync: FastAPI runs each request in its thread pool, and all of them
    # call the blocking API at once
    app = fastapi_app.create_app(durable_url, poll_interval=0.05)
    orders = [f"c{i}" for i in range(12)]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as web:
            starts = await asyncio.gather(
                *(web.post(f"/orders/{o}", params={"quantity": i}) for i, o in enumerate(orders))
            )
            assert [r.json()["workflow_id"] for r in starts] == [f"order-{o}" for o in orders]
            ends = await asyncio.gather(
                *(web.get(f"/workflows/order-{o}", params={"wait": 30}) for o in orders)
            )
    assert [r.json() for r in ends] == [
        {"workflow_id": f"order-{o}", "status": "succeeded", "result": receipt(o, i)}
        for i, o in enumerate(orders)
    ]


def test_without_a_worker_the_app_starts_work_that_a_worker_process_runs(
    durable_url: str, durable_runtime: durable.Runtime
) -> None:
    app = fastapi_app.create_app(durable_url, worker=False, poll_interval=0.05)
    with TestClient(app) as web:
        web.post("/orders/o-2", params={"quantity": 2})
        assert web.get("/workflows/order-o-2").json()["status"] == "pending"
        # what `durable worker fastapi_app:make_runtime` serves, here the plugin's runtime
        durable_runtime.blocking(durable_runtime.start_worker(concurrency=2, poll_interval=0.05))
        done = web.get("/workflows/order-o-2", params={"wait": 30}).json()
    assert done == {"workflow_id": "order-o-2", "status": "succeeded", "result": receipt("o-2", 2)}


def test_the_apps_own_lifespan_runs_inside_and_its_state_is_kept(sqlite_url: str) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        runtime = get_runtime_of(app)
        seen.append(f"up {runtime.executor_id}")  # durable is started before the app's own
        await runtime.client.list_workflows()
        yield {"greeting": "hello"}
        seen.append("down")

    def get_runtime_of(app: Starlette) -> durable.Runtime:
        runtime: durable.Runtime = app.state.durable_runtime
        return runtime

    async def where(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "greeting": request.state.greeting,
                "executor": get_runtime(request).executor_id,
                "same_client": get_client(request) is get_runtime(request).client,
            }
        )

    lifespan = durable_lifespan(sqlite_url, worker=False, lifespan=own, executor_id="web-2")
    app = Starlette(routes=[Route("/", where)], lifespan=lifespan)
    with TestClient(app) as web:
        assert web.get("/").json() == {
            "greeting": "hello",
            "executor": "web-2",
            "same_client": True,
        }
        assert lifespan.runtime is not None and lifespan.runtime.executor_id == "web-2"
    assert seen == ["up web-2", "down"]
    with pytest.raises(durable.DurableError, match="not started"):
        lifespan.client.get_workflow_sync("x")  # closed with the app


def test_a_client_only_app_and_bad_arguments(sqlite_url: str) -> None:
    with pytest.raises(durable.InvalidArgumentError, match="worker=False"):
        durable_lifespan(durable.Client(sqlite_url))
    with pytest.raises(durable.InvalidArgumentError, match="executor_id"):
        durable_lifespan(durable.Client(sqlite_url), worker=False, executor_id="x")
    with pytest.raises(durable.InvalidArgumentError, match="concurrency"):
        durable_lifespan(sqlite_url, concurrency=0)
    with pytest.raises(durable.InvalidArgumentError, match="queues is empty"):
        durable_lifespan(sqlite_url, queues=[])  # a worker that would claim nothing
    with pytest.raises(durable.InvalidArgumentError, match="got int"):
        durable_lifespan(42)  # type: ignore[arg-type]

    async def who(request: Request) -> JSONResponse:
        client = get_client(request)
        try:
            get_runtime(request)
        except durable.DurableError as exc:
            return JSONResponse({"error": str(exc), "client": repr(client)})
        return JSONResponse({})

    client = durable.Client(sqlite_url)
    app = Starlette(routes=[Route("/", who)], lifespan=durable_lifespan(client, worker=False))
    with TestClient(app) as web:
        body = web.get("/").json()
    assert "no durable runtime" in body["error"] and body["client"].startswith("Client(")

    bare = Starlette(routes=[Route("/", who)])
    with (
        TestClient(bare, raise_server_exceptions=True) as web,
        pytest.raises(durable.DurableError, match="lifespan=durable_lifespan"),
    ):
        web.get("/")


def test_the_web_view_mounted_over_the_apps_client(sqlite_url: str) -> None:
    from durable.web import create_app

    app = fastapi_app.create_app(sqlite_url, poll_interval=0.05)
    lifespan = app.router.lifespan_context
    assert isinstance(lifespan, DurableLifespan)
    app.mount("/durable", create_app(lifespan.client))  # the view reads through the app's client
    with TestClient(app) as web:
        web.post("/orders/o-3")
        assert web.get("/workflows/order-o-3", params={"wait": 30}).json()["status"] == "succeeded"
        page = web.get("/durable/workflows/order-o-3")
        assert page.status_code == 200 and "examples.fastapi.charge" in page.text


# -- shutdown: an execution the app's worker is running is handed back, not lost -------------

CALLS: list[str] = []
GATE = threading.Event()


@durable.step(name="tests.integrations.first")
async def first(x: int) -> int:
    CALLS.append("first")
    return x


@durable.step(name="tests.integrations.slow")
async def slow(x: int) -> int:
    CALLS.append("slow")
    while not GATE.is_set():  # noqa: ASYNC110 - a threading.Event, set from the test thread
        await asyncio.sleep(0.01)
    return x * 2


@durable.workflow(name="tests.integrations.handback.v1")
async def handback(x: int) -> int:
    return await slow(await first(x))


def test_shutdown_hands_a_running_execution_back_and_the_next_start_resumes_it(
    sqlite_url: str,
) -> None:
    CALLS.clear()
    GATE.clear()
    before = durable_lifespan(sqlite_url, grace=0, poll_interval=0.05, executor_id="web-a")
    with TestClient(Starlette(lifespan=before)):
        before.client.enqueue_sync(handback, 21, workflow_id="hb-1")
        deadline = time.monotonic() + 30
        while "slow" not in CALLS and time.monotonic() < deadline:
            time.sleep(0.01)
        assert CALLS == ["first", "slow"]
    # the app stopped mid-step: nothing recorded for the slow step, the execution handed back
    with durable.Client(sqlite_url) as client:
        assert client.get_workflow_sync("hb-1").status is durable.WorkflowStatus.PENDING
        assert [s.name for s in client.list_steps_sync("hb-1")] == ["tests.integrations.first"]
    GATE.set()
    after = durable_lifespan(sqlite_url, poll_interval=0.05, executor_id="web-b")
    with TestClient(Starlette(lifespan=after)):
        assert after.client.result_sync("hb-1", timeout=30) == 42
    assert CALLS == ["first", "slow", "slow"]  # the recorded step did not run again


def test_a_runtime_started_elsewhere_is_refused_and_one_started_here_left_open(
    sqlite_url: str,
) -> None:
    """A runtime already started on another loop (start_sync, a fixture) is refused when the
    app starts, with the reason, and is left as it was; one started on the app's own loop is
    used and not closed at the app's shutdown (its starter closes it)."""
    elsewhere = durable.Runtime(durable.connect(sqlite_url), executor_id="elsewhere")
    elsewhere.start_sync()
    try:
        app = Starlette(lifespan=durable_lifespan(elsewhere, worker=False))
        with (
            pytest.raises(durable.DurableError, match="already started on another event loop"),
            TestClient(app),
        ):
            pass
        assert sum(elsewhere.client.count_workflows_sync().values()) == 0  # still open
    finally:
        elsewhere.close_sync()

    async def here() -> None:
        async with durable.Runtime(durable.connect(sqlite_url), executor_id="here") as runtime:
            app = Starlette()
            async with durable_lifespan(runtime, worker=False)(app):
                assert app.state.durable_runtime is runtime
            assert sum((await runtime.client.count_workflows()).values()) == 0  # still open

    asyncio.run(here())
