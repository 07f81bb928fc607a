"""A backend that speaks the OpenAI chat completions API over HTTP (kind ``openai``).

vLLM, llama.cpp's ``llama-server``, EXO, LM Studio and hosted APIs all fit.
The connection lives exactly as long as the ``async with`` of `open_stream`:

    async with backend.open_stream(request) as payloads:
        async for payload in payloads: ...        # chunk JSON, then b"[DONE]"

The transport (timeouts, pools, error mapping) is `server.backends.http`.
The client's own headers are never forwarded: the upstream key comes from
the backend's ``api_key_env`` and goes nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

from server.api.chat_completions import ChatRequest
from server.backends.http import BodyReader, HttpUpstream
from server.config import BackendSettings
from server.errors import UpstreamUnavailable
from server.sse import EventTooLarge, SSEDecoder


class OpenAIBackend:
    def __init__(self, settings: BackendSettings, api_key: str | None, *,
                 max_idle: int) -> None:
        self.settings = settings
        self._upstream = HttpUpstream.for_backend(
            settings, "/chat/completions", accept="text/event-stream", api_key=api_key,
            max_idle=max_idle)

    def close(self) -> None:
        self._upstream.close()

    @asynccontextmanager
    async def open_stream(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[bytes]]:
        body = request.upstream_body(self.settings.upstream_model,
                                     stream_options=self.settings.stream_options)
        async with self._upstream.post(body, decode=_sse_payloads) as payloads:
            yield payloads


async def _sse_payloads(body: BodyReader) -> AsyncGenerator[bytes, None]:
    decoder = SSEDecoder()
    try:
        async for raw in body:
            for payload in decoder.feed(raw):
                yield payload
    except EventTooLarge as error:
        raise UpstreamUnavailable("The upstream sent a malformed stream.",
                                  detail=str(error)) from None
