"""Browser tests: headless Chromium against a live Sluice, driven over WebDriver.

They need Debian's ``chromium`` and ``chromium-driver`` (``apt-get install
chromium chromium-driver``) and nothing from PyPI beyond the test group: the
WebDriver client is `tests.browser.webdriver`, on httpx. Without them every
test here is skipped, so the default test session stays green on machines
without a browser; CI runs them in the ``browser`` nox session.

``SLUICE_CHROMIUM`` and ``SLUICE_CHROMEDRIVER`` override where they are found;
with ``SLUICE_REQUIRE_BROWSER=1`` (the CI session) a missing browser fails the
tests instead of skipping them, so CI cannot pass without running them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.browser.webdriver import Browser, open_browser

MISSING = ("needs Chromium and chromedriver: apt-get install chromium chromium-driver "
           "(or set SLUICE_CHROMIUM / SLUICE_CHROMEDRIVER)")


def _locate(variable: str, *names: str) -> str | None:
    """The executable named by ``variable``, else the first of ``names`` on PATH."""
    if os.environ.get(variable):
        names = (os.environ[variable],)
    return next((path for name in names if (path := shutil.which(name))), None)


CHROMIUM = _locate("SLUICE_CHROMIUM", "chromium", "chromium-browser")
CHROMEDRIVER = _locate("SLUICE_CHROMEDRIVER", "chromedriver")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if (CHROMIUM and CHROMEDRIVER) or os.environ.get("SLUICE_REQUIRE_BROWSER") == "1":
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=MISSING))


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.fail(MISSING + " — required by SLUICE_REQUIRE_BROWSER=1")
    async with open_browser(CHROMIUM, CHROMEDRIVER, tmp_path / "profile") as running:
        yield running
