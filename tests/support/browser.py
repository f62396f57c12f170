"""Debian's headless Chromium driven by Playwright, kept to loopback, with screenshots for a person.

The browser is the system's (`/usr/bin/chromium`, or `OPENVERTEX_CHROMIUM`): nothing is downloaded.
Without one the browser tests skip, unless `OPENVERTEX_REQUIRE_BROWSER=1` (CI sets it) makes a
missing browser a failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

SCREENSHOTS = Path(__file__).resolve().parents[1] / "output" / "console"

# Loopback only: no background services, and every host name but 127.0.0.1 fails to resolve.
_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-sync",
    "--disable-breakpad",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def chromium_path() -> str | None:
    configured = os.environ.get("OPENVERTEX_CHROMIUM")
    if configured:
        return configured
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def chromium() -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        if os.environ.get("OPENVERTEX_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium found (install Debian's chromium, or set OPENVERTEX_CHROMIUM)")
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    """A full-page picture of this step, under tests/output/console/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
