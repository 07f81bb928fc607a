"""``POST /chat``: the browser-friendly API, on the same streams as ``/v1``.

    POST /chat  {"conversation": [{"role": "user", "content": "Hi"}],
                 "stream": true, "model": "llama3"}

A ``/chat`` request is translated into an OpenAI chat request and served by
the same machinery as ``/v1/chat/completions`` — routing, the per-stream
nursery, timers, keepalives, disconnect handling, metrics. Only the body
format differs: `server.api.browser_chat_writers` turns the channel's chunks into
``/chat`` events (``stream: true``) or one JSON reply. There is no second
relay.

Validation is strict about what ``/chat`` uses and ignores the rest, so
frontends written for older home-grown proxies (which send extra fields)
keep working:

- ``conversation``: required, a non-empty array of ``{"role", "content"}``
  with ``role`` one of system, developer, user, assistant and a string
  ``content``;
- ``model``: optional; without it the configured ``[chat] default_model``,
  else the first configured model name;
- ``stream``: optional boolean (default false);
- ``max_tokens`` (positive integer) and ``temperature`` (0–2): optional,
  passed to the model.

Errors are the ``/v1`` ones: a `RequestError` naming the ``param``, answered
4xx with the OpenAI error body by the gateway's error handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import orjson
import trio
from quart import Quart, Response, request

from server.api.browser_chat_writers import write_chat_events, write_chat_json
from server.api.chat_completions import (
    ChatRequest,
    json_object,
    non_empty_array,
    non_empty_string,
    parse_chat_request,
    required_field,
)
from server.api.resume_header import RESUMABLE_HEADER, wants_resumable
from server.config import Accepts, Settings
from server.errors import RequestError
from server.stream.channel import BodyWriter

ROLES = frozenset({"system", "developer", "user", "assistant"})


class StreamOpener(Protocol):
    """The gateway's way from a chat request to a planned stream (`Gateway.stream_response`).

    It rate-limits, routes and admits exactly as for ``/v1``; a `SluiceError`
    it raises (unknown model, rate limit) becomes the usual error response.
    """

    def __call__(self, chat: ChatRequest, write_body: BodyWriter, received_at: float, *,
                 heartbeats: bool, accepts: Accepts | None = None) -> Awaitable[Response]: ...


@dataclass(frozen=True, slots=True)
class ChatApiRequest:
    """A validated ``/chat`` request: the OpenAI request it becomes, and its body format."""

    chat: ChatRequest
    stream: bool


def parse_chat_api_request(raw: bytes, default_model: str | None) -> ChatApiRequest:
    body = json_object(raw)

    conversation = required_field(body, "conversation", non_empty_array, "a non-empty array")
    messages = [_message(i, message) for i, message in enumerate(conversation)]

    model = body.get("model")
    if model is None:
        model = default_model
        if model is None:
            raise RequestError("Missing required parameter: 'model' (no default model is "
                               "configured).", param="model", code="missing_required_parameter")
    elif not non_empty_string(model):
        raise RequestError("'model' must be a non-empty string.", param="model",
                           code="invalid_type")

    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError("'stream' must be a boolean.", param="stream", code="invalid_type")

    openai: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        # The done event reports usage when the backend gives it (non-streaming asks anyway).
        openai["stream_options"] = {"include_usage": True}
    temperature = body.get("temperature")
    if temperature is not None:
        if (isinstance(temperature, bool) or not isinstance(temperature, int | float)
                or not 0 <= temperature <= 2):
            raise RequestError("'temperature' must be a number from 0 to 2.",
                               param="temperature", code="invalid_value")
        openai["temperature"] = temperature
    if body.get("max_tokens") is not None:
        openai["max_tokens"] = body["max_tokens"]  # checked by parse_chat_request
    return ChatApiRequest(parse_chat_request(orjson.dumps(openai)), stream)


def _message(i: int, message: object) -> dict[str, str]:
    if not isinstance(message, dict):
        raise RequestError(f"'conversation[{i}]' must be an object.",
                           param=f"conversation[{i}]", code="invalid_type")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise RequestError(f"'conversation[{i}].role' must be one of "
                           f"{', '.join(sorted(ROLES))}.", param=f"conversation[{i}].role",
                           code="invalid_value")
    if not isinstance(content, str):
        raise RequestError(f"'conversation[{i}].content' must be a string.",
                           param=f"conversation[{i}].content", code="invalid_type")
    return {"role": role, "content": content}


def default_model(settings: Settings) -> str | None:
    """The model of a ``/chat`` request that names none."""
    return settings.chat.default_model or next(iter(settings.model_names), None)


ResumableStart = Callable[[ChatRequest, float], Awaitable[Response]]


def register_chat_api(app: Quart, settings: Settings, stream_response: StreamOpener,
                      start_resumable: ResumableStart) -> None:
    """Add ``POST /chat``, served as a stream planned by ``stream_response``.

    With ``X-Sluice-Resumable: true`` the stream is a resumable one, started by
    ``start_resumable`` (`server.api.resume`).
    """
    fallback_model = default_model(settings)

    @app.post("/chat")
    async def chat() -> Response:
        received_at = trio.current_time()
        parsed = parse_chat_api_request(await request.get_data(False, False, False),
                                        fallback_model)
        if wants_resumable(request.headers.get(RESUMABLE_HEADER)):
            return await start_resumable(parsed.chat, received_at)
        model = parsed.chat.model
        write_body: BodyWriter
        if parsed.stream:
            write_body = partial(write_chat_events, model=model, received_at=received_at)
        else:
            write_body = partial(write_chat_json, model=model, received_at=received_at)
        return await stream_response(parsed.chat, write_body, received_at,
                                     heartbeats=parsed.stream)
