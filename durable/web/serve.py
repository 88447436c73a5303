"""Serve the web view with uvicorn (what ``durable ui`` runs)."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware

from durable.web.app import create_app
from durable.web.security import check_bind, is_loopback, mask_url

#: Host headers a view bound to a loopback address answers without a token.
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def served_app(
    url: str,
    *,
    host: str = "127.0.0.1",
    actions: bool = False,
    token: str | None = None,
    serializer: str | None = None,
) -> Starlette:
    """The app :func:`serve` runs: :func:`~durable.web.create_app` after the bind check, and,
    without a token on a loopback address, answering only requests addressed to this machine's
    names (a page of another site that rebinds its DNS name to 127.0.0.1 gets 400).

    :raises InvalidArgumentError: as :func:`serve`.
    """
    check_bind(host, token)
    app = create_app(url, actions=actions, token=token, serializer=serializer)
    if token is None and is_loopback(host):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOCAL_NAMES, host])
    return app


def serve(
    url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    actions: bool = False,
    token: str | None = None,
    serializer: str | None = None,
) -> None:
    """Serve the view of the database at ``url`` on ``host``:``port`` until interrupted
    (``serializer``: how its values were written, as :func:`~durable.web.create_app` takes it).

    :raises InvalidArgumentError: ``host`` is not a loopback address and no ``token`` is given
        (see :func:`~durable.web.security.check_bind`), or a bad argument to
        :func:`~durable.web.create_app`.
    """
    app = served_app(url, host=host, actions=actions, token=token, serializer=serializer)
    shown_host = f"[{host}]" if ":" in host else host
    print(
        f"durable web view of {mask_url(url)} on http://{shown_host}:{port}/"
        + (" (token required)" if token else "")
        + (" with actions" if actions else ""),
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
