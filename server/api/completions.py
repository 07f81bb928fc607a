"""``POST /v1/completions``: the legacy completions API, relayed on the chat streams.

A completions request rides the same relay as a chat request — routing to
the backends that declare ``completions = true``, fail-over before the commit
point, timers, keepalives, admission, disconnects — by speaking the relay's
vocabulary at both edges:

    upstream text_completion chunk ──as_chat_chunk──► the relay (commit point, idle
    timer, continuation text) ──as_completion_chunk──► the client's text_completion chunk

The backend translates each upstream chunk (``choices[].text``) into a chat
chunk (``choices[].delta.content``) as it reads it (`server.backends.openai`);
the body writer translates back. So a cut after the commit point can even be
continued on a ``continuation = "prefill"`` backend: a completion's
continuation is its prompt plus the text so far (`CompletionRequest.continued`).

One text prompt per request: a list of several prompts, ``n`` or
``best_of`` above 1 and ``echo`` are refused with a 400 naming the param
(the relay streams one answer; an echoed prompt would be continued as if the
model had written it). Other fields travel to the upstream untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import trio
from quart import Quart, Response, request

from server.api.browser_chat import StreamOpener
from server.api.chat_completions import (
    ChatRequest,
    json_object,
    non_empty_string,
    parse_chat_request,
    required_field,
)
from server.config import BackendSettings
from server.errors import RequestError, SluiceError
from server.stream.aggregate import CompletionBuilder
from server.stream.channel import BodyWriter, ChannelItem
from server.stream.late_status import LateStatusResponse
from server.stream.usage import UsageMeter
from server.stream.writers import write_one_reply, write_sse


@dataclass(frozen=True, slots=True)
class CompletionRequest(ChatRequest):
    """A ``/v1/completions`` request; the relay treats it as a chat request.

    A continuation after a cut appends the text so far to its prompt
    (`server.stream.continuation.continued`).
    """


def serves_completions(backend: BackendSettings) -> bool:
    return backend.completions


def parse_completion_request(raw: bytes) -> CompletionRequest:
    body = json_object(raw)
    required_field(body, "model", non_empty_string, "a non-empty string")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError("'prompt' must be a string (one prompt per request).",
                           param="prompt", code="invalid_type" if prompt is not None
                           else "missing_required_parameter")
    for key in ("n", "best_of"):
        if body.get(key) not in (None, 1):
            raise RequestError(f"'{key}' must be 1: Sluice relays one answer per request.",
                               param=key, code="unsupported_parameter")
    if body.get("echo"):
        raise RequestError("'echo' is not supported.", param="echo",
                           code="unsupported_parameter")
    body = {**body, "prompt": prompt}
    # The fields a chat request shares (stream, stream_options, max_tokens) are
    # checked by the chat parser, as the chat request this rides as.
    shared = parse_chat_request(orjson.dumps({**body, "messages": [{"role": "user"}]}))
    return CompletionRequest(model=shared.model, stream=shared.stream,
                             include_usage=shared.include_usage,
                             max_tokens=shared.max_tokens, body=body)


def as_chat_chunk(payload: bytes) -> bytes:
    """An upstream ``text_completion`` chunk as the chat chunk the relay reads.

    Anything that is not a chunk object (``[DONE]``, an error event, bytes
    that are not JSON) is returned untouched for the relay to judge.
    """
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
        return payload
    choices = []
    for choice in chunk["choices"]:
        if not isinstance(choice, dict):
            return payload
        text = choice.get("text")
        choices.append({"index": choice.get("index", 0),
                        "delta": {"content": text} if isinstance(text, str) and text else {},
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": choice.get("finish_reason")})
    return orjson.dumps({**chunk, "object": "chat.completion.chunk", "choices": choices})


def as_completion_chunk(payload: bytes) -> bytes:
    """A relayed chat chunk back in the ``text_completion`` shape the client asked for."""
    chunk = orjson.loads(payload)
    choices = [{"index": choice.get("index", 0),
                "text": (choice.get("delta") or {}).get("content") or "",
                "logprobs": choice.get("logprobs"),
                "finish_reason": choice.get("finish_reason")}
               for choice in chunk.get("choices") or ()]
    return orjson.dumps({**chunk, "object": "text_completion", "choices": choices})


def text_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """An aggregated ``chat.completion`` as the one ``text_completion`` object."""
    choices = [{"index": choice["index"], "text": choice["message"].get("content") or "",
                "logprobs": None, "finish_reason": choice["finish_reason"]}
               for choice in completion["choices"]]
    return {**completion, "object": "text_completion", "choices": choices}


async def write_text_completion(
    items: trio.MemoryReceiveChannel[ChannelItem], response: LateStatusResponse,
    *, meter: UsageMeter | None = None,  # unused: streams only (a reply carries its usage)
) -> SluiceError | None:
    """Aggregate the stream into one ``text_completion``; nothing is sent until the end."""
    completion = CompletionBuilder()
    return await write_one_reply(items, response, completion.add,
                                 lambda: text_completion(completion.result()))


def register_completions_api(app: Quart, stream_response: StreamOpener) -> None:
    """Add ``POST /v1/completions``, served as a stream by the backends that declare it."""

    @app.post("/v1/completions")
    async def completions() -> Response:
        received_at = trio.current_time()
        parsed = parse_completion_request(await request.get_data(False, False, False))
        write_body: BodyWriter = write_text_completion
        if parsed.stream:
            write_body = partial(write_sse, translate=as_completion_chunk)
        return await stream_response(parsed, write_body, received_at,
                                     heartbeats=parsed.stream, accepts=serves_completions)
