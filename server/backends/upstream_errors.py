"""Reading an upstream's refusal: its status, its error body, its Retry-After.

Pure functions, so the mapping from what a model server said to what the
client sees (`UpstreamStatusError`) is tested without sockets. Messages of
relayed 4xx errors reach the client (they explain "context length
exceeded"); `redact` first removes anything naming the upstream.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import orjson

from server.errors import UpstreamStatusError

MAX_ERROR_BODY = 64 * 1024


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait, from delta-seconds or an HTTP-date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # asctime and "-0000" forms: HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds == float("inf"):  # NaN or infinite
        return None
    return max(0.0, seconds)


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """Remove each secret; for a URL, also its host wherever it appears (any path, any port)."""
    words = set()
    for secret in secrets:
        if not secret:
            continue
        words.add(secret)
        if "://" in secret:
            parts = urlsplit(secret)
            words.update(w for w in (parts.netloc, parts.hostname) if w)
    for word in sorted(words, key=len, reverse=True):  # longest first: URL before its host
        text = text.replace(word, "[redacted]")
    return text


def status_error(
    status: int, body: bytes, retry_after: str | None, *, secrets: tuple[str, ...]
) -> UpstreamStatusError:
    """The error for an upstream's non-2xx answer, from its (possibly non-JSON) body."""
    error: dict[str, Any] = {}
    try:
        parsed = orjson.loads(body[:MAX_ERROR_BODY])
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        inner = parsed.get("error", parsed)
        if isinstance(inner, dict):
            error = inner
        elif isinstance(inner, str):
            error = {"message": inner}
        if "message" not in error and isinstance(parsed.get("detail"), str):
            error["message"] = parsed["detail"]  # FastAPI-style servers
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"The upstream model server answered HTTP {status}."

    def text(key: str) -> str | None:
        value = error.get(key)
        return redact(str(value), secrets) if value is not None else None

    return UpstreamStatusError(
        status,
        public_message=redact(message, secrets),
        type_=text("type"),
        code=text("code"),
        param=text("param"),
        retry_after=parse_retry_after(retry_after),
        detail=f"upstream HTTP {status}: {body[:500]!r}",
    )
