"""The fake's other OpenAI endpoints: ``/v1/completions`` (streamed or not) and ``/v1/embeddings``.

Small additions beside the chat plans, answering under the same scenarios:
an error status, a reset, no response or an empty 200 are exactly the chat
answers (`plan_chat` has them), and a completions stream has the chat
stream's mid-stream faults (`fault_steps`: cut, stall, malformed, error
event). Token ``i`` reads ``t{i} `` as in chat; the embedding of input ``k``
is ``[len(text), k, 0.5, 0.25]``, so a test can tell what came from where.

    plan_completion(Scenario(tokens=3), body, facts)   # text_completion chunks t0 t1 t2
    plan_embeddings(Scenario(), body, facts)           # {"object": "list", "data": [...]}
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import orjson

from server.testing.fake_upstream.chunks import token_text
from server.testing.fake_upstream.http11 import LAST_CHUNK, response, response_head
from server.testing.fake_upstream.plan import (
    JSON,
    SSE_HEADERS,
    ResponseFacts,
    SleepUntil,
    Step,
    emit_whole,
    fault_steps,
    plan_chat,
    token_offset,
)
from server.testing.fake_upstream.request import ChatRequest
from server.testing.fake_upstream.scenario import Scenario

_MALFORMED = b"data: {not json\n\n"
_EXPLODED = b'data: {"error":{"message":"upstream exploded","type":"server_error"}}\n\n'


def _answers_as_chat(s: Scenario) -> bool:
    """Faults before any token: the answer does not depend on the endpoint."""
    return s.reset_before_headers or s.no_response or s.status is not None or s.empty_ok


def plan_completion(s: Scenario, body: dict[str, Any], facts: ResponseFacts) -> Iterator[Step]:
    """The answer to ``POST /v1/completions``. Raises `InvalidChatRequest` like chat, at once."""
    prompt = body.get("prompt")
    chat = ChatRequest.from_json({**body, "messages": [{"content": prompt}]}
                                 if isinstance(prompt, str) else body)
    if _answers_as_chat(s):
        return plan_chat(s, chat, facts)
    return _completion(s, chat, facts)


def _completion(s: Scenario, chat: ChatRequest, facts: ResponseFacts) -> Iterator[Step]:
    n = chat.completion_tokens(s.tokens)
    finish = chat.finish_reason(s.tokens)

    def piece(text: str, finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": facts.completion_id, "object": "text_completion", "created": facts.created,
                "model": chat.model, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                  "finish_reason": finish_reason}]}

    usage = {"prompt_tokens": chat.prompt_tokens, "completion_tokens": n,
             "total_tokens": chat.prompt_tokens + n}
    if not chat.stream:
        yield SleepUntil(token_offset(s, max(n - 1, 0)))
        whole = piece("".join(token_text(i) for i in range(n)), finish)
        yield response(200, [JSON], orjson.dumps({**whole, "usage": usage}),
                       keep_alive=facts.keep_alive)
        return

    def event(value: dict[str, Any] | bytes) -> Iterator[Step]:
        data = value if isinstance(value, bytes) else orjson.dumps(value)
        return emit_whole(b"data: " + data + b"\n\n")

    def faults(sent: int) -> Generator[Step, None, bool]:
        return fault_steps(s, sent, emit=emit_whole, malformed=lambda: _MALFORMED,
                           error=lambda: _EXPLODED)

    yield response_head(200, SSE_HEADERS, keep_alive=facts.keep_alive)
    if (yield from faults(0)):
        return
    for index in range(n):
        if s.first_delay or s.tps:
            yield SleepUntil(token_offset(s, index))
        yield from event(piece(token_text(index)))
        if (yield from faults(index + 1)):
            return
    if not s.omit_finish:
        yield from event(piece("", finish))
    if chat.include_usage:
        yield from event({**piece(""), "choices": [], "usage": usage})
    if not s.no_done:
        yield from event(b"[DONE]")
    yield LAST_CHUNK


def plan_embeddings(s: Scenario, body: dict[str, Any], facts: ResponseFacts) -> Iterator[Step]:
    """The answer to ``POST /v1/embeddings``: one vector per input, after ``first_delay``."""
    if _answers_as_chat(s):
        yield from plan_chat(s, ChatRequest(), facts)
        return
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) \
        else [inputs]
    if s.first_delay:
        yield SleepUntil(s.first_delay)
    data = [{"object": "embedding", "index": k,
             "embedding": [float(len(str(text))), float(k), 0.5, 0.25]}
            for k, text in enumerate(items)]
    tokens = sum(len(str(text).split()) for text in items)
    answer = {"object": "list", "data": data, "model": body.get("model", "fake-model"),
              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    yield response(200, [JSON], orjson.dumps(answer), keep_alive=facts.keep_alive)
