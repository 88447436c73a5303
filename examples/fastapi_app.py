"""durable in a FastAPI service: an endpoint that starts a workflow, one that returns its status
(and its result once it is done), and a worker inside the service, all started and stopped with
the app by durable's lifespan.

To run: pip install 'durable-sqla[integrations]', then
    python examples/fastapi_app.py            (SQLite, no server; writes fastapi-app.db here)
    curl -X POST 'localhost:8000/orders/o-1?quantity=3'      -> {"workflow_id": "order-o-1"}
    curl 'localhost:8000/workflows/order-o-1?wait=5'         -> {"status": "succeeded", ...}
On PostgreSQL: DURABLE_DATABASE_URL=postgresql://user@host/db python examples/fastapi_app.py
(or `uvicorn fastapi_app:app` from examples/: each uvicorn worker process runs its own worker).

The start endpoint is async and awaits the client; the status endpoint is a plain ``def``, which
FastAPI runs in its thread pool, so it calls the blocking ``_sync`` twins: both are safe, from
any number of requests at once. To run the workflows in separate processes instead, create the
app with ``worker=False`` and start ``durable worker fastapi_app:make_runtime`` beside it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from fastapi import Depends, FastAPI, HTTPException

import durable
from durable.integrations.starlette import durable_lifespan, get_client

DATABASE_URL = os.environ.get("DURABLE_DATABASE_URL", "sqlite:///fastapi-app.db")


@durable.step(name="examples.fastapi.price")
async def price(order_id: str, quantity: int) -> int:
    return 250 * quantity  # a real step would call a pricing service


@durable.step(name="examples.fastapi.charge")
async def charge(order_id: str, amount: int) -> str:
    return f"charge-{order_id}-{amount}"  # ... and a payment provider


@durable.workflow(name="examples.fastapi.checkout.v1")
async def checkout(order_id: str, quantity: int) -> dict[str, Any]:
    amount = await price(order_id, quantity)
    receipt = await charge(order_id, amount)
    return {"order_id": order_id, "amount": amount, "receipt": receipt}


def make_runtime() -> durable.Runtime:
    """The runtime a separate worker process serves: ``durable worker fastapi_app:make_runtime``."""
    return durable.Runtime(durable.connect(DATABASE_URL))


def create_app(url: str | None = None, *, worker: bool = True, **options: Any) -> FastAPI:
    """The service over ``url`` (default: $DURABLE_DATABASE_URL, else a SQLite file);
    ``options`` go to the runtime (e.g. ``executor_id``, ``poll_interval``)."""
    app = FastAPI(lifespan=durable_lifespan(url or DATABASE_URL, worker=worker, **options))

    @app.post("/orders/{order_id}", status_code=202)
    async def start_checkout(
        order_id: str, quantity: int = 1, client: durable.Client = Depends(get_client)
    ) -> dict[str, str]:
        # the order id makes the start idempotent: a second POST returns the same execution
        workflow_id = await client.enqueue(
            checkout, order_id, quantity, workflow_id=f"order-{order_id}"
        )
        return {"workflow_id": workflow_id}

    @app.get("/workflows/{workflow_id}")
    def workflow_status(
        workflow_id: str, wait: float = 0.0, client: durable.Client = Depends(get_client)
    ) -> dict[str, Any]:
        if wait > 0:  # wait up to `wait` seconds for it to finish
            with contextlib.suppress(Exception):  # timed out, failed, unknown: see below
                client.result_sync(workflow_id, timeout=wait)
        try:
            info = client.get_workflow_sync(workflow_id)
        except durable.WorkflowNotFoundError:
            raise HTTPException(404, f"no workflow {workflow_id!r}") from None
        body: dict[str, Any] = {"workflow_id": info.id, "status": info.status.value}
        if info.status is durable.WorkflowStatus.SUCCEEDED:
            body["result"] = info.output
        elif info.error is not None:
            body["error"] = f"{info.error.type}: {info.error.message}"
        return body

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
