"""A backend that speaks Ollama's native ``/api/chat`` (kind ``ollama``).

The base URL is the server's root (``http://127.0.0.1:11434``, no ``/v1``).
The client's ``/v1/chat/completions`` request is translated into an
``/api/chat`` request and the NDJSON answer back into OpenAI chunk payloads
by `server.backends.ollama_translate` — its docstring lists which OpenAI
options map and which are dropped. This module only moves bytes, and does it
exactly as `server.backends.openai` does: the connection lives as long as
the ``async with``, httpx owns only the connect timeout (the relay owns the
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
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager

import httpx

from ..chat_request import ChatRequest
from ..config import BackendSettings
from ..errors import StreamCut, UpstreamStatusError, UpstreamTimeout, UpstreamUnavailable
from .ollama_translate import NDJSONDecoder, OllamaStream, ollama_chat_body
from .upstream_errors import MAX_ERROR_BODY, status_error


class OllamaBackend:
    def __init__(self, settings: BackendSettings, client: httpx.AsyncClient,
                 api_key: str | None) -> None:
        self._settings = settings
        self._client = client
        self._url = settings.base_url + "/api/chat"
        self._headers = {"accept": "application/x-ndjson", "accept-encoding": "identity",
                         "content-type": "application/json"}
        if api_key:  # Ollama itself takes none; a proxy in front of it, or ollama.com, may.
            self._headers["authorization"] = f"Bearer {api_key}"
        self._secrets = tuple(s for s in (settings.base_url, api_key) if s)

    @property
    def settings(self) -> BackendSettings:
        return self._settings

    def open_stream(
        self, request: ChatRequest
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._open_stream(request)

    @asynccontextmanager
    async def _open_stream(self, request: ChatRequest) -> AsyncIterator[AsyncIterator[bytes]]:
        body = ollama_chat_body(request, self._settings.upstream_model)
        translator = OllamaStream(completion_id=f"chatcmpl-{secrets.token_hex(12)}",
                                  created=int(time.time()), model=request.model,
                                  include_usage=request.include_usage or not request.stream)
        try:
            async with self._client.stream(
                "POST", self._url, json=body, headers=self._headers
            ) as response:
                if response.status_code >= 300:
                    raise self._status_error(response, await _read_bounded(response))
                async with aclosing(_payloads(response, translator)) as payloads:
                    yield payloads
        except httpx.ConnectTimeout:
            raise UpstreamTimeout("connect", self._settings.timeouts.connect) from None
        except httpx.HTTPError as error:
            raise _unavailable(error) from None

    def _status_error(self, response: httpx.Response, body: bytes) -> UpstreamStatusError:
        error = status_error(response.status_code, body, response.headers.get("retry-after"),
                             secrets=self._secrets)
        if (response.status_code == 404 and error.code is None
                and "model" in error.public_message.lower()):
            # Ollama answers an unknown model with 404 {"error": "model 'x' not found"};
            # give it OpenAI's code, so clients can tell it from a wrong URL.
            error.code = "model_not_found"
            error.param = "model"
        return error


async def _payloads(response: httpx.Response, translator: OllamaStream
                    ) -> AsyncGenerator[bytes, None]:
    lines = NDJSONDecoder()
    try:
        async for raw in response.aiter_raw():
            for line in lines.feed(raw):
                for payload in translator.translate(line):
                    yield payload
    except httpx.HTTPError as error:
        raise StreamCut("The upstream stream broke off before it was complete.",
                        detail=f"{type(error).__name__}: {error}") from None
    for line in lines.close():  # the last line may come without its newline
        for payload in translator.translate(line):
            yield payload


async def _read_bounded(response: httpx.Response) -> bytes:
    body = b""
    async for raw in response.aiter_raw():
        body += raw
        if len(body) >= MAX_ERROR_BODY:
            break
    return body


def _unavailable(error: httpx.HTTPError) -> UpstreamUnavailable:
    if isinstance(error, httpx.ConnectError):
        message = "Could not connect to the upstream model server."
    else:
        message = "The connection to the upstream model server failed."
    return UpstreamUnavailable(message, detail=f"{type(error).__name__}: {error}")
