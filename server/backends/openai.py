"""A backend that speaks the OpenAI chat completions API over HTTP (kind ``openai``).

vLLM, llama.cpp's ``llama-server``, EXO, LM Studio and hosted APIs all fit.
The connection lives exactly as long as the ``async with`` of `open_stream`:

    async with backend.open_stream(request) as payloads:
        async for payload in payloads: ...        # chunk JSON, then b"[DONE]"

A backend that declares ``completions = true`` also streams ``/completions``
(its chunks translated into chat chunks as they are read, see
`server.api.completions`); one that declares ``embeddings = true`` answers
`embed` from ``/embeddings``. The transport (timeouts, pools, error mapping)
is `server.backends.http`.
The client's own headers are never forwarded: the upstream key comes from
the backend's ``api_key_env`` and goes nowhere else. The body sent is the
client's, rendered for the upstream by `upstream_body` (as Ollama's is by
`server.backends.ollama_translate`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson

from server.api.chat_completions import ChatRequest
from server.api.completions import CompletionRequest, as_chat_chunk
from server.backends.base import NO_HEADERS
from server.backends.http import BodyReader, Decode, HttpUpstream
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
        # The legacy endpoints, for a backend that declares them (each with its own pool).
        self._completions = HttpUpstream.for_backend(
            settings, "/completions", accept="text/event-stream", api_key=api_key,
            max_idle=max_idle) if settings.completions else None
        self._embeddings = HttpUpstream.for_backend(
            settings, "/embeddings", accept="application/json", api_key=api_key,
            max_idle=max_idle) if settings.embeddings else None

    def close(self) -> None:
        for upstream in (self._upstream, self._completions, self._embeddings):
            if upstream is not None:
                upstream.close()

    @asynccontextmanager
    async def open_stream(self, request: ChatRequest, headers: Mapping[str, str] = NO_HEADERS
                          ) -> AsyncIterator[AsyncIterator[bytes]]:
        body = upstream_body(request, self.settings.upstream_model,
                             stream_options=self.settings.stream_options)
        upstream: HttpUpstream = self._upstream
        decode: Decode = _sse_payloads
        if isinstance(request, CompletionRequest):
            assert self._completions is not None  # routed only to backends that declare it
            upstream, decode = self._completions, partial(_sse_payloads,
                                                          translate=as_chat_chunk)
        async with upstream.post(body, decode=decode, headers=headers) as payloads:
            yield payloads

    async def embed(self, body: dict[str, Any]) -> bytes:
        assert self._embeddings is not None  # routed only to backends that declare it
        async with self._embeddings.post(body, decode=_whole_body) as parts:
            answer = b"".join([part async for part in parts])
        try:
            parsed = orjson.loads(answer)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), list):
            raise UpstreamUnavailable("The upstream sent a malformed embeddings answer.",
                                      detail=f"embeddings body: {answer[:200]!r}")
        return answer


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

async def _whole_body(body: BodyReader) -> AsyncGenerator[bytes, None]:
    async for raw in body:
        yield raw


async def _sse_payloads(body: BodyReader, translate: Callable[[bytes], bytes] | None = None
                        ) -> AsyncGenerator[bytes, None]:
    """The stream's event payloads; ``translate`` reshapes each (a ``/completions`` chunk)."""
    decoder = SSEDecoder()
    try:
        async for raw in body:
            for payload in decoder.feed(raw):
                yield payload if translate is None else translate(payload)
    except EventTooLarge as error:
        raise UpstreamUnavailable("The upstream sent a malformed stream.",
                                  detail=str(error)) from None
