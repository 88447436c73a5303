"""Serve the web view with uvicorn (what ``durable ui`` runs)."""

from __future__ import annotations

import uvicorn

from durable.web.app import create_app
from durable.web.security import check_bind, mask_url


def serve(
    url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    actions: bool = False,
    token: str | None = None,
) -> None:
    """Serve the view of the database at ``url`` on ``host``:``port`` until interrupted.

    :raises InvalidArgumentError: ``host`` is not a loopback address and no ``token`` is given
        (see :func:`~durable.web.security.check_bind`), or a bad argument to
        :func:`~durable.web.create_app`.
    """
    check_bind(host, token)
    app = create_app(url, actions=actions, token=token)
    shown_host = f"[{host}]" if ":" in host else host
    print(
        f"durable web view of {mask_url(url)} on http://{shown_host}:{port}/"
        + (" (token required)" if token else "")
        + (" with actions" if actions else ""),
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
