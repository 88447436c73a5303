"""The ``DURABLE`` Django setting, read and checked.

::

    DURABLE = {
        "URL": "sqlite:///durable.db",      # required: the database (SQLite file, PostgreSQL)
        "WORKFLOWS": ["orders.workflows"],  # modules that define workflows (default: the
                                            # ``workflows`` module of every installed app)
        "EXECUTOR_ID": None,                # durable_worker's id (default: one per process)
        "POLL_INTERVAL": 0.5,               # seconds between looks while waiting for a result
        "CONCURRENCY": 10,                  # the worker's executions at once
        "QUEUES": None,                     # the queues the worker claims from (None: all)
        "GRACE": 30.0,                      # seconds running executions get at a worker's stop
        "AUTO_MIGRATE": True,               # create / upgrade durable's tables on first use
    }
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from durable.connect import check_url
from durable.errors import ConfigurationError
from durable.validation import (
    check_non_negative_float,
    check_optional_id,
    check_positive_float,
    check_positive_int,
    check_queues,
)

KEYS = {
    "URL",
    "WORKFLOWS",
    "EXECUTOR_ID",
    "POLL_INTERVAL",
    "CONCURRENCY",
    "QUEUES",
    "GRACE",
    "AUTO_MIGRATE",
}


@dataclass(frozen=True)
class DurableSettings:
    """``settings.DURABLE``, checked (see the module docstring for the keys)."""

    url: str
    workflows: tuple[str, ...] = ()
    executor_id: str | None = None
    poll_interval: float = 0.5
    concurrency: int = 10
    queues: tuple[str, ...] | None = None
    grace: float = 30.0
    auto_migrate: bool = True


def durable_settings() -> DurableSettings:
    """The project's ``DURABLE`` setting.

    :raises ConfigurationError: it is missing, not a dict, has an unknown key, or no ``URL``
        (or one :func:`durable.connect` would refuse);
        ``AUTO_MIGRATE`` is not a bool; ``WORKFLOWS`` is not a list of module names.
    :raises InvalidArgumentError: a number or a name out of range, naming the key.
    """
    raw: Any = getattr(settings, "DURABLE", None)
    if not isinstance(raw, dict):
        raise ConfigurationError(
            "settings.DURABLE must be a dict with at least a database URL, e.g. "
            f"DURABLE = {{'URL': 'sqlite:///durable.db'}}; got {raw!r}"
        )
    unknown = set(raw) - KEYS
    if unknown:
        raise ConfigurationError(
            f"settings.DURABLE has unknown key(s) {sorted(unknown)}: known are {sorted(KEYS)}"
        )
    try:
        url = check_url(raw.get("URL"))
    except ConfigurationError as exc:
        raise ConfigurationError(f"settings.DURABLE['URL']: {exc}") from None
    workflows = raw.get("WORKFLOWS", ())
    if (
        isinstance(workflows, str)
        or not isinstance(workflows, list | tuple)
        or not all(isinstance(m, str) and m for m in workflows)
    ):
        raise ConfigurationError(
            f"settings.DURABLE['WORKFLOWS'] must be a list of module names, got {workflows!r}"
        )
    auto_migrate = raw.get("AUTO_MIGRATE", True)
    if not isinstance(auto_migrate, bool):
        raise ConfigurationError(
            f"settings.DURABLE['AUTO_MIGRATE'] must be True or False, got {auto_migrate!r}"
        )
    queues = check_queues(raw.get("QUEUES"), "settings.DURABLE['QUEUES']")
    return DurableSettings(
        url=url,
        workflows=tuple(workflows),
        executor_id=check_optional_id(raw.get("EXECUTOR_ID"), "settings.DURABLE['EXECUTOR_ID']"),
        poll_interval=check_positive_float(
            raw.get("POLL_INTERVAL", 0.5), "settings.DURABLE['POLL_INTERVAL']"
        ),
        concurrency=check_positive_int(
            raw.get("CONCURRENCY", 10), "settings.DURABLE['CONCURRENCY']"
        ),
        queues=None if queues is None else tuple(queues),
        grace=check_non_negative_float(raw.get("GRACE", 30.0), "settings.DURABLE['GRACE']"),
        auto_migrate=auto_migrate,
    )
