"""A backend that speaks Ollama's native ``/api/chat`` (kind ``ollama``).

The base URL is the server's root (``http://127.0.0.1:11434``, no ``/v1``).
The client's ``/v1/chat/completions`` request is translated into an
``/api/chat`` request and the NDJSON answer back into OpenAI chunk payloads
by `server.backends.ollama_translate` — its docstring lists which OpenAI
options map and which are dropped. This module only moves bytes, and does it
exactly as `server.backends.openai` does: the connection lives as long as
the ``async with``, the transport owns only the connect timeout (the relay owns the
first-chunk and idle timers), and failures become the relay's vocabulary::

    async with backend.open_stream(request) as payloads:
        async for payload in payloads: ...     # role, deltas, finish, usage, b"[DONE]"

* a request that cannot be expressed for Ollama: `RequestError` (400),
  raised before connecting;
* a non-2xx answer: `status_error` — Ollama's body is ``{"error": "..."}``;
  a 404 ("model 'x' not found") reaches the client as 404 ``model_not_found``;
* connect failure or timeout: `UpstreamUnavailable` / `UpstreamTimeout`;
* the body breaking off: `StreamCut`; a bad or ``{"error": ...}`` line:
  `UpstreamUnavailable`; a body that ends without ``done``: the relay's cut.

The stream is always requested with ``stream: true``: a non-streaming client
is answered by aggregating it, and then gets the usage chunk too.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager

from server.api.chat_completions import ChatRequest
from server.backends.base import NO_HEADERS
from server.backends.http import BodyReader, HttpUpstream
from server.backends.ollama_translate import NDJSONDecoder, OllamaStream, ollama_chat_body
from server.config import BackendSettings
from server.errors import SluiceError


class OllamaBackend:
    def __init__(self, settings: BackendSettings, api_key: str | None, *,
                 max_idle: int) -> None:
        self.settings = settings
        # Ollama itself takes no key; a proxy in front of it, or ollama.com, may.
        self._upstream = HttpUpstream.for_backend(
            settings, "/api/chat", accept="application/x-ndjson", api_key=api_key,
            max_idle=max_idle)

    def close(self) -> None:
        self._upstream.close()

    @asynccontextmanager
    async def open_stream(self, request: ChatRequest, headers: Mapping[str, str] = NO_HEADERS
                          ) -> AsyncIterator[AsyncIterator[bytes]]:
        body = ollama_chat_body(request, self.settings.upstream_model)
        translator = OllamaStream(completion_id=f"chatcmpl-{secrets.token_hex(12)}",
                                  created=int(time.time()), model=request.model,
                                  include_usage=request.include_usage or not request.stream)

        async def payloads(body: BodyReader) -> AsyncGenerator[bytes, None]:
            lines = NDJSONDecoder()
            async for raw in body:
                for line in lines.feed(raw):
                    for payload in translator.translate(line):
                        yield payload
            for line in lines.close():  # the last line may come without its newline
                for payload in translator.translate(line):
                    yield payload

        async with self._upstream.post(body, decode=payloads, to_error=self._status_error,
                                       headers=headers) as chunks:
            yield chunks

    def _status_error(self, status: int, headers: Mapping[str, str],
                      body: bytes) -> SluiceError:
        error = self._upstream.status_error(status, headers, body)
        if (status == 404 and error.code is None
                and "model" in error.public_message.lower()):
            # Ollama answers an unknown model with 404 {"error": "model 'x' not found"};
            # give it OpenAI's code, so clients can tell it from a wrong URL.
            error.code = "model_not_found"
            error.param = "model"
        return error
