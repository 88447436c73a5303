#!/usr/bin/env python
"""The example Django project's manage.py (see README.md beside it).

To run: pip install 'durable-sqla[integrations]', then, from examples/django_app/:
    python manage.py durable_worker        # the worker (SIGTERM or Ctrl-C stops it)
    python manage.py runserver             # the site, in another terminal
(SQLite, no server: durable.db here). On PostgreSQL: export
DURABLE_DATABASE_URL=postgresql://user@host/db for both.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
