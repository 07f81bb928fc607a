"""One streaming POST to a model server, in the relay's vocabulary (shared by the HTTP backends).

    upstream = HttpUpstream(url, headers, connect_timeout=5.0, max_idle=1000, secrets=(...))
    async with upstream.post(body, decode=sse_payloads) as payloads:
        async for payload in payloads: ...

The connection lives exactly as long as the ``async with``: leaving it early
(the client left, a timer fired) closes the connection at once — that is
how the model server learns to stop generating — and leaving it after the
whole body was read returns the connection to the backend's idle list.

**Why not httpx here.** The benchmark put httpx/httpcore's read path at 48%
of the worker's CPU at 1,000 streams, and its pool's per-request scan of
every connection at 54% under churn. A relay needs very little of HTTP:
one POST written as one block, a response head, and a chunked or
length-framed body. So the transport is trio's own sockets (and
`trio.SSLStream` for ``https://``), the sans-IO framing of
`server.backends.wire`, and a plain list of idle connections. Measured as
the ``lean-reader`` benchmark variant it relayed 62 instead of 84 µs per
chunk and halved the cost of opening a stream. (httpx stays the clients'
side in tests and examples.)

Failures leave as `server.errors` types:

* connect (TCP and TLS) slower than ``connect_timeout`` → `UpstreamTimeout`;
  refused, reset or unreadable before the head → `UpstreamUnavailable`;
* a non-2xx answer → what ``to_error`` makes of it (default `status_error`);
* the body breaking off, or malformed framing, after the head → `StreamCut`.

Only the *connect* timeout lives here: the first-chunk and idle timers belong
to the relay, which knows what a content chunk is.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
import trio

from server.backends.base import NO_HEADERS
from server.backends.upstream_errors import MAX_ERROR_BODY, status_error
from server.backends.wire import BodyFraming, Head, ProtocolError, parse_head, request_bytes
from server.config import BackendSettings, ConfigError, backend_path
from server.errors import SluiceError, StreamCut, UpstreamTimeout, UpstreamUnavailable

Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]
Decode = Callable[["BodyReader"], AsyncGenerator[bytes, None]]
ToError = Callable[[int, Mapping[str, str], bytes], SluiceError]

RECEIVE_BYTES = 64 * 1024
IDLE_EXPIRY = 30.0  # seconds an unused connection is kept for reuse


class HttpUpstream:
    def __init__(self, url: str, headers: Mapping[str, str], *, connect_timeout: float,
                 max_idle: int, secrets: tuple[str, ...], ca_file: str | None = None) -> None:
        parts = urlsplit(url)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._pool = ConnectionPool(parts.scheme, parts.hostname or "", parts.port,
                                    connect_timeout=connect_timeout, max_idle=max_idle,
                                    ca_file=ca_file)
        self._authority = parts.netloc
        self._headers = dict(headers)
        self.secrets = secrets  # never shown to a client: redacted from relayed messages

    @classmethod
    def for_backend(cls, settings: BackendSettings, path: str, *, accept: str,
                    api_key: str | None, max_idle: int) -> HttpUpstream:
        """The upstream of a configured backend: its URL, key, timeouts and CAs.

        ``accept-encoding: identity``: relay the bytes as they come, with no
        decompression on the hot path. The key (from ``api_key_env``) is the only
        credential sent; the client's own headers never are.
        """
        headers = {"accept": accept, "accept-encoding": "identity",
                   "content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        return cls(settings.base_url + path, headers,
                   connect_timeout=settings.timeouts.connect, max_idle=max_idle,
                   secrets=tuple(s for s in (settings.base_url, api_key) if s),
                   ca_file=settings.tls_ca_file)

    def close(self) -> None:
        """Close the idle connections (when serving ends)."""
        self._pool.close()

    def status_error(self, status: int, headers: Mapping[str, str], body: bytes) -> SluiceError:
        return status_error(status, body, headers.get("retry-after"), secrets=self.secrets)

    @asynccontextmanager
    async def post(self, body: Any, *, decode: Decode, to_error: ToError | None = None,
                   headers: Mapping[str, str] = NO_HEADERS
                   ) -> AsyncIterator[AsyncIterator[bytes]]:
        """POST ``body`` as JSON, with ``headers`` besides the upstream's own (a trace's)."""
        message = request_bytes(self._target, self._authority,
                                {**self._headers, **headers} if headers else self._headers,
                                orjson.dumps(body))
        connection, head = await self._exchange(message)
        stream = connection.stream
        reusable = False
        try:
            framing = BodyFraming.for_head(head) if head.status < 300 else None
            if framing is None:
                error_body = await _read_bounded(connection, head)
                raise (to_error or self.status_error)(head.status, head.headers, error_body)
            async with aclosing(decode(BodyReader(connection, head.rest, framing))) as payloads:
                yield payloads
            reusable = framing.reusable and head.keep_alive
        except ProtocolError as error:
            raise UpstreamUnavailable("The upstream sent a malformed response.",
                                      detail=str(error)) from None
        finally:
            if reusable:
                self._pool.release(stream)
            else:
                _close_now(stream)  # mid-body: this is what tells the model server to stop

    async def _exchange(self, message: bytes) -> tuple[Connection, Head]:
        """Send the request and read the response head, on a pooled connection if one is idle.

        A pooled connection the server closed meanwhile fails before any byte
        of the head comes back: then, once, a fresh connection is tried.
        """
        for fresh in (False, True):
            stream, reused = await self._pool.connect(fresh=fresh)
            received = b""
            try:
                connection = Connection(stream)
                await connection.send_all(message)
                while (head := parse_head(received)) is None:
                    data = await connection.receive_some()
                    if not data:
                        raise trio.BrokenResourceError("closed before the response head")
                    received += data
                return connection, head
            except (trio.BrokenResourceError, OSError) as error:
                _close_now(stream)
                if reused and not received:
                    continue  # a stale idle connection: try a fresh one
                raise UpstreamUnavailable(
                    "The connection to the upstream model server failed.",
                    detail=f"{type(error).__name__}: {error}") from None
            except ProtocolError as error:
                _close_now(stream)
                raise UpstreamUnavailable("The upstream sent a malformed response.",
                                          detail=str(error)) from None
            except BaseException:
                _close_now(stream)  # cancelled while waiting: hang up
                raise
        raise AssertionError("unreachable: a fresh connection is never retried")


class Connection:
    """One upstream exchange's socket, used with as few trio operations as it allows.

    **Writing** the request: one ``os.write`` takes it whole on a plain-TCP
    socket (a request is small and the send buffer empty); trio's
    ``send_all`` (a conflict detector, an error-translating context manager,
    a trip through the scheduler) only finishes what the kernel did not take.

    **Reading**: trio's `SocketStream.receive_some` tries ``recv`` first and waits only if
    that fails. An upstream sends one small chunk at a time, so the socket is
    almost always empty when the relay asks: each chunk cost a failed
    ``recv``, a wait, a second ``recv`` and a context manager around each
    (~12 µs of Python measured, for ~2 µs of kernel work). Here a read that
    came up short means the socket is drained, so the next read waits for
    readiness first; a plain-TCP socket is then read with one ``os.read``.
    (The wait is the checkpoint; a read straight after a full one
    checkpoints explicitly, so a fast upstream cannot starve other tasks.)
    TLS streams are written and read the ordinary way.
    """

    __slots__ = ("_drained", "_fd", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self._drained = True  # a request has just been sent: nothing is there yet

    async def send_all(self, data: bytes) -> None:
        if self._fd >= 0:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        await self.stream.send_all(data)

    async def receive_some(self) -> bytes:
        """Up to `RECEIVE_BYTES`; ``b""`` at end of stream."""
        if self._fd < 0:
            # trio's streams return bytes (typed bytes | bytearray)
            return cast(bytes, await self.stream.receive_some(RECEIVE_BYTES))
        while True:
            if self._drained:
                await trio.lowlevel.wait_readable(self._fd)
            else:
                await trio.lowlevel.checkpoint()
            try:
                data = os.read(self._fd, RECEIVE_BYTES)
            except BlockingIOError:
                self._drained = True  # readiness was spurious: wait again
                continue
            self._drained = len(data) < RECEIVE_BYTES
            return data


class BodyReader:
    """The response body as it arrives, framing removed; a cut is a `StreamCut`.

    An iterator class rather than an async generator: a generator nested in
    the decoder's generator would be left unfinalised when a stream is
    abandoned, because closing a generator does not close the iterators its
    ``async for`` was using.
    """

    __slots__ = ("_connection", "_framing", "_rest")

    def __init__(self, connection: Connection, rest: bytes, framing: BodyFraming) -> None:
        self._connection = connection
        self._rest = rest
        self._framing = framing

    def __aiter__(self) -> BodyReader:
        return self

    async def __anext__(self) -> bytes:
        framing = self._framing
        while not framing.done:
            if self._rest:
                data, self._rest = self._rest, b""
            else:
                try:
                    data = await self._connection.receive_some()
                except (trio.BrokenResourceError, OSError) as error:
                    raise _cut(f"{type(error).__name__}: {error}") from None
                if not data:
                    framing.end_of_stream()
                    if framing.done:
                        break
                    raise _cut("the connection closed mid-body")
            try:
                body = framing.feed(data)
            except ProtocolError as error:
                raise _cut(str(error)) from None
            if body:
                return body
        raise StopAsyncIteration


class ConnectionPool:
    """Connections to one origin: opened on demand, idle ones kept (newest last) for reuse."""

    def __init__(self, scheme: str, host: str, port: int | None, *, connect_timeout: float,
                 max_idle: int, ca_file: str | None = None) -> None:
        self._host = host
        self._port = port or (443 if scheme == "https" else 80)
        self._tls = _tls_context(ca_file) if scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle: list[tuple[float, Stream]] = []

    async def connect(self, *, fresh: bool) -> tuple[Stream, bool]:
        """A connection, and whether it was reused."""
        # Checkpoint before taking an idle connection, never after: a cancel
        # delivered between would leave it neither pooled nor closed.
        await trio.lowlevel.checkpoint_if_cancelled()
        now = trio.current_time()
        while self._idle and not fresh:
            since, stream = self._idle.pop()
            if now - since < IDLE_EXPIRY:
                return stream, True  # no checkpoint after taking it: sending will checkpoint
            _close_now(stream)
        try:
            with trio.fail_after(self._connect_timeout):
                tcp = await trio.open_tcp_stream(self._host, self._port)
                if self._tls is None:
                    return tcp, False
                tls = trio.SSLStream(tcp, self._tls, server_hostname=self._host,
                                     https_compatible=True)
                try:
                    await tls.do_handshake()
                except BaseException:
                    _close_now(tcp)
                    raise
                return tls, False
        except trio.TooSlowError:
            raise UpstreamTimeout("connect", self._connect_timeout) from None
        except (OSError, trio.BrokenResourceError) as error:
            raise UpstreamUnavailable("Could not connect to the upstream model server.",
                                      detail=f"{type(error).__name__}: {error}") from None

    def release(self, stream: Stream) -> None:
        if len(self._idle) < self._max_idle:
            self._idle.append((trio.current_time(), stream))
        else:
            _close_now(stream)

    def close(self) -> None:
        for _, stream in self._idle:
            _close_now(stream)
        self._idle.clear()


def _close_now(stream: Stream) -> None:
    """Close at once, without a TLS goodbye: usable in any ``finally``, cancelled or not."""
    tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    tcp.socket.close()


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificates verified, hostnames checked: against ``ca_file``, else certifi's bundle."""
    if ca_file is None:
        try:
            import certifi  # the CA bundle httpx uses, installed with it

            ca_file = certifi.where()
        except ImportError:  # pragma: no cover - certifi comes with httpx
            pass
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _cut(detail: str) -> StreamCut:
    return StreamCut("The upstream stream broke off before it was complete.", detail=detail)


async def _read_bounded(connection: Connection, head: Head) -> bytes:
    """An error response's body, up to `MAX_ERROR_BODY`; the connection is not reused."""
    reader = BodyReader(connection, head.rest, BodyFraming.for_head(head))
    body = b""
    try:
        async for data in reader:
            body += data
            if len(body) >= MAX_ERROR_BODY:
                break
    except StreamCut:
        pass  # what arrived is all the explanation there will be
    return body[:MAX_ERROR_BODY]


def api_key_from_env(settings: BackendSettings, environ: Mapping[str, str]) -> str | None:
    if settings.api_key_env is None:
        return None
    key = environ.get(settings.api_key_env)
    if not key:
        raise ConfigError(f"{backend_path(settings.name)}.api_key_env: environment variable "
                          f"{settings.api_key_env} is not set (export it before starting "
                          f"Sluice, or remove api_key_env if the server needs no key)")
    return key
