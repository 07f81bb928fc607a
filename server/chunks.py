"""The OpenAI ``chat.completion.chunk``: what the relay must know of one, and how to make one.

A relay forwards upstream bytes untouched; it reads each chunk only to learn
the few facts the gateway acts on (`ChunkFacts`): does it carry content (the
first one is the commit point and resets the idle timer), did a choice
finish, is it an error event. The parsed chunk comes back too, for the
callers that need more (usage, the text a continuation resumes). Parsing is
one ``orjson.loads`` (~1 µs for a typical chunk); nothing is re-serialised
(a continuation's usage chunk excepted).

The builders make the chunks of the simulated model and Sluice's own
in-band error event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from server.errors import SluiceError, error_object


class MalformedChunk(ValueError):
    """An upstream event whose data is not a JSON chat completion chunk."""


@dataclass(frozen=True, slots=True)
class ChunkFacts:
    content: bool  # text, reasoning, refusal or a tool-call delta
    finished: bool  # some choice has a finish_reason
    error: dict[str, Any] | None  # an upstream's in-band ``{"error": {...}}``


_CONTENT_KEYS = ("content", "reasoning_content", "reasoning", "refusal")


def inspect_chunk(payload: bytes) -> tuple[ChunkFacts, dict[str, Any]]:
    """Parse one event payload (not ``[DONE]``) and say what it means."""
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise MalformedChunk("event data is not JSON") from None
    if not isinstance(chunk, dict):
        raise MalformedChunk("event data is not a JSON object")
    error = chunk.get("error")
    if error is not None:
        if not isinstance(error, dict):
            error = {"message": error}
        return ChunkFacts(False, False, error), chunk
    choices = chunk.get("choices")
    if choices is None:
        choices = []
    if not isinstance(choices, list):
        raise MalformedChunk("'choices' is not a list")
    content = finished = False
    for choice in choices:
        if not isinstance(choice, dict):
            raise MalformedChunk("a choice is not an object")
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if delta.get("tool_calls") or delta.get("function_call"):
                content = True
            else:
                for key in _CONTENT_KEYS:
                    if delta.get(key):
                        content = True
                        break
        if choice.get("finish_reason") is not None:
            finished = True
    return _PLAIN_FACTS[content][finished], chunk


def finish_reasons(chunk: dict[str, Any]) -> tuple[str, ...]:
    """The finish_reasons of a chunk's choices (of a chunk whose facts say ``finished``)."""
    choices = chunk.get("choices") or ()
    return tuple(str(c["finish_reason"]) for c in choices
                 if isinstance(c, dict) and c.get("finish_reason") is not None)


# Facts without an error come in four kinds: share them (a frozen dataclass
# costs ~1 µs to build, a measurable share of a relayed chunk).
_PLAIN_FACTS = ((ChunkFacts(False, False, None), ChunkFacts(False, True, None)),
                (ChunkFacts(True, False, None), ChunkFacts(True, True, None)))


# ------------------------------------------------------------------ builders


def chunk_bytes(
    *,
    completion_id: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> bytes:
    """One chunk's JSON; ``usage`` alone makes the usage-only chunk (empty choices)."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    if usage is not None and delta is None:
        chunk["choices"] = []
        chunk["usage"] = usage
    else:
        chunk["choices"] = [
            {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}
        ]
    return orjson.dumps(chunk)


def error_event_payload(error: SluiceError) -> bytes:
    """The data of Sluice's in-band error event, sent when a started stream fails."""
    return orjson.dumps({"error": error_object(error)})
