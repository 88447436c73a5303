"""The web view's shared state: the :class:`~durable.Client` it reads through (started on first
use, since a mounted app's lifespan is not run by every host), its options, and its templates."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from durable.backends.base import PersistentBackend
from durable.backends.sql.urls import shown_url
from durable.cli_output import printable
from durable.client import Client
from durable.errors import InvalidArgumentError
from durable.serialization import Serializer


def _shown(value: Any) -> Any:
    """What a page shows of a value: a str with its control characters (but tab and newline)
    and bidirectional controls as escapes (:func:`~durable.cli_output.printable`, as the CLI
    shows them): an id must not read as another one. Markup (what ``as_given`` made) is left
    alone."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value)
    return value


def _as_given(value: Any) -> Markup:
    """A value exactly as stored, escaped for HTML: for the form fields that send it back (an
    action's workflow id, a filter), where the escapes of :func:`_shown` would change it."""
    return escape(value)


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("durable.web", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shown,
    )
    env.filters["stamp"] = lambda v: v.strftime("%Y-%m-%d %H:%M:%S") if v else "—"
    env.filters["as_given"] = _as_given
    return env


@dataclass
class WebState:
    """What every request of one app shares."""

    client: Client
    owns_client: bool
    database: str
    actions: bool
    token: str | None
    #: A secret put in every action form and checked on submit, so another site cannot post one.
    form_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    templates: Environment = field(default_factory=_templates)
    _lock: asyncio.Lock | None = None
    _started: bool = False

    @classmethod
    def of(
        cls,
        target: str | PersistentBackend | Client,
        *,
        actions: bool,
        token: str | None,
        serializer: str | Serializer | None = None,
    ) -> WebState:
        """The state over a database URL (its values read with ``serializer``), a backend (the
        view makes and owns a client over it) or a client (the caller starts and closes it).

        :raises InvalidArgumentError: ``target`` is none of these, or ``serializer`` is given
            with a backend or a client (they have their own).
        """
        if serializer is not None and not isinstance(target, str):
            raise InvalidArgumentError(
                "serializer is for a database URL: a backend or a client has its own"
            )
        if isinstance(target, Client):
            return cls(target, False, _url_of(target.backend), actions, token)
        if isinstance(target, str):  # a view reads a database it finds: it never migrates one
            client = Client(target, auto_migrate=False, serializer=serializer)
            return cls(client, True, shown_url(target), actions, token)
        if isinstance(target, PersistentBackend):
            return cls(Client(target), True, _url_of(target), actions, token)
        raise InvalidArgumentError(
            "create_app needs a database URL, a PersistentBackend or a Client, got "
            f"{type(target).__qualname__}"
        )

    async def ready(self) -> Client:
        """The client, started if this app owns it and has not started it yet."""
        if self.owns_client and not self._started:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if not self._started:
                    await self.client.start()
                    self._started = True
        return self.client

    async def close(self) -> None:
        """Close the client if this app started it."""
        if self.owns_client and self._started:
            self._started = False
            await self.client.close()


def _url_of(backend: PersistentBackend) -> str:
    """The backend's database URL if it says (as :func:`shown_url` shows it), else its kind."""
    engine = getattr(backend, "engine", None)
    url = getattr(engine, "url", None)
    if url is not None:
        return shown_url(url)
    return type(backend).__name__
