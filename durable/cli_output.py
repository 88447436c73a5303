"""How the ``durable`` commands print what they list: a table for a person, lines for a pipe,
JSON for a script.

:func:`emit` prints a list of records one of three ways:

* ``--json``: one JSON array of objects (dataclasses become objects by field, datetimes ISO 8601
  strings, enums their values, non-finite floats the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"``: strict JSON, see :func:`json_text`), whatever stdout is;
* stdout is a terminal: a :mod:`rich` table with a header row (times in UTC to the second,
  columns empty in every row left out);
* otherwise (a pipe, a file, a test): one line per record, fields separated by tabs, as the
  commands printed before tables existed, so that scripts which cut them keep working. The
  values are printed as stored, byte for byte (a terminal's escapes included: a table shows
  them escaped, see :func:`printable`).

It also holds the command line's small parsers: :func:`moment` (``--since 1h``) and
:func:`parse_duration`, and the pieces of a text timeline (:func:`bar`, :func:`seconds`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from durable.errors import DurableError, InvalidArgumentError, SerializationError
from durable.models import WorkflowStatus
from durable.serialization import UNREADABLE
from durable.validation import INT32_MAX, MAX_DELAY_SECONDS, check_id, check_label_filter, in_utc

T = TypeVar("T")

#: A column of a table: its header and what it shows of a record.
Column = tuple[str, Callable[[T], str]]

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON array of objects (for scripts)."
)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn durable's errors into a message on stderr and exit status 1 (a value that cannot
    be read with a hint about serializers: :func:`serializer_hint`)."""
    try:
        yield
    except SerializationError as exc:
        raise click.ClickException(serializer_hint(str(exc))) from exc
    except DurableError as exc:
        raise click.ClickException(str(exc)) from exc


#: The serializers a database's values may have been written with (``durable.connect(url,
#: serializer=...)``), which the commands that read them take as ``--serializer``.
SERIALIZERS = tuple(UNREADABLE)
#: Where :func:`serializer_option` keeps the chosen serializer (in the click context's meta).
SERIALIZER_KEY = "durable.serializer"


def serializer_hint(message: str) -> str:
    """``message`` (a stored value that cannot be read) with a hint when the value may have
    been written by the other serializer: a pickled value is not valid JSON, and the other
    way round."""
    for name, report in UNREADABLE.items():
        if report in message:
            other = next(n for n in SERIALIZERS if n != name)
            return (
                f"{message} (if the database was written with serializer={other!r}, read it "
                f"with --serializer {other})"
            )
    return message


def _keep_serializer(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta[SERIALIZER_KEY] = value


def serializer_option() -> click.Option:
    """``--serializer json|pickle`` (or ``DURABLE_SERIALIZER``): how the database's values were
    written. Not passed to the command: kept in the context, where :func:`chosen_serializer`
    finds it for the client the command opens."""
    return click.Option(
        ["--serializer"],
        type=click.Choice(SERIALIZERS),
        default=None,
        envvar="DURABLE_SERIALIZER",
        expose_value=False,
        callback=_keep_serializer,
        help="How the database's values were written: durable.connect(url, serializer=...) "
        "(default: json).",
    )


def chosen_serializer() -> str | None:
    """The ``--serializer`` of the running command, None when not given (JSON)."""
    ctx = click.get_current_context(silent=True)
    value = ctx.meta.get(SERIALIZER_KEY) if ctx is not None else None
    return value if isinstance(value, str) else None


def checked_id(value: str, what: str) -> str:
    """An id or name argument, checked as the API checks it (a usage error otherwise)."""
    try:
        return check_id(value, what)
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc)) from None


class Seconds(click.FloatRange):
    """A click type: a number of seconds in a range, finite (``nan`` passes a range check, as
    every comparison with it is false; ``inf`` is no duration). At most
    :data:`~durable.validation.MAX_DELAY_SECONDS` (100 years) unless ``max`` says less. A bad
    value is a usage error naming the option (exit status 2)."""

    name = "seconds"

    def __init__(
        self, min: float | None = None, max: float = MAX_DELAY_SECONDS, *, min_open: bool = False
    ) -> None:
        super().__init__(min=min, max=max, min_open=min_open)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds.", param, ctx)
        return super().convert(number, param, ctx)


def count_range(min: int = 1) -> click.IntRange:
    """A click type: a whole number from ``min`` to the largest 32-bit signed integer (what
    the API takes for a limit or a batch); beyond, a usage error naming the option."""
    return click.IntRange(min=min, max=INT32_MAX)


#: A click type for ``--status``: one of the workflow statuses (a usage error otherwise).
STATUS_CHOICE = click.Choice([s.value for s in WorkflowStatus])


def stdout_is_terminal() -> bool:
    """Whether a person reads stdout (it is a terminal): then listings are tables."""
    return sys.stdout.isatty()


def stderr_is_terminal() -> bool:
    """Whether a person reads stderr (it is a terminal)."""
    return sys.stderr.isatty()


#: Control characters but tab and newline: C0, DEL and C1; and the bidirectional controls
#: (marks, embeddings, overrides, isolates), with which a stored value could show text in
#: another order than it holds (an id that reads as another one).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with its control characters (but tab and newline) and its bidirectional
    controls written as escapes, ``\\x1b`` for ESC, ``\\u202e`` for a right-to-left override: a
    stored value (an error's message, a label) shown in a terminal must not drive it (set its
    title, clear it, colour what follows), nor show its text in another order."""
    return _CONTROL.sub(lambda found: repr(found.group())[1:-1], text)


class _EscapingFormatter(logging.Formatter):
    """A formatter whose lines show control characters as :func:`printable` does, a record's
    message on one line (its line breaks escaped), and the traceback after it indented: a
    stored value in a message (a workflow's error) can neither drive the terminal nor write a
    line that reads as another record."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record)).replace("\n", "\\n")

    def formatException(self, ei: Any) -> str:
        return _indented(printable(super().formatException(ei)))

    def formatStack(self, stack_info: str) -> str:
        return _indented(printable(super().formatStack(stack_info)))


def _indented(text: str) -> str:
    return "\n".join("  " + line for line in text.split("\n"))


#: How the commands' log lines look on stderr.
LOG_FORMAT = "%(asctime)s %(levelname)-5s [%(name)s] %(message)s"


def log_to_stderr(level: int) -> None:
    """Log records of ``level`` and up to stderr, one line each (a traceback on the lines
    after), unless logging is configured already. A record's control characters are written as
    escapes, wherever stderr goes: its message may hold stored values (a workflow's error) that
    must not drive the terminal that shows the log, then or when a log file is read later."""
    handler = logging.StreamHandler()
    handler.setFormatter(_EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def say(text: str, *, err: bool = False) -> None:
    """Print a line of stored values (on stderr if ``err``): as :func:`printable` shows it when
    the stream is a terminal, as it is otherwise, byte for byte (a script reading a pipe gets
    the values themselves: click would otherwise strip what looks like a colour code)."""
    if stderr_is_terminal() if err else stdout_is_terminal():
        click.echo(printable(text), err=err)
    else:
        click.echo(text, err=err, color=True)  # color=True: nothing stripped


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON values: dataclasses by field (fields hidden from ``repr`` left
    out), datetimes ISO 8601, timedeltas seconds, enums their value, anything else unknown its
    ``repr``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr
        }
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


#: How ``--json`` writes the floats JSON has no number for.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


#: The largest integer every JSON reader keeps exact (a double's 53 bits; RFC 8259, 6).
EXACT_INT = 2**53 - 1


def strict(value: Any) -> Any:
    """``value`` (plain JSON values) with its non-finite floats as the strings ``"NaN"``,
    ``"Infinity"`` and ``"-Infinity"``: JSON has no such numbers, and strict parsers
    (JavaScript's ``JSON.parse``, Go, Rust, ``jq``) refuse Python's ``NaN`` / ``Infinity``.
    Integers beyond :data:`EXACT_INT` either way are written as strings: those readers round
    them (a PostgreSQL change-feed position, read by ``jq`` and passed back as ``--after``,
    read the same events again, or skipped some)."""
    if isinstance(value, float) and not math.isfinite(value):
        return NON_FINITE[repr(value)]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > EXACT_INT:
        return str(value)
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    return value


def json_text(value: Any, **options: Any) -> str:
    """``value`` as strict JSON text (see :func:`strict`; ``options`` go to :func:`json.dumps`):
    what ``--json`` prints."""
    return json.dumps(strict(value), allow_nan=False, **options)


def emit(
    items: Sequence[T],
    *,
    as_json: bool,
    columns: Sequence[Column[T]],
    line: Callable[[T], str],
    as_object: Callable[[T], Any] = jsonable,
    title: str | None = None,
) -> None:
    """Print ``items``: a JSON array (``as_json``; each item through ``as_object``), a table of
    ``columns`` when stdout is a terminal, else one ``line`` per item."""
    if as_json:
        click.echo(json_text([as_object(item) for item in items], indent=2))
        return
    if not stdout_is_terminal():
        for item in items:
            click.echo(line(item), color=True)  # as stored: click strips colour codes otherwise
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text, not str: a stored '[bold]' or '[/]' is shown as it is, not read as rich's markup
    cells = [[Text(printable(show(item))) for _, show in columns] for item in items]
    shown = [i for i in range(len(columns)) if not cells or any(row[i] for row in cells)]
    table = Table(title=title, header_style="bold")
    for i in shown:  # a column empty in every row is left out
        table.add_column(columns[i][0], overflow="fold")
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    Console().print(table)


def stamp(value: datetime | None) -> str:
    """A time as a listing shows it (ISO 8601 to the millisecond), or ``-``."""
    return value.isoformat(timespec="milliseconds") if value else "-"


def when(value: datetime | None) -> str:
    """A time as a table shows it: UTC to the second (``2030-01-01 12:00:00``), or ``-``."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``1h``, ``7d``, ``2w`` (a number, then one unit) as a timedelta.

    :raises ValueError: anything else, or a duration that is not positive.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 1h, 7d or 2w")
    seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A click callback for ``--since`` / ``--until``: a duration before now (``1h``: an hour
    ago) or an ISO 8601 time (UTC when it has no offset). A bad value is a usage error naming
    the option."""
    if value is None:
        return None
    try:
        duration = parse_duration(value)
    except ValueError as exc:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise click.BadParameter(f"{exc} (or an ISO 8601 time)", ctx, param) from None
        try:
            return in_utc(parsed)
        except OverflowError:
            raise click.BadParameter(
                f"{value!r} is not a time in UTC's range", ctx, param
            ) from None
    try:
        return datetime.now(UTC) - duration
    except OverflowError:
        raise click.BadParameter(f"{value!r} ago is before the year 1", ctx, param) from None


def label_pairs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str] | None:
    """A click callback for ``--label key=value`` (repeatable): the pairs as a dict (None when
    none), checked as the API checks labels. A malformed one is a usage error naming it."""
    if not values:
        return None
    pairs: list[tuple[str, str]] = []
    for value in values:
        key, sep, item = value.partition("=")
        if not sep:
            raise click.BadParameter(f"{value!r} is not key=value", ctx, param)
        pairs.append((key, item))
    try:
        return check_label_filter(pairs, "--label")
    except InvalidArgumentError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def bar(offset: float, length: float, total: float, width: int = 30) -> str:
    """A step's bar on a timeline ``width`` characters wide that spans ``total`` seconds:
    spaces up to its start ``offset``, then ``#`` for its ``length`` (at least one)."""
    if total <= 0:
        return "#".ljust(width)
    start = max(0, min(width - 1, round(offset / total * width)))  # before the origin: 0
    cells = max(1, round(length / total * width))
    cells = min(cells, width - start)
    return (" " * start + "#" * cells).ljust(width)


def seconds(value: float | None) -> str:
    """A duration for a person: ``850ms``, ``12.3s``, ``4m05s``, ``2h10m``; ``-`` for None."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{int(value // 3600)}h{int(value % 3600 // 60):02d}m"


__all__ = [
    "STATUS_CHOICE",
    "Column",
    "Seconds",
    "bar",
    "checked_id",
    "chosen_serializer",
    "count_range",
    "emit",
    "json_option",
    "json_text",
    "jsonable",
    "label_pairs",
    "moment",
    "parse_duration",
    "say",
    "seconds",
    "serializer_hint",
    "serializer_option",
    "stamp",
    "stderr_is_terminal",
    "stdout_is_terminal",
    "strict",
    "when",
]
