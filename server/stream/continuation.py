"""Continuing a cut answer on another backend: the *prefill* continuation.

After the commit point the client has text on screen, and a restart would
show a different answer. A backend that declares ``continuation = "prefill"``
can be asked instead to continue the text relayed so far, given as a final
assistant message; the client then reads one answer. Pure functions over the
stream's `StreamProgress`:

    if may_continue(progress, policy):                # not finished, no tool calls, within bounds
        routes = capable_routes(prefill_routes(model_routes), now)  # declared it, not refused since
        request = continued(request, progress)        # the text so far as the answer's start
    # while relaying (`server.stream.attempt`):
    note_content(chunk, progress)                     # keep the text, notice tool calls
    usage = whole_answer_usage(usage, progress.prefill_chunks)

The rules, on purpose: a finished answer needs no continuation; tool-call
arguments cannot be prefilled, so a stream that relayed a tool call is never
continued; at most ``continuation_attempts`` continuations. A backend that declared
prefill but answers one with a 400 (`refused_prefill`) is not asked again
for the retry policy's ``prefill_cooldown``. A continuation's
own role-only preamble is dropped (the client has one), and its usage counts
the prefill as prompt: `whole_answer_usage` moves it back to completion,
exactly when the upstream sends one token per content chunk (vLLM,
llama.cpp), in chunks otherwise. How the continuation is asked for is the
backend's business: vLLM needs ``continue_final_message``
(`server.backends.openai`), Ollama and llama.cpp continue a final assistant
message by themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from server.api.chat_completions import ChatRequest
from server.config import RetryPolicy
from server.errors import SluiceError, UpstreamStatusError
from server.limits.retry_policy import counts_against_backend
from server.limits.routing import Route
from server.stream.progress import StreamProgress


def prefill_routes(routes: Sequence[Route]) -> tuple[Route, ...]:
    """The routes whose backend declared it can continue a final assistant message."""
    return tuple(r for r in routes if r.backend.settings.continuation == "prefill")


def capable_routes(routes: Sequence[Route], now: float) -> tuple[Route, ...]:
    """The routes that declared prefill and have not refused one within their cool-down."""
    return tuple(r for r in routes if r.prefill_refused_until <= now)


def refused_prefill(request: ChatRequest, error: SluiceError | None) -> bool:
    """Did a backend asked to continue a prefill refuse it (a 400-class answer)?

    A backend that declares ``continuation = "prefill"`` but answers a
    continuation with a request error cannot do it after all (vLLM without
    ``continue_final_message``, a hosted API that forbids a final assistant
    message); it was the prefill it refused, not the request, which it served.
    """
    return (request.continues_answer and isinstance(error, UpstreamStatusError)
            and not counts_against_backend(error))


def may_continue(progress: StreamProgress, policy: RetryPolicy) -> bool:
    """May a cut after the commit point be continued (given a backend that can)?"""
    if progress.tool_calls or progress.finished:
        return False  # tool-call arguments cannot be prefilled; a finished answer needs none
    return progress.continuations < policy.continuation_attempts


def continued(request: ChatRequest, progress: StreamProgress) -> ChatRequest:
    """The same request, asking the model to continue the text relayed so far as its answer."""
    text = "".join(progress.text)
    prompt = request.body.get("prompt")
    if isinstance(prompt, str):  # /v1/completions: the text so far ends the prompt
        return replace(request, body={**request.body, "prompt": prompt + text})
    prefix = {"role": "assistant", "content": text}
    body = {**request.body, "messages": [*request.body["messages"], prefix]}
    return replace(request, body=body, continues_answer=True)


def note_content(chunk: dict[str, Any], progress: StreamProgress) -> None:
    """Keep what a continuation needs of a content chunk: its text; whether tool calls began."""
    progress.content_chunks += 1
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        if delta.get("tool_calls") or delta.get("function_call"):
            progress.tool_calls = True
        content = delta.get("content")
        if isinstance(content, str):
            progress.text.append(content)


def whole_answer_usage(usage: dict[str, Any], prefill_chunks: int) -> dict[str, Any]:
    """A continuation's usage, with the prefill moved from prompt back to completion tokens."""
    usage = dict(usage)
    if isinstance(usage.get("completion_tokens"), int):
        usage["completion_tokens"] += prefill_chunks
    if isinstance(usage.get("prompt_tokens"), int):
        usage["prompt_tokens"] = max(0, usage["prompt_tokens"] - prefill_chunks)
    return usage
