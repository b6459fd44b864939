"""Debian's Chromium driven by Playwright, for the console's tests: a page that fails the test on any script
error or any request that would leave the machine. Playwright's own browser download cannot work here; the
`chromium` package can (scripts/test installs it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
# Where screenshots go: a test artifact CI can keep (not committed).
ARTIFACTS = Path(os.environ.get("CONSOLE_ARTIFACTS", ROOT / "test-artifacts" / "console"))


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: scripts/test installs it with apt-get (the `chromium` package)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@dataclass
class Watched:
    """A page and what it did that a user would notice: script errors, and requests to anywhere but here."""

    page: Page
    errors: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert not self.errors, f"script errors: {self.errors}"
        assert not self.outside, f"requests leaving the machine: {self.outside}"

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def watched_page(browser: Browser, *, width: int = 1280, height: int = 900) -> Watched:
    context = browser.new_context(viewport={"width": width, "height": height}, timezone_id="Europe/Paris")
    page = context.new_page()
    watched = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        # A page answered with an error status (a wrong key's 401) is logged as a failed load: pages are judged by
        # their status, the resources they load below.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            watched.errors.append(message.text)

    def on_response(response: Response) -> None:
        if response.status >= 400 and response.request.resource_type != "document":
            watched.errors.append(f"{response.status} for {response.url}")

    def on_request(request: Request) -> None:
        host = urlsplit(request.url).hostname
        if request.url.startswith(("http:", "https:", "ws:", "wss:")) and host not in ("127.0.0.1", "localhost"):
            watched.outside.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(str(error)))
    page.on("request", on_request)
    page.on("response", on_response)
    return watched
