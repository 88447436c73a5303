"""The integrations stay out of ``import durable``: no web framework is imported until an
integration module is (each one imports its own framework, and only it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("fastapi", "starlette", "django", "flask")


def frameworks_after(code: str) -> list[str]:
    listed = f"[m for m in {FRAMEWORKS!r} if m in sys.modules]"
    probe = f"{code}\nimport json, sys\nprint(json.dumps({listed}))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return list(json.loads(out.splitlines()[-1]))


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import durable; import durable.integrations", []),
        ("import durable.integrations.starlette", ["starlette"]),
        ("import durable.integrations.flask", ["flask"]),
        ("import durable.integrations.django", ["django"]),
    ],
)
def test_each_integration_imports_its_own_framework_only(code: str, expected: list[str]) -> None:
    assert frameworks_after(code) == expected


@pytest.mark.parametrize(
    "path", ["fastapi_app.py", "flask_app.py", "django_app/manage.py", "django_app/README.md"]
)
def test_every_example_says_how_to_run_it(path: str) -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "examples" / path).read_text()
    assert "To run:" in text and "DURABLE_DATABASE_URL" in text
