"""A small async W3C WebDriver client: headless Chromium driven over chromedriver's HTTP API.

Why not selenium: its client is synchronous, and the browser talks to a Sluice
served by the *same* Trio loop as the test — every blocking selenium call
would freeze the server the browser is waiting for. WebDriver is plain JSON
over HTTP, so httpx does it natively, with no thread hops and no extra
dependency. Only Debian's ``chromium`` and ``chromium-driver`` are needed.

    async with open_browser(chromium, chromedriver, profile_dir) as browser:
        await browser.get(url)
        await browser.click(await browser.find("#send"))
        await browser.wait_for("document.title === 'Sluice'")
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

# How long the browser gets to start, and a WebDriver command to answer.
BROWSER_START = 30.0
# WebDriver's default bound on an async script; a wait in the page ends this much earlier.
_SCRIPT_TIMEOUT = 30.0
_MARGIN = 0.25
# The W3C key of an element reference in WebDriver JSON.
_ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
_STARTED = re.compile(rb"started successfully on port (\d+)")

CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--no-first-run", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--window-size=1024,768",
)


class WebDriverError(Exception):
    """A WebDriver command failed (``error`` is the W3C error code)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error


class Browser:
    """One WebDriver session; elements are referenced by their WebDriver ids."""

    def __init__(self, http: httpx.AsyncClient, session: str) -> None:
        self._http = http
        self._session = session

    async def _command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self._http.request(method, f"/session/{self._session}{path}",
                                            json=body)
        value = response.json()["value"]
        if response.status_code != 200:
            raise WebDriverError(value.get("error", "?"), value.get("message", ""))
        return value

    async def get(self, url: str) -> None:
        await self._command("POST", "/url", {"url": url})

    async def find(self, css: str) -> str:
        found = await self._command("POST", "/element", {"using": "css selector", "value": css})
        element: str = found[_ELEMENT]
        return element

    async def click(self, element: str) -> None:
        await self._command("POST", f"/element/{element}/click", {})

    async def type(self, element: str, text: str) -> None:
        await self._command("POST", f"/element/{element}/value", {"text": text})

    async def text(self, element: str) -> str:
        text: str = await self._command("GET", f"/element/{element}/text")
        return text

    async def execute(self, script: str, *args: Any) -> Any:
        """Run ``script`` (a function body; ``arguments`` holds ``args``) in the page."""
        return await self._command("POST", "/execute/sync", {"script": script, "args": list(args)})

    async def wait_for(self, condition: str) -> Any:
        """Wait in the page until the JavaScript expression ``condition`` is truthy.

        The wait runs in the browser (one async script), not as a loop of
        round-trips. The caller bounds it with ``trio.fail_after``; the page
        gives up just before that deadline, so the failure names the condition.
        """
        remaining = trio.current_effective_deadline() - trio.current_time()
        seconds = max(0.0, min(remaining - _MARGIN, _SCRIPT_TIMEOUT - _MARGIN))
        script = f"""
            const done = arguments[arguments.length - 1];
            const deadline = Date.now() + {seconds * 1000:.0f};
            const poll = () => {{
                let value;
                try {{ value = ({condition}); }} catch (error) {{ value = undefined; }}
                if (value) done({{ok: true, value: value}});
                else if (Date.now() > deadline) done({{ok: false}});
                else setTimeout(poll, 10);
            }};
            poll();
        """
        result = await self._command("POST", "/execute/async",
                                     {"script": script, "args": []})
        if not result["ok"]:
            raise TimeoutError(f"not true after {seconds:.1f} s: {condition}")
        return result["value"]


@asynccontextmanager
async def open_browser(chromium: str, chromedriver: str, profile: Path) -> AsyncIterator[Browser]:
    """Start chromedriver on a free port and one headless Chromium session; stop both on exit."""
    async with trio.open_nursery() as nursery:
        driver: trio.Process = await nursery.start(partial(
            trio.run_process, [chromedriver, "--port=0"], check=False,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
        assert driver.stdout is not None
        try:
            with trio.fail_after(BROWSER_START):
                port = await _read_port(driver.stdout)
            nursery.start_soon(_drain, driver.stdout)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         timeout=BROWSER_START, trust_env=False) as http:
                options = {"binary": chromium,
                           "args": [*CHROMIUM_ARGS, f"--user-data-dir={profile}"]}
                created = await http.post("/session", json={"capabilities": {"alwaysMatch": {
                    "browserName": "chrome", "goog:chromeOptions": options}}})
                value = created.json()["value"]
                if created.status_code != 200:
                    raise WebDriverError(value.get("error", "?"), value.get("message", ""))
                session = value["sessionId"]
                try:
                    yield Browser(http, session)
                finally:
                    with trio.move_on_after(BROWSER_START, shield=True):
                        await http.delete(f"/session/{session}")  # quits Chromium
        finally:
            nursery.cancel_scope.cancel("browser test finished")  # stops chromedriver


async def _read_port(stdout: trio.abc.ReceiveStream) -> int:
    seen = b""
    while (match := _STARTED.search(seen)) is None:
        data = await stdout.receive_some()
        if not data:
            raise WebDriverError("chromedriver", f"exited before it listened: {seen!r}")
        seen += data
    return int(match.group(1))


async def _drain(stdout: trio.abc.ReceiveStream) -> None:
    """Keep reading chromedriver's output so a full pipe never blocks it."""
    while await stdout.receive_some():
        pass
