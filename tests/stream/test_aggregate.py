"""server/aggregate.py: folding a stream of chunks into one ``chat.completion``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.chunks import MalformedChunk, inspect_chunk
from server.stream.aggregate import CompletionBuilder

USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}


def chunk(*choices: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-7", "object": "chat.completion.chunk", "created": 1700000000,
            "model": "gpt-x", "choices": list(choices), **extra}


def delta(index: int = 0, finish_reason: str | None = None, logprobs: Any = None,
          **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "logprobs": logprobs,
            "finish_reason": finish_reason}


def fold(*chunks: dict[str, Any]) -> dict[str, Any]:
    builder = CompletionBuilder()
    for c in chunks:
        builder.add(c)
    return builder.result()


def test_a_plain_text_stream() -> None:
    result = fold(
        chunk(delta(role="assistant", content="")),
        chunk(delta(content="Hello")),
        chunk(delta(content=", world")),
        chunk(delta(finish_reason="stop")),
        chunk(usage=USAGE),
    )
    assert result == {
        "id": "chatcmpl-7",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-x",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world"},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": USAGE,
    }
    orjson.dumps(result)  # serialisable as is


def test_no_chunks_at_all() -> None:
    assert CompletionBuilder().result() == {
        "id": "", "object": "chat.completion", "created": 0, "model": "", "choices": [],
    }


def test_header_comes_from_the_first_chunk_that_has_it() -> None:
    result = fold(
        {"id": None, "choices": []},
        {"id": "first", "created": 5, "model": "a", "system_fingerprint": "fp_1",
         "choices": []},
        {"id": "second", "created": 6, "model": "b", "system_fingerprint": "fp_2",
         "service_tier": "default", "choices": []},
    )
    assert (result["id"], result["created"], result["model"]) == ("first", 5, "a")
    assert result["system_fingerprint"] == "fp_1"
    assert result["service_tier"] == "default"


def test_optional_header_keys_are_absent_when_never_sent() -> None:
    result = fold(chunk(delta(content="x")))
    assert "system_fingerprint" not in result
    assert "service_tier" not in result
    assert "usage" not in result


def test_usage_null_on_every_chunk_is_ignored_and_the_usage_chunk_wins() -> None:
    # With include_usage, OpenAI sends "usage": null on every content chunk.
    result = fold(
        chunk(delta(content="a"), usage=None),
        chunk(delta(finish_reason="stop"), usage=None),
        chunk(usage=USAGE),
    )
    assert result["usage"] == USAGE


def test_the_last_usage_wins() -> None:
    early = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
    assert fold(chunk(usage=early), chunk(usage=USAGE))["usage"] == USAGE


def test_reasoning_is_concatenated_from_either_spelling() -> None:
    result = fold(
        chunk(delta(reasoning_content="Let me ")),
        chunk(delta(reasoning="think. ")),
        chunk(delta(reasoning_content="Done.", reasoning="Done.")),  # both: counted once
        chunk(delta(content="42")),
        chunk(delta(finish_reason="stop")),
    )
    message = result["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think. Done."
    assert message["content"] == "42"


def test_no_reasoning_or_refusal_key_when_none_was_sent() -> None:
    message = fold(chunk(delta(content="x")))["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert "refusal" not in message
    assert "tool_calls" not in message


def test_refusal_is_concatenated() -> None:
    result = fold(
        chunk(delta(role="assistant", refusal="I can't ")),
        chunk(delta(refusal="help with that.")),
        chunk(delta(finish_reason="stop")),
    )
    message = result["choices"][0]["message"]
    assert message["refusal"] == "I can't help with that."


def test_tool_calls_are_assembled_by_index() -> None:
    result = fold(
        chunk(delta(role="assistant", content=None, tool_calls=[
            {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}},
        ])),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}])),
        chunk(delta(tool_calls=[
            {"index": 1, "id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}},
        ])),
        chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}])),
        chunk(delta(finish_reason="tool_calls")),
    )
    (only,) = result["choices"]
    assert only["finish_reason"] == "tool_calls"
    assert only["message"] == {
        "role": "assistant",
        "content": None,  # a tool-call answer with no text has null content
        "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }


def test_tool_calls_are_ordered_by_index_not_arrival() -> None:
    result = fold(
        chunk(delta(tool_calls=[{"index": 2, "id": "c2", "function": {"name": "b"}}])),
        chunk(delta(tool_calls=[{"index": 0, "id": "c0", "function": {"name": "a"}}])),
    )
    calls = result["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["c0", "c2"]
    assert [c["type"] for c in calls] == ["function", "function"]  # the default


def test_several_tool_calls_in_one_delta() -> None:
    result = fold(chunk(delta(tool_calls=[
        {"index": 0, "id": "a", "function": {"name": "f", "arguments": "1"}},
        {"index": 1, "id": "b", "function": {"name": "g", "arguments": "2"}},
    ])))
    calls = result["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("a", "1"), ("b", "2")]


def test_text_before_tool_calls_is_kept() -> None:
    result = fold(
        chunk(delta(content="Checking. ")),
        chunk(delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f"}}])),
    )
    message = result["choices"][0]["message"]
    assert message["content"] == "Checking. "
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}


def test_a_tool_call_without_an_id_keeps_null() -> None:
    result = fold(chunk(delta(tool_calls=[{"function": {"name": "f", "arguments": "{}"}}])))
    assert result["choices"][0]["message"]["tool_calls"] == [
        {"id": None, "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ]


def test_the_last_finish_reason_wins_and_null_does_not_erase_it() -> None:
    result = fold(
        chunk(delta(content="x", finish_reason="length")),
        chunk(delta(finish_reason=None)),
        chunk(usage=USAGE),
    )
    assert result["choices"][0]["finish_reason"] == "length"
    assert fold(chunk(delta(finish_reason="stop")),
                chunk(delta(finish_reason="length")))["choices"][0]["finish_reason"] == "length"


def test_no_finish_reason_stays_null() -> None:
    assert fold(chunk(delta(content="x")))["choices"][0]["finish_reason"] is None


def test_logprobs_content_is_concatenated_in_order() -> None:
    def token(text: str) -> dict[str, Any]:
        return {"token": text, "logprob": -0.1, "bytes": list(text.encode()), "top_logprobs": []}

    result = fold(
        chunk(delta(content="He", logprobs={"content": [token("He")], "refusal": None})),
        chunk(delta(content="llo", logprobs={"content": [token("l"), token("lo")]})),
        chunk(delta(finish_reason="stop", logprobs=None)),
    )
    assert result["choices"][0]["logprobs"] == {
        "content": [token("He"), token("l"), token("lo")]
    }


def test_logprobs_without_a_content_list_are_ignored() -> None:
    result = fold(chunk(delta(content="x", logprobs={"content": None})),
                  chunk(delta(content="y", logprobs="bogus")))
    assert result["choices"][0]["logprobs"] is None


def test_multiple_choices_are_kept_apart_and_sorted() -> None:
    result = fold(
        chunk(delta(index=1, role="assistant", content="")),
        chunk(delta(index=0, role="assistant", content="")),
        chunk(delta(index=1, content="B1"), delta(index=0, content="A1")),
        chunk(delta(index=0, content="A2", finish_reason="stop")),
        chunk(delta(index=1, content="B2", finish_reason="length")),
        chunk(usage=USAGE),
    )
    assert [(c["index"], c["message"]["content"], c["finish_reason"])
            for c in result["choices"]] == [(0, "A1A2", "stop"), (1, "B1B2", "length")]


def test_a_choice_without_index_is_choice_zero() -> None:
    result = fold({"choices": [{"delta": {"content": "a"}}]},
                  chunk(delta(index=0, content="b")))
    assert [c["message"]["content"] for c in result["choices"]] == ["ab"]


def test_role_defaults_to_assistant_and_follows_the_delta() -> None:
    assert fold(chunk(delta(content="x")))["choices"][0]["message"]["role"] == "assistant"
    assert fold(chunk(delta(role="tool")))["choices"][0]["message"]["role"] == "tool"


def test_a_choice_that_said_nothing_has_empty_content() -> None:
    message = fold(chunk(delta(role="assistant")))["choices"][0]["message"]
    assert message == {"role": "assistant", "content": ""}


def test_null_and_missing_fields_are_tolerated() -> None:
    result = fold(
        {"choices": None},
        {},
        chunk({"index": 0, "delta": None, "finish_reason": None}),
        chunk(delta(content=None, refusal=None, tool_calls=None, reasoning_content=None)),
        chunk(delta(tool_calls=[{"index": 0, "id": "c", "function": None}])),
    )
    message = result["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "c", "type": "function", "function": {"name": "", "arguments": ""}}
    ]


@given(pieces=st.lists(st.text(max_size=8), max_size=20))
def test_content_split_anywhere_reassembles(pieces: list[str]) -> None:
    first = chunk(delta(role="assistant", content=""))
    chunks = [first, *(chunk(delta(content=p)) for p in pieces)]
    assert fold(*chunks)["choices"][0]["message"]["content"] == "".join(pieces)


@given(pieces=st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=20),
       order=st.randoms(use_true_random=False))
def test_arguments_split_anywhere_reassemble_per_call(
    pieces: list[str], order: Any
) -> None:
    # Two calls' argument fragments interleaved in a random (order-preserving) way.
    queues = {0: [("a", p) for p in pieces], 1: [("b", p[::-1]) for p in pieces]}
    chunks: list[dict[str, Any]] = []
    while queues[0] or queues[1]:
        index = order.choice([i for i, q in queues.items() if q])
        _, text = queues[index].pop(0)
        chunks.append(chunk(delta(tool_calls=[
            {"index": index, "function": {"arguments": text}}])))
    calls = fold(*chunks)["choices"][0]["message"]["tool_calls"]
    assert calls[0]["function"]["arguments"] == "".join(pieces)
    assert calls[1]["function"]["arguments"] == "".join(p[::-1] for p in pieces)


def test_the_builder_reads_what_inspect_chunk_returns() -> None:
    payloads = [
        b'{"id":"x","created":3,"model":"m","choices":[{"index":0,'
        b'"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}',
        b'{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
        b'{"id":"x","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,'
        b'"total_tokens":2}}',
    ]
    builder = CompletionBuilder()
    for payload in payloads:
        builder.add(inspect_chunk(payload)[1])
    result = builder.result()
    assert result["choices"][0]["message"]["content"] == "hi"
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["total_tokens"] == 2


def test_legacy_function_call_is_aggregated() -> None:
    result = fold(
        chunk(delta(role="assistant", content=None,
                    function_call={"name": "get_weather", "arguments": ""})),
        chunk(delta(function_call={"arguments": '{"city":'})),
        chunk(delta(function_call={"arguments": '"Paris"}'})),
        chunk(delta(finish_reason="function_call")),
    )
    message = result["choices"][0]["message"]
    assert message.get("function_call") == {
        "name": "get_weather", "arguments": '{"city":"Paris"}'
    }


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"choices":[{"index":0,"delta":"text"}]}', id="delta-string"),
        pytest.param(b'{"choices":[{"index":null,"delta":{"content":"x"}}]}', id="index-null"),
        pytest.param(b'{"choices":[{"index":"first","delta":{"content":"x"}}]}',
                     id="index-word"),
        pytest.param(b'{"choices":[{"index":0,"delta":{"content":5}}]}', id="content-number"),
        pytest.param(b'{"choices":[{"index":0,"delta":{"tool_calls":{"index":0}}}]}',
                     id="tool-calls-object"),
        pytest.param(b'{"choices":[{"index":0,"delta":{"tool_calls":["x"]}}]}',
                     id="tool-call-string"),
        pytest.param(b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
                     b'"function":"f"}]}}]}', id="function-string"),
        pytest.param(b'{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
                     b'"function":{"name":"f","arguments":{"city":"Paris"}}}]}}]}',
                     id="arguments-object"),
    ],
)
def test_chunks_that_inspect_chunk_accepts_never_crash_the_builder(payload: bytes) -> None:
    try:
        _, parsed = inspect_chunk(payload)
    except MalformedChunk:
        return  # rejected up front: the relay turns that into an upstream error
    builder = CompletionBuilder()
    builder.add(parsed)
    orjson.dumps(builder.result())
