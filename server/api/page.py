"""``GET /``: a small page to try Sluice in a browser.

The page (`server/static/index.html`) is one self-contained file — inline
CSS and JavaScript, no build step, no CDN — because the machine serving it
may be offline. It talks to ``/v1/models`` and ``/chat`` with ``fetch`` and
reads the stream with a ``ReadableStream`` reader. Its streams are resumable
(``X-Sluice-Resumable: true``): it keeps the reply in flight in
``sessionStorage``, and after a reload it shows the reply so far and resumes
the stream after its last event with an ``EventSource``; Stop cancels the
stream (``POST /chat/{id}/cancel``), so the model stops too.

Its Content-Security-Policy allows nothing but that: the inline ``<script>``
and ``<style>`` by their SHA-256 hashes (computed here from the file as
served, so an edit to the page cannot leave a stale hash behind) and
``fetch`` and ``EventSource`` to its own origin.

    register_page(app)
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from quart import Quart, Response

_BLOCK = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


def page_html() -> bytes:
    return (files("server") / "static" / "index.html").read_bytes()


def content_security_policy(html: bytes) -> str:
    """Allow the page's own inline blocks (by hash), fetches to its origin, nothing else."""
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for kind, body in _BLOCK.findall(html):
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    return "; ".join([
        "default-src 'none'",
        "script-src " + (" ".join(hashes[b"script"]) or "'none'"),
        "style-src " + (" ".join(hashes[b"style"]) or "'none'"),
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def register_page(app: Quart) -> None:
    html = page_html()
    headers = {
        "Content-Security-Policy": content_security_policy(html),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }

    @app.get("/")
    async def index() -> Response:
        return Response(html, content_type="text/html; charset=utf-8", headers=headers)
