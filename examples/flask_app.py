"""durable in a Flask app: sync views, through the blocking API, start a workflow and show its
status (and its result once it is done); a worker process beside the app runs the workflows.

To run: pip install 'durable-sqla[integrations]', then, from examples/ (SQLite, no server; both
processes use flask-app.db here):
    durable worker flask_app:make_runtime           # the worker: runs the workflows
    flask --app flask_app run                       # the web app, in another terminal
    curl -X POST 'localhost:5000/orders/o-1?quantity=3'     -> {"workflow_id": "order-o-1"}
    curl 'localhost:5000/workflows/order-o-1?wait=5'        -> {"status": "succeeded", ...}
On PostgreSQL: export DURABLE_DATABASE_URL=postgresql://user@host/db for both processes.
Or run the worker inside the web process: app.config["DURABLE_WORKER"] = True.

The app imports the workflow only to enqueue it by its object (enqueueing by name,
"examples.flask.checkout.v1", needs no workflow code at all). The extension opens one client per
process on first use and closes it at exit; every request thread shares it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from flask import Flask, abort, request

import durable
from durable.integrations.flask import Durable

DATABASE_URL = os.environ.get("DURABLE_DATABASE_URL", "sqlite:///flask-app.db")

durable_ext = Durable()


@durable.step(name="examples.flask.price")
def price(order_id: str, quantity: int) -> int:
    return 250 * quantity  # a real step would call a pricing service


@durable.step(name="examples.flask.charge")
def charge(order_id: str, amount: int) -> str:
    return f"charge-{order_id}-{amount}"  # ... and a payment provider


@durable.workflow(name="examples.flask.checkout.v1")
def checkout(order_id: str, quantity: int) -> dict[str, Any]:
    amount = price(order_id, quantity)
    return {"order_id": order_id, "amount": amount, "receipt": charge(order_id, amount)}


def make_runtime() -> durable.Runtime:
    """What the worker process serves: ``durable worker flask_app:make_runtime``."""
    return durable.Runtime(durable.connect(DATABASE_URL))


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """The app (``flask --app flask_app run`` finds this factory); ``config`` overrides the
    defaults, e.g. ``{"DURABLE_URL": ..., "DURABLE_WORKER": True}``."""
    app = Flask(__name__)
    app.config["DURABLE_URL"] = DATABASE_URL
    app.config.update(config or {})
    durable_ext.init_app(app)

    @app.post("/orders/<order_id>")
    def start_checkout(order_id: str) -> tuple[dict[str, str], int]:
        quantity = request.args.get("quantity", 1, type=int)
        # the order id makes the start idempotent: a second POST returns the same execution
        workflow_id = durable_ext.client.enqueue_sync(
            checkout, order_id, quantity, workflow_id=f"order-{order_id}"
        )
        return {"workflow_id": workflow_id}, 202

    @app.get("/workflows/<workflow_id>")
    def workflow_status(workflow_id: str) -> dict[str, Any]:
        client = durable_ext.client
        wait = request.args.get("wait", 0.0, type=float)
        if wait > 0:  # wait up to `wait` seconds for it to finish
            with contextlib.suppress(Exception):  # timed out, failed, unknown: see below
                client.result_sync(workflow_id, timeout=wait)
        try:
            info = client.get_workflow_sync(workflow_id)
        except durable.WorkflowNotFoundError:
            abort(404, f"no workflow {workflow_id!r}")
        body: dict[str, Any] = {"workflow_id": info.id, "status": info.status.value}
        if info.status is durable.WorkflowStatus.SUCCEEDED:
            body["result"] = info.output
        elif info.error is not None:
            body["error"] = f"{info.error.type}: {info.error.message}"
        return body

    return app


if __name__ == "__main__":
    create_app().run(port=5000)
