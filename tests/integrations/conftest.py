"""Fixtures for the tests of the framework integrations and their examples (examples/).

``durable_url`` is the database the example apps run on: a new SQLite file, then a new
PostgreSQL database (marked ``postgres``). It overrides the fixture of durable's pytest plugin
(``durable.testing.plugin``), as its documentation says to run on a real database: these tests
need one that other processes (a worker started as a subprocess) can open too. The plugin's
other fixtures (``durable_runtime``, ``durable_worker``) then run on it: the tests use them for
the worker that stands for ``durable worker`` / ``manage.py durable_worker``.

The examples' folders are put on ``sys.path`` so that the tests import them as their runners
do (``uvicorn fastapi_app:app``, ``manage.py`` in examples/django_app).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DJANGO_PROJECT = EXAMPLES / "django_app"

for folder in (EXAMPLES, DJANGO_PROJECT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable_url(request: pytest.FixtureRequest) -> str:
    """A URL to a new, empty database: a SQLite file, or a PostgreSQL database."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))
