"""The web view's routes: the pages (workflows, one workflow, queues, executors), the counts the
list polls for, and the actions (cancel, retry, resume, fork from a step) when the app was made
with ``actions=True``.

Every handler reads through the app's :class:`~durable.Client` (see :mod:`durable.web.queries`),
never the database directly. Links are built under the request's ``root_path``, so the pages
work where a service mounts the app.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from durable.cli_output import serializer_hint
from durable.errors import (
    BackendUnavailableError,
    DurableError,
    InvalidArgumentError,
    NotFoundError,
    SerializationError,
)
from durable.models import WorkflowStatus
from durable.validation import check_id
from durable.web.queries import (
    COUNT_CAP,
    cut,
    list_page,
    parse_filters,
    queue_rows,
    shown,
    status_counts,
    whole_number,
    workflow_page,
)
from durable.web.state import WebState
from durable.web.timeline import timeline

#: Statuses a workflow may be retried from (Client.retry); any unfinished one may be cancelled.
RETRYABLE = frozenset({WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTER, WorkflowStatus.CANCELLED})


def state_of(request: Request) -> WebState:
    state: WebState = request.app.state.durable
    return state


def href(request: Request, path: str, query: list[tuple[str, str]] | None = None) -> str:
    """``path`` under the app's root path, with ``query``."""
    root = str(request.scope.get("root_path", "") or "").rstrip("/")
    return root + path + (f"?{urlencode(query)}" if query else "")


#: Ids a link cannot carry as a path segment: a browser resolves a segment ``.`` or ``..``
#: (and their ``%2E`` spellings) before it sends the request, landing on another page.
DOT_SEGMENTS = frozenset({".", ".."})


def workflow_href(
    request: Request, workflow_id: str, query: list[tuple[str, str]] | None = None
) -> str:
    """The link to a workflow's page: ``/workflows/ID`` (the id quoted whole, ``/`` included,
    so that it stays one segment); ``/workflow?id=ID`` for the ids ``.`` and ``..``, which a
    browser would resolve as a path segment, and for ids with a line break, which the path
    route does not match."""
    if workflow_id in DOT_SEGMENTS or "\n" in workflow_id:
        return href(request, "/workflow", [("id", workflow_id), *(query or [])])
    return href(request, "/workflows/" + quote(workflow_id, safe=""), query)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    state = state_of(request)
    page = state.templates.get_template(template).render(
        href=lambda path, query=None: href(request, path, query),
        workflow_href=lambda workflow_id: workflow_href(request, workflow_id),
        database=state.database,
        actions=state.actions,
        form_key=state.form_key,
        statuses=[s.value for s in WorkflowStatus],
        count_cap=COUNT_CAP,
        **context,
    )
    return HTMLResponse(page, status_code=status_code)


async def home(request: Request) -> Response:
    return RedirectResponse(href(request, "/workflows"), status_code=307)


async def workflows(request: Request) -> Response:
    """The workflows list, filtered by the query string, newest first, one page."""
    client = await state_of(request).ready()
    filters = parse_filters(
        request.query_params,
        request.query_params.getlist("status"),
        request.query_params.getlist("label"),
    )
    listing = await list_page(client, filters)
    counts = await status_counts(client)
    next_href = (
        href(request, "/workflows", filters.query(cursor=listing.next_cursor))
        if listing.next_cursor
        else None
    )
    return render(
        request,
        "workflows.html",
        filters=filters,
        listing=listing,
        counts=counts,
        next_href=next_href,
        first_href=href(request, "/workflows", filters.query()) if filters.cursor else None,
    )


async def workflow(request: Request) -> Response:
    """One workflow: its values, its steps as a timeline, its children and pending messages."""
    client = await state_of(request).ready()
    raw = request.path_params.get("workflow_id")  # /workflow?id=ID: see workflow_href
    workflow_id = check_id(raw if raw is not None else request.query_params.get("id"), "id")
    page = await workflow_page(client, workflow_id)
    line = timeline(page.info, page.steps, page.now)
    return render(
        request,
        "workflow.html",
        page=page,
        info=page.info,
        timeline=line,
        bars=line.bars,
        shown=shown,
        cut=cut,
        can_cancel=not page.info.status.is_terminal,
        can_retry=page.info.status in RETRYABLE,
        fork_max=max((s.position for s in page.steps), default=-1) + 1,
        notice=_notice(request.query_params.get("done"), request.query_params.get("unchanged")),
    )


#: The actions a page's notice reports (``?done=NAME``); any other value shows nothing.
ACTION_NAMES = ("cancel", "retry", "resume", "fork")


def _notice(done: str | None, unchanged: str | None) -> str | None:
    """What an action's redirect says happened: ``cancel: done.``, or for a cancel of a
    workflow that had finished already (``unchanged``), that nothing changed."""
    if done not in ACTION_NAMES:
        return None
    if unchanged in {s.value for s in WorkflowStatus}:
        return f"{done}: nothing changed, the workflow had already finished ({unchanged})."
    return f"{done}: done."


async def executors(request: Request) -> Response:
    """Runtimes known by their heartbeats; stale ones flagged."""
    client = await state_of(request).ready()
    return render(request, "executors.html", executors=await client.list_executors())


async def queues(request: Request) -> Response:
    """Queues with waiting or running workflows."""
    client = await state_of(request).ready()
    return render(request, "queues.html", queues=await queue_rows(client))


async def counts(request: Request) -> Response:
    """Workflows by status as JSON (exact counts), for the list's poll."""
    client = await state_of(request).ready()
    return JSONResponse({"counts": await status_counts(client)})


async def action(request: Request) -> Response:
    """Cancel, retry or resume the workflow named in the action's URL (``?id=``), then show its
    page again; or fork it from the form's ``from_step``, then show the new execution's page."""
    state = state_of(request)
    if not state.actions:
        return render(
            request,
            "error.html",
            403,
            title="Actions are off",
            message="This view was started without actions (durable ui --actions).",
        )
    form = await small_form(request)
    if form.get("form_key") != state.form_key:
        return render(
            request,
            "error.html",
            403,
            title="Refused",
            message="The form did not come from this view (reload the page and try again).",
        )
    # the id in the action's URL, where it travels as stored: a browser turns a line break in
    # a form's field into CR LF (a form posted by hand may give it as a field)
    workflow_id = check_id(request.query_params.get("id", form.get("workflow_id")), "workflow_id")
    client = await state.ready()
    name = request.path_params["action"]
    after: list[tuple[str, str]] = [("done", name)]
    if name == "cancel":
        info = await client.cancel(workflow_id)
        if info.status is not WorkflowStatus.CANCELLED:  # it had finished: nothing changed
            after.append(("unchanged", info.status.value))
    elif name == "retry":
        await client.retry(workflow_id)
    elif name == "resume":
        await client.resume(workflow_id)
    elif name == "fork":
        raw = form.get("from_step", "").strip()
        from_step = whole_number(raw)
        if from_step is None:
            raise InvalidArgumentError(f"from_step must be a step number (0 or more), got {raw!r}")
        workflow_id = await client.fork(workflow_id, from_step=from_step)
    else:
        raise NotFoundError(f"no action {name!r} (cancel, retry, resume or fork)")
    return RedirectResponse(workflow_href(request, workflow_id, after), status_code=303)


async def small_form(request: Request) -> dict[str, str]:
    """The fields of a small url-encoded form (an action's), without python-multipart.

    :raises InvalidArgumentError: the body is not such a form, or too long for one.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if kind != "application/x-www-form-urlencoded" or len(body) > 8192:
        raise InvalidArgumentError("an action takes a small url-encoded form")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def not_found(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", 404, title="Not found", message=str(exc))


async def bad_request(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", 400, title="Bad request", message=str(exc))


async def failed(request: Request, exc: Exception) -> Response:
    message = serializer_hint(str(exc)) if isinstance(exc, SerializationError) else str(exc)
    return render(request, "error.html", 500, title="durable error", message=message)


#: Seconds a client (or a load balancer's health check) is told to wait before it asks again
#: while the database cannot be reached.
RETRY_AFTER = 5


async def unavailable(request: Request, exc: Exception) -> Response:
    """503 while the database cannot be reached: the page is not broken, the database is away
    (a load balancer or a monitor tells the two apart by the status)."""
    response = render(request, "error.html", 503, title="Database unavailable", message=str(exc))
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


EXCEPTION_HANDLERS = {
    NotFoundError: not_found,
    InvalidArgumentError: bad_request,
    BackendUnavailableError: unavailable,
    DurableError: failed,
}
