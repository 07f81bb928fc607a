"""The fake upstream: pure parts exhaustively, then the server over real loopback sockets.

The pure half lists response plans and decodes their bytes with h11 (an
independent HTTP implementation), so framing mistakes cannot cancel out. The
socket half talks to a `FakeUpstream` started in the test's nursery with
httpx, the openai SDK, or a raw trio stream when the point is the transport.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import h11
import httpx
import openai
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from server.testing.fake_upstream import ConnectionRecord, FakeUpstream, RecordedRequest, Scenario
from server.testing.fake_upstream import chunks as c
from server.testing.fake_upstream.bodies import completion_body, error_body, error_type, models_body
from server.testing.fake_upstream.cli import add_arguments, scenario_from_args
from server.testing.fake_upstream.http11 import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    BadRequest,
    Request,
    RequestBuffer,
    RequestHead,
    chunk,
    parse_head,
    response,
)
from server.testing.fake_upstream.legacy import plan_completion, plan_embeddings
from server.testing.fake_upstream.ollama import OllamaChat, plan_ollama_chat
from server.testing.fake_upstream.plan import (
    Control,
    ResponseFacts,
    SleepUntil,
    Step,
    plan_chat,
    token_offset,
)
from server.testing.fake_upstream.request import ChatRequest, InvalidChatRequest

# Bound on any socket test: generous, only there so a bug hangs for seconds, not forever.
TEST_BOUND = 5.0
# The upstream must record a connection closed this soon after its peer left.
CLOSE_BOUND = 0.1
# A fixed wall clock for plans, so sent_at and ping times are exact.
WALL_TIME = 1_700_000_000.25
CHAT = "/v1/chat/completions"
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def chat_json(stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "model": "test-model",
        "stream": stream,
        "messages": [{"role": "user", "content": "say something nice"}],
        **extra,
    }


@dataclass(frozen=True)
class Wire:
    """A plan, decoded: its HTTP response via h11 and the non-byte steps in order."""

    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool
    controls: list[Control | SleepUntil]
    writes: list[bytes]


def decode(steps: Iterable[Step]) -> Wire:
    writes: list[bytes] = []
    controls: list[Control | SleepUntil] = []
    for step in steps:
        if isinstance(step, bytes):
            writes.append(step)
        else:
            controls.append(step)
    conn = h11.Connection(h11.CLIENT)
    request_headers = [("host", "x"), ("content-length", "0")]
    conn.send(h11.Request(method="POST", target="/", headers=request_headers))
    conn.send(h11.EndOfMessage())
    if writes:  # receive_data(b"") would mean EOF
        conn.receive_data(b"".join(writes))
    status, headers, body, complete = 0, {}, [], False
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            break
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            complete = True
            break
    return Wire(status, headers, b"".join(body), complete, controls, writes)


def events(body: bytes, eol: bytes = b"\n\n") -> list[bytes]:
    """The SSE event blocks of a body (each without its blank line)."""
    assert body.endswith(eol) or not body, body[-40:]
    return body.split(eol)[:-1] if body else []


def payloads(body: bytes, eol: bytes = b"\n\n") -> list[bytes]:
    """The ``data:`` payloads of a body, comments dropped."""
    return [e.removeprefix(b"data: ") for e in events(body, eol) if not e.startswith(b":")]


def chunks_of(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(p) for p in payloads(body) if p != b"[DONE]"]


def content_of(parsed: Iterable[dict[str, Any]]) -> str:
    return "".join(
        choice["delta"].get("content", "")
        for chunk in parsed
        for choice in chunk.get("choices", [])
    )


def facts(keep_alive: bool = True) -> ResponseFacts:
    return ResponseFacts(
        "chatcmpl-fake-7",
        created=1_700_000_000,
        keep_alive=keep_alive,
        wall_clock=lambda: WALL_TIME,
    )


def plan(scenario: Scenario, **body: Any) -> Wire:
    return decode(plan_chat(scenario, ChatRequest.from_json(chat_json(**body)), facts()))


# --------------------------------------------------------------------------- Scenario


def test_scenario_defaults() -> None:
    s = Scenario()
    assert (s.tokens, s.tps, s.first_delay, s.status) == (5, 0, 0, None)
    assert not any(
        [
            s.no_done,
            s.omit_finish,
            s.keepalive_comments,
            s.reset_before_headers,
            s.no_response,
            s.crlf,
            s.split_writes,
            s.timestamps,
        ]
    )
    assert s.format() == ""
    assert Scenario.parse("") == s
    assert Scenario.parse(" , ,") == s


def test_scenario_parse_converts_every_kind_of_field() -> None:
    s = Scenario.parse(
        "tokens=20, tps=2.5,first-delay=0.1,status=429,retry_after=1.5,cut_after=5,"
        "stall_after=none,error_code=context_length_exceeded,no_done,crlf=false,timestamps=yes"
    )
    assert s == Scenario(
        tokens=20,
        tps=2.5,
        first_delay=0.1,
        status=429,
        retry_after=1.5,
        cut_after=5,
        error_code="context_length_exceeded",
        no_done=True,
        timestamps=True,
    )
    assert isinstance(s.tps, float)
    assert isinstance(s.tokens, int)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokenz=3", "unknown scenario field 'tokenz'"),
        ("tokens=three", "bad value for scenario field 'tokens'"),
        ("tokens=1.5", "bad value for scenario field 'tokens'"),
        ("no_done=maybe", "bad value for scenario field 'no_done'"),
        ("tokens=1,tokens=2", "given twice"),
        ("tokens=-1", "tokens must be >= 0"),
        ("tps=-1", "tps must be"),
        ("tps=inf", "tps must be"),
        ("first_delay=nan", "first_delay must be"),
        ("status=200", "status must be an HTTP error status"),
        ("status=600", "status must be an HTTP error status"),
        ("retry_after=-2", "retry_after must be"),
        ("cut_after=-1", "cut_after must be >= 0"),
        ("error_event_after=-3", "error_event_after must be >= 0"),
    ],
)
def test_scenario_parse_rejects_with_a_useful_message(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scenario.parse(text)


def test_scenario_is_frozen() -> None:
    s = Scenario()
    with pytest.raises(AttributeError):
        s.tokens = 3  # type: ignore[misc]


_words = st.from_regex(r"[a-z_]{1,12}", fullmatch=True).filter(lambda w: w not in {"none", "null"})
_counts = st.none() | st.integers(0, 10_000)
_seconds = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)


@settings(database=None)
@given(
    st.builds(
        Scenario,
        tokens=st.integers(0, 10**6),
        tps=_seconds,
        first_delay=_seconds,
        status=st.none() | st.integers(400, 599),
        retry_after=st.none() | _seconds,
        error_code=st.none() | _words,
        error_message=st.none() | _words,
        cut_after=_counts,
        stall_after=_counts,
        malformed_after=_counts,
        error_event_after=_counts,
        no_done=st.booleans(),
        omit_finish=st.booleans(),
        keepalive_comments=st.booleans(),
        reset_before_headers=st.booleans(),
        no_response=st.booleans(),
        crlf=st.booleans(),
        split_writes=st.booleans(),
        timestamps=st.booleans(),
        buffered=st.booleans(),
        burst=st.none() | st.integers(1, 10_000),
    )
)
def test_scenario_format_round_trips(scenario: Scenario) -> None:
    assert Scenario.parse(scenario.format()) == scenario


# --------------------------------------------------------------------------- http11

REQUEST = (
    b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nX-Thing: 1\r\nx-thing: 2\r\n"
    b'Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
)


def take_requests(buffer: RequestBuffer, pending: list[RequestHead]) -> list[Request]:
    """Every request complete in `buffer`; a head still waiting for its body stays in `pending`."""
    complete: list[Request] = []
    while True:
        head = pending.pop() if pending else buffer.take_head()
        if head is None:
            return complete
        body = buffer.take_body(head.content_length)
        if body is None:
            pending.append(head)
            return complete
        complete.append(Request(head.method, head.target, head.headers, body))


def test_parse_head_lowercases_and_joins_headers() -> None:
    head = parse_head(REQUEST.split(b"\r\n\r\n")[0])
    assert head.method == "POST"
    assert head.target == "/v1/chat/completions?x=1"
    assert head.headers == {
        "host": "a",
        "x-thing": "1, 2",
        "content-type": "application/json",
        "content-length": "7",
    }
    assert head.content_length == 7
    assert not head.expects_continue


def test_request_path_query_and_keep_alive() -> None:
    request = Request("GET", "/v1/models?a=b?c", {}, b"")
    assert (request.path, request.query, request.keep_alive) == ("/v1/models", "a=b?c", True)
    assert not Request("GET", "/", {"connection": "keep-alive, Close"}, b"").keep_alive


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /\r\nhost: a", 400),
        (b"GET  / HTTP/1.1", 400),
        (b"GET / HTTP/1.0", 505),
        (b"GET / HTTP/2", 505),
        (b"GET / HTTP/1.1\r\nno colon here", 400),
        (b"GET / HTTP/1.1\r\nname : value", 400),
        (b"GET / HTTP/1.1\r\n folded: value", 400),
        (b"GET / HTTP/1.1\r\n: empty name", 400),
        (b"POST / HTTP/1.1\r\ntransfer-encoding: chunked", 411),
        (b"POST / HTTP/1.1\r\ncontent-length: -1", 400),
        (b"POST / HTTP/1.1\r\ncontent-length: 1, 1", 400),
        (b"POST / HTTP/1.1\r\ncontent-length: x", 400),
        (b"POST / HTTP/1.1\r\ncontent-length: %d" % (MAX_BODY_BYTES + 1), 413),
    ],
)
def test_parse_head_refuses(head: bytes, status: int) -> None:
    with pytest.raises(BadRequest) as info:
        parse_head(head)
    assert info.value.status == status


def test_expect_continue_is_recognised() -> None:
    head = parse_head(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\ncontent-length: 3")
    assert head.expects_continue


@settings(database=None)
@given(st.lists(st.integers(1, len(REQUEST) * 2 - 1), max_size=8))
def test_request_buffer_reassembles_any_split_of_pipelined_requests(cuts: list[int]) -> None:
    data = REQUEST + REQUEST.replace(b"x=1", b"x=2")
    buffer = RequestBuffer()
    pending: list[RequestHead] = []
    got: list[Request] = []
    for start, end in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)], strict=True):
        buffer.feed(data[start:end])
        got.extend(take_requests(buffer, pending))
    assert [r.query for r in got] == ["x=1", "x=2"]
    assert all(r.body == b'{"a":1}' and r.headers["x-thing"] == "1, 2" for r in got)
    assert len(buffer) == 0


def test_request_buffer_waits_for_the_whole_body() -> None:
    buffer = RequestBuffer()
    buffer.feed(REQUEST[:-1])
    head = buffer.take_head()
    assert head is not None
    assert buffer.take_body(head.content_length) is None
    buffer.feed(REQUEST[-1:])
    assert buffer.take_body(head.content_length) == b'{"a":1}'


def test_request_buffer_refuses_an_endless_head() -> None:
    buffer = RequestBuffer()
    buffer.feed(b"GET / HTTP/1.1\r\n" + b"x: y\r\n" * (MAX_HEAD_BYTES // 6))
    with pytest.raises(BadRequest) as info:
        buffer.take_head()
    assert info.value.status == 431


def test_response_and_chunk_framing_read_back_with_h11() -> None:
    wire = decode([response(201, [("x-a", "b")], b"hello", keep_alive=False)])
    assert (wire.status, wire.body, wire.complete) == (201, b"hello", True)
    assert wire.headers == {"x-a": "b", "content-length": "5", "connection": "close"}
    assert chunk(b"abc") == b"3\r\nabc\r\n"
    assert chunk(b"x" * 300).startswith(b"12c\r\n")
    with pytest.raises(ValueError, match="empty chunk"):
        chunk(b"")


# --------------------------------------------------------------------------- chunks

TEMPLATES = c.ChunkTemplates.render("chatcmpl-fake-1", created=123, model='m"%d\\ü')


def parse_event(event: bytes, eol: bytes = b"\n\n") -> dict[str, Any]:
    assert event.startswith(b"data: ")
    assert event.endswith(eol)
    assert eol not in event[: -len(eol)]
    parsed: dict[str, Any] = json.loads(event[6 : -len(eol)])
    return parsed


def test_content_event_is_an_openai_chunk_with_an_escaped_model() -> None:
    chunk_json = parse_event(c.content_event(TEMPLATES, 42))
    assert chunk_json == {
        "id": "chatcmpl-fake-1",
        "object": "chat.completion.chunk",
        "created": 123,
        "model": 'm"%d\\ü',
        "choices": [{"index": 0, "delta": {"content": "t42 "}, "finish_reason": None}],
    }
    assert c.token_text(42) == "t42 "


def test_role_finish_usage_events() -> None:
    role = parse_event(c.role_event(TEMPLATES))
    assert role["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    ]
    finish = parse_event(c.finish_event(TEMPLATES, "length"))
    assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "length"}]
    usage = parse_event(c.usage_event(TEMPLATES, 3, 4))
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert {role["id"], finish["id"], usage["id"]} == {"chatcmpl-fake-1"}


def test_stamped_content_event_carries_sent_at() -> None:
    stamped = parse_event(c.stamped_content_event(TEMPLATES, 0, 1_700_000_000.123456))
    assert stamped["sent_at"] == pytest.approx(1_700_000_000.123456, abs=1e-6)
    del stamped["sent_at"]
    assert stamped == parse_event(c.content_event(TEMPLATES, 0))


def test_fixed_events_and_crlf() -> None:
    crlf = c.ChunkTemplates.render("id", created=1, model="m", crlf=True)
    assert c.done_event(TEMPLATES) == b"data: [DONE]\n\n"
    assert c.done_event(crlf) == b"data: [DONE]\r\n\r\n"
    assert c.malformed_event(TEMPLATES) == b"data: {not json\n\n"
    assert c.comment_event(TEMPLATES) == b":\n\n"
    assert c.comment_event(crlf, "ping - x") == b": ping - x\r\n\r\n"
    assert parse_event(c.error_event(TEMPLATES)) == {
        "error": {
            "message": "upstream exploded",
            "type": "server_error",
            "code": None,
            "param": None,
        }
    }
    assert parse_event(c.content_event(crlf, 1), b"\r\n\r\n")["choices"][0]["delta"] == {
        "content": "t1 "
    }


@pytest.mark.parametrize(
    "event", [c.role_event(TEMPLATES), c.done_event(TEMPLATES), c.comment_event(TEMPLATES)]
)
def test_split_event_cuts_inside_the_first_line(event: bytes) -> None:
    first, second = c.split_event(event)
    assert first + second == event
    assert first and second
    assert b"\n" not in first


# --------------------------------------------------------------------------- request


def test_chat_request_reads_what_shapes_the_answer() -> None:
    chat = ChatRequest.from_json(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 3,
            "messages": [
                {"role": "system", "content": "be  brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "one two three"},
                        {"type": "image_url", "image_url": {"url": "u"}},
                    ],
                },
                {"role": "assistant", "content": None, "tool_calls": []},
            ],
            "temperature": 0.3,
        }
    )
    assert chat == ChatRequest(
        model="m", stream=True, include_usage=True, max_tokens=3, prompt_tokens=5
    )
    assert (chat.completion_tokens(5), chat.finish_reason(5)) == (3, "length")
    assert (chat.completion_tokens(2), chat.finish_reason(2)) == (2, "stop")
    assert (chat.completion_tokens(3), chat.finish_reason(3)) == (3, "stop")


def test_chat_request_defaults_and_max_completion_tokens() -> None:
    assert ChatRequest.from_json({}) == ChatRequest()
    chat = ChatRequest.from_json({"max_tokens": 9, "max_completion_tokens": 2})
    assert chat.max_tokens == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"model": 3}, "model"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": []}, "stream_options"),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"messages": {"role": "user"}}, "messages"),
    ],
)
def test_chat_request_rejects(body: object, param: str | None) -> None:
    with pytest.raises(InvalidChatRequest) as info:
        ChatRequest.from_json(body)
    assert info.value.param == param


# --------------------------------------------------------------------------- bodies


def test_error_body_is_openai_shaped() -> None:
    assert json.loads(error_body(429)) == {
        "error": {
            "message": "fake upstream: Too Many Requests",
            "type": "rate_limit_error",
            "param": None,
            "code": None,
        }
    }
    custom = json.loads(error_body(400, "too long", code="context_length_exceeded", param="m"))
    assert custom["error"] == {
        "message": "too long",
        "type": "invalid_request_error",
        "param": "m",
        "code": "context_length_exceeded",
    }
    assert [error_type(s) for s in (401, 404, 418, 500, 503)] == [
        "authentication_error",
        "not_found_error",
        "invalid_request_error",
        "server_error",
        "server_error",
    ]
    assert json.loads(error_body(599))["error"]["message"] == "fake upstream: status 599"


def test_completion_and_models_bodies() -> None:
    body = json.loads(
        completion_body(
            "id-1", created=5, model="m", completion_tokens=3, prompt_tokens=2, finish_reason="stop"
        )
    )
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "t0 t1 t2 "}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    models = json.loads(models_body())
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["fake-model"]


# --------------------------------------------------------------------------- plan


def test_stream_plan_is_a_complete_openai_stream() -> None:
    wire = plan(Scenario(tokens=3))
    assert (wire.status, wire.complete, wire.controls) == (200, True, [])
    assert wire.headers["content-type"].startswith("text/event-stream")
    assert wire.headers["transfer-encoding"] == "chunked"
    parsed = chunks_of(wire.body)
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content_of(parsed) == "t0 t1 t2 "
    assert [ch["choices"][0]["finish_reason"] for ch in parsed] == [None] * 4 + ["stop"]
    assert {ch["model"] for ch in parsed} == {"test-model"}
    assert {ch["id"] for ch in parsed} == {"chatcmpl-fake-7"}
    assert payloads(wire.body)[-1] == b"[DONE]"
    assert all("sent_at" not in ch and "usage" not in ch for ch in parsed)


def test_stream_plan_usage_and_max_tokens() -> None:
    wire = plan(Scenario(tokens=5), max_tokens=2, stream_options={"include_usage": True})
    parsed = chunks_of(wire.body)
    assert content_of(parsed) == "t0 t1 "
    assert parsed[-2]["choices"][0]["finish_reason"] == "length"
    assert parsed[-1]["choices"] == []
    assert parsed[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert payloads(wire.body)[-1] == b"[DONE]"


def test_zero_tokens_still_finishes() -> None:
    parsed = chunks_of(plan(Scenario(tokens=0)).body)
    assert len(parsed) == 2
    assert content_of(parsed) == ""
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"


def test_pace_is_planned_against_the_request_time() -> None:
    wire = plan(Scenario(tokens=3, tps=4, first_delay=0.5))
    assert wire.controls == [SleepUntil(0.5), SleepUntil(0.75), SleepUntil(1.0)]
    assert [token_offset(Scenario(tps=10), i) for i in range(3)] == [0.0, 0.1, 0.2]
    # Headers and the role chunk come before the first sleep.
    first_sleep_at = next(
        i
        for i, s in enumerate(plan_chat(Scenario(first_delay=1), ChatRequest(stream=True), facts()))
        if isinstance(s, SleepUntil)
    )
    assert first_sleep_at == 2
    assert plan(Scenario(tokens=3)).controls == []


def steps_between_sleeps(scenario: Scenario) -> list[list[str]]:
    """The plan as groups: what goes out together between two waits (F: a flush)."""
    groups: list[list[str]] = [[]]
    for step in plan_chat(scenario, ChatRequest(stream=True), facts()):
        if isinstance(step, SleepUntil):
            groups.append([f"sleep {step.offset:g}"])
        elif step is Control.FLUSH:
            groups[-1].append("F")
        elif isinstance(step, bytes):
            groups[-1].append("head" if step.startswith(b"HTTP/1.1") else
                              "t" if b'"content":"t' in step else "-")
    return groups


def test_burst_sends_content_in_groups_when_their_last_token_is_due() -> None:
    groups = steps_between_sleeps(Scenario(tokens=5, tps=10, burst=2))
    assert groups == [["head", "-"],                    # headers, role
                      ["sleep 0.1", "t", "t"],          # tokens 0-1 when token 1 is due
                      ["sleep 0.3", "t", "t"],          # 2-3 at token 3's time
                      ["sleep 0.4", "t", "-", "-", "-"]]  # the last; finish, [DONE], end
    assert plan(Scenario(tokens=5, tps=10, burst=2)).body == plan(Scenario(tokens=5)).body


def test_buffered_sends_headers_then_everything_when_the_last_token_is_due() -> None:
    groups = steps_between_sleeps(Scenario(tokens=3, tps=10, first_delay=0.5, buffered=True))
    assert groups == [["head", "F"], ["sleep 0.7", "-", "t", "t", "t", "-", "-", "-"]]
    assert plan(Scenario(tokens=3, buffered=True)).body == plan(Scenario(tokens=3)).body


def test_cut_after_leaves_the_body_unfinished() -> None:
    wire = plan(Scenario(tokens=5, cut_after=2))
    assert not wire.complete
    assert wire.controls == [Control.CUT]
    parsed = chunks_of(wire.body)
    assert content_of(parsed) == "t0 t1 "
    assert all(ch["choices"][0]["finish_reason"] is None for ch in parsed)
    assert not wire.writes[-1].endswith(b"0\r\n\r\n")


def test_cut_after_zero_cuts_right_after_the_role_chunk() -> None:
    wire = plan(Scenario(cut_after=0))
    assert len(chunks_of(wire.body)) == 1
    assert wire.controls == [Control.CUT]


def test_a_fault_beyond_the_last_token_never_fires() -> None:
    assert plan(Scenario(tokens=2, cut_after=3)) == plan(Scenario(tokens=2))
    capped = plan(Scenario(tokens=5, stall_after=3), max_tokens=2)
    assert capped == plan(Scenario(tokens=5), max_tokens=2)
    assert capped.complete


def test_stall_after_stops_without_ending() -> None:
    wire = plan(Scenario(tokens=5, stall_after=3))
    assert (wire.complete, wire.controls) == (False, [Control.STALL])
    assert content_of(chunks_of(wire.body)) == "t0 t1 t2 "


def test_malformed_after_then_continues() -> None:
    wire = plan(Scenario(tokens=3, malformed_after=1))
    assert wire.complete
    data = payloads(wire.body)
    assert data[2] == b"{not json"
    assert content_of(json.loads(p) for p in data[:2] + data[3:-1]) == "t0 t1 t2 "
    assert data[-1] == b"[DONE]"


def test_error_event_after_ends_the_body_properly() -> None:
    wire = plan(Scenario(tokens=5, error_event_after=2))
    assert wire.complete
    data = payloads(wire.body)
    assert json.loads(data[-1])["error"]["message"] == "upstream exploded"
    assert content_of(json.loads(p) for p in data[:-1]) == "t0 t1 "
    assert b"[DONE]" not in data
    assert b'"finish_reason":"stop"' not in wire.body


def test_no_done_and_omit_finish() -> None:
    no_done = plan(Scenario(tokens=2, no_done=True), stream_options={"include_usage": True})
    assert no_done.complete
    assert payloads(no_done.body)[-1] != b"[DONE]"
    assert "usage" in json.loads(payloads(no_done.body)[-1])
    omit = plan(Scenario(tokens=2, omit_finish=True))
    assert omit.complete
    assert payloads(omit.body)[-1] == b"[DONE]"
    assert all(ch["choices"][0]["finish_reason"] is None for ch in chunks_of(omit.body))
    assert content_of(chunks_of(omit.body)) == "t0 t1 "


def test_keepalive_comments() -> None:
    blocks = events(plan(Scenario(tokens=2, keepalive_comments=True)).body)
    assert blocks[0] == b":"
    ping = b": ping - 2023-11-14 22:13:20.250000+00:00"
    assert blocks[2] == blocks[4] == blocks[6] == ping
    assert [b.startswith(b"data: ") for b in blocks] == [
        False,
        True,
        False,
        True,
        False,
        True,
        False,
        True,
        True,
    ]


def test_crlf_line_endings() -> None:
    wire = plan(Scenario(tokens=2, crlf=True))
    assert b"\n\n" not in wire.body.replace(b"\r\n\r\n", b"")
    assert content_of(json.loads(p) for p in payloads(wire.body, b"\r\n\r\n")[:-1]) == "t0 t1 "


def test_split_writes_flush_each_half_on_its_own() -> None:
    split = plan(Scenario(tokens=2, split_writes=True))
    whole = plan(Scenario(tokens=2))
    assert split.body == whole.body
    assert split.controls == [Control.FLUSH] * (2 * (len(whole.writes) - 2))
    steps = list(
        plan_chat(Scenario(tokens=1, split_writes=True), ChatRequest(stream=True), facts())
    )
    assert [type(s).__name__ for s in steps[1:5]] == ["bytes", "Control", "bytes", "Control"]


def test_timestamps_only_on_content_chunks() -> None:
    parsed = chunks_of(plan(Scenario(tokens=2, timestamps=True)).body)
    assert ["sent_at" in ch for ch in parsed] == [False, True, True, False]
    assert parsed[1]["sent_at"] == WALL_TIME


def test_error_status_plan() -> None:
    wire = plan(
        Scenario(status=429, retry_after=2, error_code="rate_limit_exceeded", first_delay=0.3)
    )
    assert wire.controls == [SleepUntil(0.3)]
    assert (wire.status, wire.complete) == (429, True)
    assert wire.headers["retry-after"] == "2"
    assert json.loads(wire.body)["error"]["code"] == "rate_limit_exceeded"
    assert plan(Scenario(status=503, retry_after=0.5)).headers["retry-after"] == "0.5"
    assert "retry-after" not in plan(Scenario(status=500)).headers


def test_transport_fault_plans() -> None:
    assert plan(Scenario(reset_before_headers=True, status=500)).controls == [Control.RESET]
    assert plan(Scenario(no_response=True)).writes == []
    assert plan(Scenario(no_response=True)).controls == [Control.STALL]


def test_non_stream_plans() -> None:
    wire = plan(Scenario(tokens=3, tps=10, first_delay=1), stream=False, max_tokens=2)
    assert wire.controls == [SleepUntil(1.1)]
    body = json.loads(wire.body)
    assert body["choices"][0]["message"]["content"] == "t0 t1 "
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    cut = plan(Scenario(tokens=5, tps=10, cut_after=3), stream=False)
    assert (cut.writes, cut.controls) == ([], [SleepUntil(0.2), Control.CUT])
    assert plan(Scenario(stall_after=1), stream=False).controls == [SleepUntil(0), Control.STALL]
    exploded = plan(Scenario(error_event_after=1), stream=False)
    assert exploded.status == 500
    assert json.loads(exploded.body)["error"]["message"] == "upstream exploded"


def test_connection_close_is_announced() -> None:
    chat = ChatRequest(stream=True)
    wire = decode(plan_chat(Scenario(tokens=1), chat, facts(keep_alive=False)))
    assert wire.headers["connection"] == "close"
    assert "connection" not in plan(Scenario(tokens=1)).headers


# --------------------------------------------------------------------------- cli


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_flags_override_the_scenario_string() -> None:
    args = cli_args(
        "--scenario", "tokens=20,tps=5,cut_after=3", "--tps", "0", "--first-delay", "0.5"
    )
    assert (args.host, args.port) == ("127.0.0.1", 9000)
    assert scenario_from_args(args) == Scenario(tokens=20, tps=0, first_delay=0.5, cut_after=3)
    assert scenario_from_args(cli_args("--tokens", "7")) == Scenario(tokens=7)


async def test_cli_process_serves_and_prints_its_url() -> None:
    command = [
        sys.executable,
        "-m",
        "server.testing.fake_upstream",
        "--port",
        "0",
        "--scenario",
        "tokens=2",
    ]
    with trio.fail_after(30):  # a cold interpreter start can be slow on CI
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(trio.run_process, command, stdout=subprocess.PIPE, check=False, cwd=REPO)
            )
            assert process.stdout is not None
            line = b""
            while not line.endswith(b"\n"):
                data = await process.stdout.receive_some()
                assert data, "the fake upstream exited before printing its address"
                line += data
            prefix = "fake upstream listening on "
            assert line.decode().startswith(prefix)
            base = line.decode().removeprefix(prefix).strip()
            async with httpx.AsyncClient(base_url=base) as client:
                reply = await client.post(CHAT, json=chat_json(stream=False))
            assert reply.json()["choices"][0]["message"]["content"] == "t0 t1 "
            nursery.cancel_scope.cancel("test finished")


# --------------------------------------------------------------------------- server


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeUpstream:
    upstream = FakeUpstream(Scenario(tokens=5))
    port = await nursery.start(upstream.serve, 0)
    assert upstream.base_url == f"http://127.0.0.1:{port}/v1"
    return upstream


@pytest.fixture
async def http(fake: FakeUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.origin, timeout=TEST_BOUND) as client:
        yield client


async def read_stream(
    response: httpx.Response,
    into: list[bytes],
    stop_after: int = -1,
    arrivals: list[float] | None = None,
) -> None:
    """Append each ``data:`` payload to `into` (so a caller keeps them if reading fails)."""
    lines = cast(AsyncGenerator[str, None], response.aiter_lines())
    async with contextlib.aclosing(lines):
        async for line in lines:
            if line.startswith("data: "):
                into.append(line.removeprefix("data: ").encode())
                if arrivals is not None:
                    arrivals.append(trio.current_time())
                if len(into) == stop_after:
                    return


async def open_raw(fake: FakeUpstream) -> trio.SocketStream:
    host, port = fake.origin.removeprefix("http://").split(":")
    return await trio.open_tcp_stream(host, int(port))


async def read_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk_ := await stream.receive_some():
        data += chunk_
    return data


def raw_request(
    body: dict[str, Any] | None = None, *, path: str = CHAT, headers: str = ""
) -> bytes:
    payload = json.dumps(body).encode() if body is not None else b""
    method = "POST" if body is not None else "GET"
    return (
        f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(payload)}\r\n{headers}\r\n"
    ).encode() + payload


async def test_stream_over_http(fake: FakeUpstream, http: httpx.AsyncClient) -> None:
    got: list[bytes] = []
    with trio.fail_after(TEST_BOUND):
        async with http.stream("POST", CHAT, json=chat_json()) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            await read_stream(response, got)
    assert got[-1] == b"[DONE]"
    parsed = [json.loads(p) for p in got[:-1]]
    assert content_of(parsed) == "t0 t1 t2 t3 t4 "
    assert parsed[-1]["choices"][0]["finish_reason"] == "stop"
    assert {p["id"] for p in parsed} == {"chatcmpl-fake-1"}
    [request] = fake.requests
    assert isinstance(request, RecordedRequest)
    assert (request.method, request.path) == ("POST", CHAT)
    assert request.json == chat_json()
    assert request.headers["content-type"] == "application/json"
    assert request.received_at <= trio.current_time()


async def test_usage_chunk_over_http(fake: FakeUpstream, http: httpx.AsyncClient) -> None:
    got: list[bytes] = []
    with trio.fail_after(TEST_BOUND):
        body = chat_json(stream_options={"include_usage": True}, max_tokens=3)
        async with http.stream("POST", CHAT, json=body) as response:
            await read_stream(response, got)
    usage = json.loads(got[-2])
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert json.loads(got[-3])["choices"][0]["finish_reason"] == "length"


async def test_non_stream_over_http(fake: FakeUpstream, http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_BOUND):
        reply = await http.post(CHAT, json=chat_json(stream=False))
    assert reply.status_code == 200
    assert reply.headers["content-length"] == str(len(reply.content))
    body = reply.json()
    assert body["choices"][0]["message"]["content"] == "t0 t1 t2 t3 t4 "
    assert body["model"] == "test-model"
    assert body["usage"]["total_tokens"] == 8


async def test_error_status_with_retry_after(fake: FakeUpstream, http: httpx.AsyncClient) -> None:
    fake.scenario = Scenario(status=429, retry_after=1.5, error_message="slow down")
    with trio.fail_after(TEST_BOUND):
        reply = await http.post(CHAT, json=chat_json())
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "1.5"
    assert reply.json() == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": None}
    }
    assert fake.connections[0].closed_at is None  # an error answer keeps the connection


async def test_models_404_405_and_bad_json(fake: FakeUpstream, http: httpx.AsyncClient) -> None:
    with trio.fail_after(TEST_BOUND):
        models = await http.get("/v1/models")
        missing = await http.get("/v1/nothing")
        wrong_method = await http.get(CHAT)
        not_json = await http.post(CHAT, content=b"{oops")
        not_chat = await http.post(CHAT, json={"stream": "sure"})
    assert models.json()["data"][0]["id"] == "fake-model"
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert wrong_method.status_code == 405
    assert not_json.status_code == 400
    assert not_chat.json()["error"]["param"] == "stream"
    assert [r.path for r in fake.requests] == ["/v1/models", "/v1/nothing", CHAT, CHAT, CHAT]
    assert fake.requests[3].json is None
    assert fake.requests[3].body == b"{oops"
    assert len(fake.connections) == 1


async def test_cut_after_breaks_the_chunked_body(
    fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.scenario = Scenario(tokens=10, cut_after=3)
    got: list[bytes] = []
    with trio.fail_after(TEST_BOUND):
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            async with http.stream("POST", CHAT, json=chat_json()) as response:
                await read_stream(response, got)
        await fake.wait_all_closed()
    parsed = [json.loads(p) for p in got]
    assert content_of(parsed) == "t0 t1 t2 "
    assert all(p["choices"][0]["finish_reason"] is None for p in parsed)


async def test_cut_on_the_wire(fake: FakeUpstream) -> None:
    fake.scenario = Scenario(tokens=10, cut_after=2)
    with trio.fail_after(TEST_BOUND):
        stream = await open_raw(fake)
        async with stream:
            await stream.send_all(raw_request(chat_json()))
            data = await read_until_eof(stream)
    assert data.count(b'"content":"t') == 2
    assert not data.endswith(b"0\r\n\r\n")
    assert fake.connections[0].closed_at is not None


async def test_stall_then_client_leaves_is_noticed_promptly(
    fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.scenario = Scenario(tokens=10, stall_after=2)
    got: list[bytes] = []
    with trio.fail_after(TEST_BOUND):
        async with http.stream("POST", CHAT, json=chat_json()) as response:
            await read_stream(response, got, stop_after=3)
            [record] = fake.connections
            assert record.closed_at is None
            assert fake.open_connections == 1
        left_at = trio.current_time()
    with trio.fail_after(CLOSE_BOUND):
        await fake.wait_all_closed()
    assert record.closed_at is not None
    assert record.closed_at - left_at < CLOSE_BOUND
    assert fake.open_connections == 0
    assert content_of(json.loads(p) for p in got) == "t0 t1 "


async def test_client_leaving_a_paced_stream_is_noticed_promptly(
    fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.scenario = Scenario(tokens=1000, tps=5)  # 200 ms between tokens > CLOSE_BOUND
    got: list[bytes] = []
    with trio.fail_after(TEST_BOUND):
        async with http.stream("POST", CHAT, json=chat_json()) as response:
            await read_stream(response, got, stop_after=2)
        left_at = trio.current_time()
    with trio.fail_after(CLOSE_BOUND):
        await fake.wait_all_closed()
    closed_at = fake.connections[0].closed_at
    assert closed_at is not None
    assert closed_at - left_at < CLOSE_BOUND


async def test_no_response_holds_until_the_peer_leaves(fake: FakeUpstream) -> None:
    fake.scenario = Scenario(no_response=True)
    with trio.fail_after(TEST_BOUND):
        stream = await open_raw(fake)
        await stream.send_all(raw_request(chat_json()))
        await fake.wait_for_request(1)
        assert fake.open_connections == 1
        await stream.aclose()
        left_at = trio.current_time()
    with trio.fail_after(CLOSE_BOUND):
        await fake.wait_all_closed()
    closed_at = fake.connections[0].closed_at
    assert closed_at is not None
    assert closed_at >= left_at


async def test_peer_hanging_up_between_requests_is_recorded(fake: FakeUpstream) -> None:
    with trio.fail_after(TEST_BOUND):
        stream = await open_raw(fake)
        await stream.send_all(raw_request(path="/v1/models"))
        reply = await stream.receive_some()
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert fake.connections[0].closed_at is None
        await stream.aclose()
    with trio.fail_after(CLOSE_BOUND):
        await fake.wait_all_closed()
    assert fake.connections[0].requests == 1


async def test_reset_before_headers_sends_rst(fake: FakeUpstream) -> None:
    fake.scenario = Scenario(reset_before_headers=True)
    with trio.fail_after(TEST_BOUND):
        stream = await open_raw(fake)
        async with stream:
            await stream.send_all(raw_request(chat_json()))
            with pytest.raises(trio.BrokenResourceError) as info:
                await stream.receive_some()
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert len(fake.requests) == 1
    assert fake.connections[0].closed_at is not None


async def test_keep_alive_reuses_one_connection(
    fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    with trio.fail_after(TEST_BOUND):
        async with http.stream("POST", CHAT, json=chat_json()) as response:
            await response.aread()
        second = await http.post(CHAT, json=chat_json(stream=False))
    assert second.status_code == 200
    [record] = fake.connections
    assert isinstance(record, ConnectionRecord)
    assert record.requests == 2
    assert record.closed_at is None
    assert record.peer.startswith("127.0.0.1:")
    assert [r.json["stream"] for r in fake.requests if r.json] == [True, False]


async def test_pipelined_requests_are_answered_in_order(fake: FakeUpstream) -> None:
    with trio.fail_after(TEST_BOUND):
        stream = await open_raw(fake)
        async with stream:
            await stream.send_all(
                raw_request(path="/v1/models")
                + raw_request(path="/nope")
                + raw_request(path="/v1/models", headers="connection: close\r\n")
            )
            data = await read_until_eof(stream)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"200", b"404", b"200"]
    assert data.count(b"connection: close") == 1
    assert fake.connections[0].requests == 3


async def test_expect_continue(fake: FakeUpstream) -> None:
    body = json.dumps(chat_json(stream=False)).encode()
    with trio.fail_after(TEST_BOUND):
        stream = await open_raw(fake)
        async with stream:
            await stream.send_all(
                f"POST {CHAT} HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\n"
                f"content-length: {len(body)}\r\n\r\n".encode()
            )
            assert await stream.receive_some() == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send_all(body)
            reply = await stream.receive_some()
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [(b"nonsense\r\n\r\n", b"400"), (b"GET / HTTP/1.0\r\n\r\n", b"505")],
)
async def test_bad_requests_are_refused_and_closed(
    fake: FakeUpstream, request_bytes: bytes, status: bytes
) -> None:
    with trio.fail_after(TEST_BOUND):
        stream = await open_raw(fake)
        async with stream:
            await stream.send_all(request_bytes)
            data = await read_until_eof(stream)
    assert data.split(b" ")[1] == status
    assert b"connection: close" in data
    assert fake.requests == []
    assert fake.connections[0].closed_at is not None


async def test_script_is_consumed_in_order_then_the_default(
    fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.script.extend([Scenario(status=500), Scenario(status=429), Scenario(tokens=1)])
    with trio.fail_after(TEST_BOUND):
        await http.get("/v1/models")  # does not consume the script
        replies = [await http.post(CHAT, json=chat_json(stream=False)) for _ in range(4)]
        fake.scenario = Scenario(tokens=2)
        last = await http.post(CHAT, json=chat_json(stream=False))
    assert [r.status_code for r in replies] == [500, 429, 200, 200]
    assert replies[2].json()["choices"][0]["message"]["content"] == "t0 "
    assert replies[3].json()["choices"][0]["message"]["content"] == "t0 t1 t2 t3 t4 "
    assert last.json()["choices"][0]["message"]["content"] == "t0 t1 "
    assert not fake.script


async def test_sse_quirks_reach_an_http_client(fake: FakeUpstream, http: httpx.AsyncClient) -> None:
    fake.script.extend(
        [
            Scenario(tokens=3, crlf=True, split_writes=True, keepalive_comments=True),
            Scenario(tokens=3, malformed_after=1, no_done=True),
            Scenario(tokens=3, error_event_after=2),
        ]
    )
    results: list[list[bytes]] = []
    with trio.fail_after(TEST_BOUND):
        for _ in range(3):
            got: list[bytes] = []
            async with http.stream("POST", CHAT, json=chat_json()) as response:
                await read_stream(response, got)
            results.append(got)
    quirky, malformed, exploded = results
    assert content_of(json.loads(p) for p in quirky[:-1]) == "t0 t1 t2 "
    assert quirky[-1] == b"[DONE]"
    assert b"{not json" in malformed
    assert malformed[-1] != b"[DONE]"
    assert json.loads(exploded[-1])["error"]["type"] == "server_error"
    assert len(fake.connections) == 1  # every one of these bodies ended properly


async def test_first_delay_comes_after_the_role_chunk(
    fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    delay = 0.2
    fake.scenario = Scenario(tokens=2, first_delay=delay, timestamps=True)
    arrivals: list[float] = []
    got: list[bytes] = []
    with trio.fail_after(TEST_BOUND):
        async with http.stream("POST", CHAT, json=chat_json()) as response:
            await read_stream(response, got, stop_after=2, arrivals=arrivals)
    assert "role" in json.loads(got[0])["choices"][0]["delta"]
    assert arrivals[1] - arrivals[0] >= delay * 0.9
    assert json.loads(got[1])["sent_at"] == pytest.approx(time.time(), abs=TEST_BOUND)


# The SDK (and the httpx2 it is built on) leaves inner async generators to trio's
# finaliser, as httpx does (see pyproject's filterwarnings); the stream is read to its end.
@pytest.mark.filterwarnings("ignore:Async generator '(openai|httpx2|httpcore2)\\.:ResourceWarning")
async def test_openai_sdk_reads_the_fake(fake: FakeUpstream) -> None:
    fake.script.append(
        Scenario(status=400, error_code="context_length_exceeded", error_message="too long")
    )
    with trio.fail_after(TEST_BOUND):
        async with openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as sdk:
            with pytest.raises(openai.BadRequestError) as info:
                await sdk.chat.completions.create(model="m", messages=[])
            stream = await sdk.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            texts: list[str] = []
            usage = None
            async for part in stream:
                texts.extend(choice.delta.content or "" for choice in part.choices)
                usage = part.usage or usage
    assert info.value.code == "context_length_exceeded"
    assert "".join(texts) == "t0 t1 t2 t3 t4 "
    assert usage is not None
    assert usage.completion_tokens == 5


async def test_wait_for_request_and_wait_all_closed_block_until_true(
    fake: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.scenario = Scenario(tokens=1)
    done: list[str] = []

    async def waiter() -> None:
        await fake.wait_for_request(2)
        done.append("two requests")

    with trio.fail_after(TEST_BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await http.post(CHAT, json=chat_json(stream=False))
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            await http.post(CHAT, json=chat_json(stream=False))
        assert done == ["two requests"]
        await fake.wait_for_request(1)  # already true: returns at once


async def test_stopping_the_server_closes_its_connections() -> None:
    upstream = FakeUpstream(Scenario(tokens=3, stall_after=1))
    with trio.fail_after(TEST_BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream.serve, 0)
            stream = await open_raw(upstream)
            await stream.send_all(raw_request(chat_json()))
            await upstream.wait_for_request(1)
            nursery.cancel_scope.cancel("test stops the server")
        async with stream:
            data = await read_until_eof(stream)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert upstream.open_connections == 0
    assert upstream.connections[0].closed_at is not None


def test_base_url_needs_a_running_server() -> None:
    with pytest.raises(RuntimeError, match="has not started"):
        _ = FakeUpstream().base_url


# --------------------------------------------------------------------------- Ollama mode

OLLAMA_CHAT = "/api/chat"


def ollama_json(stream: bool | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "say something nice"}],
        **extra,
    }
    if stream is not None:
        body["stream"] = stream
    return body


def ollama_plan(scenario: Scenario, **body: Any) -> Wire:
    chat = OllamaChat.from_json(ollama_json(**body))
    return decode(plan_ollama_chat(scenario, chat, facts()))


def ndjson(body: bytes, eol: bytes = b"\n") -> list[dict[str, Any]]:
    """Every line of an NDJSON body, parsed; each must end with `eol`."""
    assert body.endswith(eol), body[-40:]
    return [json.loads(line) for line in body.split(eol)[:-1]]


def ollama_content(lines: Iterable[dict[str, Any]]) -> str:
    return "".join(line["message"]["content"] for line in lines if "message" in line)


async def read_ndjson(response: httpx.Response, into: list[dict[str, Any]]) -> None:
    """Append each line of an NDJSON body, parsed (so a caller keeps them if reading fails)."""
    lines = cast(AsyncGenerator[str, None], response.aiter_lines())
    async with contextlib.aclosing(lines):
        async for line in lines:
            if line:
                into.append(json.loads(line))


def test_ollama_chat_request_reads_what_shapes_the_answer() -> None:
    chat = OllamaChat.from_json(ollama_json(
        options={"num_predict": 3, "temperature": 0.1}, think=True,
        tools=[{"type": "function", "function": {"name": "get_weather"}}],
        messages=[{"role": "user", "content": "one two"},
                  {"role": "assistant", "content": "t0 t1"}]))
    assert chat == OllamaChat(model="llama3.2", stream=True, max_tokens=3, prompt_tokens=4,
                              think=True, tool="get_weather", prefill_tokens=2)
    assert OllamaChat.from_json({}) == OllamaChat()  # Ollama streams unless told not to
    assert OllamaChat.from_json(ollama_json(False, options={"num_predict": -1})) == \
        OllamaChat(model="llama3.2", stream=False, prompt_tokens=3)
    assert not OllamaChat.from_json(ollama_json(think=False)).think
    assert OllamaChat.from_json(ollama_json(think="high")).think
    assert (OllamaChat(max_tokens=2).done_reason(5), OllamaChat().done_reason(5)) == \
        ("length", "stop")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"model": 3}, "model"),
        ({"stream": "yes"}, "stream"),
        ({"options": [1]}, "options"),
        ({"options": {"num_predict": "3"}}, "options.num_predict"),
        ({"options": {"num_predict": True}}, "options.num_predict"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages"),
    ],
)
def test_ollama_chat_request_rejects(body: object, param: str | None) -> None:
    with pytest.raises(InvalidChatRequest) as info:
        OllamaChat.from_json(body)
    assert info.value.param == param


def test_ollama_stream_plan_is_ndjson_with_a_done_line() -> None:
    wire = ollama_plan(Scenario(tokens=3))
    assert (wire.status, wire.complete, wire.controls) == (200, True, [])
    assert wire.headers["content-type"] == "application/x-ndjson"
    assert wire.headers["transfer-encoding"] == "chunked"
    lines = ndjson(wire.body)
    assert len(lines) == 4
    assert [line["message"]["content"] for line in lines] == ["t0 ", "t1 ", "t2 ", ""]
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert {line["model"] for line in lines} == {"llama3.2"}
    assert {line["created_at"] for line in lines} == {"2023-11-14T22:13:20.000000Z"}
    done = lines[-1]
    assert (done["done_reason"], done["prompt_eval_count"], done["eval_count"]) == ("stop", 3, 3)
    assert {"total_duration", "load_duration", "eval_duration"} <= set(done)
    assert all("error" not in line for line in lines)


def test_ollama_num_predict_caps_with_length() -> None:
    lines = ndjson(ollama_plan(Scenario(tokens=5), options={"num_predict": 2}).body)
    assert ollama_content(lines) == "t0 t1 "
    assert (lines[-1]["done_reason"], lines[-1]["eval_count"]) == ("length", 2)


def test_ollama_thinking_tool_call_and_prefill() -> None:
    lines = ndjson(ollama_plan(
        Scenario(tokens=3), think=True,
        tools=[{"type": "function", "function": {"name": "get_weather"}}],
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "t0"}],
    ).body)
    assert [line["message"].get("thinking") for line in lines[:2]] == ["r0 ", "r1 "]
    assert ollama_content(lines) == "t1 t2 "  # continues after the prefilled "t0"
    assert lines[-2]["message"]["tool_calls"] == [
        {"function": {"index": 0, "name": "get_weather", "arguments": {"fake": True}}}]
    assert lines[-1]["done"] and lines[-1]["eval_count"] == 2


def test_ollama_stream_faults() -> None:
    cut = ollama_plan(Scenario(tokens=5, cut_after=2))
    assert (cut.complete, cut.controls) == (False, [Control.CUT])
    assert ollama_content(ndjson(cut.body)) == "t0 t1 "
    stall = ollama_plan(Scenario(tokens=5, stall_after=1))
    assert (stall.complete, stall.controls) == (False, [Control.STALL])
    malformed = ollama_plan(Scenario(tokens=3, malformed_after=1))
    assert malformed.complete
    raw = malformed.body.split(b"\n")[:-1]
    assert raw[1] == b"{not json"
    assert ollama_content(json.loads(r) for r in raw[:1] + raw[2:]) == "t0 t1 t2 "
    exploded = ollama_plan(Scenario(tokens=5, error_event_after=2))
    assert exploded.complete
    assert ndjson(exploded.body)[-1] == {"error": "upstream exploded"}
    assert b'"done":true' not in exploded.body
    omit = ollama_plan(Scenario(tokens=2, omit_finish=True))
    assert omit.complete
    assert [line["done"] for line in ndjson(omit.body)] == [False, False]
    no_newline = ollama_plan(Scenario(tokens=2, no_done=True))
    assert no_newline.complete
    assert no_newline.body == ollama_plan(Scenario(tokens=2)).body.removesuffix(b"\n")
    assert json.loads(no_newline.body.rsplit(b"\n", 1)[1])["done"] is True


def test_ollama_pace_crlf_and_split_writes() -> None:
    assert ollama_plan(Scenario(tokens=3, tps=4, first_delay=0.5)).controls == \
        [SleepUntil(0.5), SleepUntil(0.75), SleepUntil(1.0)]
    crlf = ollama_plan(Scenario(tokens=2, crlf=True))
    assert ollama_content(ndjson(crlf.body, b"\r\n")) == "t0 t1 "
    split = ollama_plan(Scenario(tokens=2, split_writes=True))
    whole = ollama_plan(Scenario(tokens=2))
    assert split.body == whole.body
    assert split.controls == [Control.FLUSH] * (2 * (len(whole.writes) - 2))


def test_ollama_error_plans_use_ollamas_error_shape() -> None:
    missing = ollama_plan(Scenario(status=404))
    assert (missing.status, json.loads(missing.body)) == \
        (404, {"error": "model 'llama3.2' not found"})
    limited = ollama_plan(Scenario(status=503, retry_after=1.5, error_message="busy",
                                   first_delay=0.2))
    assert (limited.status, limited.headers["retry-after"]) == (503, "1.5")
    assert json.loads(limited.body) == {"error": "busy"}
    assert limited.controls == [SleepUntil(0.2)]
    assert json.loads(ollama_plan(Scenario(status=500)).body) == \
        {"error": "fake upstream: Internal Server Error"}
    assert ollama_plan(Scenario(reset_before_headers=True)).controls == [Control.RESET]
    assert ollama_plan(Scenario(no_response=True)).controls == [Control.STALL]


def test_ollama_non_stream_plans() -> None:
    wire = ollama_plan(Scenario(tokens=3, tps=10, first_delay=1), stream=False, think=True,
                       options={"num_predict": 2})
    assert wire.controls == [SleepUntil(1.1)]
    assert wire.headers["content-type"] == "application/json"
    body = json.loads(wire.body)
    assert body["message"] == {"role": "assistant", "content": "t0 t1 ", "thinking": "r0 r1 "}
    assert (body["done"], body["done_reason"], body["eval_count"]) == (True, "length", 2)
    cut = ollama_plan(Scenario(tokens=5, tps=10, cut_after=3), stream=False)
    assert (cut.writes, cut.controls) == ([], [SleepUntil(0.2), Control.CUT])
    exploded = ollama_plan(Scenario(error_event_after=1), stream=False)
    assert (exploded.status, json.loads(exploded.body)) == (500, {"error": "upstream exploded"})


async def test_ollama_stream_over_http(fake: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake.origin, timeout=TEST_BOUND) as http:
        with trio.fail_after(TEST_BOUND):
            async with http.stream("POST", OLLAMA_CHAT, json=ollama_json()) as response:
                assert response.headers["content-type"] == "application/x-ndjson"
                lines: list[dict[str, Any]] = []
                await read_ndjson(response, lines)
            whole = await http.post(OLLAMA_CHAT, json=ollama_json(False))
            tags = await http.get("/api/tags")
    assert ollama_content(lines) == "t0 t1 t2 t3 t4 "
    assert lines[-1]["done"] is True
    assert whole.json()["message"]["content"] == "t0 t1 t2 t3 t4 "
    assert tags.json()["models"][0]["name"] == "fake-model:latest"
    assert [(r.method, r.path) for r in fake.requests] == \
        [("POST", OLLAMA_CHAT), ("POST", OLLAMA_CHAT), ("GET", "/api/tags")]
    assert fake.requests[0].json == ollama_json()
    assert len(fake.connections) == 1  # kept alive across the three


async def test_ollama_errors_script_and_methods_over_http(fake: FakeUpstream) -> None:
    fake.script.extend([Scenario(status=404), Scenario(tokens=1)])
    async with httpx.AsyncClient(base_url=fake.origin, timeout=TEST_BOUND) as http:
        with trio.fail_after(TEST_BOUND):
            missing = await http.post(OLLAMA_CHAT, json=ollama_json(False, model="nope"))
            one = await http.post(OLLAMA_CHAT, json=ollama_json(False))
            default = await http.post(OLLAMA_CHAT, json=ollama_json(False))
            wrong_method = await http.get(OLLAMA_CHAT)
            tags_post = await http.post("/api/tags", json={})
            not_json = await http.post(OLLAMA_CHAT, content=b"{oops")
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nope' not found"})
    assert one.json()["message"]["content"] == "t0 "
    assert default.json()["message"]["content"] == "t0 t1 t2 t3 t4 "
    assert (wrong_method.status_code, tags_post.status_code) == (405, 405)
    assert (not_json.status_code, set(not_json.json())) == (400, {"error"})
    assert not fake.script


async def test_ollama_cut_breaks_the_chunked_body(fake: FakeUpstream) -> None:
    fake.scenario = Scenario(tokens=10, cut_after=3)
    lines: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=fake.origin, timeout=TEST_BOUND) as http:
        with trio.fail_after(TEST_BOUND):
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                async with http.stream("POST", OLLAMA_CHAT, json=ollama_json()) as response:
                    await read_ndjson(response, lines)
            await fake.wait_all_closed()
    assert ollama_content(lines) == "t0 t1 t2 "
    assert not any(line["done"] for line in lines)


async def test_ollama_client_leaving_a_paced_stream_is_noticed_promptly(
    fake: FakeUpstream,
) -> None:
    fake.scenario = Scenario(tokens=1000, tps=5)  # 200 ms between tokens > CLOSE_BOUND
    async with httpx.AsyncClient(base_url=fake.origin, timeout=TEST_BOUND) as http:
        with trio.fail_after(TEST_BOUND):
            async with http.stream("POST", OLLAMA_CHAT, json=ollama_json()) as response:
                lines = cast(AsyncGenerator[str, None], response.aiter_lines())
                async with contextlib.aclosing(lines):
                    first = await lines.__anext__()
            left_at = trio.current_time()
    assert json.loads(first)["message"]["content"] == "t0 "
    with trio.fail_after(CLOSE_BOUND):
        await fake.wait_all_closed()
    closed_at = fake.connections[0].closed_at
    assert closed_at is not None
    assert closed_at - left_at < CLOSE_BOUND


# ------------------------------------------------------- /v1/completions, /v1/embeddings


def test_a_completions_stream_and_its_faults() -> None:
    body = {"model": "m", "prompt": "two words", "stream": True,
            "stream_options": {"include_usage": True}}
    wire = decode(plan_completion(Scenario(tokens=3), body, facts()))
    parsed = chunks_of(wire.body)
    assert [c["choices"][0]["text"] for c in parsed[:-1]] == ["t0 ", "t1 ", "t2 ", ""]
    assert parsed[-2]["choices"][0]["finish_reason"] == "stop"
    assert parsed[0]["object"] == "text_completion"
    assert parsed[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3,
                                   "total_tokens": 5}
    assert payloads(wire.body)[-1] == b"[DONE]" and wire.complete
    cut = decode(plan_completion(Scenario(tokens=3, cut_after=1), body, facts()))
    assert len(chunks_of(cut.body)) == 1 and cut.controls == [Control.CUT]
    refused = decode(plan_completion(Scenario(status=429, retry_after=2), body, facts()))
    assert (refused.status, refused.headers["retry-after"]) == (429, "2")


def test_a_whole_completion_and_embeddings() -> None:
    whole = decode(plan_completion(Scenario(tokens=2), {"prompt": "x", "max_tokens": 1},
                                   facts()))
    answer = json.loads(whole.body)
    assert answer["choices"][0]["text"] == "t0 "
    assert answer["choices"][0]["finish_reason"] == "length"
    embedded = json.loads(decode(plan_embeddings(
        Scenario(), {"model": "e", "input": ["ab", "c d e"]}, facts())).body)
    assert [d["embedding"] for d in embedded["data"]] == [[2.0, 0.0, 0.5, 0.25],
                                                          [5.0, 1.0, 0.5, 0.25]]
    assert embedded["usage"]["prompt_tokens"] == 4 and embedded["model"] == "e"
    assert decode(plan_embeddings(Scenario(status=500), {"input": "x"}, facts())).status == 500
    with pytest.raises(InvalidChatRequest):
        plan_completion(Scenario(), {"prompt": "x", "stream": "yes"}, facts())
