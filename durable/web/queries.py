"""What the web view's pages read, through :class:`~durable.Client` only: a filtered page of
workflows, counts by status, queue depths, and everything one workflow's page shows.

The client lists workflows by status, name and parent, newest first, with keyset cursors. The
view adds two filters on top without a new storage query: a time range (``until`` starts the
listing at that instant's keyset position; ``since`` ends it at the first older workflow) and a
queue (read through pages and kept when it matches, at most :data:`SCAN_BUDGET` rows per page
shown; the next-page cursor then goes on from the last row read). Labels (``label=key=value``,
repeatable) are filtered by the database. Counts by status are exact
(:meth:`~durable.Client.count_workflows`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from durable.backends.cursors import encode_cursor
from durable.client import Client
from durable.errors import InvalidArgumentError
from durable.models import Message, StepRecord, WorkflowInfo, WorkflowStatus
from durable.overview import COUNT_CAP as COUNT_CAP
from durable.overview import QueueRow as QueueRow
from durable.overview import queue_rows as queue_rows
from durable.overview import shown_children
from durable.overview import status_counts as status_counts
from durable.validation import check_label_filter, check_name, in_utc

#: Rows read at most for one page when a queue filter drops rows.
SCAN_BUDGET = 2000
#: Workflows per page unless ``limit`` says otherwise, and the most a page may ask for.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: A day, kept inside either end of datetime's range by the times a form may give.
_DAY = timedelta(days=1)
#: Characters of a value (input, output, step output) shown before it is cut.
SHOWN_CHARS = 4000


@dataclass(frozen=True)
class Filters:
    """The workflows list's filters, as read from its query string."""

    statuses: tuple[WorkflowStatus, ...] = ()
    name: str | None = None
    queue: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def query(self, **changes: Any) -> list[tuple[str, str]]:
        """These filters as query parameters (without the cursor unless given in changes)."""
        pairs = [("status", s.value) for s in self.statuses]
        pairs += [("label", f"{k}={v}") for k, v in self.labels]
        for key in ("name", "queue"):
            value = getattr(self, key)
            if value:
                pairs.append((key, value))
        for key in ("since", "until"):
            value = getattr(self, key)
            if value is not None:
                pairs.append((key, value.isoformat()))
        if self.limit != DEFAULT_LIMIT:
            pairs.append(("limit", str(self.limit)))
        pairs += [(k, str(v)) for k, v in changes.items() if v is not None]
        return pairs


def parse_time(value: str, what: str) -> datetime:
    """An ISO 8601 time from a form (``2026-12-02T08:00``), UTC unless it names a zone.

    :raises InvalidArgumentError: not such a time.
    """
    try:
        # in UTC, as the form shows it again; a day inside datetime's range, for the cursor
        # made from it (one microsecond later)
        stamp = in_utc(datetime.fromisoformat(value.strip()))
        if (
            not datetime.min.replace(tzinfo=UTC) + _DAY
            <= stamp
            <= datetime.max.replace(tzinfo=UTC) - _DAY
        ):
            raise OverflowError
    except ValueError:
        raise InvalidArgumentError(
            f"{what} must be a time like 2026-12-02T08:00 (UTC), got {value!r}"
        ) from None
    except OverflowError:
        raise InvalidArgumentError(
            f"{what} {value!r} is out of range (0001-01-02 to 9999-12-30, in UTC)"
        ) from None
    return stamp


def whole_number(raw: str) -> int | None:
    """``raw`` as a whole number of ASCII digits (at most 18), else None (``str.isdigit``
    admits '²', which ``int`` refuses)."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw)
    return None


def parse_labels(raw: list[str]) -> tuple[tuple[str, str], ...]:
    """``key=value`` strings (empty ones skipped) as checked label pairs, sorted by key.

    :raises InvalidArgumentError: one is not ``key=value``, or not a valid label (named).
    """
    pairs: list[tuple[str, str]] = []
    for text in raw:
        if not text.strip():
            continue
        key, sep, value = text.partition("=")
        if not sep:
            raise InvalidArgumentError(f"label filter {text!r} must be key=value")
        pairs.append((key.strip(), value))  # a value is taken as given, spaces included
    return tuple(sorted(check_label_filter(pairs, "label filter").items()))


def parse_filters(
    params: Mapping[str, str], statuses: list[str], labels: list[str] | None = None
) -> Filters:
    """The filters of a query string (``statuses``: every ``status`` parameter given;
    ``labels``: every ``label`` parameter, each ``key=value``).

    :raises InvalidArgumentError: an unknown status, a malformed name, label, time or limit.
    """
    chosen: list[WorkflowStatus] = []
    for raw in statuses:
        if not raw:
            continue
        try:
            chosen.append(WorkflowStatus(raw))
        except ValueError:
            known = ", ".join(s.value for s in WorkflowStatus)
            raise InvalidArgumentError(f"unknown status {raw!r} (one of {known})") from None
    # as given, spaces included (as the CLI and the API take them): empty is no filter
    name = params.get("name") or None
    queue = params.get("queue") or None
    if name is not None:
        check_name(name, "name")
    if queue is not None:
        check_name(queue, "queue")
    since = parse_time(params["since"], "since") if params.get("since") else None
    until = parse_time(params["until"], "until") if params.get("until") else None
    raw_limit = params.get("limit", "") or str(DEFAULT_LIMIT)
    limit = whole_number(raw_limit)
    if limit is None or not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgumentError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return Filters(
        statuses=tuple(dict.fromkeys(chosen)),
        name=name,
        queue=queue,
        since=since,
        until=until,
        limit=limit,
        cursor=params.get("cursor") or None,
        labels=parse_labels(labels or []),
    )


@dataclass
class Listing:
    """One page of the workflows list: its rows, the cursor of the next page (None on the last)
    and how many rows were read to fill it."""

    items: list[WorkflowInfo] = field(default_factory=list)
    next_cursor: str | None = None
    scanned: int = 0


def _start_before(until: datetime) -> str:
    """The keyset cursor from which a newest-first listing starts at ``until`` (inclusive)."""
    return encode_cursor(WorkflowInfo(id="", name="", created_at=until + timedelta(microseconds=1)))


async def list_page(client: Client, filters: Filters) -> Listing:
    """The page of workflows ``filters`` selects, newest first (see the module docstring)."""
    cursor = filters.cursor
    if cursor is None and filters.until is not None:
        cursor = _start_before(filters.until)
    batch = filters.limit if filters.queue is None else max(filters.limit, 200)
    listing = Listing()
    while True:
        page = await client.list_workflows(
            status=list(filters.statuses) or None,
            name=filters.name,
            limit=batch,
            cursor=cursor,
            labels=dict(filters.labels) or None,
        )
        for index, info in enumerate(page.items):
            listing.scanned += 1
            if filters.since is not None and (
                info.created_at is None or info.created_at < filters.since
            ):
                return listing
            if filters.queue is not None and info.queue != filters.queue:
                continue
            listing.items.append(info)
            if len(listing.items) == filters.limit:
                last = index == len(page.items) - 1 and page.next_cursor is None
                listing.next_cursor = None if last else encode_cursor(info)
                return listing
        if page.next_cursor is None or not page.items:
            return listing
        if listing.scanned >= SCAN_BUDGET:
            listing.next_cursor = encode_cursor(page.items[-1])
            return listing
        cursor = page.next_cursor


def shown(value: Any) -> str:
    """A stored value as text for a page: JSON when it is, else its repr; cut when long."""
    try:
        text = json.dumps(value, indent=2, sort_keys=True, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return cut(text)


def cut(text: str | None) -> str:
    """Stored text (an error's message, a traceback) for a page: its first
    :data:`SHOWN_CHARS` characters, with a mark when there was more ("" for None)."""
    if text is None:
        return ""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "\n… (cut)"


@dataclass
class WorkflowPage:
    """Everything one workflow's page shows."""

    info: WorkflowInfo
    steps: list[StepRecord]
    children: list[WorkflowInfo]
    pending_messages: list[Message]
    now: datetime
    labels: dict[str, str] = field(default_factory=dict)
    all_children: int = 0  # how many it has (``children`` holds the newest of them)


async def workflow_page(client: Client, workflow_id: str) -> WorkflowPage:
    """Read one workflow, its steps, its children and the messages waiting for it.

    :raises WorkflowNotFoundError: no such workflow.
    """
    info = await client.get_workflow(workflow_id)
    steps = await client.list_steps(workflow_id)
    children, all_children = await shown_children(client, workflow_id)
    messages = await client.list_messages(workflow_id, received=False)
    labels = await client.get_labels(workflow_id)
    return WorkflowPage(
        info, steps, children, messages, datetime.now(UTC), labels, all_children=all_children
    )
