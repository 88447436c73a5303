"""Take the README's screenshots of the web view: docs/web-workflows.png (the list) and
docs/web-workflow.png (one workflow's timeline).

Fills a fresh SQLite file with real runs (tests/webdata.py), serves the view with uvicorn on a
free local port and shoots the pages in headless Chromium (Debian's /usr/bin/chromium, through
Playwright)::

    .venv/bin/python scripts/screenshots.py [--out docs] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import webdata  # noqa: E402

from durable.web import create_app  # noqa: E402

SHOTS = {
    "web-workflows.png": "/workflows",
    "web-workflow.png": "/workflows/report-8",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'shots.db'}"
        asyncio.run(webdata.fill(url, orders=6, showcase=True))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(url, actions=True), port=port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                for name, path in SHOTS.items():
                    page.goto(f"http://127.0.0.1:{port}{path}")
                    page.screenshot(path=str(args.out / name), full_page=True)
                    print(args.out / name)
                browser.close()
        finally:
            server.should_exit = True
            thread.join(timeout=30)


if __name__ == "__main__":
    main()
