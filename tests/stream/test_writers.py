"""The SSE and completion writers over a real trio channel, with the ASGI send recorded."""

from __future__ import annotations

from typing import Any

import trio

from server.chunks import chunk_bytes
from server.sse import DONE_EVENT, KEEPALIVE
from server.stream.channel import HEARTBEAT, ChannelItem, StreamEnd
from server.stream.late_status import LateStatusResponse
from server.stream.writers import receive_batch, write_completion, write_sse


def _chunk(content: str) -> bytes:
    return chunk_bytes(completion_id="c", created=0, model="m", delta={"content": content})


async def test_a_batch_is_everything_already_waiting_and_heartbeats_add_nothing() -> None:
    send, receive = trio.open_memory_channel[ChannelItem](8)
    for item in (b"1", HEARTBEAT, b"2"):
        send.send_nowait(item)
    assert await receive_batch(receive) == ([b"1", b"2"], None)
    send.send_nowait(HEARTBEAT)
    assert await receive_batch(receive) == ([], None)  # a heartbeat alone: time for a keepalive
    end = StreamEnd()
    send.send_nowait(b"3")
    send.send_nowait(end)
    assert await receive_batch(receive) == ([b"3"], end)


async def test_a_batch_that_meets_the_closed_channel_returns_what_it_took() -> None:
    """The pump closes its end without a `StreamEnd` only when it is cancelled (the client
    left): the stream is being cancelled, and the writer must reach its next checkpoint to
    see it — not raise `EndOfChannel` out of the stream's nursery (a traceback per
    disconnect, seen under overload)."""
    send, receive = trio.open_memory_channel[ChannelItem](8)
    send.send_nowait(b"1")
    send.close()
    assert await receive_batch(receive) == ([b"1"], None)


async def test_a_heartbeat_during_silence_is_a_keepalive_that_commits_the_status() -> None:
    sent: list[dict[str, Any]] = []
    wrote = trio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        wrote.set()

    items_in, items_out = trio.open_memory_channel[ChannelItem](8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write_sse, items_out, LateStatusResponse(send, []))
        items_in.send_nowait(HEARTBEAT)
        await wrote.wait()  # the writer answered the heartbeat on its own
        items_in.send_nowait(_chunk("a"))
        items_in.send_nowait(StreamEnd())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert sent[1]["body"] == KEEPALIVE and sent[1]["more_body"] is True
    assert sent[2]["body"].endswith(DONE_EVENT) and sent[2]["more_body"] is False


async def test_the_completion_writer_ignores_heartbeats() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    items_in, items_out = trio.open_memory_channel[ChannelItem](8)
    for item in (HEARTBEAT, _chunk("a"), HEARTBEAT, StreamEnd()):
        items_in.send_nowait(item)
    assert await write_completion(items_out, LateStatusResponse(send, [])) is None
    assert len(sent) == 2 and b'"content":"a"' in sent[1]["body"]
