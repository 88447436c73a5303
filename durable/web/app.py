"""``durable.web.create_app``: the web view as an ASGI application, to serve (``durable ui``) or
to mount in a service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from durable.backends.base import PersistentBackend
from durable.client import Client
from durable.errors import InvalidArgumentError
from durable.serialization import Serializer
from durable.validation import check_bool
from durable.web import pages
from durable.web.security import TokenGate
from durable.web.state import WebState


def create_app(
    target: str | PersistentBackend | Client,
    *,
    actions: bool = False,
    token: str | None = None,
    serializer: str | Serializer | None = None,
) -> Starlette:
    """The web view over ``target`` as a Starlette (ASGI) app.

    :param target: a database URL or a backend (the app makes a client over it, starts it on
        the first request and closes it when the app's lifespan ends), or a started
        :class:`~durable.Client` (the caller's to close). A URL's database is never created or
        migrated: one without durable's tables, or at another revision, gets an error page.
    :param actions: allow cancel, retry, resume and fork from a step from the pages (off by
        default: read-only).
    :param token: when given, every request must carry it (see :mod:`durable.web.security`).
        The app does not know where it is bound; :func:`durable.web.serve` refuses a non-local
        address without a token.
    :param serializer: for a URL, how its values were written (``"json"``, the default, or
        ``"pickle"``: what ``durable.connect(url, serializer=...)`` took). A backend or client
        comes with its own.

    Mount it in a Starlette or FastAPI service with ``Mount("/durable", app=create_app(url))``
    (links follow the mount's root path). The database URL shown on the pages is masked.

    :raises InvalidArgumentError: ``target`` is not a URL, backend or client; ``actions`` is
        not a bool; ``token`` is empty or not a str; ``serializer`` given with a backend or
        client.
    :raises ConfigurationError: an unknown ``serializer``.
    """
    check_bool(actions, "actions")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise InvalidArgumentError("token must be a non-empty str (or None for no token)")
    state = WebState.of(target, actions=actions, token=token, serializer=serializer)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.close()

    routes = [
        Route("/", pages.home),
        Route("/workflows", pages.workflows),
        Route("/workflows/{workflow_id:path}", pages.workflow),
        Route("/workflow", pages.workflow),  # ?id=ID, for the ids '.' and '..'
        Route("/actions/{action}", pages.action, methods=["POST"]),
        Route("/executors", pages.executors),
        Route("/queues", pages.queues),
        Route("/api/counts", pages.counts),
        Mount("/static", app=StaticFiles(packages=[("durable.web", "static")]), name="static"),
    ]
    middleware = [Middleware(TokenGate, token=token)] if token is not None else []
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=pages.EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.durable = state
    return app
