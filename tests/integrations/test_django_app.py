"""examples/django_app, run for real: its sync views start a workflow and read its status while
`python manage.py durable_worker` (a real process) runs it, on SQLite and PostgreSQL; concurrent
request threads; `durable_migrate`; and the checks of the DURABLE setting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import in_a_fork

import durable

django = pytest.importorskip("django")

from django.core.management import call_command  # noqa: E402
from django.test import Client as WebClient  # noqa: E402
from django.test import override_settings  # noqa: E402

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "django_app"


@pytest.fixture(scope="module", autouse=True)
def django_project() -> None:
    """The example project's settings, loaded once (Django is set up once per process)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
    django.setup()


@pytest.fixture
def site(durable_url: str) -> Iterator[WebClient]:
    """A test client of the site, its DURABLE setting pointed at ``durable_url``."""
    from durable.integrations.django import close

    with override_settings(DURABLE={"URL": durable_url, "POLL_INTERVAL": 0.05}):
        try:
            yield WebClient()
        finally:
            close()


def receipt(order_id: str, quantity: int) -> dict[str, Any]:
    amount = 250 * quantity
    return {"order_id": order_id, "amount": amount, "receipt": f"charge-{order_id}-{amount}"}


@pytest.mark.slow
def test_the_views_start_a_workflow_that_the_worker_command_runs(
    site: WebClient, durable_url: str
) -> None:
    started = site.post("/orders/o-1?quantity=3")  # the first use opens (and migrates)
    assert started.status_code == 202, started.content
    assert started.json() == {"workflow_id": "order-o-1"}
    assert site.post("/orders/o-1?quantity=3").json() == started.json()  # the same one
    assert site.get("/orders/o-1").status_code == 405  # starting takes a POST
    assert site.get("/workflows/order-o-1").json()["status"] == "pending"  # no worker yet
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "durable_worker", "--poll-interval", "0.1"],
        cwd=PROJECT,
        env={**os.environ, "DURABLE_DATABASE_URL": durable_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        done = site.get("/workflows/order-o-1?wait=30")
        assert done.status_code == 200
        assert done.json() == {
            "workflow_id": "order-o-1",
            "status": "succeeded",
            "result": receipt("o-1", 3),
        }
        assert site.get("/workflows/order-nope").status_code == 404
    finally:
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert "serving examples.django.checkout.v1" in err  # found in orders/workflows.py
    assert "stopped after 1 execution(s)" in err


def test_concurrent_request_threads(site: WebClient, durable_worker: Any) -> None:
    """The plugin's ``durable_worker`` stands for ``manage.py durable_worker``."""
    from orders.workflows import checkout

    from durable.integrations.django import get_client, get_runtime

    def order(i: int) -> tuple[int, Any, Any]:
        web = WebClient()  # a client per thread, as a threaded server serves them
        started = web.post(f"/orders/t{i}?quantity={i}")
        return started.status_code, started.json(), web.get(f"/workflows/order-t{i}?wait=30").json()

    with ThreadPoolExecutor(12) as pool:
        results = [f.result(timeout=90) for f in [pool.submit(order, i) for i in range(12)]]
    # a view may also run a workflow in the request, through the process's runtime
    assert get_runtime().run_sync(checkout, "r1", 2, workflow_id="run-r1") == receipt("r1", 2)
    assert results == [
        (
            202,
            {"workflow_id": f"order-t{i}"},
            {"workflow_id": f"order-t{i}", "status": "succeeded", "result": receipt(f"t{i}", i)},
        )
        for i in range(12)
    ]
    assert get_client() is get_client()  # one per process


def test_durable_migrate_when_auto_migrate_is_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from durable.integrations.django import close, get_client

    url = f"sqlite:///{tmp_path / 'manual.db'}"
    with override_settings(DURABLE={"URL": url, "AUTO_MIGRATE": False}):
        try:
            with pytest.raises(durable.SchemaVersionError, match="durable migrate"):
                get_client()
            call_command("durable_migrate")
            assert "upgraded from base" in capsys.readouterr().out
            call_command("durable_migrate", "--check")
            assert "up to date" in capsys.readouterr().out
            assert get_client().list_workflows_sync().items == []
        finally:
            close()


@pytest.mark.parametrize(
    ("setting", "error", "match"),
    [
        (None, durable.ConfigurationError, "must be a dict"),
        ({"URL": ""}, durable.ConfigurationError, "URL"),
        ({"URL": "sqlite:///x.db", "CONCURENCY": 4}, durable.ConfigurationError, "CONCURENCY"),
        ({"URL": "sqlite:///x.db", "CONCURRENCY": 0}, durable.InvalidArgumentError, "CONCURRENCY"),
        ({"URL": "sqlite:///x.db", "WORKFLOWS": "orders"}, durable.ConfigurationError, "WORKFLOWS"),
        ({"URL": "sqlite:///x.db", "WORKFLOWS": None}, durable.ConfigurationError, "WORKFLOWS"),
        ({"URL": "sqlite:///x.db", "WORKFLOWS": 5}, durable.ConfigurationError, "WORKFLOWS"),
        ({"URL": "sqlite:///x.db", "QUEUES": []}, durable.InvalidArgumentError, "QUEUES.* empty"),
        ({"URL": "sqlite://x.db"}, durable.ConfigurationError, "sqlite"),
        ({"URL": "notaurl"}, durable.ConfigurationError, r"DURABLE\['URL'\]: expected a database"),
        (
            {"URL": "postgresql+asyncpg://u@h/db"},
            durable.ConfigurationError,
            r"DURABLE\['URL'\]: unsupported database URL scheme 'postgresql\+asyncpg'",
        ),
    ],
)
def test_a_bad_setting_is_a_clear_error(setting: Any, error: type[Exception], match: str) -> None:
    from django.apps import apps

    from durable.integrations.django import get_client

    with override_settings(DURABLE=setting):
        with pytest.raises(error, match=match):
            get_client()
        with pytest.raises(error, match=match):  # as Django starts (manage.py check too)
            apps.get_app_config("durable").ready()


def test_a_workflows_module_that_does_not_exist_is_named(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.apps import apps

    (tmp_path / "broken_workflows.py").write_text("import nosuch_dep\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    app = apps.get_app_config("durable")
    setting = {"URL": sqlite_url, "WORKFLOWS": ["orders.workflows", "nosuch.mod"]}
    with (
        override_settings(DURABLE=setting),
        pytest.raises(
            durable.ConfigurationError,
            match=r"DURABLE\['WORKFLOWS'\] names 'nosuch.mod', which cannot be imported",
        ),
    ):
        app.ready()
    missing = {"URL": sqlite_url, "WORKFLOWS": ["broken_workflows"]}
    with override_settings(DURABLE=missing), pytest.raises(ModuleNotFoundError, match="nosuch_dep"):
        app.ready()  # a module that exists but imports one that does not: its own error


def test_the_worker_command_refuses_a_bad_option(sqlite_url: str) -> None:
    """``--concurrency 0`` is refused as a negative one is, not replaced by the setting."""
    from django.core.management.base import CommandError

    with override_settings(DURABLE={"URL": sqlite_url, "WORKFLOWS": ["orders.workflows"]}):
        for bad in (0, -3):
            with pytest.raises(CommandError, match="concurrency"):
                call_command("durable_worker", "--concurrency", str(bad))
        with pytest.raises(CommandError, match="executor_id"):
            call_command("durable_worker", "--executor-id", "")


@pytest.mark.slow
def test_a_client_used_before_a_fork_is_opened_again_in_the_child(durable_url: str) -> None:
    """gunicorn --preload: the project is imported, and may use get_client(), in the parent;
    each forked worker gets a client of its own on its first use, and the parent keeps its."""
    from orders.workflows import checkout

    from durable.integrations.django import close, get_client

    with override_settings(DURABLE={"URL": durable_url}):
        try:
            parents = get_client()
            parents.enqueue_sync(checkout, "o-1", 1, workflow_id="order-o-1")

            def child() -> None:
                own = get_client()
                assert own is not parents
                own.enqueue_sync(checkout, "o-2", 1, workflow_id="order-o-2")
                close()

            assert in_a_fork(child) == 0
            assert get_client() is parents
            assert parents.get_workflow_sync("order-o-2").status is durable.WorkflowStatus.PENDING
        finally:
            close()


def test_the_executor_id_setting_names_the_worker_not_the_views_runtime(durable_url: str) -> None:
    """``EXECUTOR_ID`` went to every runtime the integration made, the views' too: while the
    ``durable_worker`` process held it, every ``get_runtime()`` raised ExecutorIdInUseError,
    and only one server process could ever use one."""
    from orders.workflows import checkout

    from durable.integrations.django import close, get_runtime, make_runtime
    from durable.integrations.django.conf import durable_settings

    settings = {"URL": durable_url, "POLL_INTERVAL": 0.05, "EXECUTOR_ID": "shop-1"}
    with override_settings(DURABLE=settings):
        conf = durable_settings()
        worker = make_runtime(conf, executor_id=conf.executor_id)  # as durable_worker does
        with worker:
            assert worker.executor_id == "shop-1"
            try:
                assert get_runtime().executor_id != "shop-1"
                assert get_runtime().run_sync(checkout, "e1", 1) == receipt("e1", 1)
            finally:
                close()
