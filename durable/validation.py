"""The rules for arguments of durable's public API, in one place.

Every public entry point (``durable.connect``, :class:`~durable.Runtime`, :class:`~durable.Worker`,
:class:`~durable.RetryPolicy`, the decorators, ``enqueue``/``run``) checks what it is given with
these functions before anything is written, so that bad input fails the same way on every
backend: with :class:`~durable.errors.InvalidArgumentError` (a ``ValueError`` too) naming the
argument and the bad value, never with a driver's error halfway through a transaction.

The rules follow what every backend can store:

* ids and names (workflow ids, idempotency keys, workflow, step and queue names, executor ids)
  are non-empty ``str`` of at most :data:`MAX_ID_LENGTH` characters (the SQL columns are
  ``VARCHAR(255)``), valid Unicode (no lone surrogates, which UTF-8 cannot encode), without NUL
  (which PostgreSQL text cannot hold);
* counts and priorities are ``int`` (``bool`` is not accepted) within a 32-bit signed
  ``INTEGER`` column;
* durations are numbers of seconds (or ``timedelta``), finite and at most 100 years
  (:data:`MAX_DELAY_SECONDS`), so that every backend can add them to the current time.

Ids that durable derives itself (a child workflow's ``<parent id>/<position>``) are made to fit
by :func:`derived_id`, deterministically, so a replay derives the same id.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from durable.errors import InvalidArgumentError

#: The longest id or name any backend stores (the SQL columns are ``VARCHAR(255)``).
MAX_ID_LENGTH = 255
#: The bounds of a 32-bit signed ``INTEGER`` column (priorities, attempt counts).
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
#: The latest time a task may be scheduled at (SQLite's date functions stop at year 9999).
LATEST_TIME = datetime(9999, 1, 1, tzinfo=UTC)
#: The longest duration (a lease, a retry's ``max_delay``, an enqueue's ``delay``): 100 years,
#: far beyond any real schedule and far within what every backend can add to the current time.
MAX_DELAY_SECONDS = 100 * 365 * 86400


def _show(value: Any) -> str:
    """``repr`` of a bad value, shortened: a 10 MB string must not become a 10 MB message."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-12:]} ({len(text)} chars)"


def check_id(value: Any, what: str) -> str:
    """``value`` if it is a usable id (see the module docstring), else InvalidArgumentError
    naming ``what`` (the argument, e.g. ``"workflow_id"``)."""
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"{what} must be a str, got {type(value).__qualname__} {_show(value)}"
        )
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgumentError(
            f"{what} must be at most {MAX_ID_LENGTH} characters, got {len(value)} characters: "
            f"{_show(value)}"
        )
    if "\x00" in value:
        raise InvalidArgumentError(f"{what} must not contain NUL characters, got {_show(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(
            f"{what} must be valid Unicode, got {_show(value)}: {exc.reason} at position "
            f"{exc.start}"
        ) from None
    return value


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a usable workflow, step or queue name: the same rule as
    :func:`check_id`, because names are stored in the same kind of column."""
    return check_id(value, what)


def check_optional_id(value: Any, what: str) -> str | None:
    """None, or a usable id (:func:`check_id`)."""
    return None if value is None else check_id(value, what)


def check_names(values: Any, what: str) -> list[str] | None:
    """None, or a list of usable names from an iterable of them (a lone ``str`` is refused:
    it would be read as its characters)."""
    if values is None:
        return None
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise InvalidArgumentError(
            f"{what} must be a list of names, got {type(values).__qualname__} {_show(values)}"
        )
    return [check_name(v, f"each of {what}") for v in values]


def check_queues(values: Any, what: str) -> list[str] | None:
    """None (every queue), or a non-empty list of queue names, as :func:`check_names`: an empty
    list would serve no queue, and a worker given one would claim nothing, silently.

    :raises InvalidArgumentError: not a list of names, or an empty one."""
    names = check_names(values, what)
    if names is not None and not names:
        raise InvalidArgumentError(
            f"{what} is empty: a worker would claim nothing (name the queues, or give None "
            "for every queue)"
        )
    return names


def derived_id(base: str, suffix: str) -> str:
    """``base + suffix``, or when that is longer than :data:`MAX_ID_LENGTH`, ``base`` shortened
    to a readable prefix and a hash of the whole of it, then ``suffix``. The same inputs always
    give the same id (a replay derives the id again), and different bases give different ids."""
    whole = base + suffix
    if len(whole) <= MAX_ID_LENGTH:
        return whole
    digest = hashlib.sha256(base.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    room = MAX_ID_LENGTH - len(suffix) - len(digest) - 1
    if room < 0:
        raise InvalidArgumentError(f"cannot derive an id from {_show(base)} and {_show(suffix)}")
    return f"{base[:room]}~{digest}{suffix}"


def check_int(value: Any, what: str, *, minimum: int = INT32_MIN, maximum: int = INT32_MAX) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) within ``[minimum, maximum]`` (by default
    the range of a 32-bit signed ``INTEGER`` column)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(
            f"{what} must be an int, got {type(value).__qualname__} {_show(value)}"
        )
    if value < minimum:
        raise InvalidArgumentError(f"{what} must be at least {minimum}, got {_show(value)}")
    if value > maximum:
        kind = " (the largest 32-bit signed integer)" if maximum == INT32_MAX else ""
        raise InvalidArgumentError(f"{what} must be at most {maximum}{kind}, got {_show(value)}")
    return value


def check_positive_int(value: Any, what: str) -> int:
    """``value`` if it is an ``int`` (not a ``bool``) from 1 to :data:`INT32_MAX`."""
    return check_int(value, what, minimum=1)


def _real(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(
            f"{what} must be a number, got {type(value).__qualname__} {_show(value)}"
        )
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise InvalidArgumentError(f"{what} is too large, got {_show(value)}") from None
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{what} must be finite, got {_show(value)}")
    return number


def _seconds(value: Any, what: str) -> float:
    number = _real(value, what)
    if number > MAX_DELAY_SECONDS:
        raise InvalidArgumentError(
            f"{what} must be at most {MAX_DELAY_SECONDS} seconds (100 years), got {_show(value)}"
        )
    if number < -MAX_DELAY_SECONDS:
        raise InvalidArgumentError(
            f"{what} must be at least -{MAX_DELAY_SECONDS} seconds (100 years back), got "
            f"{_show(value)}"
        )
    return number


def check_positive_float(value: Any, what: str) -> float:
    """``value`` as a float if it is a number of seconds above 0, finite and at most
    :data:`MAX_DELAY_SECONDS` (``bool`` is refused)."""
    number = _seconds(value, what)
    if number <= 0:
        raise InvalidArgumentError(f"{what} must be positive, got {_show(value)}")
    return number


def check_non_negative_float(value: Any, what: str) -> float:
    """``value`` as a float if it is a number of seconds, 0 or more, finite and at most
    :data:`MAX_DELAY_SECONDS` (``bool`` is refused)."""
    number = _seconds(value, what)
    if number < 0:
        raise InvalidArgumentError(f"{what} must not be negative, got {_show(value)}")
    return number


def check_at_least(value: Any, what: str, minimum: float) -> float:
    """``value`` as a float if it is a finite real number, ``minimum`` or more."""
    number = _real(value, what)
    if number < minimum:
        raise InvalidArgumentError(f"{what} must be at least {minimum:g}, got {_show(value)}")
    return number


def check_timeout(value: Any, what: str = "timeout") -> float | None:
    """None (wait for ever), or a wait of 0 or more: a ``timedelta``, or a finite number of
    seconds; returned in seconds."""
    if isinstance(value, timedelta):
        return check_non_negative_float(value.total_seconds(), what)
    return None if value is None else check_non_negative_float(value, what)


def check_delay(value: Any, what: str = "delay") -> timedelta:
    """A delay given in seconds or as a ``timedelta``, finite and at most
    :data:`MAX_DELAY_SECONDS` either way (a negative delay means at once)."""
    if isinstance(value, timedelta):
        _seconds(value.total_seconds(), what)
        return value
    return timedelta(seconds=_seconds(value, what))


def check_duration(value: Any, what: str) -> timedelta:
    """A positive duration (a timeout): a ``timedelta``, or a number of seconds, above zero,
    finite and at most :data:`MAX_DELAY_SECONDS` (``bool`` is refused)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        _seconds(seconds, what)
        if seconds <= 0:
            raise InvalidArgumentError(f"{what} must be positive, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(
            f"{what} must be a timedelta or a number of seconds, got "
            f"{type(value).__qualname__} {_show(value)}"
        )
    return timedelta(seconds=check_positive_float(value, what))


def in_utc(stamp: datetime) -> datetime:
    """``stamp`` in UTC, a naive one read as a UTC time.

    :raises OverflowError: it is no time in UTC's range (near either end of datetime's, with
        an offset that takes it past).
    """
    return (stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)).astimezone(UTC)


def check_run_after(value: Any, what: str = "run_after") -> datetime:
    """A timezone-aware ``datetime`` before :data:`LATEST_TIME`."""
    if not isinstance(value, datetime):
        raise InvalidArgumentError(
            f"{what} must be a timezone-aware datetime, got {type(value).__qualname__} "
            f"{_show(value)}"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgumentError(f"{what} must be timezone-aware, got {value!r}")
    if value >= LATEST_TIME:
        raise InvalidArgumentError(
            f"{what} must be before {LATEST_TIME:%Y-%m-%d}, got {_show(value)}"
        )
    return value


def check_bool(value: Any, what: str) -> bool:
    """``value`` if it is a ``bool``."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(
            f"{what} must be True or False, got {type(value).__qualname__} {_show(value)}"
        )
    return value


def check_exception_types(value: Any, what: str) -> tuple[type[BaseException], ...]:
    """``value`` if it is a tuple of exception classes."""
    if not isinstance(value, tuple) or not all(
        isinstance(t, type) and issubclass(t, BaseException) for t in value
    ):
        raise InvalidArgumentError(
            f"{what} must be a tuple of exception classes, got {_show(value)}"
        )
    return value


def check_instance(value: Any, kind: type, what: str) -> None:
    """Refuse a ``value`` that is neither None nor a ``kind``."""
    if value is not None and not isinstance(value, kind):
        raise InvalidArgumentError(
            f"{what} must be a {_type_name(kind)} or None, "
            f"got {type(value).__qualname__} {_show(value)}"
        )


def check_decorated(fn: Any, decorator: str) -> None:
    """Refuse what is not a function where one is decorated or run (``@durable.workflow("name")``
    passes the name where the function goes), a ``staticmethod`` object (``@durable.step``
    under ``@staticmethod`` in a class body: it would be taken for a sync function), and a
    function that yields (a generator function, or a callable object whose ``__call__`` is
    one)."""
    if isinstance(fn, staticmethod):
        raise InvalidArgumentError(
            f"{decorator} takes a function, got a staticmethod object {_show(fn)}: put "
            f"@staticmethod above @{decorator}, which then decorates the function itself"
        )
    if not callable(fn):
        hint = f": write @{decorator}(name={fn!r})" if isinstance(fn, str) else ""
        raise InvalidArgumentError(
            f"{decorator} takes a function, got {type(fn).__qualname__} {_show(fn)}{hint}"
        )
    body = callee(fn)
    if inspect.isgeneratorfunction(body) or inspect.isasyncgenfunction(body):
        kind = "an async generator" if inspect.isasyncgenfunction(body) else "a generator"
        raise InvalidArgumentError(
            f"{decorator} takes a function that returns its result, got {kind} function "
            f"{getattr(body, '__qualname__', body)!r} (it yields): its values cannot be recorded "
            "one by one; return a list, or publish them with durable.write_stream"
        )


def callee(fn: Any) -> Any:
    """The function whose code a call of ``fn`` runs: ``fn`` itself for a function, a method
    or a class; the function a ``functools.partial`` wraps; the ``__call__`` of a callable
    object."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if not callable(fn) or inspect.isroutine(fn) or isinstance(fn, type):
        return fn
    return type(fn).__call__


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine to await: an ``async def`` function or method,
    a ``functools.partial`` of one, or an object whose ``__call__`` is ``async def``."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(callee(fn))


def default_name(fn: Any, decorator: str) -> str:
    """The default name ``decorator`` gives ``fn``: ``module:qualname``.

    :raises InvalidArgumentError: ``fn`` has no qualname (a ``functools.partial``, a callable
        object): it needs a ``name=``.
    """
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise InvalidArgumentError(
            f"{decorator} names a function by its module:qualname unless given a name, and "
            f"{type(fn).__qualname__} {_show(fn)} has no qualname: pass name=, as in "
            f"{decorator}(name=...)(fn)"
        )
    return f"{module}:{qualname}"


def _type_name(kind: type) -> str:
    package = kind.__module__.split(".")[0]
    return kind.__qualname__ if package == "builtins" else f"{package}.{kind.__qualname__}"


#: The longest label key, and value (bounded so that an index on (key, value) fits every
#: database's index key limit, MySQL's 3072 bytes in utf8mb4 included).
MAX_LABEL_KEY_LENGTH = 64
MAX_LABEL_VALUE_LENGTH = 255
#: The most labels one workflow may carry (its own and those it inherits).
MAX_LABELS = 32
_LABEL_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-/")


def check_label_filter(pairs: Iterable[tuple[str, str]], what: str) -> dict[str, str]:
    """Label ``(key, value)`` pairs a listing must match all of (a CLI's repeated ``--label``,
    the web view's ``label`` parameters), checked as :func:`check_labels`; a key given twice
    with two values is refused (no execution carries both: the filter would match none, where
    keeping the last value matched executions it should not)."""
    found: dict[str, str] = {}
    for key, item in pairs:
        if found.get(key, item) != item:
            raise InvalidArgumentError(
                f"{what}: {key!r} is given twice, as {found[key]!r} and {item!r}: an execution "
                "carries one value for a key"
            )
        found[key] = item
    return check_labels(found, what)


def check_labels(value: Any, what: str = "labels") -> dict[str, str]:
    """A workflow's labels as a new ``dict`` (None: no labels), else InvalidArgumentError naming
    the label. Keys are 1 to :data:`MAX_LABEL_KEY_LENGTH` characters of ``A-Z a-z 0-9 _ . - /``;
    values are ``str`` (possibly empty) of at most :data:`MAX_LABEL_VALUE_LENGTH` characters,
    valid Unicode without NUL; at most :data:`MAX_LABELS` labels."""
    if value is None:
        return {}
    if not isinstance(value, dict | Mapping):
        raise InvalidArgumentError(
            f"{what} must be a mapping of str to str, got {type(value).__qualname__} {_show(value)}"
        )
    if len(value) > MAX_LABELS:
        raise InvalidArgumentError(
            f"{what}: at most {MAX_LABELS} labels per workflow, got {len(value)}"
        )
    labels: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidArgumentError(
                f"{what}: a label key must be a str, got {type(key).__qualname__} {_show(key)}"
            )
        if not key or len(key) > MAX_LABEL_KEY_LENGTH or not set(key) <= _LABEL_KEY_CHARS:
            raise InvalidArgumentError(
                f"{what}: label key {_show(key)} must be 1 to {MAX_LABEL_KEY_LENGTH} characters "
                "of letters, digits, '_', '.', '-' and '/'"
            )
        if not isinstance(item, str):
            raise InvalidArgumentError(
                f"{what}[{key!r}] must be a str, got {type(item).__qualname__} {_show(item)}"
            )
        if len(item) > MAX_LABEL_VALUE_LENGTH:
            raise InvalidArgumentError(
                f"{what}[{key!r}] must be at most {MAX_LABEL_VALUE_LENGTH} characters, got "
                f"{len(item)} characters: {_show(item)}"
            )
        if item:
            check_id(item, f"{what}[{key!r}]")  # NUL, lone surrogates
        labels[key] = item
    return labels
