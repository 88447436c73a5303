"""Listing cursors, shared by every backend: the keyset position after a workflow in a
newest-first listing (``created_at`` then ``id``, both descending), encoded as an opaque string.

A cursor from one backend means the same in another, so the encoding lives here and nowhere else.
"""

from __future__ import annotations

import base64
from datetime import datetime

from durable.errors import InvalidArgumentError
from durable.models import WorkflowInfo
from durable.validation import in_utc


def encode_cursor(info: WorkflowInfo) -> str:
    """The keyset cursor after ``info`` in a newest-first listing."""
    assert info.created_at is not None
    raw = f"{info.created_at.isoformat()}|{info.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Undo :func:`encode_cursor`; raises InvalidArgumentError on a malformed cursor."""
    try:
        stamp, _, instance_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        created = in_utc(datetime.fromisoformat(stamp))
    except (ValueError, OverflowError):
        raise InvalidArgumentError(f"malformed listing cursor {cursor!r}") from None
    if "\x00" in instance_id:  # no id holds one (databases refuse it in text)
        raise InvalidArgumentError(f"malformed listing cursor {cursor!r}") from None
    return created, instance_id
