"""What keeps the web view from leaking or being used by strangers: masked database URLs, the
rule that binding beyond this machine needs a token, and the token check on every request.

The token rule: a view bound to a loopback address (``127.0.0.1``, ``::1``, ``localhost``) may run
without a token; bound anywhere else it refuses to start without one (:func:`check_bind`). With a
token, every request must carry it: in an ``Authorization: Bearer T`` or ``X-Durable-Token: T``
header, or in the cookie set by opening any page once with ``?token=T`` (the view then redirects
to the same page without the token in its address). A request without it gets 401.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from durable.backends.sql.urls import shown_url
from durable.errors import InvalidArgumentError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The cookie holding the token after a ``?token=`` login.
TOKEN_COOKIE = "durable_token"
#: The header that may carry the token (besides ``Authorization: Bearer``).
TOKEN_HEADER = "x-durable-token"
#: The database URL as the view may show it (see :func:`~durable.backends.sql.urls.shown_url`).
mask_url = shown_url


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine can reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str | None:
    """Check the token rule for a view bound to ``host``; returns the token (None for none).

    :raises InvalidArgumentError: ``host`` is not a loopback address and no token is given, or
        the token is empty or not a str.
    """
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise InvalidArgumentError("the web view's token must be a non-empty str")
    if token is None and not is_loopback(host):
        raise InvalidArgumentError(
            f"the web view binds to {host}, which other machines can reach: give it a token "
            "(--token T, or DURABLE_UI_TOKEN) or bind to 127.0.0.1"
        )
    return token


class TokenGate:
    """ASGI middleware letting through only HTTP requests that carry ``token`` (see the module
    docstring); a ``?token=`` login sets the cookie and redirects to the page without it."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    def _matches(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(
            candidate.encode(), self.token.encode()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [value for key, value in query if key == "token"]
        root = scope.get("root_path", "") or ""
        if given and self._matches(given[-1]):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            path = "/" + _page_path(scope, root).lstrip("/")  # two: the browser leaves the host
            location = path + (f"?{rest}" if rest else "")
            value = quote(self.token, safe="")
            cookie = f"{TOKEN_COOKIE}={value}; Path={root or '/'}; HttpOnly; SameSite=Strict"
            await _plain(send, 303, "", [("location", location), ("set-cookie", cookie)])
            return
        bearer = headers.get("authorization", "")
        candidates = [headers.get(TOKEN_HEADER)]
        if bearer.lower().startswith("bearer "):
            candidates.append(bearer[7:].strip())
        if "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            jar.load(headers["cookie"])
            if TOKEN_COOKIE in jar:
                candidates.append(unquote(jar[TOKEN_COOKIE].value))
        if any(self._matches(c) for c in candidates):
            await self.app(scope, receive, send)
            return
        await _plain(
            send,
            401,
            "durable web view: a token is required. Open this page with ?token=YOUR_TOKEN, or "
            "send it in an 'Authorization: Bearer' or 'X-Durable-Token' header.\n",
            [("www-authenticate", 'Bearer realm="durable"')],
        )


#: What a redirect's path keeps as it is: its separators, sub-delimiters, and escapes ('%').
_PATH_SAFE = "/:@!$&'()*+,;=~"


def _page_path(scope: Scope, root: str) -> str:
    """The path of the requested page, encoded, to redirect to it: the path as the client sent
    it (``raw_path``), its escapes kept, so that an id's ``%2F`` is not turned into a ``/``
    (``a%2F..%2Fb`` redirected as ``a/../b`` is another page once the browser resolves the
    ``..``); else the decoded path encoded again (a '?', '#' or 'é' in an id)."""
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        path = quote(raw, safe=_PATH_SAFE + "%")
        return path if unquote(path).startswith(root) else quote(root, safe=_PATH_SAFE) + path
    path = str(scope["path"])
    path = path if path.startswith(root) else root + path
    return quote(path, safe=_PATH_SAFE)


async def _plain(send: Send, status: int, body: str, headers: list[tuple[str, str]]) -> None:
    data = body.encode()
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw += [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
