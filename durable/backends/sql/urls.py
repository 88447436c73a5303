"""How a database URL is shown in messages, logs and pages: without its secrets."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

#: Query parameters whose values :func:`shown_url` hides, besides the password.
SECRET_QUERY_KEYS = ("password", "passwd", "secret", "token", "sslpassword", "key")


def shown_url(url: str | URL) -> str:
    """``url`` as an error message, a log line or a page may show it: its password, and the
    values of query parameters that look secret (``password=``, ``sslpassword=``, ``token=``,
    ...), replaced by ``***``. A URL that cannot be parsed is shown as its scheme only."""
    if isinstance(url, str):
        text = url
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            scheme, sep, _ = text.partition("://")
            return f"{scheme}://***" if sep else "***"
    query = {
        key: ("***" if any(s in key.lower() for s in SECRET_QUERY_KEYS) else value)
        for key, value in url.query.items()
    }
    shown = url.set(query=query).render_as_string(hide_password=True)
    return shown.replace("%2A%2A%2A", "***")
