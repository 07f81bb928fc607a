"""The fake's Ollama mode: ``POST /api/chat`` as NDJSON, and ``GET /api/tags``.

Like a real Ollama, the fake answers its native API beside the OpenAI one on
the same port: point a kind ``ollama`` backend at `FakeUpstream.origin`. A
streamed answer is one JSON object per line (token ``i`` reads ``"t{i} "``,
as in the OpenAI mode), the last with ``"done": true``, ``done_reason`` and
the token counts; errors are Ollama's ``{"error": "message"}``::

    {"model":"m","created_at":"...","message":{"role":"assistant","content":"t0 "},"done":false}
    ...
    {"model":"m",...,"message":{...,"content":""},"done":true,"done_reason":"stop",
     "prompt_eval_count":3,"eval_count":5,...}

What the request changes: ``stream`` (true unless false, as in Ollama),
``options.num_predict`` (caps the tokens; ``done_reason`` becomes ``length``),
``think`` (two ``thinking`` tokens ``"r0 r1 "`` come first), ``tools`` (the
answer ends with a call to the first tool, arguments ``{"fake": true}``) and a
final assistant message (Ollama continues it: the answer resumes after its
words). `Scenario` faults apply as in the OpenAI mode — ``status`` (with
``error_message``; a 404 says the model was not found), ``retry_after``,
``first_delay``, ``tps``, ``cut_after``, ``stall_after``, ``malformed_after``
(a ``{not json`` line), ``error_event_after`` (an ``{"error": ...}`` line,
then the body ends), ``omit_finish`` (no ``done`` line), ``no_done`` (NDJSON's
counterpart of a missing ``[DONE]``: the ``done`` line comes without its
newline), ``reset_before_headers``, ``no_response``, ``crlf``, ``split_writes``; the SSE
quirks (``keepalive_comments``, ``timestamps``) and ``error_code`` do not
apply. A non-streamed request gets one JSON object, with the same faults as
the OpenAI mode's non-streamed answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from http import HTTPStatus
from typing import Any

import orjson

from server.testing.fake_upstream.http11 import LAST_CHUNK, chunk, response, response_head
from server.testing.fake_upstream.plan import (
    EXPLODED,
    JSON,
    Control,
    ResponseFacts,
    SleepUntil,
    Step,
    emit_whole,
    fault_steps,
    token_offset,
)
from server.testing.fake_upstream.request import DEFAULT_MODEL, InvalidChatRequest
from server.testing.fake_upstream.scenario import Scenario

NDJSON_HEADERS = (
    ("content-type", "application/x-ndjson"),
    ("transfer-encoding", "chunked"),
)
THINKING_TOKENS = 2
TOOL_ARGUMENTS = {"fake": True}


def thinking_text(index: int) -> str:
    return f"r{index} "


# ------------------------------------------------------------------ request


@dataclass(frozen=True, slots=True)
class OllamaChat:
    """What shapes the fake's answer to ``POST /api/chat``."""

    model: str = DEFAULT_MODEL
    stream: bool = True
    max_tokens: int | None = None
    """``options.num_predict``; a negative value (Ollama's "no limit") reads as None."""
    prompt_tokens: int = 0
    think: bool = False
    tool: str | None = None
    """The name of the first tool offered: the fake calls it."""
    prefill_tokens: int = 0
    """Words of a final assistant message, which Ollama continues."""

    @classmethod
    def from_json(cls, body: object) -> OllamaChat:
        """Read a parsed JSON body. Raises `InvalidChatRequest`."""
        if not isinstance(body, dict):
            raise InvalidChatRequest("request body must be a JSON object")
        model = body.get("model", DEFAULT_MODEL)
        if not isinstance(model, str):
            raise InvalidChatRequest("model must be a string", "model")
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            raise InvalidChatRequest("stream must be a boolean", "stream")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise InvalidChatRequest("options must be an object", "options")
        num_predict = options.get("num_predict")
        if num_predict is not None and (isinstance(num_predict, bool)
                                        or not isinstance(num_predict, int)):
            raise InvalidChatRequest('option "num_predict" must be of type integer',
                                     "options.num_predict")
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise InvalidChatRequest("messages must be an array of objects", "messages")
        return cls(
            model=model,
            stream=stream,
            max_tokens=num_predict if num_predict is not None and num_predict >= 0 else None,
            prompt_tokens=sum(_words(m) for m in messages),
            think=body.get("think") not in (None, False),
            tool=_first_tool(body.get("tools")),
            prefill_tokens=_words(messages[-1]) if messages
            and messages[-1].get("role") == "assistant" else 0,
        )

    def completion_tokens(self, scenario_tokens: int) -> int:
        if self.max_tokens is None:
            return scenario_tokens
        return min(scenario_tokens, self.max_tokens)

    def done_reason(self, scenario_tokens: int) -> str:
        return "stop" if self.completion_tokens(scenario_tokens) == scenario_tokens else "length"


def _words(message: dict[str, Any]) -> int:
    content = message.get("content")
    return len(content.split()) if isinstance(content, str) else 0


def _first_tool(tools: object) -> str | None:
    first = tools[0] if isinstance(tools, list) and tools else None
    function = first.get("function") if isinstance(first, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


# ------------------------------------------------------------------ bodies


def error_body(message: str) -> bytes:
    """Ollama's error shape: ``{"error": "message"}``."""
    return orjson.dumps({"error": message})


def tags_body() -> bytes:
    """The ``GET /api/tags`` list of local models."""
    return orjson.dumps({"models": [{
        "name": f"{DEFAULT_MODEL}:latest",
        "model": f"{DEFAULT_MODEL}:latest",
        "modified_at": "2024-01-01T00:00:00Z",
        "size": 0,
        "digest": "0" * 64,
        "details": {"parent_model": "", "format": "gguf", "family": "fake",
                    "families": ["fake"], "parameter_size": "0B",
                    "quantization_level": "F16"},
    }]})


@dataclass(frozen=True, slots=True)
class _Lines:
    """The pre-rendered parts of one response's NDJSON lines."""

    head: bytes  # {"model":...,"created_at":...,"message":{"role":"assistant","content":
    eol: bytes

    @classmethod
    def render(cls, model: str, created: int, crlf: bool) -> _Lines:
        stamp = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        head = b'{"model":%b,"created_at":%b,"message":{"role":"assistant","content":' % (
            orjson.dumps(model), orjson.dumps(stamp))
        return cls(head, b"\r\n" if crlf else b"\n")

    def content(self, index: int) -> bytes:
        return b'%b"t%d "},"done":false}%b' % (self.head, index, self.eol)

    def thinking(self, index: int) -> bytes:
        return b'%b"","thinking":"r%d "},"done":false}%b' % (self.head, index, self.eol)

    def tool_call(self, name: str) -> bytes:
        calls = orjson.dumps([_tool_call(name)])
        return b'%b"","tool_calls":%b},"done":false}%b' % (self.head, calls, self.eol)

    def done(self, reason: str, prompt_tokens: int, eval_tokens: int) -> bytes:
        return b'%b""},%b}%b' % (self.head, _done_fields(reason, prompt_tokens, eval_tokens)[1:-1],
                                 self.eol)

    def error(self) -> bytes:
        return error_body(EXPLODED) + self.eol

    def malformed(self) -> bytes:
        return b"{not json" + self.eol


def _tool_call(name: str) -> dict[str, Any]:
    return {"function": {"index": 0, "name": name, "arguments": TOOL_ARGUMENTS}}


def _done_fields(reason: str, prompt_tokens: int, eval_tokens: int) -> bytes:
    """The ``done`` object's own fields, as a JSON object (durations are made up)."""
    return orjson.dumps({
        "done": True,
        "done_reason": reason,
        "total_duration": 1_000_000 * (eval_tokens + 1),
        "load_duration": 1_000_000,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": 1_000 * prompt_tokens,
        "eval_count": eval_tokens,
        "eval_duration": 1_000_000 * eval_tokens,
    })


# ------------------------------------------------------------------ plans


def plan_ollama_chat(scenario: Scenario, chat: OllamaChat, facts: ResponseFacts
                     ) -> Iterator[Step]:
    """The answer to ``POST /api/chat`` under `scenario`."""
    s = scenario
    if s.first_delay and (s.reset_before_headers or s.no_response or s.status is not None):
        yield SleepUntil(s.first_delay)
    if s.reset_before_headers:
        yield Control.RESET
    elif s.no_response:
        yield Control.STALL
    elif s.status is not None:
        yield _error_response(s, chat, facts.keep_alive)
    elif chat.stream:
        yield from _stream(s, chat, facts)
    else:
        yield from _whole(s, chat, facts)


def _error_response(s: Scenario, chat: OllamaChat, keep_alive: bool) -> bytes:
    assert s.status is not None
    message = s.error_message
    if message is None:
        message = (f"model '{chat.model}' not found" if s.status == 404
                   else f"fake upstream: {_phrase(s.status)}")
    headers = [JSON]
    if s.retry_after is not None:
        seconds = s.retry_after
        headers.append(("retry-after", str(int(seconds)) if seconds.is_integer()
                        else repr(seconds)))
    return response(s.status, headers, error_body(message), keep_alive=keep_alive)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"status {status}"


def _stream(s: Scenario, chat: OllamaChat, facts: ResponseFacts) -> Iterator[Step]:
    lines = _Lines.render(chat.model, facts.created, s.crlf)
    emit = _split_emit if s.split_writes else emit_whole
    n = chat.completion_tokens(s.tokens)
    start = min(chat.prefill_tokens, n)
    yield response_head(200, NDJSON_HEADERS, keep_alive=facts.keep_alive)
    if chat.think:
        for index in range(THINKING_TOKENS):
            yield from emit(lines.thinking(index))
    faults = partial(fault_steps, s, emit=emit, malformed=lines.malformed, error=lines.error)
    if (yield from faults(0)):
        return
    for index in range(start, n):
        if s.first_delay or s.tps:
            yield SleepUntil(token_offset(s, index - start))
        yield from emit(lines.content(index))
        if (yield from faults(index + 1 - start)):
            return
    if chat.tool is not None:
        yield from emit(lines.tool_call(chat.tool))
    if not s.omit_finish:
        done = lines.done(chat.done_reason(s.tokens), chat.prompt_tokens, n - start)
        yield from emit(done.removesuffix(lines.eol) if s.no_done else done)
    yield LAST_CHUNK


def _split_emit(line: bytes) -> Iterator[Step]:
    cut = len(line) // 2
    yield chunk(line[:cut])
    yield Control.FLUSH
    yield chunk(line[cut:])
    yield Control.FLUSH


def _whole(s: Scenario, chat: OllamaChat, facts: ResponseFacts) -> Iterator[Step]:
    n = chat.completion_tokens(s.tokens)
    faults = [
        (after, step)
        for after, step in ((s.cut_after, Control.CUT), (s.stall_after, Control.STALL),
                            (s.error_event_after, None))
        if after is not None and after <= n
    ]
    if faults:
        after, step = min(faults, key=lambda fault: fault[0])
        yield SleepUntil(token_offset(s, max(after - 1, 0)))
        if step is None:
            yield response(500, [JSON], error_body(EXPLODED), keep_alive=facts.keep_alive)
        else:
            yield step
        return
    yield SleepUntil(token_offset(s, max(n - 1, 0)))
    start = min(chat.prefill_tokens, n)
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(f"t{i} " for i in range(start, n))}
    if chat.think:
        message["thinking"] = "".join(thinking_text(i) for i in range(THINKING_TOKENS))
    if chat.tool is not None:
        message["tool_calls"] = [_tool_call(chat.tool)]
    stamp = datetime.fromtimestamp(facts.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    head = orjson.dumps({"model": chat.model, "created_at": stamp, "message": message})
    fields = _done_fields(chat.done_reason(s.tokens), chat.prompt_tokens, n - start)
    body = head[:-1] + b"," + fields[1:]
    yield response(200, [JSON], body, keep_alive=facts.keep_alive)
