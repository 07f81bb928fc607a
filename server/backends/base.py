"""What a backend is to the relay: something that opens a stream of chunk payloads.

    async with backend.open_stream(request, headers) as payloads:
        async for payload in payloads:     # bytes: one chunk's JSON, or b"[DONE]"
            ...

``headers`` are added to the upstream request: the attempt's ``traceparent``
when traces are on (`server.telemetry`), else none. Never a client's header.

Leaving the ``async with`` — for whatever reason, cancellation included —
releases the upstream connection: the stream's lifetime is the caller's
scope. Failures before or during the stream raise `UpstreamError`s
(`server.errors`); a backend never lets a transport exception escape, so the
relay deals in one vocabulary whatever the model server is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from server.api.chat_completions import ChatRequest
from server.config import BackendSettings

NO_HEADERS: Mapping[str, str] = {}  # what a request adds to the upstream's headers: none


class Backend(Protocol):
    settings: BackendSettings

    def open_stream(
        self, request: ChatRequest, headers: Mapping[str, str] = ...
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class EmbeddingBackend(Protocol):
    """A backend that declares ``embeddings = true``: one JSON answer per request."""

    settings: BackendSettings

    async def embed(self, body: dict[str, Any]) -> bytes:
        """The upstream's ``/embeddings`` answer (an OpenAI embeddings list, as JSON bytes)."""
        ...
