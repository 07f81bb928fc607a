"""The Ollama translation, without sockets: request mapping, NDJSON reading, chunk shaping.

Requests are built by `parse_chat_request` from JSON bytes, as the gateway
builds them; translated streams are checked with the gateway's own readers
(`inspect_chunk`, `CompletionBuilder`), so a chunk the relay would misread
fails here.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.api.chat_completions import ChatRequest, parse_chat_request
from server.backends.ollama_translate import (
    NDJSONDecoder,
    OllamaStream,
    ollama_chat_body,
)
from server.chunks import inspect_chunk
from server.config import ConfigError, parse_settings
from server.errors import RequestError, UpstreamUnavailable
from server.stream.aggregate import CompletionBuilder

IMAGE = "iVBORw0KGgo="  # the start of a PNG, base64
USER = {"role": "user", "content": "hello"}


def request(**body: Any) -> ChatRequest:
    document: dict[str, Any] = {"model": "llama3.2", "messages": [USER], **body}
    return parse_chat_request(orjson.dumps(document))


def translate(**body: Any) -> dict[str, Any]:
    return ollama_chat_body(request(**body))


def rejected(**body: Any) -> RequestError:
    with pytest.raises(RequestError) as caught:
        translate(**body)
    assert caught.value.status == 400
    return caught.value


# ------------------------------------------------------------------ request: top level


@pytest.mark.parametrize("stream", [True, False])
def test_minimal_request_always_streams(stream: bool) -> None:
    assert translate(stream=stream) == {"model": "llama3.2", "messages": [USER], "stream": True}


def test_options_that_map() -> None:
    body = translate(temperature=0.2, top_p=0.9, seed=42, frequency_penalty=0.5,
                     presence_penalty=-1, max_tokens=64, stop="\n\n")
    assert body["options"] == {"temperature": 0.2, "top_p": 0.9, "seed": 42,
                               "frequency_penalty": 0.5, "presence_penalty": -1,
                               "num_predict": 64, "stop": ["\n\n"]}


@pytest.mark.parametrize(
    ("limits", "num_predict"),
    [({"max_tokens": 7}, 7), ({"max_completion_tokens": 9}, 9),
     ({"max_tokens": 7, "max_completion_tokens": 5}, 5)],
)
def test_token_limits_become_num_predict(limits: dict[str, int], num_predict: int) -> None:
    assert translate(**limits)["options"] == {"num_predict": num_predict}


@pytest.mark.parametrize(
    ("stop", "expected"),
    [("END", ["END"]), (["a", "b"], ["a", "b"]), ([], None), (None, None)],
)
def test_stop_becomes_a_list(stop: object, expected: list[str] | None) -> None:
    assert translate(stop=stop).get("options", {}).get("stop") == expected


def test_zero_values_are_kept() -> None:
    assert translate(temperature=0, seed=0)["options"] == {"temperature": 0, "seed": 0}


def test_fields_without_an_ollama_equivalent_are_dropped() -> None:
    body = translate(n=2, logprobs=True, top_logprobs=3, logit_bias={"1": 2}, user="u",
                     metadata={"a": "b"}, store=True, service_tier="auto",
                     parallel_tool_calls=False, tool_choice="auto", prediction={},
                     modalities=["text"], stream_options={"include_usage": True},
                     functions=[], continue_final_message=True, add_generation_prompt=False)
    assert body == {"model": "llama3.2", "messages": [USER], "stream": True}


def test_upstream_model_renames() -> None:
    assert ollama_chat_body(request(), "llama3.2:3b-instruct-q4_K_M")["model"] == \
        "llama3.2:3b-instruct-q4_K_M"
    assert ollama_chat_body(request(), None)["model"] == "llama3.2"


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, "json"),
        ({"type": "json_schema", "json_schema": {"name": "n", "strict": True,
                                                 "schema": {"type": "object"}}},
         {"type": "object"}),
    ],
)
def test_response_format_becomes_format(response_format: dict[str, Any],
                                        expected: object) -> None:
    assert translate(response_format=response_format).get("format") == expected


@pytest.mark.parametrize(
    ("response_format", "param"),
    [
        ("json", "response_format"),
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"schema": "object"}},
         "response_format.json_schema.schema"),
    ],
)
def test_unmappable_response_format_is_400(response_format: object, param: str) -> None:
    assert rejected(response_format=response_format).param == param


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "d",
                                           "parameters": {"type": "object"}}}]


def test_tools_pass_through_unless_tool_choice_is_none() -> None:
    assert translate(tools=TOOLS)["tools"] == TOOLS
    assert translate(tools=TOOLS, tool_choice="required")["tools"] == TOOLS
    assert "tools" not in translate(tools=TOOLS, tool_choice="none")
    assert "tools" not in translate(tools=[])
    assert rejected(tools={"name": "x"}).param == "tools"


@pytest.mark.parametrize(
    ("effort", "think"),
    [("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"),
     ("high", "high")],
)
def test_reasoning_effort_becomes_think(effort: str, think: bool | str) -> None:
    assert translate(reasoning_effort=effort)["think"] == think


def test_no_reasoning_effort_leaves_think_to_the_model() -> None:
    assert "think" not in translate()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"reasoning_effort": "max"}, "reasoning_effort"),
        ({"reasoning_effort": 1}, "reasoning_effort"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": True}, "top_p"),
        ({"frequency_penalty": [1]}, "frequency_penalty"),
        ({"seed": 1.5}, "seed"),
        ({"seed": True}, "seed"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
    ],
)
def test_wrong_types_are_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    assert rejected(**body).param == param


# ------------------------------------------------------------------ request: messages


def messages(*items: dict[str, Any]) -> list[dict[str, Any]]:
    translated: list[dict[str, Any]] = translate(messages=list(items))["messages"]
    return translated


def test_roles_and_plain_content() -> None:
    assert messages(
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": None},
    ) == [
        {"role": "system", "content": "be brief"},
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": ""},
    ]


def test_content_parts_become_content_and_images() -> None:
    parts = [
        {"type": "text", "text": "What is"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{IMAGE}",
                                            "detail": "low"}},
        {"type": "text", "text": "in this picture?"},
        {"type": "image_url", "image_url": f"data:;base64,{IMAGE}"},
    ]
    assert messages({"role": "user", "content": parts}) == [
        {"role": "user", "content": "What is\n\nin this picture?", "images": [IMAGE, IMAGE]},
    ]


def test_refusal_parts_are_text() -> None:
    parts = [{"type": "refusal", "refusal": "I can't."}]
    assert messages(USER, {"role": "assistant", "content": parts})[1]["content"] == "I can't."


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (42, "messages[0].content"),
        (["text"], "messages[0].content[0]"),
        ([{"type": "text", "text": 1}], "messages[0].content[0].text"),
        ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
         "messages[0].content[0].image_url.url"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}],
         "messages[0].content[0].image_url.url"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}}],
         "messages[0].content[0].image_url.url"),
        ([{"type": "image_url", "image_url": {}}], "messages[0].content[0].image_url.url"),
        ([{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}],
         "messages[0].content[0]"),
        ([{"type": "file", "file": {"file_id": "f"}}], "messages[0].content[0]"),
    ],
)
def test_unmappable_content_is_400(content: object, param: str) -> None:
    assert rejected(messages=[{"role": "user", "content": content}]).param == param


CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_assistant_tool_calls_and_tool_results() -> None:
    translated = messages(
        USER,
        {"role": "assistant", "content": None, "tool_calls": [CALL],
         "reasoning_content": "Paris, then."},
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "unknown", "content": "?"},
        {"role": "tool", "name": "explicit", "content": "!"},
        {"role": "function", "name": "legacy", "content": "old"},
    )
    assert translated[1:] == [
        {"role": "assistant", "content": "", "thinking": "Paris, then.",
         "tool_calls": [{"id": "call_1",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18°C", "tool_name": "get_weather",
         "tool_call_id": "call_1"},
        {"role": "tool", "content": "?", "tool_call_id": "unknown"},
        {"role": "tool", "content": "!", "tool_name": "explicit"},
        {"role": "tool", "content": "old", "tool_name": "legacy"},
    ]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [('{"a": [1, 2]}', {"a": [1, 2]}), ({"a": 1}, {"a": 1}), ("", {}), ("  ", {}),
     (None, {})],
)
def test_tool_call_arguments_become_objects(arguments: object,
                                            expected: dict[str, Any]) -> None:
    call = {"type": "function", "function": {"name": "f", "arguments": arguments}}
    [translated] = messages({"role": "assistant", "tool_calls": [call]})[0]["tool_calls"]
    assert translated == {"function": {"name": "f", "arguments": expected}}


@pytest.mark.parametrize(
    ("calls", "param"),
    [
        ({"id": "x"}, "messages[0].tool_calls"),
        (["x"], "messages[0].tool_calls[0].function"),
        ([{"function": {"arguments": "{}"}}], "messages[0].tool_calls[0].function"),
        ([{"function": {"name": "f", "arguments": "{oops"}}],
         "messages[0].tool_calls[0].function.arguments"),
        ([{"function": {"name": "f", "arguments": "[1]"}}],
         "messages[0].tool_calls[0].function.arguments"),
        ([{"function": {"name": "f", "arguments": 3}}],
         "messages[0].tool_calls[0].function.arguments"),
    ],
)
def test_unmappable_tool_calls_are_400(calls: object, param: str) -> None:
    assert rejected(messages=[{"role": "assistant", "tool_calls": calls}]).param == param


# ------------------------------------------------------------------ NDJSON lines

BODY = b'{"a":1}\n\n{"b":2}\r\n  \n{"c":"x\\ny"}\n{"d":4}'
LINES = [b'{"a":1}', b'{"b":2}', b'{"c":"x\\ny"}']


def decode_all(reads: list[bytes]) -> list[bytes]:
    decoder = NDJSONDecoder()
    lines = [line for read in reads for line in decoder.feed(read)]
    return lines + decoder.close()


def test_lines_blank_lines_crlf_and_a_last_line_without_newline() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(BODY) == LINES
    assert decoder.feed(b"") == []
    assert decoder.close() == [b'{"d":4}']
    assert decoder.close() == []


def test_a_body_ending_in_newline_has_nothing_left() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n') == [b'{"a":1}']
    assert decoder.close() == []


@settings(database=None)
@given(st.lists(st.integers(0, len(BODY)), max_size=10))
def test_any_split_of_the_body_reads_the_same(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(BODY)]
    reads = [BODY[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode_all(reads) == [*LINES, b'{"d":4}']


def test_a_line_without_end_is_refused_before_it_grows() -> None:
    decoder = NDJSONDecoder(max_line_bytes=16)
    assert decoder.feed(b'{"a":1}\n' + b"x" * 16) == [b'{"a":1}']
    with pytest.raises(UpstreamUnavailable) as caught:
        decoder.feed(b"x")
    assert caught.value.public_message == "The upstream sent a malformed stream."


# ------------------------------------------------------------------ response stream


def line(content: str = "", *, done: bool = False, **extra: Any) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    message.update(extra.pop("message", {}))
    return orjson.dumps({"model": "llama3.2", "created_at": "2024-01-01T00:00:00Z",
                         "message": message, "done": done, **extra})


def end(reason: str | None = "stop", **extra: Any) -> bytes:
    counts: dict[str, Any] = {"prompt_eval_count": 26, "eval_count": 3, **extra}
    if reason is not None:
        counts["done_reason"] = reason
    return line(done=True, total_duration=5, **counts)


def stream(*, include_usage: bool = False) -> OllamaStream:
    return OllamaStream(completion_id="chatcmpl-abc", created=1_700_000_000, model="client-name",
                        include_usage=include_usage)


def run(lines: list[bytes], *, include_usage: bool = False) -> list[bytes]:
    translator = stream(include_usage=include_usage)
    return [payload for ln in lines for payload in translator.translate(ln)]


def parsed(payloads: list[bytes]) -> list[dict[str, Any]]:
    assert payloads[-1] == b"[DONE]"
    assert b"[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str | None]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]


def aggregate(payloads: list[bytes]) -> dict[str, Any]:
    builder = CompletionBuilder()
    for payload in payloads[:-1]:
        builder.add(json.loads(payload))
    return builder.result()


def test_a_stream_becomes_role_deltas_finish_and_done() -> None:
    payloads = run([line("Hel"), line("lo"), line(""), end()])
    chunks = parsed(payloads)
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "Hel"},
                              {"content": "lo"}, {}]
    assert finish_reasons(chunks) == [None, None, None, "stop"]
    assert {c["id"] for c in chunks} == {"chatcmpl-abc"}
    assert {c["model"] for c in chunks} == {"client-name"}  # the client's name, not Ollama's
    assert {c["created"] for c in chunks} == {1_700_000_000}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)
    # What the relay reads from them: content facts and the finish.
    facts = [inspect_chunk(p)[0] for p in payloads[:-1]]
    assert [(f.content, f.finished, f.error) for f in facts] == [
        (False, False, None), (True, False, None), (True, False, None), (False, True, None)]


def test_usage_chunk_when_wanted() -> None:
    chunks = parsed(run([line("a"), end()], include_usage=True))
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 26, "completion_tokens": 3,
                                   "total_tokens": 29}
    assert finish_reasons(chunks)[-1] == "stop"


@pytest.mark.parametrize(
    ("counts", "usage"),
    [({"prompt_eval_count": None}, (0, 3)),  # a cached prompt: older Ollama omits the count
     ({"eval_count": True}, (26, 0)), ({"eval_count": "3"}, (26, 0)),
     ({"prompt_eval_count": -1}, (0, 3))],
)
def test_missing_or_odd_counts_are_zero(counts: dict[str, Any], usage: tuple[int, int]) -> None:
    chunks = parsed(run([end(**counts)], include_usage=True))
    got = chunks[-1]["usage"]
    assert (got["prompt_tokens"], got["completion_tokens"]) == usage
    assert got["total_tokens"] == sum(usage)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("stop", "stop"), ("length", "length"), ("load", "stop"), ("unload", "stop"),
     (None, "stop"), ("something-new", "stop")],
)
def test_done_reason_becomes_finish_reason(reason: str | None, finish: str) -> None:
    assert finish_reasons(parsed(run([line("x"), end(reason)])))[-1] == finish


def test_content_on_the_done_line_comes_before_the_finish() -> None:
    chunks = parsed(run([line("last", done=True, done_reason="stop")]))
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "last"}, {}]
    assert finish_reasons(chunks) == [None, None, "stop"]


def test_thinking_becomes_reasoning_content() -> None:
    payloads = run([line(message={"thinking": "Let me see."}), line("Yes."), end()])
    assert deltas(parsed(payloads))[1:3] == [{"reasoning_content": "Let me see."},
                                             {"content": "Yes."}]
    assert inspect_chunk(payloads[1])[0].content  # reasoning counts as content for the timers
    message = aggregate(payloads)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Yes.", "reasoning_content": "Let me see."}


def test_tool_calls_get_indexes_ids_and_json_arguments() -> None:
    first = {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    second = {"id": "call_ollama", "function": {"name": "get_time", "arguments": {}}}
    payloads = run([line(message={"tool_calls": [first]}),
                    line(message={"tool_calls": [second, "junk"]}), end()])
    chunks = parsed(payloads)
    assert deltas(chunks)[1:3] == [
        {"tool_calls": [{"index": 0, "id": "call_abc_0", "type": "function",
                         "function": {"name": "get_weather",
                                      "arguments": '{"city":"Paris"}'}}]},
        {"tool_calls": [{"index": 1, "id": "call_ollama", "type": "function",
                         "function": {"name": "get_time", "arguments": "{}"}}]},
    ]
    assert finish_reasons(chunks)[-1] == "tool_calls"
    choice = aggregate(payloads)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == \
        ["get_weather", "get_time"]
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == \
        {"city": "Paris"}


def test_odd_tool_calls_still_make_valid_deltas() -> None:
    calls = [{"function": "nope"}, {"function": {"name": 5, "arguments": '{"raw": 1}'}},
             {"function": {"name": "n"}}]
    [delta] = deltas(parsed(run([line(message={"tool_calls": calls}), end()])))[1:2]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in delta["tool_calls"]] \
        == [("", "{}"), ("", '{"raw": 1}'), ("n", "{}")]


def test_a_length_stop_after_a_tool_call_stays_length() -> None:
    tool = {"function": {"name": "f", "arguments": {}}}
    chunks = parsed(run([line(message={"tool_calls": [tool]}), end("length")]))
    assert finish_reasons(chunks)[-1] == "length"


def test_pieces_of_the_wrong_type_are_skipped() -> None:
    chunks = parsed(run([line(message={"content": 5, "thinking": ["x"], "tool_calls": "no"}),
                         orjson.dumps({"message": "text", "done": False}),
                         orjson.dumps({"done": "yes"}), end()]))
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {}]


def test_lines_after_done_are_ignored() -> None:
    translator = stream()
    assert translator.translate(end())[-1] == b"[DONE]"
    assert translator.done
    assert translator.translate(line("more")) == []
    assert translator.translate(b"{not json") == []


def test_the_role_chunk_comes_once_even_when_done_comes_first() -> None:
    chunks = parsed(run([end()]))
    assert deltas(chunks) == [{"role": "assistant", "content": ""}, {}]


@pytest.mark.parametrize("bad", [b"{not json", b"[1, 2]", b'"text"', b"null"])
def test_a_malformed_line_is_an_upstream_error(bad: bytes) -> None:
    translator = stream()
    translator.translate(line("ok"))
    with pytest.raises(UpstreamUnavailable) as caught:
        translator.translate(bad)
    assert caught.value.public_message == "The upstream sent a malformed stream."
    assert caught.value.status == 502


@pytest.mark.parametrize(("error", "cause"), [('"model runner crashed"', "runner crashed"),
                                              ('{"message": "boom"}', "boom")])
def test_an_error_line_is_an_upstream_error(error: str, cause: str) -> None:
    translator = stream()
    translator.translate(line("ok"))
    with pytest.raises(UpstreamUnavailable) as caught:
        translator.translate(b'{"error":%b}' % error.encode())
    assert caught.value.public_message == \
        "The upstream model server reported an error mid-stream."
    assert cause in caught.value.detail  # the upstream's words go to the log, not the client


# ------------------------------------------------------------------ config


def ollama_backend(**keys: Any) -> dict[str, Any]:
    return {"backends": [{"name": "local", "kind": "ollama", "models": ["llama3.2"], **keys}]}


def test_an_ollama_backend_takes_the_root_url() -> None:
    [backend] = parse_settings(ollama_backend(base_url="http://127.0.0.1:11434/")).backends
    assert (backend.kind, backend.base_url) == ("ollama", "http://127.0.0.1:11434")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({}, "backends[\"local\"].base_url: an http:// or https:// URL is required for kind "
             "'ollama'"),
        ({"base_url": "127.0.0.1:11434"},
         "backends[\"local\"].base_url: an http:// or https:// URL is required for kind 'ollama'"),
        ({"base_url": "http://127.0.0.1:11434/v1"},
         "backends[\"local\"].base_url: for kind 'ollama' give the server's root URL "
         "(like http://127.0.0.1:11434), without /v1"),
        ({"base_url": "http://h:1/v1/"},
         "backends[\"local\"].base_url: for kind 'ollama' give the server's root URL "
         "(like http://127.0.0.1:11434), without /v1"),
    ],
)
def test_an_ollama_backend_needs_a_root_url(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(ollama_backend(**keys))
    assert str(caught.value) == message
