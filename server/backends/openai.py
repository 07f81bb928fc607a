"""A backend that speaks the OpenAI chat completions API over HTTP (kind ``openai``).

vLLM, llama.cpp's ``llama-server``, EXO, LM Studio and hosted APIs all fit.
The connection lives exactly as long as the ``async with`` of `open_stream`:

    async with backend.open_stream(request) as payloads:
        async for payload in payloads: ...

httpx is configured on purpose: only the *connect* timeout is httpx's —
the first-chunk and idle timers belong to the relay, which knows what a
content chunk is (httpx's 5 s default read timeout would kill a slow first
token). The pool limit is explicit (httpx's default of 100 makes stream 101
wait). The client's own headers are never forwarded: the upstream key comes
from the backend's ``api_key_env`` and goes nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager

import httpx

from ..chat_request import ChatRequest
from ..config import BackendSettings, ConfigError
from ..errors import StreamCut, UpstreamTimeout, UpstreamUnavailable
from ..sse import EventTooLarge, SSEDecoder
from .upstream_errors import MAX_ERROR_BODY, status_error


class OpenAIBackend:
    def __init__(self, settings: BackendSettings, client: httpx.AsyncClient,
                 api_key: str | None) -> None:
        self._settings = settings
        self._client = client
        self._url = settings.base_url + "/chat/completions"
        # identity: relay the bytes as they come, with no decompression on the hot path.
        self._headers = {"accept": "text/event-stream", "accept-encoding": "identity",
                         "content-type": "application/json"}
        if api_key:
            self._headers["authorization"] = f"Bearer {api_key}"
        # Never shown to a client: the URL and key are redacted from relayed messages.
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
        try:
            async with self._client.stream(
                "POST", self._url, json=request.upstream_body(self._settings.upstream_model),
                headers=self._headers
            ) as response:
                if response.status_code >= 300:
                    body = await _read_bounded(response)
                    raise status_error(response.status_code, body,
                                       response.headers.get("retry-after"),
                                       secrets=self._secrets)
                async with aclosing(_payloads(response)) as payloads:
                    yield payloads
        except httpx.ConnectTimeout:
            raise UpstreamTimeout("connect", self._settings.timeouts.connect) from None
        except httpx.HTTPError as error:
            raise _unavailable(error) from None


async def _payloads(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    decoder = SSEDecoder()
    try:
        async for raw in response.aiter_raw():
            for payload in decoder.feed(raw):
                yield payload
    except httpx.HTTPError as error:
        raise StreamCut("The upstream stream broke off before it was complete.",
                        detail=f"{type(error).__name__}: {error}") from None
    except EventTooLarge as error:
        raise UpstreamUnavailable("The upstream sent a malformed stream.",
                                  detail=str(error)) from None


async def _read_bounded(response: httpx.Response) -> bytes:
    body = b""
    async for raw in response.aiter_raw():
        body += raw
        if len(body) >= MAX_ERROR_BODY:
            break
    return body


def _unavailable(error: httpx.HTTPError) -> UpstreamUnavailable:
    kind = type(error).__name__
    if isinstance(error, httpx.ConnectError):
        message = "Could not connect to the upstream model server."
    else:
        message = "The connection to the upstream model server failed."
    return UpstreamUnavailable(message, detail=f"{kind}: {error}")


def open_client(max_connections: int, connect_timeout: float) -> httpx.AsyncClient:
    """The pooled client for OpenAI-compatible backends; close it when serving ends."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0,
                              pool=connect_timeout),
        limits=httpx.Limits(max_connections=max_connections,
                            max_keepalive_connections=max_connections,
                            keepalive_expiry=30.0),
        follow_redirects=False,
        trust_env=False,
    )


def api_key_from_env(settings: BackendSettings, environ: Mapping[str, str]) -> str | None:
    if settings.api_key_env is None:
        return None
    key = environ.get(settings.api_key_env)
    if not key:
        raise ConfigError(f"backends[{settings.name}].api_key_env: environment variable "
                          f"{settings.api_key_env} is not set")
    return key
