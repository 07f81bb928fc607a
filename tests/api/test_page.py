"""``GET /``: the page is served self-contained, under a policy that allows only itself.

The page's behaviour in a real browser is `tests/browser/test_page.py`.
"""

from __future__ import annotations

import base64
import hashlib
import re

import httpx

from server.api.page import content_security_policy, page_html
from tests.conftest import RunningSluice


def test_the_policy_allows_exactly_the_inline_blocks_by_hash() -> None:
    html = b"<style>a{}</style><p>x</p><script>go()</script><script>more()</script>"
    policy = dict(part.split(" ", 1) for part in content_security_policy(html).split("; "))

    def sha(body: bytes) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"

    assert policy["script-src"] == f"{sha(b'go()')} {sha(b'more()')}"
    assert policy["style-src"] == sha(b"a{}")
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert dict(part.split(" ", 1) for part in content_security_policy(b"<p>").split("; "))[
        "script-src"] == "'none'"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN, no build step: one file with its CSS and JavaScript inline."""
    html = page_html().decode()
    assert re.search(r"<script[^>]*\ssrc=", html) is None
    assert re.search(r"<link[^>]*stylesheet", html) is None
    assert re.search(r"https?://", html) is None
    assert html.count("<script>") == 1 and html.count("<style>") == 1
    assert re.search(r"\son[a-z]+=", html) is None  # no inline handlers: the CSP forbids them
    assert re.search(r"\sstyle=", html) is None  # no style attributes: likewise


async def test_the_page_is_served_with_its_policy(
    sluice: RunningSluice, client: httpx.AsyncClient
) -> None:
    response = await client.get(sluice.base_url + "/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == page_html()
    assert response.headers["content-security-policy"] == content_security_policy(page_html())
    assert response.headers["x-content-type-options"] == "nosniff"
    assert b'fetch("/chat"' in response.content and b"new EventSource(" in response.content
