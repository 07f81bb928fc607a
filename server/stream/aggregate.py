"""Folding a stream of chunks into one ``chat.completion``.

Sluice answers a non-streaming request by streaming from the upstream and
aggregating here, so the same first-chunk and idle timers guard both kinds
of request. The fold is pure: feed it parsed chunks in order, then ask for
the completion.

    completion = CompletionBuilder()
    for chunk in chunks:
        completion.add(chunk)
    body = completion.result()

Per choice it concatenates content, reasoning and refusal text, assembles
tool calls from their index-keyed fragments (the id, type and name arrive
once, the arguments in pieces), keeps the last finish_reason and logprobs
content; usage comes from the usage-only chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Choice:
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    function_call: _ToolCall | None = None
    finish_reason: str | None = None
    logprobs: list[Any] | None = None


class CompletionBuilder:
    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._header: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in chunk and chunk[key] is not None and key not in self._header:
                self._header[key] = chunk[key]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        choices = chunk.get("choices")
        for raw in choices if isinstance(choices, list) else ():
            if not isinstance(raw, dict):
                continue
            choice = self._choices.setdefault(_index(raw.get("index")), _Choice())
            delta = raw.get("delta")
            if isinstance(delta, dict):
                _fold_delta(choice, delta)
            if raw.get("finish_reason") is not None:
                choice.finish_reason = raw["finish_reason"]
            logprobs = raw.get("logprobs")
            if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                choice.logprobs = (choice.logprobs or []) + logprobs["content"]

    def result(self) -> dict[str, Any]:
        completion: dict[str, Any] = {
            "id": self._header.get("id", ""),
            "object": "chat.completion",
            "created": self._header.get("created", 0),
            "model": self._header.get("model", ""),
            "choices": [_finish(index, c) for index, c in sorted(self._choices.items())],
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in self._header:
                completion[key] = self._header[key]
        if self._usage is not None:
            completion["usage"] = self._usage
        return completion


def _fold_delta(choice: _Choice, delta: dict[str, Any]) -> None:
    # Upstreams are not to be trusted with types: a piece of the wrong type is
    # skipped rather than allowed to turn a reply into a 500.
    if role := _text(delta.get("role")):
        choice.role = role
    if content := _text(delta.get("content")):
        choice.content.append(content)
    if reasoning := _text(delta.get("reasoning_content")) or _text(delta.get("reasoning")):
        choice.reasoning.append(reasoning)
    if refusal := _text(delta.get("refusal")):
        choice.refusal.append(refusal)
    fragments = delta.get("tool_calls")
    if isinstance(delta.get("function_call"), dict):  # the legacy `functions` API
        choice.function_call = choice.function_call or _ToolCall()
        _fold_function(choice.function_call, delta["function_call"])
    for fragment in fragments if isinstance(fragments, list) else ():
        if not isinstance(fragment, dict):
            continue
        call = choice.tool_calls.setdefault(_index(fragment.get("index")), _ToolCall())
        if call_id := _text(fragment.get("id")):
            call.id = call_id
        if call_type := _text(fragment.get("type")):
            call.type = call_type
        if isinstance(fragment.get("function"), dict):
            _fold_function(call, fragment["function"])


def _fold_function(call: _ToolCall, function: dict[str, Any]) -> None:
    call.name += _text(function.get("name"))
    if arguments := _text(function.get("arguments")):
        call.arguments.append(arguments)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _index(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _finish(index: int, choice: _Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": choice.role,
        "content": "".join(choice.content) if choice.content or not choice.tool_calls else None,
    }
    if choice.function_call is not None:
        message["function_call"] = {"name": choice.function_call.name,
                                    "arguments": "".join(choice.function_call.arguments)}
    if choice.reasoning:
        message["reasoning_content"] = "".join(choice.reasoning)
    if choice.refusal:
        message["refusal"] = "".join(choice.refusal)
    if choice.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": call.type,
                "function": {"name": call.name, "arguments": "".join(call.arguments)},
            }
            for _, call in sorted(choice.tool_calls.items())
        ]
    return {
        "index": index,
        "message": message,
        "logprobs": {"content": choice.logprobs} if choice.logprobs is not None else None,
        "finish_reason": choice.finish_reason,
    }
