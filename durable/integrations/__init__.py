"""durable inside web frameworks: one module per framework, each imported only when used.

* :mod:`durable.integrations.starlette`: ``durable_lifespan``, a lifespan for Starlette and
  FastAPI that starts a runtime (and, by default, a worker) and closes it on shutdown;
  ``get_runtime`` / ``get_client`` for endpoints (FastAPI dependencies).
* :mod:`durable.integrations.flask`: the ``Durable`` extension (``Durable(app)`` /
  ``init_app``): a client or runtime per app, opened on first use, closed at exit.
* :mod:`durable.integrations.django`: a Django app (``"durable.integrations.django"`` in
  ``INSTALLED_APPS``) configured by the ``DURABLE`` setting, with the ``durable_worker`` and
  ``durable_migrate`` management commands.

``import durable`` imports none of them, and none of the frameworks: each module imports its
framework, which must be installed (``pip install 'durable-sqla[integrations]'``).
"""
