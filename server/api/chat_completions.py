"""A client's ``/v1/chat/completions`` request, validated.

Sluice checks only what it uses or what would otherwise reach the upstream
as a confusing failure: a JSON object, a ``model`` string, a non-empty
``messages`` list of role-bearing objects, and the types of ``stream``,
``stream_options`` and the token limits. Every other field (tools,
response_format, seed, ...) travels to the upstream untouched.

Failures raise `RequestError` naming the ``param`` — the OpenAI SDKs show
it — and are answered 400 (as OpenAI does), never 500.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from server.errors import RequestError


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    max_tokens: int | None
    body: dict[str, Any]  # the request as the client sent it
    # The last message is the answer so far, to be continued (`server.stream.continuation`).
    continues_answer: bool = False


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object (every JSON endpoint's first check)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise RequestError(f"The request body is not valid JSON: {error.msg}.") from None
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    return body


def non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def non_empty_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value)


def required_field(body: dict[str, Any], key: str, valid: Callable[[Any], bool],
                   shape: str) -> Any:
    """``body[key]``, present and ``valid``; else OpenAI's 400 (``shape``: what it must be)."""
    value = body.get(key)
    if value is None:
        raise RequestError(f"Missing required parameter: '{key}'.", param=key,
                           code="missing_required_parameter")
    if not valid(value):
        raise RequestError(f"'{key}' must be {shape}.", param=key, code="invalid_type")
    return value


def parse_chat_request(raw: bytes) -> ChatRequest:
    body = json_object(raw)
    model = required_field(body, "model", non_empty_string, "a non-empty string")
    messages = required_field(body, "messages", non_empty_array, "a non-empty array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise RequestError(f"'messages[{i}]' must be an object with a string 'role'.",
                               param=f"messages[{i}]", code="invalid_type")

    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean.", param="stream", code="invalid_type")

    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object.", param="stream_options",
                           code="invalid_type")
    include_usage = (options or {}).get("include_usage")
    if include_usage is None:
        include_usage = False
    if not isinstance(include_usage, bool):
        raise RequestError("'stream_options.include_usage' must be a boolean.",
                           param="stream_options.include_usage", code="invalid_type")

    max_tokens = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RequestError(f"'{key}' must be a positive integer.", param=key,
                               code="invalid_value")
        max_tokens = value if max_tokens is None else min(max_tokens, value)

    return ChatRequest(model=model, stream=stream, include_usage=include_usage,
                       max_tokens=max_tokens, body=body)
