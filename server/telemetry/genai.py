"""What a stream's spans say: GenAI semantic-convention attributes from plain facts.

Pure functions, no OpenTelemetry import: `server.telemetry.otel` puts what
they return on its spans, and the tests check them with plain values. The
names follow the OpenTelemetry GenAI conventions (still marked
*development*: ``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.provider.name``, ``gen_ai.usage.*``,
``gen_ai.response.finish_reasons``, ``gen_ai.response.time_to_first_chunk``)
and HTTP's for the server span; Sluice's own facts are ``sluice.*``::

    attributes = stream_start("/v1/chat/completions", model="llama3", request_id="req_1")
    attributes = stream_end(record, response_model="llama3-8b", finish_reasons=("stop",))
    attributes = attempt_start(operation="chat", backend="local", kind="openai", ...)
    attributes = attempt_end(outcome="completed", error=None, ...)

**Status.** A client span (an upstream attempt) is an error when the
attempt failed — a refusal (4xx) included, as for any HTTP client span. A
server span (the client's request) is an error only when the gateway or
its upstreams failed the client (`stream_failed`): a client that left, a
request refused as the client's fault (an upstream 4xx relayed) or the
gateway being busy (429) leave it unset, as HTTP's conventions leave 4xx
answers of a server span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.access_log import StreamRecord

Attributes = dict[str, str | bool | int | float | tuple[str, ...]]

# The endpoints whose requests are not chats (every other stream endpoint is one).
_OPERATIONS = {"/v1/completions": "text_completion"}
# How each backend kind is named as a provider; an OpenAI-compatible server is "openai"
# (the API it speaks: vLLM, llama.cpp, ...), `sluice.backend` names which one it is.
_PROVIDERS = {"openai": "openai", "ollama": "ollama", "simulated": "sluice.simulated"}
# The stream outcomes the gateway or its upstreams are to blame for.
_FAILED_OUTCOMES = frozenset(("upstream_error", "upstream_timeout", "shutdown"))


def operation_name(endpoint: str) -> str:
    """``gen_ai.operation.name`` of a request to ``endpoint`` (a path like ``/chat``)."""
    return _OPERATIONS.get(endpoint, "chat")


def provider_name(kind: str) -> str:
    """``gen_ai.provider.name`` of a backend of ``kind``."""
    return _PROVIDERS.get(kind, kind)


def stream_span_name(endpoint: str) -> str:
    """The server span's name, HTTP's ``{method} {route}``: every stream is a POST."""
    return f"POST {endpoint}"


def stream_start(endpoint: str, *, model: str, request_id: str, stream: bool) -> Attributes:
    """The server span's attributes known when the stream starts."""
    return {
        "http.request.method": "POST",
        "http.route": endpoint,
        "gen_ai.operation.name": operation_name(endpoint),
        "gen_ai.request.model": model,
        "sluice.request_id": request_id,
        "sluice.stream": stream,
    }


def stream_end(record: StreamRecord, *, response_model: str | None,
               finish_reasons: tuple[str, ...]) -> Attributes:
    """The server span's attributes from the stream's record (`server.access_log`)."""
    attributes: Attributes = {"sluice.outcome": record.outcome, "sluice.attempts": record.attempts,
                              "sluice.chunks": record.chunks}
    if record.status is not None:
        attributes["http.response.status_code"] = record.status
    if record.backend is not None:
        attributes["sluice.backend"] = record.backend
    if record.key is not None:
        attributes["sluice.key"] = record.key  # the key's configured name, never the key
    if record.error is not None:
        attributes["error.type"] = record.error
    if record.error_id is not None:
        attributes["sluice.error_id"] = record.error_id
    if record.ttfb is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = record.ttfb
    _put_usage(attributes, record.prompt_tokens, record.completion_tokens)
    _put_response(attributes, response_model, finish_reasons)
    return attributes


def stream_failed(outcome: str, status: int | None) -> bool:
    """Is the server span an error? See the module doc."""
    return outcome in _FAILED_OUTCOMES or (status is not None and status >= 500)


def attempt_span_name(operation: str, model: str) -> str:
    """A client span's name, GenAI's ``{gen_ai.operation.name} {gen_ai.request.model}``."""
    return f"{operation} {model}"


def attempt_start(*, operation: str, backend: str, kind: str, model: str, number: int,
                  hedge: bool, continuation: bool) -> Attributes:
    """A client span's attributes known when the attempt starts.

    ``model`` is the one sent upstream (a backend's ``upstream_model`` if it
    has one); ``number`` counts the stream's attempts from 1.
    """
    return {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider_name(kind),
        "gen_ai.request.model": model,
        "sluice.backend": backend,
        "sluice.attempt": number,
        "sluice.hedge": hedge,
        "sluice.continuation": continuation,
    }


def attempt_outcome(outcome: str, *, lost: bool) -> str:
    """``sluice.outcome`` of an attempt: as its metric's label, or ``lost`` (a hedge race)."""
    return "lost" if lost and outcome == "cancelled" else outcome


def attempt_end(*, outcome: str, error_type: str | None, error_id: str | None,
                response_model: str | None, finish_reasons: tuple[str, ...],
                usage: Mapping[str, Any] | None, time_to_first_chunk: float | None
                ) -> Attributes:
    """A client span's attributes when the attempt has ended."""
    attributes: Attributes = {"sluice.outcome": outcome}
    if error_type is not None:
        attributes["error.type"] = error_type
    if error_id is not None:
        attributes["sluice.error_id"] = error_id
    if time_to_first_chunk is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = time_to_first_chunk
    if usage is not None:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        _put_usage(attributes, prompt if isinstance(prompt, int) else None,
                   completion if isinstance(completion, int) else None)
    _put_response(attributes, response_model, finish_reasons)
    return attributes


def _put_usage(attributes: Attributes, prompt: int | None, completion: int | None) -> None:
    if prompt is not None:
        attributes["gen_ai.usage.input_tokens"] = prompt
    if completion is not None:
        attributes["gen_ai.usage.output_tokens"] = completion


def _put_response(attributes: Attributes, model: str | None,
                  finish_reasons: tuple[str, ...]) -> None:
    if model is not None:
        attributes["gen_ai.response.model"] = model
    if finish_reasons:
        attributes["gen_ai.response.finish_reasons"] = finish_reasons
