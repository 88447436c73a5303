"""``import durable`` stays light: the SQL stack is imported when a database is first used.

Not a timing test (``benchmarks/import_time.py`` measures the time): it checks, in a fresh
interpreter, which heavy packages an import pulls in.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Packages that only a database needs, and that take most of a second to import together.
HEAVY = ("alembic", "psycopg", "sqlalchemy.orm", "sqlalchemy.ext.asyncio", "aiosqlite")


def imported_after(code: str) -> list[str]:
    """The packages of HEAVY in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return list(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(
    "code",
    [
        "import durable",
        "import durable.testing",
        "import durable.cli",
        # memory:// needs no database driver.
        "import durable; durable.connect('memory://')",
    ],
)
def test_the_sql_stack_is_not_imported_up_front(code: str) -> None:
    assert imported_after(code) == []


def test_the_backend_is_imported_on_first_use() -> None:
    # The lazy names still resolve, to the same class, and are listed.
    loaded = imported_after(
        "import durable, durable.backends, durable.backends.sql\n"
        "assert durable.SQLAlchemyBackend is durable.backends.SQLAlchemyBackend\n"
        "assert durable.SQLAlchemyBackend is durable.backends.sql.SQLAlchemyBackend\n"
        "assert 'SQLAlchemyBackend' in dir(durable)\n"
        "from durable import *\n"
        "assert SQLAlchemyBackend.__name__ == 'SQLAlchemyBackend'"
    )
    assert "sqlalchemy.ext.asyncio" in loaded


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    import durable
    import durable.backends
    import durable.backends.sql

    for module in (durable, durable.backends, durable.backends.sql):
        with pytest.raises(AttributeError, match="no_such_name"):
            module.no_such_name  # noqa: B018
