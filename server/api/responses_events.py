"""Chat completion chunks folded into Responses API events and objects (pure).

`ResponseTranscript` is the Responses dialect's view of one stream: it folds
the relayed ``chat.completion.chunk`` objects into output items and emits the
typed events the openai SDK parses, each with the next ``sequence_number``
(0, 1, 2, ...), framed for SSE (``event: <type>`` and one ``data:`` line):

    transcript = ResponseTranscript(ResponseMeta(id, model, created_at, echo))
    transcript.opening()          # response.created, response.in_progress
    transcript.add(chunk)         # response.output_item.added, response.content_part.added,
                                  # response.output_text.delta, ... (function calls likewise)
    transcript.closing(None, now) # ...text/part/item done, then response.completed
                                  # (response.incomplete when max_output_tokens cut it)
    transcript.closing(error, now)  # after the commit point: response.failed
    transcript.response()         # the response object as it stands (GET, non-streaming)

Text deltas become one ``message`` item with one ``output_text`` part; tool
call deltas become one ``function_call`` item per call. Reasoning and refusal
deltas have no translation yet and are not shown. A stream stopped on purpose
ends with ``response.failed`` carrying status ``cancelled`` (the Responses
API has no event of its own for it), so no stream ends without a terminal
event and none pretends to be complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from server.errors import SluiceError


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    id: str  # resp_...
    model: str
    created_at: int  # Unix seconds
    echo: Mapping[str, Any]  # request fields the response object repeats


class _Message:
    __slots__ = ("id", "index", "status", "text")

    def __init__(self, item_id: str, index: int) -> None:
        self.id = item_id
        self.index = index
        self.text: list[str] = []
        self.status = "in_progress"

    def part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": "".join(self.text), "annotations": [],
                "logprobs": []}

    def item(self, *, with_part: bool = True) -> dict[str, Any]:
        return {"id": self.id, "type": "message", "status": self.status, "role": "assistant",
                "content": [self.part()] if with_part else []}


class _Call:
    __slots__ = ("arguments", "call_id", "id", "index", "name", "status")

    def __init__(self, item_id: str, index: int, call_id: str, name: str) -> None:
        self.id = item_id
        self.index = index
        self.call_id = call_id
        self.name = name
        self.arguments: list[str] = []
        self.status = "in_progress"

    def item(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function_call", "status": self.status,
                "call_id": self.call_id, "name": self.name,
                "arguments": "".join(self.arguments)}


class ResponseTranscript:
    """One response, folded from chat chunks; every method returns the events it emits."""

    def __init__(self, meta: ResponseMeta) -> None:
        self.meta = meta
        self.seq = 0  # the next event's sequence_number
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.completed_at: int | None = None
        self._items: list[_Message | _Call] = []
        self._message: _Message | None = None
        self._calls: dict[int, _Call] = {}  # by the chat tool call's index
        self._finish: str | None = None
        self._opened = False

    @property
    def text(self) -> str:
        return "" if self._message is None else "".join(self._message.text)

    @property
    def finished(self) -> bool:
        return self.status != "in_progress"

    def opening(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``, unless they were sent already."""
        if self._opened:
            return []
        self._opened = True
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]

    def add(self, chunk: Mapping[str, Any]) -> list[bytes]:
        """Fold one parsed chat chunk in; return the events it makes (opening first, if due)."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        choice = _first_choice(chunk)
        if choice is None:
            return []
        if isinstance(choice.get("finish_reason"), str):
            self._finish = choice["finish_reason"]
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return []
        content = delta.get("content")
        calls = [call for call in delta.get("tool_calls") or () if isinstance(call, dict)]
        if not (isinstance(content, str) and content) and not calls:
            return []  # a role, reasoning or refusal delta: nothing shown (yet)
        events = self.opening()
        if isinstance(content, str) and content:
            events += self._text(content)
        for call in calls:
            events += self._tool_call(call)
        return events

    def closing(self, error: SluiceError | None, now: int) -> list[bytes]:
        """The last events: the items' done events and the terminal event, or the failure."""
        opening = self.opening()
        return opening + self._terminal(error, now)

    def _terminal(self, error: SluiceError | None, now: int) -> list[bytes]:
        if error is not None:
            self._mark_open("incomplete")
            self.status, self.error = "failed", response_error(error)
            return [self._event("response.failed", response=self.response())]
        cut = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(
            self._finish or "")
        events = self._close_items("incomplete" if cut else "completed")
        self.completed_at = now
        if cut is not None:
            self.status, self.incomplete = "incomplete", {"reason": cut}
            events.append(self._event("response.incomplete", response=self.response()))
        else:
            self.status = "completed"
            events.append(self._event("response.completed", response=self.response()))
        return events

    def cancelled(self) -> list[bytes]:
        """A response stopped on purpose: its status is ``cancelled``."""
        opening = self.opening()
        self._mark_open("incomplete")
        self.status = "cancelled"
        return [*opening, self._event("response.failed", response=self.response())]

    def response(self) -> dict[str, Any]:
        """The response object now: what ``GET /v1/responses/{id}`` and a non-stream return."""
        meta = self.meta
        echo = meta.echo
        return {
            "id": meta.id, "object": "response", "created_at": meta.created_at,
            "status": self.status, "background": echo.get("background", False),
            "completed_at": self.completed_at, "error": self.error,
            "incomplete_details": self.incomplete, "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"), "model": meta.model,
            "output": [item.item() for item in self._items],
            "parallel_tool_calls": echo.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": echo.get("reasoning", {"effort": None, "summary": None}),
            "store": echo.get("store", True), "temperature": echo.get("temperature"),
            "text": echo.get("text", {"format": {"type": "text"}}),
            "tool_choice": echo.get("tool_choice", "auto"), "tools": echo.get("tools", []),
            "top_p": echo.get("top_p"), "truncation": echo.get("truncation", "disabled"),
            "usage": self.usage, "user": echo.get("user"), "metadata": echo.get("metadata", {}),
        }

    def _text(self, content: str) -> list[bytes]:
        events = []
        message = self._message
        if message is None:
            message = self._message = _Message(self._item_id("msg"), len(self._items))
            self._items.append(message)
            events.append(self._event("response.output_item.added", output_index=message.index,
                                      item=message.item(with_part=False)))
            events.append(self._event("response.content_part.added", item_id=message.id,
                                      output_index=message.index, content_index=0,
                                      part=message.part()))
        message.text.append(content)
        events.append(self._event("response.output_text.delta", item_id=message.id,
                                  output_index=message.index, content_index=0, delta=content,
                                  logprobs=[]))
        return events

    def _tool_call(self, delta: dict[str, Any]) -> list[bytes]:
        events = []
        position = delta.get("index", 0)
        function = delta.get("function") if isinstance(delta.get("function"), dict) else {}
        assert isinstance(function, dict)
        call = self._calls.get(position)
        if call is None:
            item_id = self._item_id("fc")
            call = _Call(item_id, len(self._items), str(delta.get("id") or "call_" + item_id[3:]),
                         str(function.get("name") or ""))
            self._calls[position] = call
            self._items.append(call)
            events.append(self._event("response.output_item.added", output_index=call.index,
                                      item=call.item()))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments.append(arguments)
            events.append(self._event("response.function_call_arguments.delta", item_id=call.id,
                                      output_index=call.index, delta=arguments))
        return events

    def _mark_open(self, status: str) -> list[_Message | _Call]:
        """Give every open item ``status``; return them (a failure sends no done events)."""
        opened = [item for item in self._items if item.status == "in_progress"]
        for item in opened:
            item.status = status
        return opened

    def _close_items(self, status: str) -> list[bytes]:
        """Mark every open item ``status`` and emit its done events."""
        events = []
        for item in self._mark_open(status):
            if isinstance(item, _Message):
                text = "".join(item.text)
                events.append(self._event("response.output_text.done", item_id=item.id,
                                          output_index=item.index, content_index=0, text=text,
                                          logprobs=[]))
                events.append(self._event("response.content_part.done", item_id=item.id,
                                          output_index=item.index, content_index=0,
                                          part=item.part()))
            else:
                events.append(self._event("response.function_call_arguments.done",
                                          item_id=item.id, output_index=item.index,
                                          name=item.name, arguments="".join(item.arguments)))
            events.append(self._event("response.output_item.done", output_index=item.index,
                                      item=item.item()))
        return events

    def _item_id(self, prefix: str) -> str:
        base = self.meta.id.removeprefix("resp_")
        return f"{prefix}_{base}{len(self._items):02d}"

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _first_choice(chunk: Mapping[str, Any]) -> dict[str, Any] | None:
    """Choice 0 (the Responses API has no ``n``), if the chunk has it."""
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None


def response_error(error: SluiceError) -> dict[str, Any]:
    """The response object's ``error``: the API's codes, plus Sluice's type and error id."""
    if error.status == 429:
        code = "rate_limit_exceeded"
    elif 400 <= error.status < 500:
        code = "invalid_prompt"
    else:
        code = "server_error"
    return {"code": code, "message": error.public_message, "param": error.param,
            "type": error.type, "error_id": error.error_id}


def _usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """Chat usage in the Responses API's words."""
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": prompt_details.get("cached_tokens") or 0,
            "cache_write_tokens": prompt_details.get("cache_write_tokens") or 0},
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": completion_details.get("reasoning_tokens") or 0},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }
