"""A backend that speaks the OpenAI chat completions API over HTTP (kind ``openai``).

vLLM, llama.cpp's ``llama-server``, EXO, LM Studio and hosted APIs all fit.
The connection lives exactly as long as the ``async with`` of `open_stream`:

    async with backend.open_stream(request) as payloads:
        async for payload in payloads: ...        # chunk JSON, then b"[DONE]"

The transport (timeouts, pools, error mapping) is `server.backends.http`.
The client's own headers are never forwarded: the upstream key comes from
the backend's ``api_key_env`` and goes nowhere else. The body sent is the
client's, rendered for the upstream by `upstream_body` (as Ollama's is by
`server.backends.ollama_translate`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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
        body = upstream_body(request, self.settings.upstream_model,
                             stream_options=self.settings.stream_options)
        async with self._upstream.post(body, decode=_sse_payloads) as payloads:
            yield payloads


def upstream_body(request: ChatRequest, model: str | None = None, *,
                  stream_options: bool = True) -> dict[str, Any]:
    """What to send upstream: always a stream, so one code path relays and aggregates.

    A non-streaming client gets usage in its completion, so ask for it.
    ``model`` renames the model for a backend that knows it by another name.
    ``stream_options=False`` is for servers that reject the field: none is
    sent, the client's included, and so no usage chunk comes back.

    A continuation (`ChatRequest.continues_answer`) ends with the answer so
    far as a final assistant message (a *prefill*). vLLM needs
    ``continue_final_message`` and no generation prompt to continue it rather
    than answer it; llama.cpp's server continues a final assistant message
    by itself and ignores the two fields.
    """
    body = request.body
    if not request.stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    if model is not None and model != request.model:
        body = {**body, "model": model}
    if not stream_options and "stream_options" in body:
        body = {key: value for key, value in body.items() if key != "stream_options"}
    if request.continues_answer:
        body = {**body, "continue_final_message": True, "add_generation_prompt": False}
    return body


async def _sse_payloads(body: BodyReader) -> AsyncGenerator[bytes, None]:
    decoder = SSEDecoder()
    try:
        async for raw in body:
            for payload in decoder.feed(raw):
                yield payload
    except EventTooLarge as error:
        raise UpstreamUnavailable("The upstream sent a malformed stream.",
                                  detail=str(error)) from None
