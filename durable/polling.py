"""How a wait looks again at something another process may change: soon at first, then less
often.

A reader that nothing wakes (a result, an event or a stream written by another process on
SQLite or MySQL/MariaDB, or on PostgreSQL between two notifications) looks again after
:data:`FIRST_PAUSE`, then after pauses that double, up to the caller's ``poll_interval``: a short
wait ends within about as long again as it lasted, a long one costs a look every
``poll_interval``.
"""

from __future__ import annotations

from collections.abc import Iterator

#: Seconds between a wait's first look and its second.
FIRST_PAUSE = 0.01


def pauses(longest: float) -> Iterator[float]:
    """The pauses between a wait's looks: :data:`FIRST_PAUSE`, then each twice the one before,
    never more than ``longest`` (and ``longest`` from then on)."""
    pause = min(FIRST_PAUSE, longest)
    while True:
        yield pause
        pause = min(pause * 2, longest)


__all__ = ["FIRST_PAUSE", "pauses"]
