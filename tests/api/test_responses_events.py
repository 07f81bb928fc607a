"""Chat chunks → Responses events: order, numbering, and shapes the openai SDK's models accept.

Every event is validated with the SDK's own pydantic model for its type —
stricter than the SDK itself, which parses leniently.
"""

from __future__ import annotations

import typing
from typing import Any

import orjson
from openai.types.responses import Response, ResponseOutputMessage, ResponseStreamEvent
from pydantic import BaseModel

from server.api.responses_events import ResponseMeta, ResponseTranscript
from server.errors import StreamCut, UpstreamStatusError

_UNION = typing.get_args(ResponseStreamEvent)[0]
EVENT_MODELS: dict[str, type[BaseModel]] = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: cls for cls in typing.get_args(_UNION)
}


def _transcript(**echo: Any) -> ResponseTranscript:
    return ResponseTranscript(ResponseMeta("resp_0123", "model-x", 1_700_000_000, echo))


def _text(content: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}


def _finish(reason: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


def _decode(frames: list[bytes]) -> list[dict[str, Any]]:
    """Each frame is ``event: <type>`` and one ``data:`` line; check both, validate the data."""
    events = []
    for framed in frames:
        head, data = framed.split(b"\n", 1)
        assert data.startswith(b"data: ") and data.endswith(b"\n\n")
        event = orjson.loads(data[6:])
        assert head == b"event: " + event["type"].encode()
        EVENT_MODELS[event["type"]].model_validate(event)
        events.append(event)
    return events


def test_a_text_answer_in_order_numbered_from_zero() -> None:
    transcript = _transcript(instructions="Be brief.", max_output_tokens=50)
    frames = [*transcript.add({"choices": [{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""}}]})]
    assert frames == []  # a role chunk shows nothing: it is not the commit point
    frames += transcript.add(_text("Hel")) + transcript.add(_text("lo"))
    frames += transcript.add(_finish("stop"))
    frames += transcript.add({"choices": [], "usage": {
        "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 1}}})
    frames += transcript.closing(None, 1_700_000_009)
    events = _decode(frames)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(10))
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert events[6]["text"] == "Hello"
    done = Response.model_validate(events[-1]["response"])
    assert done.status == "completed" and done.output_text == "Hello"
    assert done.instructions == "Be brief." and done.max_output_tokens == 50
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (5, 2)
    assert done.usage.input_tokens_details.cached_tokens == 1
    assert done.completed_at == 1_700_000_009
    assert transcript.response() == events[-1]["response"]


def test_tool_calls_become_function_call_items() -> None:
    transcript = _transcript()
    call = {"index": 0, "id": "call_9", "type": "function",
            "function": {"name": "add", "arguments": '{"a":'}}
    frames = transcript.add({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    frames += transcript.add({"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": " 2}"}}]}}]})
    frames += transcript.add(_finish("tool_calls")) + transcript.closing(None, 2)
    events = _decode(frames)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    item = events[-1]["response"]["output"][0]
    assert item == {"id": item["id"], "type": "function_call", "status": "completed",
                    "call_id": "call_9", "name": "add", "arguments": '{"a": 2}'}
    assert events[2]["item"]["id"] == events[3]["item_id"] == item["id"]


def test_a_failure_after_the_commit_point_is_response_failed() -> None:
    transcript = _transcript()
    frames = transcript.add(_text("par")) + transcript.closing(StreamCut("cut"), 3)
    events = _decode(frames)
    assert [e["type"] for e in events][-2:] == ["response.output_text.delta",
                                                "response.failed"]
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == "server_error"
    message = failed.output[0]
    assert isinstance(message, ResponseOutputMessage)
    assert message.status == "incomplete"  # no done events: the item was cut
    assert "error_id" in events[-1]["response"]["error"]


def test_error_codes_follow_the_status() -> None:
    limited = UpstreamStatusError(429, public_message="slow down", type_=None, code=None,
                                  param=None, retry_after=1, detail="")
    events = _decode(_transcript().closing(limited, 1))
    assert events[-1]["response"]["error"]["code"] == "rate_limit_exceeded"
    refused = UpstreamStatusError(400, public_message="too long", type_=None, code=None,
                                  param="input", retry_after=None, detail="")
    events = _decode(_transcript().closing(refused, 1))
    assert events[-1]["response"]["error"]["code"] == "invalid_prompt"
    assert events[-1]["response"]["error"]["param"] == "input"


def test_max_output_tokens_makes_an_incomplete_response() -> None:
    transcript = _transcript()
    frames = transcript.add(_text("a")) + transcript.add(_finish("length"))
    events = _decode(frames + transcript.closing(None, 4))
    assert events[-1]["type"] == "response.incomplete"
    incomplete = Response.model_validate(events[-1]["response"])
    assert incomplete.status == "incomplete"
    assert incomplete.incomplete_details is not None
    assert incomplete.incomplete_details.reason == "max_output_tokens"


def test_a_cancelled_response_ends_with_a_terminal_event() -> None:
    transcript = _transcript(background=True)
    frames = transcript.opening() + transcript.add(_text("a")) + transcript.cancelled()
    events = _decode(frames)
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["status"] == "cancelled"
    assert events[-1]["response"]["background"] is True
    assert transcript.opening() == []  # sent once only


def test_an_answer_without_content_still_opens_and_completes() -> None:
    events = _decode(_transcript().closing(None, 1))
    assert [e["type"] for e in events] == ["response.created", "response.in_progress",
                                           "response.completed"]
