"""server/backends/openai.py: what goes upstream to an OpenAI-compatible server."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from server.api.chat_completions import parse_chat_request
from server.backends.openai import upstream_body
from server.stream.continuation import continued
from server.stream.progress import StreamProgress

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "llama", "messages": MESSAGES, **fields})


def test_a_streaming_request_goes_upstream_unchanged() -> None:
    raw = body(stream=True, tools=[{"type": "function", "function": {"name": "f"}}], seed=3)
    request = parse_chat_request(raw)
    assert upstream_body(request) == orjson.loads(raw)


def test_a_streaming_request_keeps_the_clients_usage_choice() -> None:
    request = parse_chat_request(body(stream=True, stream_options={"include_usage": False}))
    assert upstream_body(request)["stream_options"] == {"include_usage": False}
    assert "stream_options" not in upstream_body(parse_chat_request(body(stream=True)))


@pytest.mark.parametrize("stream", [True, False])
def test_no_stream_options_go_to_a_backend_that_rejects_them(stream: bool) -> None:
    raw = body(stream=stream, stream_options={"include_usage": True}, seed=3)
    sent = upstream_body(parse_chat_request(raw), stream_options=False)
    assert "stream_options" not in sent and sent["stream"] is True
    assert sent["seed"] == 3  # the rest travels untouched


@pytest.mark.parametrize(
    "fields",
    [{}, {"stream": False}, {"stream": None},
     {"stream_options": {"include_usage": False}}],
)
def test_a_non_streaming_request_is_streamed_upstream_with_usage(fields: dict[str, Any]) -> None:
    extra = {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {
                 "type": "object", "properties": {"q": {"type": "string"}}}}}],
             "tool_choice": "auto", "response_format": {"type": "json_object"}, "seed": 42,
             "max_tokens": 50, "logprobs": True, "top_logprobs": 2, "n": 2}
    raw = body(**fields, **extra)
    request = parse_chat_request(raw)
    sent = upstream_body(request)
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    # Everything else travels untouched.
    client = orjson.loads(raw)
    assert {k: v for k, v in sent.items() if k not in ("stream", "stream_options")} == \
        {k: v for k, v in client.items() if k not in ("stream", "stream_options")}
    # And the client's own request is not changed by it.
    assert request.body == client
    assert request.stream is False


def test_the_upstream_model_name_replaces_the_clients() -> None:
    request = parse_chat_request(body(stream=True))
    assert upstream_body(request, "served-name")["model"] == "served-name"
    assert upstream_body(request, None)["model"] == "llama"


def test_a_continuation_asks_vllm_to_continue_the_final_message() -> None:
    request = parse_chat_request(body(stream=True, seed=3))
    assert "continue_final_message" not in upstream_body(request)
    progress = StreamProgress(text=["Once ", "upon"])
    sent = upstream_body(continued(request, progress))
    assert sent["messages"] == [*MESSAGES, {"role": "assistant", "content": "Once upon"}]
    assert sent["continue_final_message"] is True
    assert sent["add_generation_prompt"] is False
    assert sent["seed"] == 3
