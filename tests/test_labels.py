"""Labels end to end, on every backend: given at start or enqueue (client and runtime, sync and
async, single and batch), inherited by child workflows and by enqueues inside a workflow,
searched with the other filters, counted; the CLI's ``--label`` and ``workflows show``; the web
view's label filter and a workflow's labels."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

import durable
from durable.cli import main
from durable.context import current
from durable.models import WorkflowStatus
from durable.overview import queue_rows, status_counts
from durable.web import create_app

REG = durable.Registry()
WAIT = 60.0


@durable.workflow(name="tests.labels.leaf.v1", registry=REG)
async def leaf(n: int) -> int:
    return n + 1


@durable.workflow(name="tests.labels.parent.v1", registry=REG)
async def parent(n: int) -> list[str]:
    ctx = current()
    assert ctx is not None
    await leaf(n)  # a child workflow: inherits
    queued = await ctx.runtime.enqueue(leaf, n, labels={"step": "queued"})
    many = await ctx.runtime.enqueue_many(leaf, [(n,)], labels={"step": "many"})
    return [queued, *many]


def labels_of(client: durable.Client, workflow_id: str) -> dict[str, str]:
    return client.get_labels_sync(workflow_id)


async def test_children_and_enqueues_in_a_workflow_inherit_its_labels(backend_url: str) -> None:
    runtime = durable.Runtime(
        durable.connect(backend_url), registry=REG, recover=False, poll_interval=0.05
    )
    async with runtime:
        await runtime.start_worker(poll_interval=0.05)
        queued, many = await runtime.run(
            parent, 1, workflow_id="p", labels={"customer": "c-42", "step": "top"}
        )
        client = runtime.client
        assert await client.get_labels("p") == {"customer": "c-42", "step": "top"}
        assert await client.get_labels("p/0") == {"customer": "c-42", "step": "top"}
        assert await client.get_labels(queued) == {"customer": "c-42", "step": "queued"}
        assert await client.get_labels(many) == {"customer": "c-42", "step": "many"}
        found = await runtime.list_workflows(labels={"customer": "c-42"})
        assert sorted(w.id for w in found.items) == sorted(["p", "p/0", queued, many])
        assert (await runtime.result(queued, timeout=WAIT)) == 2
        counts = await client.count_workflows(labels={"customer": "c-42"})
        assert sum(counts.values()) == 4
        assert counts[WorkflowStatus.SUCCEEDED] >= 2


async def test_client_enqueue_and_enqueue_many_take_labels(backend_url: str) -> None:
    async with durable.Client(backend_url) as client:
        one = await client.enqueue("tests.labels.leaf.v1", 1, labels={"customer": "c-1"})
        rows = [  # one batch: one creation time, so newest first is by id descending
            durable.Enqueue(args=(2,), workflow_id="b-2"),
            durable.Enqueue(args=(3,), workflow_id="b-3", labels={"customer": "c-3", "vip": "yes"}),
        ]
        two, three = await client.enqueue_many(
            "tests.labels.leaf.v1", rows, labels={"customer": "c-2", "batch": "b1"}
        )
        assert await client.get_labels(one) == {"customer": "c-1"}
        assert await client.get_labels(two) == {"customer": "c-2", "batch": "b1"}
        assert await client.get_labels(three) == {"customer": "c-3", "batch": "b1", "vip": "yes"}
        page = await client.list_workflows(labels={"batch": "b1"}, limit=1)
        assert [w.id for w in page.items] == [three]
        assert page.next_cursor is not None
        rest = await client.list_workflows(labels={"batch": "b1"}, cursor=page.next_cursor)
        assert [w.id for w in rest.items] == [two]
        assert (await client.count_workflows(labels={"batch": "b1"}))[WorkflowStatus.PENDING] == 2
        with pytest.raises(durable.InvalidArgumentError, match="label key 'bad key'"):
            await client.enqueue("tests.labels.leaf.v1", 1, labels={"bad key": "x"})
        with pytest.raises(durable.InvalidArgumentError, match=r"inputs\[0\]: labels\['k'\]"):
            await client.enqueue_many(
                "tests.labels.leaf.v1", [durable.Enqueue(args=(1,), labels={"k": 1})]
            )  # type: ignore[dict-item]
        with pytest.raises(durable.WorkflowNotFoundError):
            await client.get_labels("nobody")
        assert sum((await client.count_workflows()).values()) == 3


def test_the_sync_forms_take_labels(sqlite_url: str) -> None:
    with durable.Runtime(durable.connect(sqlite_url), registry=REG, recover=False) as runtime:
        assert runtime.run_sync(leaf, 1, workflow_id="ran", labels={"team": "r"}) == 2
    with durable.Client(sqlite_url) as client:
        assert labels_of(client, "ran") == {"team": "r"}
    with durable.Client(sqlite_url) as client:
        first = client.enqueue_sync("tests.labels.leaf.v1", 1, labels={"team": "a"})
        (second,) = client.enqueue_many_sync("tests.labels.leaf.v1", [(2,)], labels={"team": "b"})
        assert labels_of(client, first) == {"team": "a"}
        assert labels_of(client, second) == {"team": "b"}
        assert [w.id for w in client.list_workflows_sync(labels={"team": "b"}).items] == [second]
        assert client.count_workflows_sync(labels={"team": "a"})[WorkflowStatus.PENDING] == 1


def durable_cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def labelled(tmp_path: Path) -> tuple[str, list[str]]:
    """A SQLite file with four workflows, three of customer c-42, two of them gold."""
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    with durable.Client(url) as client:
        ids = [
            client.enqueue_sync(
                "tests.labels.leaf.v1",
                i,
                workflow_id=f"wf-{i}",
                labels={
                    "customer": "c-42" if i < 3 else "c-7",
                    **({"tier": "gold"} if i < 2 else {}),
                },
            )
            for i in range(4)
        ]
    return url, ids


def test_the_cli_filters_by_labels_and_shows_them(labelled: tuple[str, list[str]]) -> None:
    url, _ = labelled
    listed = json.loads(durable_cli("workflows", "list", url, "--label", "customer=c-42", "--json"))
    assert sorted(w["id"] for w in listed) == ["wf-0", "wf-1", "wf-2"]
    both = json.loads(
        durable_cli(
            "workflows", "list", url, "--label", "customer=c-42", "--label", "tier=gold", "--json"
        )
    )
    assert sorted(w["id"] for w in both) == ["wf-0", "wf-1"]
    shown = durable_cli("workflows", "show", url, "wf-0")
    assert "labels    customer=c-42, tier=gold" in shown
    bad = CliRunner().invoke(main, ["workflows", "list", url, "--label", "customer"])
    assert bad.exit_code == 2 and "is not key=value" in bad.output
    bad = CliRunner().invoke(main, ["workflows", "list", url, "--label", "a b=c"])
    assert bad.exit_code == 2 and "label key 'a b'" in bad.output
    # one key with two values matches nothing: refused, rather than the last value kept (a
    # cancel by such a filter cancelled executions that carry only the second one)
    twice = ["--label", "customer=c-42", "--label", "customer=c-7", "--yes"]
    bad = CliRunner().invoke(main, ["workflows", "cancel", url, *twice])
    assert bad.exit_code == 2 and "'customer' is given twice" in bad.output, bad.output
    again = ["workflows", "list", url, "--label", "tier=gold", "--label", "tier=gold", "--json"]
    assert sorted(w["id"] for w in json.loads(durable_cli(*again))) == ["wf-0", "wf-1"]
    # bulk actions choose by labels too
    cancelled = durable_cli("workflows", "cancel", url, "--label", "tier=gold", "--yes")
    assert "wf-0" in cancelled and "wf-1" in cancelled and "wf-2" not in cancelled
    watched = durable_cli("workflows", "watch", url, "--once")
    assert "pending=2" in watched and "cancelled=2" in watched


def test_the_web_view_filters_by_label_and_shows_labels(labelled: tuple[str, list[str]]) -> None:
    url, _ = labelled
    row = re.compile(r'<tr class="workflow-row">.*?class="id">([^<]+)</a>', re.S)
    with TestClient(create_app(url)) as web:
        page = web.get("/workflows", params={"label": "customer=c-42"})
        assert page.status_code == 200
        assert sorted(row.findall(page.text)) == ["wf-0", "wf-1", "wf-2"]
        page = web.get("/workflows", params=[("label", "customer=c-42"), ("label", "tier=gold")])
        assert sorted(row.findall(page.text)) == ["wf-0", "wf-1"]
        page = web.get("/workflows", params={"label": "customer=c-42", "limit": "1"})
        assert row.findall(page.text) == ["wf-2"]
        older = re.search(r'href="([^"]+)" id="next-page"', page.text)
        assert older is not None and "label=customer%3Dc-42" in older.group(1)
        assert row.findall(web.get(older.group(1).replace("&amp;", "&")).text) == ["wf-1"]
        bad = web.get("/workflows", params={"label": "nokey"})
        assert bad.status_code == 400 and "must be key=value" in bad.text
        twice = [("label", "customer=c-42"), ("label", "customer=c-7")]
        bad = web.get("/workflows", params=twice)
        assert bad.status_code == 400 and "is given twice" in bad.text
        one = web.get("/workflows/wf-0").text
        assert 'id="labels"' in one and "customer=c-42" in one and "tier=gold" in one
        counts = web.get("/api/counts").json()["counts"]
        assert counts["pending"] == 4


async def test_counts_are_exact_beyond_the_old_cap(backend_url: str) -> None:
    async with durable.Client(backend_url) as client:
        await client.enqueue_many("tests.labels.leaf.v1", [(i,) for i in range(1205)])
        counts = await client.count_workflows()
        assert counts[WorkflowStatus.PENDING] == 1205
        assert (await status_counts(client))["pending"] == 1205
        (depth,) = await queue_rows(client)
        assert (depth.queue, depth.pending, depth.running) == ("default", 1205, 0)


@pytest.mark.slow
def test_the_label_filter_in_a_real_chromium(labelled: tuple[str, list[str]]) -> None:
    """Fill the Label field, apply: the list narrows; a workflow's labels link back to it."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the browser test needs Chromium: {chromium} is missing")
        pytest.skip(f"{chromium} is missing")
    import uvicorn
    from playwright.sync_api import sync_playwright

    url, _ = labelled
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(url), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(chromium), args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
            try:
                page = browser.new_page()
                page.goto(f"{base}/workflows")
                assert page.locator("tr.workflow-row").count() == 4
                page.fill("#label-filter", "tier=gold")
                page.click("#apply")
                page.wait_for_url(re.compile(r"label=tier%3Dgold"))
                shown = page.locator("tr.workflow-row a.id").all_inner_texts()
                assert sorted(shown) == ["wf-0", "wf-1"]
                page.click("text=wf-0")
                page.wait_for_url(re.compile(r"/workflows/wf-0$"))
                assert "customer=c-42" in page.locator("#labels").inner_text()
                page.click("#labels >> text=customer=c-42")
                page.wait_for_url(re.compile(r"label=customer%3Dc-42"))
                assert page.locator("tr.workflow-row").count() == 3
            finally:
                browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
