"""`ChatTranscript`: how OpenAI chunks become ``/chat`` events (pure, no sockets)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import trio

from server.api.browser_chat_writers import (
    ChatTranscript,
    timestamp,
    write_chat_events,
    write_chat_json,
)
from server.chunks import chunk_bytes
from server.errors import SluiceError, StreamCut
from server.sse import KEEPALIVE
from server.stream.channel import HEARTBEAT, BodyWriter, ChannelItem, StreamEnd
from server.stream.late_status import LateStatusResponse

WALL = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def delta(content: str | None = None, *, index: int = 0, finish: str | None = None,
          **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {} if content is None else {"content": content}
    return {"choices": [{"index": index, "delta": {**body, **fields}, "finish_reason": finish}]}


def test_deltas_accumulate_and_stats_count_them() -> None:
    transcript = ChatTranscript("m", started_at=10.0)
    assert transcript.add(delta(role="assistant")) == ""  # the role preamble: no event
    assert transcript.add(delta("Hel")) == "Hel"
    first = transcript.delta_event("Hel", now=10.5, wall=WALL)
    assert first == {
        "content": "Hel", "full_content": "Hel", "chunk_id": 1,
        "timestamp": "2026-01-02T03:04:05.678Z", "done": False, "model": "m",
        "streaming_stats": {"total_chunks": 1, "total_characters": 3, "elapsed_time": 0.5,
                            "words_per_second": 2.0},
    }
    transcript.add(delta("lo wor"))
    transcript.add(delta("ld, again "))
    event = transcript.delta_event("ld, again ", now=12.0, wall=WALL)
    assert event["full_content"] == "Hello world, again "
    assert event["chunk_id"] == 2  # ids count events, not chunks
    # "Hel|lo wor|ld, again ": words split across deltas count once.
    assert event["streaming_stats"] == {"total_chunks": 3, "total_characters": 19,
                                        "elapsed_time": 2.0, "words_per_second": 1.5}


def test_only_content_of_the_first_choice_counts() -> None:
    transcript = ChatTranscript("m", started_at=0.0)
    assert transcript.add(delta("other", index=1)) == ""
    assert transcript.add(delta(None, reasoning_content="thinking")) == ""
    assert transcript.add({"choices": [], "usage": {"completion_tokens": 3}}) == ""
    assert transcript.add({"id": "x"}) == ""
    assert transcript.add(delta("a", finish="length")) == "a"
    assert transcript.chunks == 1
    done = transcript.done_event(now=0.0, wall=WALL)
    assert done["finish_reason"] == "length"
    assert done["usage"] == {"completion_tokens": 3}
    assert done["streaming_stats"]["words_per_second"] == 0.0  # no time passed: no rate


def test_the_done_event_of_a_failed_stream_carries_the_error_not_a_finish() -> None:
    transcript = ChatTranscript("m", started_at=0.0)
    transcript.add(delta("partial"))
    error = StreamCut("The upstream stream ended before it was complete.",
                      detail="secret upstream detail")
    done = transcript.done_event(now=1.0, wall=WALL, error=error)
    assert done["done"] is True
    assert done["content"] == "" and done["full_content"] == "partial"
    assert done["error"] == "The upstream stream ended before it was complete."
    assert done["error_code"] == "stream_truncated"
    assert done["error_id"] == error.error_id
    assert "finish_reason" not in done
    assert "secret" not in str(done)


def test_the_whole_reply_is_the_done_event_with_all_content() -> None:
    transcript = ChatTranscript("m", started_at=0.0)
    for piece in ("one ", "two"):
        transcript.add(delta(piece))
    transcript.add(delta(finish="stop"))
    reply = transcript.reply(now=2.0, wall=WALL)
    assert reply["content"] == reply["full_content"] == "one two"
    assert reply["done"] is True and reply["finish_reason"] == "stop"
    assert reply["streaming_stats"] == {"total_chunks": 2, "total_characters": 7,
                                        "elapsed_time": 2.0, "words_per_second": 1.0}


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert timestamp(WALL) == "2026-01-02T03:04:05.678Z"
    local = WALL.astimezone(timezone(timedelta(hours=2)))
    assert timestamp(local) == "2026-01-02T03:04:05.678Z"


# ------------------------------------------------------------- the writers


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta_ = {"role": "assistant"} if content is None else {"content": content}
    return chunk_bytes(completion_id="c", created=0, model="up", delta=delta_,
                       finish_reason=finish)


async def _write(writer: BodyWriter, items: list[ChannelItem]
                 ) -> tuple[list[dict[str, Any]], SluiceError | None]:
    """Run a writer over items already waiting in its channel; return the ASGI messages."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    send_channel, receive_channel = trio.open_memory_channel[ChannelItem](len(items))
    with send_channel:
        for item in items:
            send_channel.send_nowait(item)
    error = await writer(receive_channel, LateStatusResponse(send, []))
    return sent, error


def _events(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = b"".join(m["body"] for m in sent if m["type"] == "http.response.body")
    return [json.loads(block[len(b"data: "):]) for block in body.split(b"\n\n") if block]


async def test_content_waiting_beside_an_error_is_sent_before_it() -> None:
    """Content and the error coalesced in one batch: the content is committed, so 200."""
    cut = StreamCut("The upstream stream ended before it was complete.")
    writer = partial(write_chat_events, model="m", received_at=trio.current_time())
    sent, error = await _write(writer, [_chunk(), _chunk("a "), _chunk("b"), StreamEnd(cut)])
    assert error is cut
    assert sent[0]["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in sent[0]["headers"]
    assert len(sent) == 2 and sent[1]["more_body"] is False  # one coalesced message
    events = _events(sent)
    assert [e["content"] for e in events] == ["a ", "b", ""]
    assert events[-1]["error_id"] == cut.error_id and events[-1]["done"] is True


async def test_an_error_before_any_content_keeps_its_status() -> None:
    """The role preamble is no event: nothing was sent, so the error gets its own status."""
    cut = StreamCut("The upstream stream ended before it was complete.")
    writer = partial(write_chat_events, model="m", received_at=trio.current_time())
    sent, error = await _write(writer, [_chunk(), StreamEnd(cut)])
    assert error is cut
    assert sent[0]["status"] == 502
    assert json.loads(sent[1]["body"])["error"]["error_id"] == cut.error_id


async def test_heartbeats_waiting_beside_content_add_nothing() -> None:
    writer = partial(write_chat_events, model="m", received_at=trio.current_time())
    sent, error = await _write(writer, [HEARTBEAT, _chunk("a"), HEARTBEAT, StreamEnd()])
    assert error is None
    assert len(sent) == 2 and KEEPALIVE not in sent[1]["body"]
    assert [e["content"] for e in _events(sent)] == ["a", ""]


async def test_the_json_writer_sends_one_reply_with_its_length() -> None:
    writer = partial(write_chat_json, model="m", received_at=trio.current_time())
    sent, error = await _write(writer, [_chunk(), _chunk("x "), _chunk("y", finish="stop"),
                                        StreamEnd()])
    assert error is None
    assert sent[0]["status"] == 200
    body = sent[1]["body"]
    assert (b"content-length", str(len(body)).encode()) in sent[0]["headers"]
    reply = json.loads(body)
    assert reply["content"] == "x y" and reply["finish_reason"] == "stop"
