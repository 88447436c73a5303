"""Settings of the example project: durable's and the least Django needs (no ORM database:
durable keeps its own tables, in the database of ``DURABLE["URL"]``)."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# durable: a SQLite file beside manage.py by default (no server), PostgreSQL by setting
# DURABLE_DATABASE_URL=postgresql://user@host/db for the site and the worker alike.
DURABLE = {
    "URL": os.environ.get("DURABLE_DATABASE_URL", f"sqlite:///{BASE_DIR / 'durable.db'}"),
    "CONCURRENCY": 10,
}

INSTALLED_APPS = ["durable.integrations.django", "orders"]

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
ROOT_URLCONF = "shopsite.urls"
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
