"""The web view (durable.web): every page, filter, action and the token gate through Starlette's
TestClient, over a SQLite file filled by real workflow runs (tests/webdata.py); then the same
view served by uvicorn and driven in a real headless Chromium (Debian's chromium, through
Playwright)."""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import pytest
import sqlalchemy as sa
import webdata
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

import durable
from durable.cli import main
from durable.errors import InvalidArgumentError
from durable.models import WorkflowStatus
from durable.web import check_bind, create_app, mask_url

CHROMIUM = Path("/usr/bin/chromium")
ROW = re.compile(r'<tr class="workflow-row">.*?class="id">([^<]+)</a>', re.S)
BAR = 'class="step-bar '


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """A SQLite file with real runs of tests/webdata.py's workflows (made once per module)."""
    path = tmp_path_factory.mktemp("web") / "filled.db"
    ids = asyncio.run(webdata.fill(f"sqlite:///{path}"))
    return path, ids


@pytest.fixture
def db(filled: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> str:
    """A private copy of the filled database (tests that act change it), as a URL."""
    copy = tmp_path / "web.db"
    shutil.copy(filled[0], copy)
    return f"sqlite:///{copy}"


@pytest.fixture
def ids(filled: tuple[Path, dict[str, list[str]]]) -> dict[str, list[str]]:
    return filled[1]


@pytest.fixture
def web(db: str) -> Iterator[TestClient]:
    with TestClient(create_app(db)) as client:
        yield client


def rows(html: str) -> list[str]:
    return ROW.findall(html)


def stored(url: str, workflow_id: str) -> Any:
    with durable.Client(url) as client:
        return client.get_workflow_sync(workflow_id)


# -- the workflows list --------------------------------------------------------------------------


def test_the_list_shows_every_workflow_newest_first(web: TestClient, db: str) -> None:
    page = web.get("/workflows")
    assert page.status_code == 200
    shown = rows(page.text)
    with durable.Client(db) as client:
        expected = [w.id for w in client.list_workflows_sync(limit=100).items]
    assert shown == expected
    assert len(shown) == 8 and shown[-1] == "order-0"


def test_the_root_redirects_to_the_list(web: TestClient) -> None:
    page = web.get("/", follow_redirects=False)
    assert page.status_code == 307 and page.headers["location"] == "/workflows"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", {"broken-7"}),
        ("status=pending", {"nap-5", "queued"}),
        ("name=web.broken.v1", {"broken-7"}),
        ("queue=slow", {"queued"}),
        ("status=succeeded&name=web.parent.v1", {"parent-40"}),
        ("status=failed&name=web.order.v1", set()),
    ],
)
def test_filters_narrow_the_list(
    web: TestClient, ids: dict[str, list[str]], query: str, expected: set[str]
) -> None:
    page = web.get(f"/workflows?{query}")
    assert page.status_code == 200
    wanted = {ids["queued"][0] if name == "queued" else name for name in expected}
    assert set(rows(page.text)) == wanted
    if not expected:
        assert "No workflows match." in page.text


def test_filter_values_are_taken_as_given_spaces_included(tmp_path: Path) -> None:
    """The web view stripped spaces from label values, queues and names: a label ``tier=" gold"``
    listed the executions labelled ``tier=gold`` (the CLI and the API: those labelled
    ``" gold"``), and a queue named ``" "`` listed every execution."""
    url = f"sqlite:///{tmp_path / 'spaces.db'}"
    with durable.Client(url) as client:
        client.enqueue_sync("demo.v1", 1, workflow_id="plain", labels={"tier": "gold"})
        client.enqueue_sync("demo.v1", 2, workflow_id="spaced", labels={"tier": " gold"})
        client.enqueue_sync("demo.v1", 3, workflow_id="blank-queue", queue=" ")
        api = [w.id for w in client.list_workflows_sync(labels={"tier": " gold"})]
    with TestClient(create_app(url)) as web:
        assert rows(web.get("/workflows", params={"label": "tier= gold"}).text) == api
        assert api == ["spaced"]
        assert rows(web.get("/workflows", params={"queue": " "}).text) == ["blank-queue"]


def test_a_time_range_narrows_the_list(web: TestClient, db: str) -> None:
    order_0, order_1 = stored(db, "order-0"), stored(db, "order-1")
    until = web.get("/workflows", params={"until": order_1.created_at.isoformat()})
    assert rows(until.text) == ["order-1", "order-0"]
    since = web.get("/workflows", params={"since": order_1.created_at.isoformat()})
    assert "order-0" not in rows(since.text) and "order-1" in rows(since.text)
    both = web.get(
        "/workflows",
        params={"since": order_0.created_at.isoformat(), "until": order_0.created_at.isoformat()},
    )
    assert rows(both.text) == ["order-0"]


@pytest.mark.parametrize("queue", [None, "default"])
def test_pages_follow_the_cursor_without_gaps_or_repeats(
    web: TestClient, queue: str | None
) -> None:
    everything = rows(web.get("/workflows", params={"queue": queue} if queue else {}).text)
    seen: list[str] = []
    url: str | None = "/workflows?limit=3" + (f"&queue={queue}" if queue else "")
    pages = 0
    while url is not None:
        page = web.get(url)
        assert page.status_code == 200
        got = rows(page.text)
        assert 1 <= len(got) <= 3
        seen += got
        found = re.search(r'href="([^"]+)" id="next-page"', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
        pages += 1
    assert seen == everything
    assert pages == -(-len(everything) // 3)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=bogus", "unknown status 'bogus'"),
        ("limit=0", "limit must be"),
        ("since=yesterday", "since must be a time"),
        ("cursor=!!!", "cursor"),
        # str.isdigit() admits a superscript two, which int() refuses
        ("limit=%C2%B2", "limit must be"),
        # a time at either end of datetime's range, or one that is not in UTC's
        (
            "until=9999-12-31T23:59:59.999999",
            "until '9999-12-31T23:59:59.999999' is out of range (0001-01-02 to 9999-12-30",
        ),
        ("until=9999-12-31T23:59:59-14:00", "is out of range"),
        ("since=0001-01-01T00:00:00%2B14:00", "is out of range"),
        # a cursor made by hand: a time not in UTC's range, an id with a NUL
        ("cursor=OTk5OS0xMi0zMVQyMzo1OTo1OS0xNDowMHx4", "malformed listing cursor"),
        ("cursor=MjAyNi0wMS0wMVQwMDowMDowMCswMDowMHxhAGI=", "malformed listing cursor"),
    ],
)
def test_bad_filters_are_a_clear_400(web: TestClient, query: str, message: str) -> None:
    page = web.get(f"/workflows?{query}")
    assert page.status_code == 400
    assert message in page.text.replace("&#39;", "'")


def test_a_time_with_an_offset_is_shown_again_in_utc(web: TestClient) -> None:
    """The form's fields say UTC: a filter given with an offset comes back converted, so that
    filtering again selects the same rows."""
    page = web.get("/workflows?since=2026-12-06T09:02:00-05:00")
    assert page.status_code == 200
    assert 'name="since" value="2026-12-06T14:02:00"' in page.text


def test_counts_by_status_on_the_page_and_for_the_poll(web: TestClient) -> None:
    counts = web.get("/api/counts").json()
    assert counts["counts"] == {
        "pending": 2,
        "running": 0,
        "succeeded": 5,
        "failed": 1,
        "cancelled": 0,
        "dead_letter": 0,
    }
    page = web.get("/workflows").text
    assert re.search(r'id="count-succeeded">5<', page)
    assert "durable.js" in page and web.get("/static/durable.js").status_code == 200


# -- one workflow ------------------------------------------------------------------------------


def test_a_workflow_page_shows_its_timeline_and_values(web: TestClient) -> None:
    page = web.get("/workflows/order-0")
    assert page.status_code == 200
    assert page.text.count(BAR) == 3
    assert "#1 web.flaky, 2 attempts" in page.text
    assert "web-test-1" in page.text  # the executor
    assert 'id="output"' in page.text and "stored 2" in page.text
    assert 'id="input"' in page.text


def test_a_failed_workflow_shows_its_error_and_traceback(web: TestClient) -> None:
    page = web.get("/workflows/broken-7").text
    assert page.count(BAR) == 2
    error = re.search(r'<pre class="value error" id="error">(.*?)</pre>', page, re.S)
    assert error is not None
    assert "ValueError: order 7 is malformed" in error.group(1)
    assert "Traceback" in error.group(1)


def test_children_are_linked(web: TestClient) -> None:
    page = web.get("/workflows/parent-40").text
    links = set(re.findall(r'class="child" href="([^"]+)"', page))
    assert len(links) == 1
    (link,) = links
    child = web.get(link)
    assert child.status_code == 200
    assert "web.order.v1" in child.text and child.text.count(BAR) == 3
    assert 'href="/workflows/parent-40"' in child.text  # and back to the parent


def test_a_sleeping_workflow_shows_until_when(web: TestClient, db: str) -> None:
    with durable.Client(db) as client:
        wake = client.list_steps_sync("nap-5")[-1].output
        client.send_sync("nap-5", "poke", {"n": 1})
    page = web.get("/workflows/nap-5").text
    assert page.count(BAR) == 2
    assert f"sleeping until {wake}" in page
    assert "state-sleeping" in page
    assert page.count('<tr class="message">') == 1 and "poke" in page


def test_a_cancelled_sleep_is_shown_as_ended_with_the_workflow(web: TestClient, db: str) -> None:
    """The pending sleep of a workflow cancelled while it slept stays pending in the history;
    the page no longer says it sleeps, and its bar ends where the workflow did."""
    with durable.Client(db) as client:
        wake = client.list_steps_sync("nap-5")[-1].output
        client.cancel_sync("nap-5")
    page = web.get("/workflows/nap-5").text
    assert f"sleeping until {wake}" not in page and "state-sleeping" not in page
    assert "unfinished (cancelled)" in page and "state-unfinished" in page
    info = stored(db, "nap-5")
    assert info.completed_at is not None
    later = asyncio.run(_timeline_of(db, "nap-5", info.completed_at + timedelta(days=1)))
    sleep_bar = later.bars[-1]
    assert sleep_bar.state == "unfinished"
    assert later.end == info.completed_at  # not stretched to "now"


async def _timeline_of(db: str, workflow_id: str, now: datetime) -> Any:
    from durable.web.timeline import timeline

    async with durable.Client(db) as client:
        info = await client.get_workflow(workflow_id)
        return timeline(info, await client.list_steps(workflow_id), now)


def test_an_unknown_workflow_is_a_404(web: TestClient) -> None:
    page = web.get("/workflows/no-such-id")
    assert page.status_code == 404 and "no-such-id" in page.text


# -- executors and queues ---------------------------------------------------------------------


def test_executors_page_lists_heartbeats(web: TestClient) -> None:
    page = web.get("/executors")
    assert page.status_code == 200
    assert "web-test-1" in page.text and 'class="executor' in page.text


def test_queues_page_counts_waiting_workflows(web: TestClient) -> None:
    page = web.get("/queues").text
    assert re.search(r">slow</a></td><td>1</td><td>0</td>", page)
    assert re.search(r">default</a></td><td>1</td><td>0</td>", page)  # the sleeper


# -- actions -----------------------------------------------------------------------------------


def form_key(html: str) -> str:
    found = re.search(r'name="form_key" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_actions_are_off_by_default(web: TestClient, db: str) -> None:
    page = web.get("/workflows/nap-5").text
    assert 'id="cancel"' not in page and "form_key" not in page
    refused = web.post("/actions/cancel", data={"workflow_id": "nap-5", "form_key": "x"})
    assert refused.status_code == 403
    assert stored(db, "nap-5").status is WorkflowStatus.PENDING


def test_cancel_changes_the_stored_state(db: str) -> None:
    with TestClient(create_app(db, actions=True)) as web:
        page = web.get("/workflows/nap-5").text
        assert 'id="cancel"' in page and 'id="retry"' not in page
        done = web.post(
            "/actions/cancel",
            data={"workflow_id": "nap-5", "form_key": form_key(page)},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert done.headers["location"] == "/workflows/nap-5?done=cancel"
    assert stored(db, "nap-5").status is WorkflowStatus.CANCELLED


def test_cancelling_a_finished_workflow_says_nothing_changed(db: str) -> None:
    """A cancel posted for a workflow that finished meanwhile (the page was open) changes
    nothing: the page says so, not "cancel: done"."""
    with TestClient(create_app(db, actions=True)) as web:
        key = form_key(web.get("/workflows/nap-5").text)
        done = web.post(
            "/actions/cancel",
            data={"workflow_id": "order-0", "form_key": key},
            follow_redirects=False,
        )
        assert done.headers["location"] == "/workflows/order-0?done=cancel&unchanged=succeeded"
        page = web.get(done.headers["location"]).text
        assert "cancel: nothing changed, the workflow had already finished (succeeded)." in page
        assert "cancel: done." not in page
        assert "cancel: done." in web.get("/workflows/nap-5?done=cancel").text
        assert 'class="notice"' not in web.get("/workflows/nap-5?done=whatever").text
    assert stored(db, "order-0").status is WorkflowStatus.SUCCEEDED


HUGE = durable.Registry()


@durable.step(name="web.huge.fail", max_attempts=1)
async def fail_hugely() -> None:
    raise ValueError("x" * 2_000_000)


@durable.workflow(name="web.huge.v1", registry=HUGE, max_attempts=1)
async def huge_error() -> None:
    await fail_hugely()


def test_long_errors_and_tracebacks_are_cut_on_the_page(tmp_path: Path) -> None:
    """A step's (and the workflow's) error message and traceback are cut at SHOWN_CHARS, like
    every other stored value: a 2 MB error does not make an 8 MB page."""
    from durable.web.queries import SHOWN_CHARS

    url = f"sqlite:///{tmp_path / 'huge.db'}"

    async def fail() -> None:
        async with durable.Runtime(durable.connect(url), registry=HUGE, executor_id="h") as rt:
            with pytest.raises(ValueError, match=r"^x{100}"):
                await rt.run(huge_error, workflow_id="huge-1")

    asyncio.run(fail())
    with TestClient(create_app(url)) as web:
        page = web.get("/workflows/huge-1")
    assert page.status_code == 200
    assert len(page.text) < 20 * SHOWN_CHARS
    assert page.text.count("x" * SHOWN_CHARS + "\n… (cut)") >= 2  # the step's, the workflow's


def test_a_database_that_cannot_be_reached_is_a_503_that_says_so(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a 500: the page is not broken, the database is away (a load balancer or a monitor
    tells the two apart), and the client is told when to ask again."""
    from durable.backends.sql import locking

    monkeypatch.setattr(locking, "BUSY_TIMEOUT_MS", 100)
    with TestClient(create_app(db, actions=True)) as web:
        page = web.get("/workflows/nap-5").text
        other = sqlite3.connect(sa.make_url(db).database or "", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another program holds the file past the timeout
        try:
            refused = web.post(
                "/actions/cancel", data={"workflow_id": "nap-5", "form_key": form_key(page)}
            )
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert "database is locked" in refused.text
    assert stored(db, "nap-5").status is WorkflowStatus.PENDING


def test_retry_requeues_a_failed_workflow(db: str) -> None:
    with TestClient(create_app(db, actions=True)) as web:
        page = web.get("/workflows/broken-7").text
        assert 'id="retry"' in page and 'id="cancel"' not in page
        done = web.post(
            "/actions/retry", data={"workflow_id": "broken-7", "form_key": form_key(page)}
        )
        assert done.status_code == 200 and "retry: done." in done.text
    assert stored(db, "broken-7").status is WorkflowStatus.PENDING


def test_fork_from_a_step_starts_a_new_execution(db: str) -> None:
    with TestClient(create_app(db, actions=True)) as web:
        page = web.get("/workflows/broken-7").text
        assert 'id="fork"' in page and 'max="2"' in page
        key = form_key(page)
        done = web.post(
            "/actions/fork",
            data={"workflow_id": "broken-7", "form_key": key, "from_step": "1"},
            follow_redirects=False,
        )
        assert done.status_code == 303
        location = done.headers["location"]
        assert location.endswith("?done=fork") and "broken-7" not in location
        fork_page = web.get(location).text
        assert "fork: done." in fork_page and fork_page.count(BAR) == 1
        for bad in ("3", "-1", "x"):
            refused = web.post(
                "/actions/fork",
                data={"workflow_id": "broken-7", "form_key": key, "from_step": bad},
            )
            assert refused.status_code == 400 and "from_step" in refused.text
        resumed = web.post("/actions/resume", data={"workflow_id": "broken-7", "form_key": key})
        assert resumed.status_code == 200 and "resume: done." in resumed.text
    assert stored(db, "broken-7").status is WorkflowStatus.PENDING
    with durable.Client(db) as client:
        forks = [i for i in client.list_workflows_sync(name="web.broken.v1").items]
        assert len(forks) == 2  # broken-7 and one fork; the refusals wrote nothing
        fork = next(i for i in forks if i.id != "broken-7")
        assert [s.position for s in client.list_steps_sync(fork.id)] == [0]


def test_actions_refuse_a_foreign_form_or_a_bad_target(db: str) -> None:
    with TestClient(create_app(db, actions=True)) as web:
        key = form_key(web.get("/workflows/nap-5").text)
        foreign = web.post("/actions/cancel", data={"workflow_id": "nap-5", "form_key": "guess"})
        assert foreign.status_code == 403
        assert stored(db, "nap-5").status is WorkflowStatus.PENDING
        finished = web.post("/actions/retry", data={"workflow_id": "order-0", "form_key": key})
        assert finished.status_code == 400
        unknown = web.post("/actions/cancel", data={"workflow_id": "nope", "form_key": key})
        assert unknown.status_code == 404
        other = web.post("/actions/delete", data={"workflow_id": "nap-5", "form_key": key})
        assert other.status_code == 404
        for step in ("\u00b2", "9" * 40, "-1"):  # not a step number: 400, not a 500
            fork = {"workflow_id": "order-0", "form_key": key, "from_step": step}
            assert web.post("/actions/fork", data=fork).status_code == 400
    assert stored(db, "order-0").status is WorkflowStatus.SUCCEEDED


# -- the token, the bind rule, masking ---------------------------------------------------------


def test_with_a_token_every_request_needs_it(db: str) -> None:
    with TestClient(create_app(db, token="s3cret")) as web:
        assert web.get("/workflows").status_code == 401
        assert web.get("/static/durable.css").status_code == 401
        assert web.get("/workflows", headers={"X-Durable-Token": "wrong"}).status_code == 401
        assert web.get("/workflows", headers={"X-Durable-Token": "s3cret"}).status_code == 200
        bearer = web.get("/api/counts", headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200
        assert web.get("/workflows?token=nope", follow_redirects=False).status_code == 401
        login = web.get("/workflows?status=failed&token=s3cret", follow_redirects=False)
        assert login.status_code == 303
        assert login.headers["location"] == "/workflows?status=failed"
        assert "HttpOnly" in login.headers["set-cookie"]
        after = web.get("/workflows?status=failed")  # the cookie now carries it
        assert after.status_code == 200 and rows(after.text) == ["broken-7"]


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/workflows/%C3%A9", "/workflows/%C3%A9"),  # encoded again, not a raw latin-1 byte
        ("/workflows/a%3Fb", "/workflows/a%3Fb"),  # an id's '?' is not the query's
        ("/workflows/a%23b", "/workflows/a%23b"),
        ("/workflows/%E4%B8%AD", "/workflows/%E4%B8%AD"),  # beyond latin-1: was a 500
        ("//evil.example/x", "/evil.example/x"),  # '//' would leave for another host
        # an id's escaped '/' stays escaped: 'a/../b' is another page once a browser resolves it
        ("/workflows/tenant-a%2F..%2Ftenant-b", "/workflows/tenant-a%2F..%2Ftenant-b"),
        ("/workflows/a%2Fb%25c", "/workflows/a%2Fb%25c"),
    ],
)
def test_the_token_login_redirects_to_the_same_page(db: str, path: str, location: str) -> None:
    with TestClient(create_app(db, token="s3cret")) as web:
        login = web.get(f"http://testserver{path}?token=s3cret", follow_redirects=False)
        assert login.status_code == 303
        assert login.headers["location"] == location


def test_a_token_login_lands_on_the_workflow_its_link_named(db: str) -> None:
    """What a browser does with the login's redirect: it resolves dot segments (RFC 3986), so
    the redirect must keep an id's escaped slashes for it to land on the same workflow."""
    with durable.Client(db) as client:
        for workflow_id in ("tenant-a/../tenant-b", "tenant-b"):
            client.enqueue_sync("demo.v1", workflow_id, workflow_id=workflow_id, delay=3600)
    with TestClient(create_app(db, token="s3cret")) as web:
        link = "/workflows/" + quote("tenant-a/../tenant-b", safe="") + "?token=s3cret"
        login = web.get(link, follow_redirects=False)
        assert login.status_code == 303
        landed = web.get(urljoin("http://testserver/", login.headers["location"]))
        assert shown_id(landed.text) == "tenant-a/../tenant-b"


def shown_id(page: str) -> str:
    found = re.search(r'<dd class="id">(.*?)</dd>', page)
    assert found is not None, page[:500]
    return html.unescape(found.group(1))


def cancel_on_its_page(web: TestClient, page: str) -> Any:
    """Cancel by the cancel form of a workflow's page (``page``: the page's HTML) as a browser
    submits it (to the form's action, with its fields), then follow the action's redirect;
    the page it leads to."""
    found = re.search(r'<form method="post" action="([^"]*/actions/cancel[^"]*)"', page)
    assert found is not None, "no cancel form on the page"
    done = web.post(
        urljoin("http://testserver/", html.unescape(found.group(1))),
        data={"form_key": form_key(page)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    return web.get(urljoin("http://testserver/", done.headers["location"]))


def test_an_id_with_a_line_break_has_links_that_reach_it(db: str) -> None:
    """Ids may hold line breaks, which the path route's pattern does not match: the list's
    link, and an action's redirect, answered 404. And a browser sends a line break of a form's
    field as CR LF: the action acted on another execution (its twin with CR LF)."""
    workflow_id = "line1\nline2"
    with durable.Client(db) as client:
        client.enqueue_sync("demo.v1", 1, workflow_id=workflow_id, delay=3600)
        client.enqueue_sync("demo.v1", 2, workflow_id="line1\r\nline2", delay=3600)
    with TestClient(create_app(db, actions=True)) as web:
        listing = web.get("/workflows").text
        [link] = {
            html.unescape(href)
            for href in re.findall(r'<a href="([^"]+)" class="id">', listing)
            if "line1%0Aline2" in href
        }
        page = web.get(urljoin("http://testserver/workflows", link))
        assert page.status_code == 200 and "line1" in page.text
        after = cancel_on_its_page(web, page.text)
        assert after.status_code == 200 and "line1" in after.text
    with durable.Client(db) as client:
        assert client.get_workflow_sync(workflow_id).status is durable.WorkflowStatus.CANCELLED
        twin = client.get_workflow_sync("line1\r\nline2")
        assert twin.status is durable.WorkflowStatus.PENDING


def test_bidirectional_controls_are_shown_as_escapes_and_sent_back_as_stored(db: str) -> None:
    """Ids, names and labels were shown raw: a right-to-left override made an id read as
    another one (the CLI shows it as an escape). The forms still send the id as stored."""
    workflow_id = "invoice-\u202egpj.exe"
    with durable.Client(db) as client:
        client.enqueue_sync(
            "demo.v1", 1, workflow_id=workflow_id, delay=3600, labels={"k": "a\u202eb"}
        )
    with TestClient(create_app(db, actions=True)) as web:
        listing = web.get("/workflows").text
        assert "\u202e" not in listing and "invoice-\\u202egpj.exe" in listing
        page = web.get("/workflow", params={"id": workflow_id})
        assert page.status_code == 200 and "\u202e" not in page.text.replace(
            html.escape(workflow_id), ""
        )
        assert "k=a\\u202eb" in page.text
        assert cancel_on_its_page(web, page.text).status_code == 200
    with durable.Client(db) as client:
        assert client.get_workflow_sync(workflow_id).status is durable.WorkflowStatus.CANCELLED


def test_the_ids_dot_and_dot_dot_have_links_a_browser_keeps(db: str) -> None:
    """A browser resolves a path segment '.' or '..' (or '%2E') before it sends the request:
    the links to workflows with these ids must reach them, and an action's redirect too."""
    with durable.Client(db) as client:
        for workflow_id in (".", ".."):
            client.enqueue_sync("demo.v1", workflow_id, workflow_id=workflow_id, delay=3600)
    with TestClient(create_app(db, actions=True)) as web:
        listing = web.get("/workflows").text
        links = {
            html.unescape(text): html.unescape(href)
            for href, text in re.findall(r'<a href="([^"]+)" class="id">([^<]+)</a>', listing)
        }
        for workflow_id in (".", ".."):
            target = urljoin("http://testserver/workflows", links[workflow_id])
            page = web.get(target)
            assert page.status_code == 200 and shown_id(page.text) == workflow_id
            after = cancel_on_its_page(web, page.text)
            assert shown_id(after.text) == workflow_id and "cancel" in after.text
        assert web.get("/workflow").status_code == 400  # no id given


def test_a_database_written_with_pickle(tmp_path: Path) -> None:
    """The view reads a pickled database given its serializer; without it, the error page says
    which serializer may read the rows (not just "not valid JSON")."""
    url = f"sqlite:///{tmp_path / 'pickled.db'}"

    async def fill() -> None:
        async with durable.Client(durable.connect(url, serializer="pickle")) as client:
            await client.enqueue("demo.v1", {"pickled": 1}, workflow_id="pk-1", delay=3600)

    asyncio.run(fill())
    with TestClient(create_app(url)) as web:
        page = web.get("/workflows/pk-1")
        assert page.status_code == 500
        assert "written with serializer=&#39;pickle&#39;" in page.text
    with TestClient(create_app(url, serializer="pickle")) as web:
        page = web.get("/workflows/pk-1")
        assert page.status_code == 200 and "&#34;pickled&#34;: 1" in page.text
    with pytest.raises(InvalidArgumentError, match="serializer"):
        create_app(durable.connect(url), serializer="pickle")


def test_a_mounted_view_with_a_token_logs_in_under_its_prefix(db: str) -> None:
    token = "a b;c=d/é"  # the cookie carries any token
    service = Starlette(routes=[Mount("/durable", app=create_app(db, token=token))])
    with TestClient(service) as web:
        assert web.get("/durable/workflows").status_code == 401
        login = web.get("/durable/workflows", params={"token": token}, follow_redirects=False)
        assert login.status_code == 303
        assert login.headers["location"] == "/durable/workflows"
        assert "Path=/durable;" in login.headers["set-cookie"]
        assert web.get("/durable/workflows/order-0").status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_binds_need_no_token(host: str) -> None:
    assert check_bind(host, None) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_other_binds_need_a_token(host: str) -> None:
    with pytest.raises(InvalidArgumentError, match="give it a token"):
        check_bind(host, None)
    assert check_bind(host, "t") == "t"
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        check_bind(host, " ")


def test_durable_ui_refuses_to_bind_beyond_localhost_without_a_token(db: str) -> None:
    result = CliRunner().invoke(main, ["ui", db, "--host", "0.0.0.0"], env={"DURABLE_UI_TOKEN": ""})
    assert result.exit_code == 1
    assert "give it a token" in result.output
    assert "--actions" in CliRunner().invoke(main, ["ui", "--help"]).output


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql+psycopg://app@db/app", "postgresql+psycopg://app@db/app"),
        ("postgresql://app@db/app?password=hunter2&sslmode=require", "sslmode=require"),
        ("sqlite:///app.db", "sqlite:///app.db"),
        ("not a url hunter2", "***"),
        ("postgresql://app@db/app?sslpassword=hunter2", "sslpassword=***"),
    ],
)
def test_database_urls_are_masked(url: str, shown: str) -> None:
    masked = mask_url(url)
    assert "hunter2" not in masked and shown in masked


@pytest.mark.postgres
def test_pages_show_no_password(pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_url).set(password="hunter2").render_as_string(hide_password=False)
    with TestClient(create_app(url)) as web:
        for path in ("/workflows", "/executors", "/queues", "/workflows/missing"):
            page = web.get(path)
            assert "hunter2" not in page.text
            assert ":***@" in page.text


def test_error_pages_and_messages_show_no_secret() -> None:
    """The header masked the URL's secret query values, and the error page (as the CLI's
    error line) printed them in the backend's message."""
    url = "postgresql+psycopg://app:hunter2@127.0.0.1:1/x?sslpassword=hunter3&connect_timeout=2"
    with TestClient(create_app(url)) as web:
        page = web.get("/workflows")
        assert page.status_code == 503
        assert "cannot reach the database" in page.text
        assert "hunter2" not in page.text and "hunter3" not in page.text
    result = CliRunner().invoke(main, ["workflows", "list", url])
    assert result.exit_code == 1 and "cannot reach the database" in result.output
    assert "hunter2" not in result.output and "hunter3" not in result.output


def test_the_view_never_creates_or_migrates_a_database(tmp_path: Path) -> None:
    """The view reads: a database without durable's tables is refused (an error page, nothing
    written), as by the other commands; so is a file that does not exist."""
    missing = tmp_path / "typo.db"
    result = CliRunner().invoke(main, ["ui", f"sqlite:///{missing}"])
    assert result.exit_code == 1 and "no SQLite database at" in result.output
    assert not missing.exists()
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE mine (x INTEGER)")
    conn.close()
    with TestClient(create_app(f"sqlite:///{foreign}")) as web:
        page = web.get("/workflows")
        assert page.status_code >= 500 and "durable" in page.text
    tables = sqlite3.connect(foreign).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("mine",)]


def test_create_app_checks_its_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="database URL, a PersistentBackend"):
        create_app(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="actions"):
        create_app("sqlite:///x.db", actions="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="token"):
        create_app("sqlite:///x.db", token="")


# -- mounted in a service ----------------------------------------------------------------------


def test_mounted_under_a_prefix_links_stay_under_it(db: str) -> None:
    service = Starlette(routes=[Mount("/durable", app=create_app(db, actions=True))])
    with TestClient(service) as web:
        page = web.get("/durable/workflows")
        assert page.status_code == 200
        links = re.findall(r'href="([^"]+)"', page.text)
        assert links and all(link.startswith("/durable/") for link in links)
        assert web.get("/durable/static/durable.css").status_code == 200
        detail = web.get("/durable/workflows/nap-5")
        assert detail.status_code == 200 and detail.text.count(BAR) == 2
        action = re.search(r'<form method="post" action="([^"]+)"', detail.text)
        assert action is not None and action.group(1) == "/durable/actions/cancel?id=nap-5"
        done = web.post(
            action.group(1), data={"form_key": form_key(detail.text)}, follow_redirects=False
        )
        assert done.headers["location"] == "/durable/workflows/nap-5?done=cancel"
        assert web.get("/durable/", follow_redirects=False).headers["location"] == (
            "/durable/workflows"
        )
    assert stored(db, "nap-5").status is WorkflowStatus.CANCELLED


async def test_an_app_over_a_started_client_leaves_it_open(db: str) -> None:
    async with durable.Client(db) as client:
        app = create_app(client)
        import httpx2 as httpx

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as web:
            page = await web.get("/workflows/order-1")
            assert page.status_code == 200 and page.text.count(BAR) == 3
        assert (await client.get_workflow("order-1")).status is WorkflowStatus.SUCCEEDED


# -- a real browser ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(db: str) -> Iterator[str]:
    """The view of ``db`` (actions on) served by uvicorn in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(db, actions=True), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def need_chromium() -> None:
    """Fail under CI (CI=true) when Chromium or Playwright is missing; skip elsewhere."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is missing (pip install -e '.[test]')"
    if missing is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the browser test needs Chromium: {missing}")
        pytest.skip(missing)


@pytest.mark.slow
def test_in_a_real_chromium(served: str, db: str, ids: dict[str, list[str]]) -> None:
    need_chromium()
    (queued,) = ids["queued"]
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{served}/workflows")
            assert page.locator("tr.workflow-row").count() == 8
            assert page.locator("#count-failed").inner_text() == "1"

            page.select_option("select[name=status]", "failed")
            page.click("#apply")
            page.wait_for_url(re.compile(r"status=failed"))
            assert page.locator("tr.workflow-row").count() == 1
            assert page.locator("tr.workflow-row a.id").inner_text() == "broken-7"

            page.click("tr.workflow-row a.id")
            page.wait_for_url(re.compile(r"/workflows/broken-7$"))
            assert page.locator("#timeline .step-bar").count() == 2
            assert "order 7 is malformed" in page.locator("#error").inner_text()

            page.goto(f"{served}/workflows/order-0")
            assert page.locator("#timeline .step-bar").count() == 3
            widths = [page.locator("#timeline .step-bar").nth(i).bounding_box() for i in range(3)]
            assert all(box is not None and box["width"] >= 1 for box in widths)

            page.goto(f"{served}/workflows/nap-5")
            assert page.locator("#timeline .step-bar.state-sleeping").count() == 1
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#cancel")
            page.wait_for_url(re.compile(r"done=cancel"))
            assert page.locator("#workflow-status").inner_text() == "cancelled"

            # the counts refresh by themselves (the page's poll), without a reload
            page.goto(f"{served}/workflows")
            assert page.locator("#count-cancelled").inner_text() == "1"
            with durable.Client(db) as client:
                client.cancel_sync(queued)
            page.wait_for_function(
                "document.getElementById('count-cancelled').textContent === '2'", timeout=30_000
            )
            assert page.locator("tr.workflow-row").count() == 8

            # fork from a step: a new execution with the steps before it copied
            page.goto(f"{served}/workflows/broken-7")
            page.fill("#from-step", "1")
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#fork")
            page.wait_for_url(re.compile(r"done=fork"))
            assert "/workflows/broken-7?" not in page.url
            assert page.locator("#timeline .step-bar").count() == 1
            assert page.locator("#workflow-status").inner_text() == "pending"
        finally:
            browser.close()
    assert stored(db, "nap-5").status is WorkflowStatus.CANCELLED


def test_served_without_a_token_answers_only_local_names(db: str) -> None:
    from durable.web.serve import served_app

    app = served_app(db, host="127.0.0.1")
    with TestClient(app, base_url="http://127.0.0.1:8080") as web:
        assert web.get("/workflows").status_code == 200
    with TestClient(app, base_url="http://localhost:8080") as web:
        assert web.get("/workflows").status_code == 200
    with TestClient(app, base_url="http://rebound.example:8080") as web:
        assert web.get("/workflows").status_code == 400
    with pytest.raises(InvalidArgumentError, match="give it a token"):
        served_app(db, host="0.0.0.0")
    tokened = served_app(db, host="0.0.0.0", token="t")
    with TestClient(tokened, base_url="http://10.1.2.3:8080") as web:
        assert web.get("/workflows", headers={"X-Durable-Token": "t"}).status_code == 200


def test_durable_ui_on_a_port_in_use_fails_with_status_1(db: str) -> None:
    """uvicorn exits with status 3 when it cannot bind; `durable --help` promises 1 for a
    command that fails (2 is a usage error)."""
    import subprocess

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ui = subprocess.run(
            [str(Path(sys.executable).with_name("durable")), "ui", db, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert ui.returncode == 1, ui.stderr
    assert f"the web view could not start on 127.0.0.1:{port}" in ui.stderr
    assert "address already in use" in ui.stderr


@pytest.mark.postgres
def test_the_pages_on_postgresql(pg_url: str) -> None:
    ids = asyncio.run(webdata.fill(pg_url))
    with TestClient(create_app(pg_url, actions=True)) as web:
        everything = rows(web.get("/workflows").text)
        assert len(everything) == 8 and everything[-1] == "order-0"
        assert rows(web.get("/workflows?queue=slow").text) == ids["queued"]
        order_1 = stored(pg_url, "order-1")
        until = web.get("/workflows", params={"until": order_1.created_at.isoformat()})
        assert rows(until.text) == ["order-1", "order-0"]
        paged: list[str] = []
        url: str | None = "/workflows?limit=3"
        while url is not None:
            page = web.get(url).text
            paged += rows(page)
            found = re.search(r'href="([^"]+)" id="next-page"', page)
            url = found.group(1).replace("&amp;", "&") if found else None
        assert paged == everything
        assert web.get("/workflows/order-0").text.count(BAR) == 3
        assert "sleeping until" in web.get("/workflows/nap-5").text
        assert web.get("/api/counts").json()["counts"]["failed"] == 1
        page = web.get("/workflows/broken-7").text
        web.post("/actions/retry", data={"workflow_id": "broken-7", "form_key": form_key(page)})
    assert stored(pg_url, "broken-7").status is WorkflowStatus.PENDING


@pytest.mark.slow
def test_durable_ui_serves_the_view(db: str, tmp_path: Path) -> None:
    import subprocess
    import urllib.request

    port = free_port()
    out = tmp_path / "ui.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from durable.cli import main; main()",
                "ui",
                db,
                "--port",
                str(port),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        body = ""
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/workflows", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                assert proc.poll() is None, out.read_text()
                time.sleep(0.1)
        assert len(rows(body)) == 8
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/workflows/nap-5", timeout=5) as r:
            assert 'id="cancel"' not in r.read().decode()  # no actions unless --actions
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert f"on http://127.0.0.1:{port}/" in out.read_text()


def test_a_missing_chromium_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs Chromium"):
        need_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="missing"):
        need_chromium()
