"""examples/flask_app.py, run for real: its sync views start a workflow and read its status
through the blocking API while a worker runs it, as its docstring says (a `durable worker`
process beside the app), on SQLite and PostgreSQL; concurrent request threads with the worker
in the web process; and what durable.integrations.flask promises besides."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import flask_app
import pytest
from flask import Flask
from support import in_a_fork

import durable
from durable.integrations.flask import Durable

EXAMPLES = Path(flask_app.__file__).parent


def receipt(order_id: str, quantity: int) -> dict[str, Any]:
    amount = 250 * quantity
    return {"order_id": order_id, "amount": amount, "receipt": f"charge-{order_id}-{amount}"}


@pytest.mark.slow
def test_the_views_start_a_workflow_that_a_worker_process_runs(durable_url: str) -> None:
    app = flask_app.create_app({"DURABLE_URL": durable_url, "DURABLE_POLL_INTERVAL": 0.05})
    web = app.test_client()
    try:
        started = web.post("/orders/o-1?quantity=3")  # the first use opens (and migrates)
        assert started.status_code == 202 and started.json == {"workflow_id": "order-o-1"}
        assert web.post("/orders/o-1?quantity=3").json == started.json  # the same execution
        assert web.get("/workflows/order-o-1").json["status"] == "pending"  # no worker yet
        # the worker, as the example's docstring runs it
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("durable")),
                "worker",
                "flask_app:make_runtime",
                "--poll-interval",
                "0.1",
            ],
            cwd=EXAMPLES,
            env={**os.environ, "DURABLE_DATABASE_URL": durable_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            done = web.get("/workflows/order-o-1?wait=30")
            assert done.status_code == 200
            assert done.json == {
                "workflow_id": "order-o-1",
                "status": "succeeded",
                "result": receipt("o-1", 3),
            }
            assert web.get("/workflows/order-nope").status_code == 404
            steps = flask_app.durable_ext.client_for(app).list_steps_sync("order-o-1")
            assert [s.name for s in steps] == ["examples.flask.price", "examples.flask.charge"]
        finally:
            worker.send_signal(signal.SIGTERM)
            _out, err = worker.communicate(timeout=30)
    finally:
        flask_app.durable_ext.close(app)
    assert worker.returncode == 0, err
    assert "stopped after 1 execution(s)" in err
    assert f"worker {steps[0].executor_id} stopped" in err  # that worker ran the steps


def test_concurrent_request_threads_with_the_worker_in_the_web_process(durable_url: str) -> None:
    app = flask_app.create_app(
        {
            "DURABLE_URL": durable_url,
            "DURABLE_WORKER": True,
            "DURABLE_EXECUTOR_ID": "flask-web-1",
            "DURABLE_POLL_INTERVAL": 0.05,
        }
    )

    def order(i: int) -> tuple[int, Any, Any]:
        web = app.test_client()  # a client per thread, as a threaded server serves them
        started = web.post(f"/orders/t{i}?quantity={i}")
        done = web.get(f"/workflows/order-t{i}?wait=30")
        return started.status_code, started.json, done.json

    try:
        with ThreadPoolExecutor(12) as pool:
            results = [f.result(timeout=90) for f in [pool.submit(order, i) for i in range(12)]]
        assert results == [
            (
                202,
                {"workflow_id": f"order-t{i}"},
                {
                    "workflow_id": f"order-t{i}",
                    "status": "succeeded",
                    "result": receipt(f"t{i}", i),
                },
            )
            for i in range(12)
        ]
        with app.app_context():
            runtime = flask_app.durable_ext.runtime
            assert runtime.executor_id == "flask-web-1"
            assert runtime.run_sync(flask_app.checkout, "r1", 1, workflow_id="run-r1") == (
                receipt("r1", 1)
            )
    finally:
        flask_app.durable_ext.close(app)
    with app.app_context(), pytest.raises(durable.DurableError):
        runtime.client.get_workflow_sync("order-t1")  # closed


def test_configuration_and_lifecycle(sqlite_url: str) -> None:
    ext = Durable()
    with pytest.raises(durable.ConfigurationError, match="DURABLE_URL"):
        ext.init_app(Flask("no-url"))
    bad = Flask("bad")
    bad.config.update(DURABLE_URL=sqlite_url, DURABLE_CONCURRENCY=0)
    with pytest.raises(durable.InvalidArgumentError, match="DURABLE_CONCURRENCY"):
        ext.init_app(bad)
    bad.config.update(DURABLE_CONCURRENCY=2, DURABLE_QUEUES=[])  # a worker that claims nothing
    with pytest.raises(durable.InvalidArgumentError, match="DURABLE_QUEUES is empty"):
        ext.init_app(bad)
    with pytest.raises(durable.DurableError, match="not set up"):
        ext.client_for(Flask("other"))

    app = Flask("client-only")
    app.config["DURABLE_URL"] = sqlite_url
    Durable(app)
    with app.app_context():
        with pytest.raises(durable.DurableError, match="DURABLE_WORKER"):
            ext.runtime  # noqa: B018
        first = ext.client
        assert ext.client is first  # one per app and process
        wid = first.enqueue_sync(flask_app.checkout, "o-9", 1, workflow_id="order-o-9")
        ext.close()
        with pytest.raises(durable.DurableError, match=r"closed|not started"):
            first.get_workflow_sync(wid)
        again = ext.client  # the next use opens it again
        assert again is not first
        assert again.get_workflow_sync(wid).status is durable.WorkflowStatus.PENDING
        ext.close()


@pytest.mark.slow
@pytest.mark.parametrize("worker", [False, True], ids=["client", "worker"])
def test_a_client_used_before_a_fork_is_opened_again_in_the_child(
    durable_url: str, worker: bool
) -> None:
    """gunicorn --preload: the app is imported, and may use its client, in the parent; each
    forked worker then gets a client of its own on the first use (not the parent's, whose loop
    stayed there), and the parent's keeps working; with DURABLE_WORKER too (the client is then
    its runtime's)."""
    if worker and durable_url.startswith("sqlite"):
        pytest.skip(
            "SQLite's locks do not survive a fork: a parent whose worker writes to the file "
            "leaves the child's own connections waiting (docs/web-frameworks.md)"
        )
    app = Flask("preloaded")
    app.config.update(DURABLE_URL=durable_url, DURABLE_WORKER=worker)
    ext = Durable(app)
    with app.app_context():
        parents = ext.client
        parents.enqueue_sync(flask_app.checkout, "o-1", 1, workflow_id="order-o-1")

        def child() -> None:
            with app.app_context():
                own = ext.client
                assert own is not parents
                own.enqueue_sync(flask_app.checkout, "o-2", 1, workflow_id="order-o-2")
                ext.close()

        try:
            assert in_a_fork(child) == 0
            assert ext.client is parents
            assert parents.get_workflow_sync("order-o-2").id == "order-o-2"  # the child's
        finally:
            ext.close()
