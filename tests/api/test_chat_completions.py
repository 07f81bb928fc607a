"""server/api/chat_completions.py: validating a client's request."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.api.chat_completions import ChatRequest, parse_chat_request
from server.errors import RequestError

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "llama", "messages": MESSAGES, **fields})


def rejected(raw: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_chat_request(raw)
    error = info.value
    assert error.status == 400
    assert error.type == "invalid_request_error"
    return error


# ------------------------------------------------------------------ valid


def test_a_minimal_request() -> None:
    request = parse_chat_request(body())
    assert request == ChatRequest(model="llama", stream=False, include_usage=False,
                                  max_tokens=None,
                                  body={"model": "llama", "messages": MESSAGES})


def test_a_streaming_request_with_usage() -> None:
    request = parse_chat_request(body(stream=True, stream_options={"include_usage": True}))
    assert request.stream is True
    assert request.include_usage is True


@pytest.mark.parametrize(
    ("fields", "stream", "include_usage"),
    [
        ({"stream": None}, False, False),
        ({"stream": False}, False, False),
        ({"stream": True, "stream_options": None}, True, False),
        ({"stream": True, "stream_options": {}}, True, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, True, False),
        # Other stream_options keys are the upstream's business.
        ({"stream": True, "stream_options": {"continuous_usage_stats": True}}, True, False),
    ],
)
def test_stream_flags(fields: dict[str, Any], stream: bool, include_usage: bool) -> None:
    request = parse_chat_request(body(**fields))
    assert (request.stream, request.include_usage) == (stream, include_usage)


@pytest.mark.parametrize(
    ("fields", "max_tokens"),
    [
        ({}, None),
        ({"max_tokens": 1}, 1),
        ({"max_tokens": 256}, 256),
        ({"max_completion_tokens": 64}, 64),
        ({"max_tokens": None, "max_completion_tokens": None}, None),
        ({"max_tokens": 100, "max_completion_tokens": 30}, 30),  # the smaller bound applies
        ({"max_tokens": 30, "max_completion_tokens": 100}, 30),
        ({"max_tokens": None, "max_completion_tokens": 7}, 7),
    ],
)
def test_max_tokens(fields: dict[str, Any], max_tokens: int | None) -> None:
    assert parse_chat_request(body(**fields)).max_tokens == max_tokens


def test_messages_need_only_a_role() -> None:
    # Content shapes (parts, tool calls, null content) are the upstream's to judge.
    messages = [{"role": "user"}, {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "user", "content": [{"type": "text", "text": "x"}]}]
    assert parse_chat_request(body(messages=messages)).body["messages"] == messages


def test_body_is_the_request_as_sent() -> None:
    fields = {"temperature": 0.2, "tools": [{"type": "function",
                                             "function": {"name": "f", "parameters": {}}}],
              "response_format": {"type": "json_object"}, "seed": 7, "x_vendor": [1, {"a": None}]}
    raw = body(**fields)
    assert parse_chat_request(raw).body == orjson.loads(raw)


# --------------------------------------------------------------- invalid


@pytest.mark.parametrize("raw", [b"", b"{", b"{'model': 'x'}", b"\xff\xfe", b"nul", b"{}}"])
def test_not_json(raw: bytes) -> None:
    error = rejected(raw)
    assert error.public_message.startswith("The request body is not valid JSON: ")
    assert error.param is None


@pytest.mark.parametrize("raw", [b"[]", b"null", b"1", b'"text"', b"true"])
def test_not_an_object(raw: bytes) -> None:
    assert rejected(raw).public_message == "The request body must be a JSON object."


@pytest.mark.parametrize(
    "raw",
    [orjson.dumps({"messages": MESSAGES}), orjson.dumps({"model": None, "messages": MESSAGES})],
)
def test_missing_model(raw: bytes) -> None:
    error = rejected(raw)
    assert (error.param, error.code) == ("model", "missing_required_parameter")


@pytest.mark.parametrize("model", ["", 1, ["llama"], {"name": "llama"}, True])
def test_bad_model(model: Any) -> None:
    error = rejected(body(model=model))
    assert (error.param, error.code) == ("model", "invalid_type")


@pytest.mark.parametrize(
    "raw",
    [orjson.dumps({"model": "llama"}), orjson.dumps({"model": "llama", "messages": None})],
)
def test_missing_messages(raw: bytes) -> None:
    error = rejected(raw)
    assert (error.param, error.code) == ("messages", "missing_required_parameter")


@pytest.mark.parametrize("messages", [[], {}, "hi", {"role": "user"}, 3])
def test_bad_messages(messages: Any) -> None:
    error = rejected(body(messages=messages))
    assert (error.param, error.code) == ("messages", "invalid_type")


@pytest.mark.parametrize(
    "message", [{"content": "no role"}, {"role": None}, {"role": 1}, "user", None, ["user"]]
)
def test_a_message_without_a_string_role(message: Any) -> None:
    error = rejected(body(messages=[{"role": "user", "content": "ok"}, message]))
    assert (error.param, error.code) == ("messages[1]", "invalid_type")
    assert "messages[1]" in error.public_message


@pytest.mark.parametrize("stream", ["true", 1, 0, {}, []])
def test_bad_stream(stream: Any) -> None:
    error = rejected(body(stream=stream))
    assert (error.param, error.code) == ("stream", "invalid_type")


@pytest.mark.parametrize("options", [True, "include_usage", [], 1])
def test_bad_stream_options(options: Any) -> None:
    error = rejected(body(stream=True, stream_options=options))
    assert (error.param, error.code) == ("stream_options", "invalid_type")


@pytest.mark.parametrize("include_usage", ["yes", 1, 0, [], {}])
def test_bad_include_usage(include_usage: Any) -> None:
    error = rejected(body(stream=True, stream_options={"include_usage": include_usage}))
    assert (error.param, error.code) == ("stream_options.include_usage", "invalid_type")


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, 1.0, 2.5, "10", True, False, [5], {"n": 5}])
def test_bad_token_limits(key: str, value: Any) -> None:
    error = rejected(body(**{key: value}))
    assert (error.param, error.code) == (key, "invalid_value")
    assert error.public_message == f"'{key}' must be a positive integer."


def test_errors_carry_an_error_id() -> None:
    first, second = rejected(b"[]"), rejected(b"[]")
    assert first.error_id.startswith("err_")
    assert first.error_id != second.error_id


def test_chat_request_is_frozen() -> None:
    request = parse_chat_request(body())
    with pytest.raises(AttributeError):
        request.stream = True  # type: ignore[misc]
