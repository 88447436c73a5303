"""The process-wide client and runtime of a Django project, made from ``settings.DURABLE``.

Each is opened on first use in a process (so after a server such as gunicorn forks its workers,
and never by ``manage.py migrate`` and other commands that do not use it; one opened before a
fork, by ``gunicorn --preload`` importing code that uses it, is opened again in each child),
shared by every request thread, and closed when the process exits. A change of the
``DURABLE`` setting (``override_settings`` in tests) closes them, and the next use opens them on
the new settings.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from django.core.signals import setting_changed

from durable.client import Client
from durable.connect import connect
from durable.integrations.django.conf import DurableSettings, durable_settings
from durable.runtime import Runtime

_lock = threading.Lock()
_client: Client | None = None
_runtime: Runtime | None = None
_at_exit = False


def make_runtime(conf: DurableSettings | None = None, **options: Any) -> Runtime:
    """A new, unstarted runtime over ``settings.DURABLE`` (or ``conf``); ``options`` go to
    :class:`~durable.Runtime` and win over the settings. Its executor id is one of its own
    (per process) unless ``executor_id=`` is given: ``EXECUTOR_ID`` names the
    ``durable_worker`` process, which passes it; a view's runtime (:func:`get_runtime`), in
    each of the server's processes, must not take a worker's id, which only one live process
    may hold."""
    conf = conf or durable_settings()
    options = {"poll_interval": conf.poll_interval, **options}
    return Runtime(connect(conf.url, auto_migrate=conf.auto_migrate), **options)


def get_client() -> Client:
    """The started :class:`~durable.Client` of this process, for views: enqueue, read
    status and results with its ``_sync`` methods, from any request thread. It runs no
    workflow: ``manage.py durable_worker`` processes do.

    :raises ConfigurationError: ``settings.DURABLE`` is not usable (see
        :func:`~durable.integrations.django.conf.durable_settings`).
    :raises BackendUnavailableError: the database cannot be reached (the next call tries again).
    """
    global _client
    with _lock:
        if _client is not None and _client.started_elsewhere():
            _client.close_sync()  # opened before the server forked this process: forgotten
            _client = None
        if _client is None:
            conf = durable_settings()
            client = Client(
                conf.url, poll_interval=conf.poll_interval, auto_migrate=conf.auto_migrate
            )
            client.start_sync()
            _client = client
            _close_at_exit()
        return _client


def get_runtime() -> Runtime:
    """The started :class:`~durable.Runtime` of this process (no worker), for views that run a
    workflow in the request (``get_runtime().run_sync(...)``) or send to one. Recovery is on
    from its first use: it resumes this project's unfinished executions whose executor is gone.

    :raises ConfigurationError: ``settings.DURABLE`` is not usable.
    :raises BackendUnavailableError: the database cannot be reached (the next call tries again).
    """
    global _runtime
    with _lock:
        if _runtime is not None and _runtime.started_elsewhere():
            _runtime.close_sync()
            _runtime = None
        if _runtime is None:
            runtime = make_runtime()
            runtime.start_sync()
            _runtime = runtime
            _close_at_exit()
        return _runtime


def close() -> None:
    """Close this process's client and runtime now (the next use opens them again); blocking
    calls still running in other threads raise :class:`~durable.DurableError`."""
    global _client, _runtime
    with _lock:
        client, runtime = _client, _runtime
        _client = _runtime = None
    if runtime is not None:
        runtime.close_sync()  # in a fork of the process that opened it, only forgets it
    if client is not None:
        client.close_sync()


def _close_at_exit() -> None:
    global _at_exit
    if not _at_exit:
        atexit.register(close)
        _at_exit = True


def _on_setting_changed(*, setting: str, **_: Any) -> None:
    if setting == "DURABLE":
        close()


setting_changed.connect(_on_setting_changed)
