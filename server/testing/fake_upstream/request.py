"""The parts of an OpenAI chat-completions request that shape the fake's answer.

The fake does not validate requests like OpenAI does; it reads what changes
its response (model, streaming, usage, token cap, prompt size) and rejects
only bodies it cannot read those from, so a gateway's pass-through of odd
fields is never the fake's problem::

    chat = ChatRequest.from_json({"model": "m", "stream": True, "max_tokens": 3,
                                  "messages": [{"role": "user", "content": "hi there"}]})
    assert (chat.completion_tokens(scenario_tokens=5), chat.prompt_tokens) == (3, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "fake-model"


class InvalidChatRequest(Exception):
    """The body cannot be read as a chat request; `param` names the bad field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str = DEFAULT_MODEL
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    prompt_tokens: int = 0
    """Whitespace-separated words in all message texts: a deterministic stand-in for a tokenizer."""
    prefill_tokens: int = 0
    """Words of a final assistant message to continue (vLLM's ``continue_final_message``):
    the answer resumes at that token, so a continued reply reads as one."""

    @classmethod
    def from_json(cls, body: object) -> ChatRequest:
        """Read a parsed JSON body. Raises `InvalidChatRequest`."""
        if not isinstance(body, dict):
            raise InvalidChatRequest("request body must be a JSON object")
        model = body.get("model", DEFAULT_MODEL)
        if not isinstance(model, str):
            raise InvalidChatRequest("model must be a string", "model")
        stream = _optional_bool(body, "stream")
        options = body.get("stream_options")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise InvalidChatRequest("stream_options must be an object", "stream_options")
        include_usage = _optional_bool(options, "include_usage", "stream_options.include_usage")
        return cls(
            model=model,
            stream=stream,
            include_usage=include_usage,
            max_tokens=_max_tokens(body),
            prompt_tokens=_count_prompt_words(body.get("messages")),
            prefill_tokens=_prefill_words(body),
        )

    def completion_tokens(self, scenario_tokens: int) -> int:
        """How many content chunks to send: the scenario's, capped by ``max_tokens``."""
        if self.max_tokens is None:
            return scenario_tokens
        return min(scenario_tokens, self.max_tokens)

    def finish_reason(self, scenario_tokens: int) -> str:
        """``"length"`` when ``max_tokens`` cut the answer short, else ``"stop"``."""
        return "stop" if self.completion_tokens(scenario_tokens) == scenario_tokens else "length"


def _optional_bool(obj: dict[str, object], key: str, param: str | None = None) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidChatRequest(f"{param or key} must be a boolean", param or key)
    return value


def _max_tokens(body: dict[str, object]) -> int | None:
    # max_completion_tokens is the newer OpenAI name; it wins when both are present.
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidChatRequest(f"{key} must be a non-negative integer", key)
        return value
    return None


def _prefill_words(body: dict[str, object]) -> int:
    messages = body.get("messages")
    if body.get("continue_final_message") is not True or not isinstance(messages, list):
        return 0
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return 0
    content = last.get("content")
    return len(content.split()) if isinstance(content, str) else 0


def _count_prompt_words(messages: object) -> int:
    if messages is None:
        return 0
    if not isinstance(messages, list):
        raise InvalidChatRequest("messages must be an array", "messages")
    words = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            words += len(content.split())
        elif isinstance(content, list):  # content parts: count the text ones
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    words += len(text.split())
    return words
