"""A ``/v1/responses`` request becomes a chat completions request, or a 400 naming the param."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.api.responses_request import parse_responses_request
from server.backends.openai import upstream_body
from server.errors import RequestError


def _parse(**body: Any) -> Any:
    return parse_responses_request(orjson.dumps({"model": "m", **body}))


def test_a_string_input_with_instructions_and_options() -> None:
    parsed = _parse(input="Hello", instructions="Be brief.", stream=True, max_output_tokens=7,
                    temperature=0.5, top_p=0.9, metadata={"k": "v"}, store=False, user="u1")
    assert parsed.stream and not parsed.background
    assert upstream_body(parsed.chat) == {
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hello"}],
        "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "user": "u1",
    }
    assert parsed.chat.max_tokens == 7
    assert parsed.echo["instructions"] == "Be brief."
    assert parsed.echo["metadata"] == {"k": "v"} and parsed.echo["store"] is False


def test_input_items_messages_parts_and_function_calls() -> None:
    parsed = _parse(background=True, input=[
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "What is "}, {"type": "input_text",
                                                                   "text": "2+2?"}]},
        {"type": "function_call", "call_id": "c1", "name": "add", "arguments": '{"a":2}'},
        {"type": "function_call", "call_id": "c2", "name": "add", "arguments": '{"b":2}'},
        {"type": "function_call_output", "call_id": "c1", "output": "4"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "4", "annotations": []}]},
    ], tools=[{"type": "function", "name": "add", "parameters": {"type": "object"},
               "strict": True, "description": None}],
        tool_choice={"type": "function", "name": "add"}, parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
        reasoning={"effort": "low", "summary": None})
    body = upstream_body(parsed.chat)
    assert parsed.background and not parsed.stream
    assert body["messages"] == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add",
                                                          "arguments": '{"a":2}'}},
            {"id": "c2", "type": "function", "function": {"name": "add",
                                                          "arguments": '{"b":2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "4"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "add", "parameters": {"type": "object"}, "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "add"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "object"}}}
    assert body["reasoning_effort"] == "low"
    # Not streaming to the client: the upstream is still asked for a stream, with usage.
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("body", "param", "code"), [
    ({}, "input", "missing_required_parameter"),
    ({"input": []}, "input", "invalid_type"),
    ({"input": 3}, "input", "invalid_type"),
    ({"input": "x", "model": ""}, "model", "invalid_type"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id",
     "unsupported_parameter"),
    ({"input": "x", "conversation": "c"}, "conversation", "unsupported_parameter"),
    ({"input": "x", "frobnicate": 1}, "frobnicate", "unsupported_parameter"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type",
     "unsupported_parameter"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "invalid_type"),
    ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice",
     "unsupported_parameter"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]", "unsupported_parameter"),
    ({"input": [{"type": "reasoning", "id": "rs_1"}]}, "input[0].type",
     "unsupported_parameter"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
    ({"input": ["x"]}, "input[0]", "invalid_type"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
    ({"input": "x", "temperature": 3}, "temperature", "invalid_value"),
    ({"input": "x", "top_p": True}, "top_p", "invalid_value"),
    ({"input": "x", "stream": "yes"}, "stream", "invalid_type"),
    ({"input": "x", "background": 1}, "background", "invalid_type"),
    ({"input": "x", "text": {"format": {"type": "grammar"}}}, "text.format.type",
     "unsupported_parameter"),
    ({"input": "x", "text": {"verbosity": "low"}}, "text", "unsupported_parameter"),
    ({"input": "x", "reasoning": {"summary": "auto"}}, "reasoning.summary",
     "unsupported_parameter"),
    ({"input": "x", "truncation": "auto"}, "truncation", "unsupported_parameter"),
    ({"input": "x", "include": ["message.output_text.logprobs"]}, "include",
     "unsupported_parameter"),
])
def test_what_cannot_be_honoured_is_a_400_naming_the_param(
        body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(RequestError) as caught:
        _parse(**body)
    assert caught.value.status == 400
    assert (caught.value.param, caught.value.code) == (param, code)


def test_nulls_are_absent_and_harmless_fields_are_accepted() -> None:
    parsed = _parse(input="x", instructions=None, previous_response_id=None, include=[],
                    truncation="disabled", service_tier="auto", prompt_cache_key="k",
                    safety_identifier="s", stream_options={"include_obfuscation": False})
    assert parsed.chat.body["messages"] == [{"role": "user", "content": "x"}]
