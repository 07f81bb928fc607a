"""The API side of detached streams: who owns one, how one is started, how a client reads one.

Both dialects that can outlive a connection use these pieces — background
responses (`server.api.responses`) and resumable chat streams
(`server.api.resume`):

    owner = owner_of(request.headers.get("authorization"))
    planned = await stream_response(chat, partial(write_log, log=..., shaper=...), ...)
    background.start(stream, detached(planned))          # the producer, in the background nursery
    return TailResponse(stream, after=-1, ...)          # this client reads it, like any later one

**Ownership.** Only the client that started a stream may read or cancel it.
With ``[auth] required``, a stream belongs to the API key that started it
(`key_owner`); without, to what the client sent: the hash of its
``Authorization`` header (when it sent one) and the stream's id, 128 random
bits that only that client was told (`owner_of`). A stream that is not the
caller's is answered exactly like one that does not exist (404), so ids
cannot be probed. Reading, polling and cancelling are requests like others
for the rate limits (`Ownership.admit_reader`): they count against the
client's and the key's requests per minute, but take no second concurrency
slot and reserve no tokens — the stream holds those already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import trio
from hypercorn.typing import ASGISendCallable
from quart import Response

from server.api.connection import LateResponse, StreamResponse
from server.errors import RequestError, SluiceError
from server.stream.detached_stream import Producer, StreamHandle
from server.stream.late_status import Headers
from server.stream.nursery import serve_stream
from server.stream.tail import TailPlan, serve_tail


class Ownership(Protocol):
    """Who may start and read detached streams (`server.gateway.Gateway` implements it)."""

    async def owner(self) -> str:
        """The asking request's owner identity (401 when keys are required and it has none)."""
        ...

    async def admit_reader(self) -> str:
        """`owner`, after the request counted against its rate limits (429): for reads,
        polls and cancels."""
        ...


def key_owner(key_id: str) -> str:
    """The owner of a stream started with an API key (when keys are required): the key."""
    return "key:" + key_id


def owner_of(authorization: str | None) -> str:
    """The owner of a stream started without required keys: what the client sent, hashed."""
    if not authorization:
        return "anonymous"  # the unguessable id alone guards the stream
    return "auth:" + hashlib.blake2b(authorization.encode(), digest_size=16).hexdigest()


def detached(planned: Response) -> Producer:
    """A planned stream (`Gateway.stream_response`'s answer) as a producer of a detached stream.

    It has no connection to write to; ``client_gone`` is the stream's own
    (set when it is abandoned).
    """
    assert isinstance(planned, StreamResponse)

    async def produce(client_gone: trio.Event) -> SluiceError | None:
        plan = replace(planned.plan, last_word=False)  # a cancel here is on purpose
        return await serve_stream(plan, _nowhere, [], client_gone, planned.metrics)

    return produce


async def _nowhere(message: Any) -> None:
    """A detached stream's own response goes nowhere: its writer fills a log instead."""


class TailResponse(LateResponse):
    """One client reading a detached stream (here or elsewhere) from after ``after``."""

    def __init__(self, stream: StreamHandle, after: int, *,
                 keepalive_interval: float | None,
                 lost: Callable[[SluiceError], bytes]) -> None:
        super().__init__()
        self.plan = TailPlan(stream.source, after, keepalive_interval, lost)
        self.stream = stream

    async def serve(self, send: ASGISendCallable, headers: Headers,
                    client_gone: trio.Event) -> None:
        stream = self.stream

        async def send_noting_delivery(message: Any) -> None:
            if message["type"] == "http.response.start":
                stream.delivered_now()  # the status line carries the stream's id
            await send(message)

        async with stream.attending():
            await serve_tail(self.plan, send_noting_delivery, headers, client_gone)


async def starting_after(value: str | None, param: str, stream: StreamHandle) -> int:
    """A client's "the last event I have" (``-1``: none); a 400 for what cannot be one."""
    if value is None or value == "":
        return -1
    try:
        after = int(value)
    except ValueError:
        after = -2
    if after < -1:
        raise RequestError(f"'{param}' must be an integer ≥ -1.", param=param,
                           code="invalid_value")
    last = await stream.last_seq()
    if after > last:
        raise RequestError(f"'{param}' is {after}, but the stream has only sent up to "
                           f"{last}.", param=param, code="invalid_value")
    return after
