"""One streaming POST to a model server, in the relay's vocabulary (shared by the HTTP backends).

    upstream = HttpUpstream(clients, url, headers, connect_timeout=5.0, secrets=(...))
    async with upstream.post(body, decode=sse_payloads) as payloads:
        async for payload in payloads: ...

The connection lives exactly as long as the ``async with``. httpx is set up
on purpose (`open_clients`): only the *connect* timeout is httpx's — the
first-chunk and idle timers belong to the relay, which knows what a content
chunk is (httpx's 5 s default read timeout would kill a slow first token) —
and the pool limit is explicit (httpx's default of 100 makes stream 101
wait). Failures leave as `server.errors` types, never as httpx exceptions:

* connect timeout → `UpstreamTimeout`; refused, reset, broken → `UpstreamUnavailable`;
* a non-2xx answer → what ``to_error`` makes of it (default `status_error`);
* the body breaking off after the headers → `StreamCut`.

**Sharded pools.** httpcore's pool scans every connection it holds on each
request start and finish (O(connections²) work under churn; the benchmark
measured it at half the worker's CPU with ~100 pooled connections). Each
backend therefore spreads its streams over several small clients, round
robin; `server.serving` sets how many.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from typing import Any

import httpx

from ..config import BackendSettings, ConfigError
from ..errors import SluiceError, StreamCut, UpstreamTimeout, UpstreamUnavailable
from .upstream_errors import MAX_ERROR_BODY, status_error

Decode = Callable[[httpx.Response], AsyncGenerator[bytes, None]]
ToError = Callable[[httpx.Response, bytes], SluiceError]


class HttpUpstream:
    def __init__(self, clients: Sequence[httpx.AsyncClient], url: str,
                 headers: Mapping[str, str], *, connect_timeout: float,
                 secrets: tuple[str, ...]) -> None:
        self._clients = itertools.cycle(clients)
        self._url = url
        self._headers = dict(headers)
        self._connect_timeout = connect_timeout
        self.secrets = secrets  # never shown to a client: redacted from relayed messages

    def status_error(self, response: httpx.Response, body: bytes) -> SluiceError:
        return status_error(response.status_code, body, response.headers.get("retry-after"),
                            secrets=self.secrets)

    @asynccontextmanager
    async def post(self, body: Any, *, decode: Decode,
                   to_error: ToError | None = None) -> AsyncIterator[AsyncIterator[bytes]]:
        to_error = to_error or self.status_error
        try:
            async with next(self._clients).stream(
                "POST", self._url, json=body, headers=self._headers
            ) as response:
                if response.status_code >= 300:
                    raise to_error(response, await _read_bounded(response))
                async with aclosing(decode(response)) as payloads:
                    yield payloads
        except httpx.ConnectTimeout:
            raise UpstreamTimeout("connect", self._connect_timeout) from None
        except httpx.HTTPError as error:
            raise _unavailable(error) from None


class raw_reads:
    """The body as it arrives; a transport failure mid-body is a `StreamCut`.

    An iterator class, not an async generator: a generator nested in the
    decoder's generator would be left unfinalised when the stream is
    abandoned (trio then reports it), because closing a generator does not
    close the iterators its ``async for`` was using.
    """

    __slots__ = ("_reads",)

    def __init__(self, response: httpx.Response) -> None:
        self._reads = response.aiter_raw()

    def __aiter__(self) -> raw_reads:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._reads)
        except httpx.HTTPError as error:
            raise StreamCut("The upstream stream broke off before it was complete.",
                            detail=f"{type(error).__name__}: {error}") from None


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


async def open_clients(stack: AsyncExitStack, *, shards: int, max_connections: int,
                       connect_timeout: float) -> list[httpx.AsyncClient]:
    """``shards`` pooled clients sharing ``max_connections``; ``stack`` closes them."""
    per_shard = max(1, -(-max_connections // shards))
    tls = httpx.create_ssl_context()  # one for all shards: building one costs ~10 ms
    clients = []
    for _ in range(shards):
        client = httpx.AsyncClient(
            verify=tls,
            timeout=httpx.Timeout(connect=connect_timeout, read=None, write=30.0,
                                  pool=connect_timeout),
            limits=httpx.Limits(max_connections=per_shard,
                                max_keepalive_connections=per_shard, keepalive_expiry=30.0),
            follow_redirects=False,
            trust_env=False,
        )
        clients.append(await stack.enter_async_context(client))
    return clients


def api_key_from_env(settings: BackendSettings, environ: Mapping[str, str]) -> str | None:
    if settings.api_key_env is None:
        return None
    key = environ.get(settings.api_key_env)
    if not key:
        raise ConfigError(f"backends[{settings.name}].api_key_env: environment variable "
                          f"{settings.api_key_env} is not set")
    return key
