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
        for raw in chunk.get("choices") or ():
            choice = self._choices.setdefault(int(raw.get("index", 0)), _Choice())
            _fold_delta(choice, raw.get("delta") or {})
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
    if delta.get("role"):
        choice.role = delta["role"]
    if delta.get("content"):
        choice.content.append(delta["content"])
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if reasoning:
        choice.reasoning.append(reasoning)
    if delta.get("refusal"):
        choice.refusal.append(delta["refusal"])
    for fragment in delta.get("tool_calls") or ():
        call = choice.tool_calls.setdefault(int(fragment.get("index", 0)), _ToolCall())
        if fragment.get("id"):
            call.id = fragment["id"]
        if fragment.get("type"):
            call.type = fragment["type"]
        function = fragment.get("function") or {}
        if function.get("name"):
            call.name += function["name"]
        if function.get("arguments"):
            call.arguments.append(function["arguments"])


def _finish(index: int, choice: _Choice) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": choice.role,
        "content": "".join(choice.content) if choice.content or not choice.tool_calls else None,
    }
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
