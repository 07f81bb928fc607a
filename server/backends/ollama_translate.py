"""Ollama's native ``/api/chat`` ⇄ OpenAI chat completions, as pure functions.

Ollama streams NDJSON — one JSON object per line, ``"done": true`` on the
last with the token counts — not SSE, and names things its own way. This
module translates both directions without I/O, so every mapping is tested
without sockets; `server.backends.ollama` only moves bytes::

    body = ollama_chat_body(request)             # the /api/chat request; RequestError if unmappable
    lines, stream = NDJSONDecoder(), OllamaStream(completion_id=..., created=..., model=...,
                                                  include_usage=True)
    for line in lines.feed(read):                # any split of the body, any number of reads
        payloads = stream.translate(line)        # OpenAI chunk JSON, finally b"[DONE]"

Request: what maps, and how
    ==================================  =======================================
    OpenAI                              Ollama ``/api/chat``
    ==================================  =======================================
    ``model``                           ``model`` (or the backend's ``upstream_model``)
    ``messages``                        ``messages`` (see below)
    ``stream``                          ``stream: true`` always (Sluice aggregates)
    ``temperature``, ``top_p``,         ``options`` of the same names
    ``seed``, ``frequency_penalty``,
    ``presence_penalty``
    ``max_tokens`` /                    ``options.num_predict`` (the smaller,
    ``max_completion_tokens``           if both are given)
    ``stop`` (string or list)           ``options.stop`` (list)
    ``response_format`` json_object     ``format: "json"``
    ``response_format`` json_schema     ``format: <the schema>``
    ``tools``                           ``tools`` (same shape); omitted when
                                        ``tool_choice`` is ``"none"``
    ``reasoning_effort``                ``think``: ``none`` → false, ``minimal``
                                        → ``"low"``, low/medium/high as is
    ==================================  =======================================

Messages: ``developer`` becomes ``system``; content parts become one
``content`` (text parts joined by a blank line, as Ollama joins consecutive
messages) plus ``images`` (base64 from ``data:`` URLs — Sluice never fetches
a remote image, and Ollama cannot); an assistant's ``tool_calls`` get their
JSON-string arguments parsed into objects; a ``tool`` message gets
``tool_name`` from the call it answers; an assistant's ``reasoning_content``
becomes ``thinking``. A final assistant message goes as it is: Ollama
continues it (a prefill), so ``continuation = "prefill"`` works with it.

Dropped (Ollama has no equivalent): ``n`` (one choice always),
``logprobs``/``top_logprobs``, ``logit_bias``, ``user``, ``metadata``,
``store``, ``service_tier``, ``parallel_tool_calls``, a ``tool_choice``
other than ``"none"``, ``prediction``, ``modalities``/``audio``, the legacy
``functions``/``function_call``, ``stream_options`` (Sluice makes the usage
chunk itself) and any other field. What cannot be expressed at all — a remote
image URL, an audio or file part, unparseable tool-call arguments, an unknown
``response_format`` — is a 400 `RequestError` naming the ``param``, raised
before any connection is made.

Response: a role chunk first; ``message.content`` → ``delta.content``;
``message.thinking`` → ``delta.reasoning_content``; each of
``message.tool_calls`` (Ollama sends them whole) → one ``delta.tool_calls``
entry with a stream-wide ``index``, an id (Ollama's, else made up) and
arguments as a JSON string; on ``done``: ``finish_reason`` from
``done_reason`` (``length`` stays ``length``; after a tool call it is
``tool_calls``, as Ollama's own OpenAI layer says; anything else is
``stop``), the usage chunk from ``prompt_eval_count``/``eval_count`` when
wanted, then ``[DONE]``. A line that is not a JSON object, or an
``{"error": ...}`` line, raises `UpstreamUnavailable`; a stream that ends
without ``done`` is left to the relay, which calls it cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from server.api.chat_completions import ChatRequest
from server.chunks import chunk_bytes
from server.errors import RequestError, UpstreamUnavailable
from server.sse import DONE

MAX_LINE_BYTES: Final = 1 << 20

_NUMBER_OPTIONS: Final = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
_THINK: Final[dict[str, bool | str]] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
}


# ------------------------------------------------------------------ request


def ollama_chat_body(request: ChatRequest, model: str | None = None) -> dict[str, Any]:
    """The ``/api/chat`` body for a request; ``model`` renames the model. Raises `RequestError`."""
    body = request.body
    chat: dict[str, Any] = {
        "model": model or request.model,
        "messages": _messages(body["messages"]),
        "stream": True,
    }
    options = _options(body, request.max_tokens)
    if options:
        chat["options"] = options
    response_format = _format(body.get("response_format"))
    if response_format is not None:
        chat["format"] = response_format
    tools = body.get("tools")
    if tools and body.get("tool_choice") != "none":
        if not isinstance(tools, list):
            raise RequestError("'tools' must be an array.", param="tools", code="invalid_type")
        chat["tools"] = tools
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in _THINK:
            raise RequestError("'reasoning_effort' must be one of none, minimal, low, medium, "
                               "high.", param="reasoning_effort", code="invalid_value")
        chat["think"] = _THINK[effort]
    return chat


def _options(body: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key in _NUMBER_OPTIONS:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(f"'{key}' must be a number.", param=key, code="invalid_type")
        options[key] = value
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RequestError("'seed' must be an integer.", param="seed", code="invalid_type")
        options["seed"] = seed
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            options["stop"] = stop
    elif stop is not None:
        raise RequestError("'stop' must be a string or an array of strings.", param="stop",
                           code="invalid_type")
    return options


def _format(response_format: object) -> str | dict[str, Any] | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise RequestError("'response_format' must be an object.", param="response_format",
                           code="invalid_type")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise RequestError("'response_format.json_schema.schema' must be a JSON schema "
                               "object.", param="response_format.json_schema.schema",
                               code="invalid_value")
        return schema
    raise RequestError("'response_format.type' must be text, json_object or json_schema.",
                       param="response_format.type", code="invalid_value")


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = _tool_names(messages)
    return [_message(i, m, names) for i, m in enumerate(messages)]


def _tool_names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """Tool-call id → function name, over every assistant message (the last one wins)."""
    names: dict[str, str] = {}
    for message in messages:
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(call.get("id"), str) \
                    and isinstance(function.get("name"), str):
                names[call["id"]] = function["name"]
    return names


def _message(i: int, message: dict[str, Any], tool_names: dict[str, str]) -> dict[str, Any]:
    role = message["role"]
    out: dict[str, Any] = {"role": {"developer": "system", "function": "tool"}.get(role, role)}
    out["content"], images = _content(i, message.get("content"))
    if images:
        out["images"] = images
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        out["thinking"] = reasoning
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise RequestError(f"'messages[{i}].tool_calls' must be an array.",
                               param=f"messages[{i}].tool_calls", code="invalid_type")
        out["tool_calls"] = [_tool_call_to_ollama(i, j, c) for j, c in enumerate(calls)]
    if out["role"] == "tool":
        call_id = message.get("tool_call_id")
        name = message.get("name")
        if not isinstance(name, str) or not name:
            name = tool_names.get(call_id) if isinstance(call_id, str) else None
        if name:
            out["tool_name"] = name
        if isinstance(call_id, str) and call_id:
            out["tool_call_id"] = call_id
    return out


def _content(i: int, content: object) -> tuple[str, list[str]]:
    """A message's text, and the base64 of its images."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(f"'messages[{i}].content' must be a string or an array of parts.",
                           param=f"messages[{i}].content", code="invalid_type")
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        param = f"messages[{i}].content[{j}]"
        if not isinstance(part, dict):
            raise RequestError(f"'{param}' must be an object.", param=param, code="invalid_type")
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise RequestError(f"'{param}.{kind}' must be a string.", param=f"{param}.{kind}",
                                   code="invalid_type")
            texts.append(text)
        elif kind == "image_url":
            images.append(_image_base64(part.get("image_url"), f"{param}.image_url"))
        else:
            raise RequestError(f"'{param}': content parts of type {kind!r} are not supported "
                               f"by this model server.", param=param, code="invalid_value")
    return "\n\n".join(texts), images


def _image_base64(image: object, param: str) -> str:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise RequestError(f"'{param}.url' must be a string.", param=f"{param}.url",
                           code="invalid_type")
    header, comma, data = url.partition(",")
    if not (url.startswith("data:") and comma and header.endswith(";base64") and data):
        raise RequestError(f"'{param}.url': this model server takes images only as base64 "
                           f"data: URLs.", param=f"{param}.url", code="invalid_value")
    return data


def _tool_call_to_ollama(i: int, j: int, call: object) -> dict[str, Any]:
    param = f"messages[{i}].tool_calls[{j}]"
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or not isinstance(function, dict) \
            or not isinstance(function.get("name"), str):
        raise RequestError(f"'{param}' must be an object whose 'function' has a string 'name'.",
                           param=f"{param}.function", code="invalid_type")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments) if arguments.strip() else {}
        except orjson.JSONDecodeError:
            arguments = None
    elif arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise RequestError(f"'{param}.function.arguments' must be a JSON object.",
                           param=f"{param}.function.arguments", code="invalid_value")
    out: dict[str, Any] = {"function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


# ------------------------------------------------------------------ response


class NDJSONDecoder:
    """Turns reads of an NDJSON body into its non-blank lines, whatever the split.

    LF ends a line (a CR before it is whitespace, stripped); `close` hands
    back a last line that had no newline. A line longer than
    `MAX_LINE_BYTES` raises `UpstreamUnavailable` rather than growing the buffer.
    """

    __slots__ = ("_max_line_bytes", "_pending")

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._pending = b""
        self._max_line_bytes = max_line_bytes

    def feed(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        buffer = self._pending + data if self._pending else data
        *lines, self._pending = buffer.split(b"\n")
        if len(self._pending) > self._max_line_bytes:
            raise UpstreamUnavailable("The upstream sent a malformed stream.",
                                      detail=f"NDJSON line longer than {self._max_line_bytes} "
                                             f"bytes")
        return [line for line in (raw.strip() for raw in lines) if line]

    def close(self) -> list[bytes]:
        """The last line, if the body ended without a newline after it."""
        line, self._pending = self._pending.strip(), b""
        return [line] if line else []


@dataclass(slots=True)
class OllamaStream:
    """One response's NDJSON objects → OpenAI chunk payloads; see the module docstring."""

    completion_id: str
    created: int
    model: str
    include_usage: bool
    done: bool = field(default=False, init=False)
    """The ``done`` object arrived (and ``[DONE]`` was produced); later lines are ignored."""
    _started: bool = field(default=False, init=False)
    _tool_calls: int = field(default=0, init=False)

    def translate(self, line: bytes) -> list[bytes]:
        """The chunk payloads for one NDJSON line. Raises `UpstreamUnavailable`."""
        if self.done:
            return []
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise _malformed("a line is not JSON", line) from None
        if not isinstance(data, dict):
            raise _malformed("a line is not a JSON object", line)
        if data.get("error") is not None:
            raise UpstreamUnavailable("The upstream model server reported an error mid-stream.",
                                      detail=f"ollama error line: {data['error']!r:.500}")
        payloads: list[bytes] = []
        if not self._started:
            self._started = True
            payloads.append(self._chunk(delta={"role": "assistant", "content": ""}))
        message = data.get("message")
        delta = self._delta(message) if isinstance(message, dict) else {}
        if delta:
            payloads.append(self._chunk(delta=delta))
        if data.get("done") is True:
            self.done = True
            payloads.append(self._chunk(finish_reason=self._finish_reason(data)))
            if self.include_usage:
                prompt, completion = _count(data, "prompt_eval_count"), _count(data, "eval_count")
                payloads.append(self._chunk(usage={"prompt_tokens": prompt,
                                                   "completion_tokens": completion,
                                                   "total_tokens": prompt + completion}))
            payloads.append(DONE)
        return payloads

    def _delta(self, message: dict[str, Any]) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        # Upstreams are not trusted with types: a piece of the wrong type is skipped.
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking:
            delta["reasoning_content"] = thinking
        content = message.get("content")
        if isinstance(content, str) and content:
            delta["content"] = content
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            delta["tool_calls"] = [self._tool_call(c) for c in calls if isinstance(c, dict)]
        return delta

    def _tool_call(self, call: dict[str, Any]) -> dict[str, Any]:
        index = self._tool_calls
        self._tool_calls += 1
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments if arguments is not None else {}).decode()
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            # Older Ollama sends no ids; clients need one to answer the call.
            call_id = f"call_{self.completion_id.removeprefix('chatcmpl-')}_{index}"
        return {"index": index, "id": call_id, "type": "function",
                "function": {"name": name if isinstance(name, str) else "",
                             "arguments": arguments}}

    def _finish_reason(self, data: dict[str, Any]) -> str:
        if data.get("done_reason") == "length":
            return "length"
        return "tool_calls" if self._tool_calls else "stop"

    def _chunk(self, *, delta: dict[str, Any] | None = None, finish_reason: str | None = None,
               usage: dict[str, int] | None = None) -> bytes:
        return chunk_bytes(completion_id=self.completion_id, created=self.created,
                           model=self.model, delta=delta, finish_reason=finish_reason,
                           usage=usage)


def _count(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _malformed(what: str, line: bytes) -> UpstreamUnavailable:
    return UpstreamUnavailable("The upstream sent a malformed stream.",
                               detail=f"ollama NDJSON: {what}: {line[:200]!r}")
