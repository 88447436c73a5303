"""durable in a Flask application: the :class:`Durable` extension.

::

    from flask import Flask
    from durable.integrations.flask import Durable

    durable_ext = Durable()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config["DURABLE_URL"] = "sqlite:///app.db"
        durable_ext.init_app(app)

        @app.post("/orders/<order_id>")
        def start(order_id: str):
            return {"id": durable_ext.client.enqueue_sync("orders.checkout.v1", order_id)}

        return app

Flask views are sync, so they use the blocking API (the ``_sync`` methods): the client (or
runtime) runs on a background event loop of its own, opened on first use in each process (so
after a server such as gunicorn forks its workers; one opened before the fork, by a preloaded
app, is opened again in each child), shared by every request thread, and closed
when the process exits. Configuration, from ``app.config``:

========================= ======================================================================
``DURABLE_URL``           the database URL (required)
``DURABLE_WORKER``        run a worker in the web process (a :class:`~durable.Runtime`); default
                          False: a :class:`~durable.Client` that only starts and reads
                          executions, while ``durable worker module:runtime`` processes run them
``DURABLE_CONCURRENCY``   the worker's concurrency (default 10)
``DURABLE_QUEUES``        the queues the worker claims from (default: all)
``DURABLE_EXECUTOR_ID``   the runtime's executor id (default: one per process)
``DURABLE_POLL_INTERVAL`` seconds between looks while waiting for a result (default 0.5); the
                          worker's poll interval too
========================= ======================================================================

Needs Flask (``pip install 'durable-sqla[integrations]'``).
"""

from __future__ import annotations

import atexit
import threading

from flask import Flask, current_app

from durable.client import Client
from durable.connect import connect
from durable.errors import ConfigurationError, DurableError
from durable.runtime import Runtime
from durable.validation import (
    check_optional_id,
    check_positive_float,
    check_positive_int,
    check_queues,
)

EXTENSION = "durable"
"""The key of ``app.extensions`` under which an app's durable state is kept."""


class _Opened:
    """One app's client or runtime: made and started on first use, closed at exit."""

    def __init__(self, app: Flask) -> None:
        config = app.config
        url = config.get("DURABLE_URL")
        if not isinstance(url, str) or not url:
            raise ConfigurationError(
                "app.config['DURABLE_URL'] must be a database URL (e.g. 'sqlite:///app.db'), "
                f"got {url!r}"
            )
        self.url = url
        self.worker = config.get("DURABLE_WORKER", False)
        if not isinstance(self.worker, bool):
            raise ConfigurationError(f"DURABLE_WORKER must be True or False, got {self.worker!r}")
        self.concurrency = check_positive_int(
            config.get("DURABLE_CONCURRENCY", 10), "DURABLE_CONCURRENCY"
        )
        self.queues = check_queues(config.get("DURABLE_QUEUES"), "DURABLE_QUEUES")
        self.executor_id = check_optional_id(
            config.get("DURABLE_EXECUTOR_ID"), "DURABLE_EXECUTOR_ID"
        )
        self.poll_interval = check_positive_float(
            config.get("DURABLE_POLL_INTERVAL", 0.5), "DURABLE_POLL_INTERVAL"
        )
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._client: Client | None = None
        self._at_exit = False

    def client(self) -> Client:
        with self._lock:
            if self._client is not None and self._client.started_elsewhere():
                # opened before the server forked this process (gunicorn --preload): the loop
                # it runs on stayed in the parent, so this process opens its own
                (self._runtime or self._client).close_sync()  # forgets it, in a fork
                self._runtime = self._client = None
            if self._client is None:
                self._open()
            assert self._client is not None
            return self._client

    def runtime(self) -> Runtime:
        if not self.worker:
            raise DurableError(
                "this app has a durable client only: set app.config['DURABLE_WORKER'] = True to "
                "run a runtime and a worker in the web process"
            )
        self.client()
        assert self._runtime is not None
        return self._runtime

    def _open(self) -> None:
        if self.worker:
            runtime = Runtime(
                connect(self.url), executor_id=self.executor_id, poll_interval=self.poll_interval
            )
            runtime.start_sync()
            try:
                runtime.start_worker_sync(
                    concurrency=self.concurrency,
                    queues=self.queues,
                    poll_interval=self.poll_interval,
                )
            except BaseException:
                runtime.close_sync()
                raise
            self._runtime, self._client = runtime, runtime.client
        else:
            client = Client(self.url, poll_interval=self.poll_interval)
            client.start_sync()
            self._client = client
        if not self._at_exit:
            atexit.register(self.close)
            self._at_exit = True

    def close(self) -> None:
        with self._lock:
            runtime, client = self._runtime, self._client
            self._runtime = self._client = None
        if runtime is not None:
            runtime.close_sync()  # its worker first: running executions are handed back
        elif client is not None:
            client.close_sync()


class Durable:
    """The Flask extension: ``Durable(app)``, or ``ext = Durable()`` then ``ext.init_app(app)``
    in an app factory (one extension may serve several apps, each with its own configuration;
    see the module docstring for the keys).

    :attr:`client` and :attr:`runtime` are the current app's, started on first use in the
    process and closed at its exit (or by :meth:`close`). They may be used from any number of
    request threads at once.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the app's ``DURABLE_*`` configuration; nothing connects yet.

        :raises ConfigurationError: ``DURABLE_URL`` is missing or not a str, ``DURABLE_WORKER``
            not a bool.
        :raises InvalidArgumentError: ``DURABLE_CONCURRENCY``, ``DURABLE_QUEUES``,
            ``DURABLE_EXECUTOR_ID`` or ``DURABLE_POLL_INTERVAL`` is out of range.
        """
        app.extensions[EXTENSION] = _Opened(app)

    @staticmethod
    def _of(app: Flask | None) -> _Opened:
        target = app if app is not None else current_app
        opened = target.extensions.get(EXTENSION)
        if not isinstance(opened, _Opened):
            raise DurableError(
                f"durable is not set up on the Flask app {target.name!r}: call "
                "Durable(app) or Durable().init_app(app)"
            )
        return opened

    @property
    def client(self) -> Client:
        """The current app's started client (a runtime's own when ``DURABLE_WORKER``): use its
        ``_sync`` methods in views."""
        return self.client_for(None)

    @property
    def runtime(self) -> Runtime:
        """The current app's started runtime, whose worker runs workflows in this process
        (``runtime.run_sync(...)`` runs one in the request).

        :raises DurableError: ``DURABLE_WORKER`` is not set (the app has a client only).
        """
        return self._of(None).runtime()

    def client_for(self, app: Flask | None) -> Client:
        """:attr:`client` of ``app`` (default: the current app), outside a request too."""
        return self._of(app).client()

    def close(self, app: Flask | None = None) -> None:
        """Close ``app``'s client or runtime now (default: the current app's) rather than at
        exit; the next use opens it again. A running worker stops and hands its executions
        back."""
        self._of(app).close()

    def __repr__(self) -> str:
        return "Durable()"
