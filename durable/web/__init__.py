"""The web view of a durable database: workflows (filtered, paged, counted by status), one
workflow with its steps as a timeline, queues and executors; cancel and retry when turned on.

Needs the ``web`` extra (``pip install 'durable-sqla[web]'``: Starlette, Jinja2, uvicorn). Serve
it with ``durable ui URL`` or :func:`serve`, or mount :func:`create_app` in a service. It reads
through :class:`durable.Client` only, shows database URLs masked, and binds to 127.0.0.1 unless
given a token (:mod:`durable.web.security`).
"""

from __future__ import annotations

from durable.web.app import create_app
from durable.web.security import check_bind, mask_url
from durable.web.serve import serve

__all__ = ["check_bind", "create_app", "mask_url", "serve"]
