"""Headless Chromium driven by Playwright, as the tests and bench/web_page.py open the page (the dev extra).

Debian's `chromium` package, not a browser Playwright downloads: `apt-get install -y chromium`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dcgan.errors import DcganError

ARGS = [
    "--headless",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise DcganError("no chromium on PATH: install Debian's package (`apt-get install -y chromium`)")
    return path


@contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright browser context (a fresh profile, downloads allowed); closed with the browser on exit."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="dcgan-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium_path(),
            args=ARGS,
            headless=True,
            accept_downloads=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
