"""Cron expressions, read by `cronsim <https://pypi.org/project/cronsim/>`_ (never by hand):
checking them, the next tick, and which due ticks a schedule runs after a delay or downtime.

An expression has five fields (minute, hour, day of month, month, day of week, as Debian's
cron reads them) or six (a seconds field first: ``"* * * * * *"`` is every second). It is read
in an IANA time zone: ``"0 2 * * *"`` in ``"Europe/Paris"`` is 02:00 Paris time. Across
daylight-saving changes a five-field expression with a fixed hour and minute behaves as
Debian's cron does: a time that does not exist that day (02:30 when clocks jump from 02:00 to
03:00) runs at the first time that does (03:00), and a time that happens twice runs once, the
first time. Ticks are returned as aware datetimes in UTC.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from durable.errors import InvalidArgumentError
from durable.models import MISSED_AFTER, MissedTicks
from durable.validation import check_int

#: At most this many ticks are enqueued by one firing of a schedule (late ones included).
MAX_TICKS_PER_FIRING = 1000
_EPSILON = timedelta(microseconds=1)
#: How many ticks :func:`next_tick` passes over inside a repeated hour (an hour of a cron
#: with seconds, and more).
_FOLD_TICKS = 10_000


#: Names the zone database holds that are not zones: the host's setting (``localtime``, a
#: link to ``/etc/localtime``) and its unset placeholder (``Factory``).
_HOST_ZONES = frozenset({"localtime", "Factory"})


def check_timezone(value: Any, what: str = "timezone") -> ZoneInfo:
    """The zone named ``value``.

    :raises InvalidArgumentError: not a str naming an IANA zone (the message names ``what``).
    """
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{what} must be an IANA time zone name, got {value!r}")
    if value in _HOST_ZONES:
        raise InvalidArgumentError(
            f"{what}: {value!r} is no zone of its own but this host's setting, which may differ "
            "from host to host (each worker would compute other ticks): give an IANA name, "
            "such as 'Europe/Paris' or 'UTC'"
        )
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # 'Europe' is a directory
        raise InvalidArgumentError(f"{what}: unknown time zone {value!r}") from exc


def check_cron(value: Any, what: str = "cron", timezone: str = "UTC") -> str:
    """``value`` if it is a cron expression with a future tick.

    :raises InvalidArgumentError: not a str, not an expression cronsim reads (its reason is
        given), or one that never matches (the message names ``what``).
    """
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(
            f"{what} must be a cron expression such as '0 2 * * *', got {value!r}"
        )
    zone = check_timezone(timezone)
    try:
        it = CronSim(value, datetime.now(UTC).astimezone(zone))
        next(it)
    except CronSimError as exc:
        raise InvalidArgumentError(f"{what}: bad cron expression {value!r}: {exc}") from exc
    except StopIteration:
        raise InvalidArgumentError(
            f"{what}: cron expression {value!r} never matches in the next 50 years"
        ) from None
    return " ".join(value.split())


def check_missed(value: Any, what: str = "missed") -> MissedTicks:
    """The policy named ``value`` (a :class:`MissedTicks` or its value).

    :raises InvalidArgumentError: an unknown policy (the message names ``what`` and lists the
        known ones).
    """
    try:
        return MissedTicks(value)
    except ValueError:
        known = ", ".join(repr(p.value) for p in MissedTicks)
        raise InvalidArgumentError(f"{what} must be one of {known}, got {value!r}") from None


def next_tick(cron: str, timezone: str, after: datetime) -> datetime | None:
    """The first tick strictly after ``after`` (aware), in UTC; None if there is none."""
    it = CronSim(cron, after.astimezone(ZoneInfo(timezone)))
    # cronsim loses the fold of a start inside a repeated hour (clocks going back): it starts
    # from the first of the two, and gives ticks before ``after`` first; they are passed over
    for tick in itertools.islice(it, _FOLD_TICKS):
        if (found := tick.astimezone(UTC)) > after:
            return found
    return None


def _backwards(cron: str, timezone: str, until: datetime) -> Iterator[datetime]:
    """Ticks at or before ``until``, most recent first, in UTC."""
    # the microsecond added in UTC, then the zone: an addition to a local time resets its
    # fold, which put a start inside a repeated hour (clocks going back) an hour earlier, so
    # every tick of that hour was found before the schedule's next one and none ran
    start = (until.astimezone(UTC).replace(microsecond=0) + _EPSILON).astimezone(ZoneInfo(timezone))
    it = CronSim(cron, start, reverse=True)
    while True:
        try:
            yield next(it).astimezone(UTC)
        except StopIteration:
            return


def due_ticks(
    cron: str,
    timezone: str,
    *,
    since: datetime,
    now: datetime,
    missed: MissedTicks,
    max_catchup: int,
    late: timedelta = MISSED_AFTER,
) -> list[datetime]:
    """The ticks a schedule whose next tick was ``since`` runs at ``now``, oldest first.

    The ticks from ``since`` to ``now`` (both included) are due. Those at most ``late`` before
    ``now`` are late, not missed, and all run. Of the older (missed) ones, ``missed`` decides:
    none (:attr:`MissedTicks.SKIP`), the most recent one if no late one runs
    (:attr:`MissedTicks.LATEST`), or the ``max_catchup`` most recent (:attr:`MissedTicks.ALL`).
    Never more than :data:`MAX_TICKS_PER_FIRING`.
    """
    check_int(max_catchup, "max_catchup", minimum=1, maximum=MAX_TICKS_PER_FIRING)
    fresh: list[datetime] = []
    old: list[datetime] = []
    wanted_old = {MissedTicks.SKIP: 0, MissedTicks.LATEST: 1, MissedTicks.ALL: max_catchup}[missed]
    for tick in _backwards(cron, timezone, now):
        if tick < since or len(fresh) + len(old) >= MAX_TICKS_PER_FIRING:
            break
        if now - tick <= late:
            fresh.append(tick)
            continue
        if len(old) >= wanted_old:
            break
        old.append(tick)
    if missed is MissedTicks.LATEST and fresh:
        old = []
    return sorted(old + fresh)


def tick_key(schedule: str, tick: datetime, *, trigger: bool = False) -> str:
    """The idempotency key of the execution a schedule starts for ``tick``: one per tick,
    whoever enqueues it (``schedule:<name>:<tick in UTC, ISO 8601>``; a manual trigger's has
    ``trigger:`` before the time)."""
    kind = "trigger:" if trigger else ""
    return f"schedule:{schedule}:{kind}{tick.astimezone(UTC).isoformat()}"
