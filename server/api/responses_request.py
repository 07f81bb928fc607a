"""A client's ``POST /v1/responses``, validated and translated into a chat completions request.

Sluice serves the Responses API by translation: the request becomes a
``/v1/chat/completions`` request, relayed by the same streams as every other
dialect (routing, fail-over, timers, admission), and the relayed chunks
become Responses events (`server.api.responses_events`). So every backend
kind serves it, the simulated model included.

What translates:

| Responses field | chat completions |
|---|---|
| ``input`` (a string) | one ``user`` message |
| ``input`` items: messages (``input_text``/``output_text`` parts) | messages of the same role |
| ``input`` items: ``function_call``, ``function_call_output`` | ``tool_calls``, ``tool`` messages |
| ``instructions`` | a first ``system`` message |
| ``max_output_tokens`` | ``max_tokens`` |
| ``temperature``, ``top_p``, ``parallel_tool_calls``, ``user`` | the same |
| ``tools`` (``function`` only), ``tool_choice`` | ``tools``, ``tool_choice`` |
| ``text.format`` ``json_object`` / ``json_schema`` | ``response_format`` |
| ``reasoning.effort`` | ``reasoning_effort`` |

Accepted and not sent upstream: ``metadata``, ``store``, ``truncation =
"disabled"``, ``service_tier``, ``safety_identifier``, ``prompt_cache_key``,
``prompt_cache_retention``, ``stream_options``, an empty ``include``.
Anything else — ``previous_response_id``, ``conversation``, ``prompt``,
hosted tools, images and files, an unknown field — is a 400 naming the
``param``: a field Sluice cannot honour is never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from server.api.chat_completions import (
    ChatRequest,
    json_object,
    non_empty_string,
    parse_chat_request,
    required_field,
)
from server.errors import RequestError

ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text"})
# Accepted, echoed in the response object where it has a field, never sent upstream.
IGNORED = frozenset({"metadata", "store", "service_tier", "safety_identifier",
                     "prompt_cache_key", "prompt_cache_retention", "stream_options"})
UNSUPPORTED = {
    "previous_response_id": "Sluice keeps no conversation state: send the whole "
                            "conversation in 'input'.",
    "conversation": "Sluice keeps no conversations: send the whole conversation in 'input'.",
    "prompt": "Stored prompt templates are not supported.",
}
HANDLED = frozenset({"model", "input", "instructions", "stream", "background",
                     "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
                     "parallel_tool_calls", "text", "reasoning", "user", "truncation",
                     "include"})


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A validated ``/v1/responses`` request: the chat request it becomes, and its options."""

    chat: ChatRequest
    stream: bool
    background: bool
    echo: dict[str, Any]  # what the response object repeats of the request


def parse_responses_request(raw: bytes) -> ResponsesRequest:
    body = {key: value for key, value in json_object(raw).items() if value is not None}
    for key in body:
        if key in UNSUPPORTED:
            raise _unsupported(key, UNSUPPORTED[key])
        if key not in HANDLED and key not in IGNORED:
            raise _unsupported(key, f"Unsupported parameter: '{key}'.")
    model = required_field(body, "model", non_empty_string, "a non-empty string")
    stream = _boolean(body, "stream")
    background = _boolean(body, "background")

    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise RequestError("'instructions' must be a string.", param="instructions",
                               code="invalid_type")
        messages.append({"role": "system", "content": instructions})
    messages.extend(input_messages(body.get("input")))

    chat: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        chat["stream_options"] = {"include_usage": True}  # the response reports usage
    max_output = body.get("max_output_tokens")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise RequestError("'max_output_tokens' must be a positive integer.",
                               param="max_output_tokens", code="invalid_value")
        chat["max_tokens"] = max_output
    for key, high in (("temperature", 2), ("top_p", 1)):
        if key in body:
            chat[key] = _number(body, key, high)
    if "parallel_tool_calls" in body:
        chat["parallel_tool_calls"] = _boolean(body, "parallel_tool_calls")
    if "user" in body:
        if not isinstance(body["user"], str):
            raise RequestError("'user' must be a string.", param="user", code="invalid_type")
        chat["user"] = body["user"]
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
    if "tool_choice" in body:
        chat["tool_choice"] = _tool_choice(body["tool_choice"])
    response_format = _text_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    effort = _reasoning_effort(body.get("reasoning"))
    if effort is not None:
        chat["reasoning_effort"] = effort
    if body.get("truncation", "disabled") != "disabled":
        raise _unsupported("truncation", "Only 'truncation': 'disabled' is supported.")
    if body.get("include"):
        raise _unsupported("include", "'include' is not supported (only an empty list).")

    echo = {
        "instructions": instructions,
        "max_output_tokens": max_output,
        "temperature": chat.get("temperature"),
        "top_p": chat.get("top_p"),
        "tools": body.get("tools", []),
        "tool_choice": body.get("tool_choice", "auto"),
        "parallel_tool_calls": chat.get("parallel_tool_calls", True),
        "text": body.get("text", {"format": {"type": "text"}}),
        "metadata": body.get("metadata", {}),
        "user": body.get("user"),
        "store": body.get("store", True),
        "background": background,
        "truncation": "disabled",
        "reasoning": {"effort": effort, "summary": None},
    }
    return ResponsesRequest(parse_chat_request(orjson.dumps(chat)), stream, background, echo)


def input_messages(value: Any) -> list[dict[str, Any]]:
    """``input`` as chat messages: a string is one user message; items translate one by one."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RequestError("'input' must be a string or a non-empty array of input items.",
                           param="input", code="invalid_type" if value is not None
                           else "missing_required_parameter")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError(f"'{param}' must be an object.", param=param, code="invalid_type")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = {"id": _string(item, "call_id", param), "type": "function",
                    "function": {"name": _string(item, "name", param),
                                 "arguments": _string(item, "arguments", param)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", param),
                             "content": output if isinstance(output, str)
                             else _text_of(output, f"{param}.output")})
        else:
            raise _unsupported(f"{param}.type", f"Input items of type {kind!r} are not "
                               "supported (messages, function_call and function_call_output "
                               "are).")
    return messages


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ROLES:
        raise RequestError(f"'{param}.role' must be one of {', '.join(sorted(ROLES))}.",
                           param=f"{param}.role", code="invalid_value")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    return {"role": role, "content": _text_of(content, f"{param}.content")}


def _text_of(parts: Any, param: str) -> str:
    """Text content parts, joined; any other part (images, files, audio) is refused."""
    if not isinstance(parts, list):
        raise RequestError(f"'{param}' must be a string or an array of content parts.",
                           param=param, code="invalid_type")
    texts = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise _unsupported(f"{param}[{j}]", f"Content parts of type {kind!r} are not "
                               "supported: only text (input_text, output_text).")
        texts.append(part["text"])
    return "".join(texts)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise RequestError("'tools' must be an array.", param="tools", code="invalid_type")
    translated = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _unsupported(f"tools[{i}].type", f"Tools of type {kind!r} are not "
                               "supported: only 'function' tools.")
        function = {"name": _string(tool, "name", f"tools[{i}]")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        translated.append({"type": "function", "function": function})
    return translated


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": _string(choice, "name",
                                                                   "tool_choice")}}
    raise _unsupported("tool_choice", "'tool_choice' must be 'auto', 'none', 'required' or "
                       "a function.")


def _text_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict) or set(text) - {"format"}:
        raise _unsupported("text", "Only 'text.format' is supported.")
    fmt = text.get("format") or {"type": "text"}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        schema = {key: fmt[key] for key in ("name", "schema", "strict", "description")
                  if fmt.get(key) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise _unsupported("text.format.type", f"Text format {kind!r} is not supported.")


def _reasoning_effort(reasoning: Any) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise RequestError("'reasoning' must be an object.", param="reasoning",
                           code="invalid_type")
    for key, value in reasoning.items():
        if key != "effort" and value is not None:
            raise _unsupported(f"reasoning.{key}", f"'reasoning.{key}' is not supported.")
    effort = reasoning.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise RequestError("'reasoning.effort' must be a string.", param="reasoning.effort",
                           code="invalid_type")
    return effort


def _boolean(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be a boolean.", param=key, code="invalid_type")
    return value


def _number(body: dict[str, Any], key: str, high: float) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= high:
        raise RequestError(f"'{key}' must be a number from 0 to {high}.", param=key,
                           code="invalid_value")
    return value


def _string(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise RequestError(f"'{param}.{key}' must be a string.", param=f"{param}.{key}",
                           code="invalid_type")
    return value


def _unsupported(param: str, message: str) -> RequestError:
    return RequestError(message, param=param, code="unsupported_parameter")
