"""One probe run: a real streaming chat request, and the `Timeline` of what came back.

The request is what any OpenAI client sends (``stream: true``, asking for the
usage chunk); the client is plain httpx, so what is measured is the endpoint
and the network, not an SDK. Each read from the socket is stamped when it
returns, and every event decoded from it gets that stamp — chunks that
arrived in one read arrived together, which is what the verdict looks for.

    async with httpx.AsyncClient(timeout=probe_timeout(60)) as client:
        timeline = await measure(client, ProbeRequest(url, model="m", prompt="Hi"))

Failures are data here, not exceptions: a refused connection, an HTTP error
or a body cut mid-way all come back as a timeline with ``error`` set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import trio

from server.chunks import MalformedChunk, inspect_chunk
from server.probe.timeline import Timeline
from server.sse import DONE, EventTooLarge, SSEDecoder

_ERROR_BODY_BYTES = 64 * 1024  # read this much of an error body, at most


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """What to ask, and where: ``base_url`` is an OpenAI base URL (``.../v1``)."""

    base_url: str
    model: str
    prompt: str = "Count from 1 to 40, one number per line."
    max_tokens: int = 128
    stream_options: bool = True  # ask for the usage chunk; some servers reject the field
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. Authorization
    endpoint: str = ""  # a label for reports; default: the base URL

    @property
    def url(self) -> str:
        return chat_completions_url(self.base_url)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt}],
            "stream": True,
            "max_tokens": self.max_tokens,
        }
        if self.stream_options:
            body["stream_options"] = {"include_usage": True}
        return body


def chat_completions_url(base_url: str) -> str:
    """``http://h:p/v1`` → ``http://h:p/v1/chat/completions``; a bare origin gets ``/v1``."""
    url = httpx.URL(base_url)
    path = url.path.rstrip("/") or "/v1"
    return str(url.copy_with(path=path + "/chat/completions"))


def probe_timeout(idle: float, connect: float = 10.0) -> httpx.Timeout:
    """httpx timeouts for a probe: ``idle`` bounds each wait for bytes, nothing bounds the whole."""
    return httpx.Timeout(connect=connect, read=idle, write=connect, pool=None)


async def measure(client: httpx.AsyncClient, request: ProbeRequest) -> Timeline:
    """Send one streaming request and record when everything arrived."""
    recorder = _Recorder(trio.current_time(), request.endpoint or request.base_url)
    try:
        async with client.stream("POST", request.url, json=request.body(),
                                 headers=dict(request.headers)) as response:
            recorder.head(response.status_code)
            if response.status_code != 200:
                recorder.error = _error_text(await _read_some(response))
            elif "text/event-stream" not in response.headers.get("content-type", ""):
                recorder.error = ("not an event stream (content-type "
                                  f"{response.headers.get('content-type', 'none')!r})")
            else:
                await _read_events(response, recorder)
    except httpx.TimeoutException as error:
        recorder.error = f"gave up waiting: {type(error).__name__}"
    except httpx.TransportError as error:
        recorder.error = f"{type(error).__name__}: {error}"
    return recorder.timeline()


async def _read_events(response: httpx.Response, recorder: _Recorder) -> None:
    decoder = SSEDecoder()
    try:
        async for data in response.aiter_bytes():
            now = recorder.now()
            for payload in decoder.feed(data):
                if not recorder.event(payload, now):
                    return
    except EventTooLarge as error:
        recorder.error = f"malformed stream: {error}"


async def _read_some(response: httpx.Response) -> bytes:
    body = b""
    async for data in response.aiter_bytes():
        body += data
        if len(body) >= _ERROR_BODY_BYTES:
            break
    return body


def _error_text(body: bytes) -> str | None:
    """The OpenAI error's code and message, else the start of the body."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message = str(error.get("message", ""))[:200]
        return f"{code}: {message}" if code else message
    text = body[:200].decode("utf-8", "replace").strip()
    return text or None


class _Recorder:
    """Collects one run's facts as they arrive; `timeline` freezes them."""

    def __init__(self, started: float, endpoint: str) -> None:
        self._started = started
        self._endpoint = endpoint
        self.status: int | None = None
        self.headers_at: float | None = None
        self.chunk_at: list[float] = []
        self.content_at: list[float] = []
        self.done = False
        self.finished = False
        self.usage: dict[str, int] | None = None
        self.error: str | None = None

    def now(self) -> float:
        return trio.current_time() - self._started

    def head(self, status: int) -> None:
        self.status = status
        self.headers_at = self.now()

    def event(self, payload: bytes, at: float) -> bool:
        """Take one event's data; False when the stream is over (``[DONE]``, an error)."""
        if payload == DONE:
            self.done = True
            return False
        try:
            facts, chunk = inspect_chunk(payload)
        except MalformedChunk as error:
            self.error = f"malformed chunk: {error}"
            return False
        if facts.error is not None:
            code = facts.error.get("code") or facts.error.get("type") or "error"
            self.error = f"in-band error {code}: {str(facts.error.get('message', ''))[:200]}"
            return False
        self.chunk_at.append(at)
        if facts.content:
            self.content_at.append(at)
        self.finished = self.finished or facts.finished
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: v for k, v in usage.items() if isinstance(v, int)}
        return True

    def timeline(self) -> Timeline:
        return Timeline(status=self.status, headers_at=self.headers_at,
                        chunk_at=tuple(self.chunk_at), content_at=tuple(self.content_at),
                        ended_at=self.now(), done=self.done, finished=self.finished,
                        usage=self.usage, error=self.error, endpoint=self._endpoint)
