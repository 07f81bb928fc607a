"""server/chunks.py: what the relay learns from one chunk, and the chunks Sluice makes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.chunks import (
    ChunkFacts,
    MalformedChunk,
    chunk_bytes,
    error_event_payload,
    finish_reasons,
    inspect_chunk,
)
from server.errors import StreamCut, UpstreamTimeout


def chunk(*choices: dict[str, Any], **extra: Any) -> bytes:
    return orjson.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                         "model": "m", "choices": list(choices), **extra})


def choice(delta: dict[str, Any] | None = None, finish_reason: str | None = None,
           index: int = 0) -> dict[str, Any]:
    return {"index": index, "delta": delta if delta is not None else {},
            "finish_reason": finish_reason}


# ------------------------------------------------------------ inspect_chunk


@pytest.mark.parametrize(
    "delta",
    [
        {"content": "Hel"},
        {"role": "assistant", "content": "x"},
        {"reasoning_content": "thinking"},  # DeepSeek, vLLM
        {"reasoning": "thinking"},  # OpenRouter, newer vLLM
        {"refusal": "I can't"},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]},
        {"function_call": {"name": "f"}},  # the deprecated functions API
        {"content": "", "reasoning_content": "r"},
    ],
)
def test_content_deltas(delta: dict[str, Any]) -> None:
    facts, parsed = inspect_chunk(chunk(choice(delta)))
    assert facts == ChunkFacts(content=True, finished=False, error=None)
    assert parsed["choices"][0]["delta"] == delta


@pytest.mark.parametrize(
    "delta",
    [
        {},
        {"role": "assistant"},
        {"role": "assistant", "content": ""},  # the usual first chunk
        {"content": None},
        {"tool_calls": []},
        {"tool_calls": None},
        {"refusal": None, "reasoning_content": ""},
    ],
)
def test_deltas_without_content(delta: dict[str, Any]) -> None:
    facts, _ = inspect_chunk(chunk(choice(delta)))
    assert facts == ChunkFacts(content=False, finished=False, error=None)


def test_a_non_dict_delta_is_not_content() -> None:
    facts, _ = inspect_chunk(chunk({"index": 0, "delta": None, "finish_reason": None}))
    assert not facts.content
    facts, _ = inspect_chunk(chunk({"index": 0, "finish_reason": None}))
    assert not facts.content


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter", ""])
def test_finish_reason(reason: str) -> None:
    facts, _ = inspect_chunk(chunk(choice({}, finish_reason=reason)))
    assert facts == ChunkFacts(content=False, finished=True, error=None)


def test_content_and_finish_in_one_chunk() -> None:
    facts, _ = inspect_chunk(chunk(choice({"content": "end"}, finish_reason="stop")))
    assert facts == ChunkFacts(content=True, finished=True, error=None)


def test_any_choice_counts() -> None:
    facts, _ = inspect_chunk(chunk(choice({}, index=0),
                                   choice({"content": "b"}, finish_reason="stop", index=1)))
    assert facts.content
    assert facts.finished


@pytest.mark.parametrize("choices", [[], None])
def test_usage_only_chunk(choices: list[Any] | None) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    payload = orjson.dumps({"id": "c1", "choices": choices, "usage": usage})
    facts, parsed = inspect_chunk(payload)
    assert facts == ChunkFacts(content=False, finished=False, error=None)
    assert parsed["usage"] == usage


def test_the_parsed_chunk_is_returned_whole() -> None:
    payload = chunk(choice({"content": "x"}), system_fingerprint="fp", usage=None)
    _, parsed = inspect_chunk(payload)
    assert parsed == orjson.loads(payload)


@pytest.mark.parametrize(
    ("error", "facts_error"),
    [
        ({"message": "boom", "type": "server_error", "code": 500},
         {"message": "boom", "type": "server_error", "code": 500}),
        ("boom", {"message": "boom"}),
        (42, {"message": 42}),
    ],
)
def test_in_band_error(error: Any, facts_error: dict[str, Any]) -> None:
    payload = orjson.dumps({"error": error, "choices": [choice({"content": "x"})]})
    facts, _ = inspect_chunk(payload)
    # An error event is neither content nor a finish, whatever else it holds.
    assert facts == ChunkFacts(content=False, finished=False, error=facts_error)


def test_null_error_is_not_an_error() -> None:
    facts, _ = inspect_chunk(orjson.dumps({"error": None, "choices": [choice({"content": "x"})]}))
    assert facts == ChunkFacts(content=True, finished=False, error=None)


@pytest.mark.parametrize(
    "payload",
    [
        b"[DONE]",  # the caller handles the sentinel before inspecting
        b"",
        b"{",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"1",
        b'"a string"',
        b"null",
        b'{"choices": {"index": 0}}',
        b'{"choices": "x"}',
        b'{"choices": [1]}',
        b'{"choices": [null]}',
    ],
)
def test_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedChunk):
        inspect_chunk(payload)


def test_malformed_chunk_is_a_value_error() -> None:
    assert issubclass(MalformedChunk, ValueError)


def test_facts_are_frozen() -> None:
    facts = ChunkFacts(content=True, finished=False, error=None)
    with pytest.raises(AttributeError):
        facts.content = False  # type: ignore[misc]


# ---------------------------------------------------------------- builders

IDS: dict[str, Any] = {"completion_id": "chatcmpl-1", "created": 1700000000, "model": "sim"}


def test_chunk_bytes_content_delta() -> None:
    built = orjson.loads(chunk_bytes(**IDS, delta={"content": "hi"}))
    assert built == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "sim",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": None,
                     "finish_reason": None}],
    }
    facts, _ = inspect_chunk(chunk_bytes(**IDS, delta={"content": "hi"}))
    assert facts == ChunkFacts(content=True, finished=False, error=None)


def test_chunk_bytes_finish() -> None:
    built = orjson.loads(chunk_bytes(**IDS, finish_reason="length"))
    assert built["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                 "finish_reason": "length"}]
    assert "usage" not in built
    facts, _ = inspect_chunk(chunk_bytes(**IDS, finish_reason="length"))
    assert facts == ChunkFacts(content=False, finished=True, error=None)


def test_chunk_bytes_usage_only() -> None:
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    built = orjson.loads(chunk_bytes(**IDS, usage=usage))
    assert built["choices"] == []
    assert built["usage"] == usage
    assert built["object"] == "chat.completion.chunk"
    facts, _ = inspect_chunk(chunk_bytes(**IDS, usage=usage))
    assert facts == ChunkFacts(content=False, finished=False, error=None)


def test_chunk_bytes_is_compact_single_line_json() -> None:
    # One line, so frame() makes it a single data: line.
    payload = chunk_bytes(**IDS, delta={"content": "a\nb"})
    assert b"\n" not in payload
    assert orjson.loads(payload)["choices"][0]["delta"]["content"] == "a\nb"


def test_error_event_payload() -> None:
    error = UpstreamTimeout("idle", 2.5)
    body = orjson.loads(error_event_payload(error))
    assert body == {"error": {
        "message": "The upstream sent nothing for 2.5 s (idle timeout).",
        "type": "timeout_error",
        "param": None,
        "code": "idle_timeout",
        "error_id": error.error_id,
    }}
    # The relay's own inspection recognises it as an error event.
    facts, _ = inspect_chunk(error_event_payload(error))
    assert facts.error is not None
    assert facts.error["code"] == "idle_timeout"


def test_error_event_payload_hides_the_detail() -> None:
    error = StreamCut("The upstream stream ended early.",
                      detail="http://10.0.0.7:8000/v1 reset the connection")
    payload = error_event_payload(error)
    assert b"10.0.0.7" not in payload
    assert orjson.loads(payload)["error"]["code"] == "stream_truncated"


def test_finish_reasons_lists_each_finished_choice() -> None:
    chunk = {"choices": [{"index": 0, "finish_reason": "stop"}, {"index": 1, "delta": {}},
                         {"index": 2, "finish_reason": "length"}]}
    assert finish_reasons(chunk) == ("stop", "length")
    assert finish_reasons({"choices": []}) == ()
    assert finish_reasons({}) == ()
