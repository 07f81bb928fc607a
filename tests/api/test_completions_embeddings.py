"""``/v1/completions`` and ``/v1/embeddings`` requests; the completions chunk translation (pure)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from server.api.completions import (
    as_chat_chunk,
    as_completion_chunk,
    parse_completion_request,
    text_completion,
)
from server.api.embeddings import parse_embeddings_request
from server.backends.openai import upstream_body
from server.backends.simulated import SimulatedBackend
from server.chunks import inspect_chunk
from server.config import ConfigError, parse_settings
from server.errors import RequestError
from server.stream import continuation
from server.stream.aggregate import CompletionBuilder
from server.stream.progress import StreamProgress


def _completion(**body: Any) -> Any:
    return parse_completion_request(orjson.dumps({"model": "m", **body}))


def test_a_completion_request_rides_as_a_chat_request() -> None:
    request = _completion(prompt=["Once"], stream=True, max_tokens=9, suffix="!",
                          stream_options={"include_usage": True})
    assert (request.model, request.stream, request.max_tokens) == ("m", True, 9)
    assert request.include_usage
    assert upstream_body(request, "upstream-m") == {
        "model": "upstream-m", "prompt": "Once", "stream": True, "max_tokens": 9,
        "suffix": "!", "stream_options": {"include_usage": True}}
    continued = continuation.continued(request, StreamProgress(text=[" upon", " a"]))
    assert continued.body["prompt"] == "Once upon a"  # the text so far ends the prompt
    assert type(continued) is type(request)


@pytest.mark.parametrize(("body", "param"), [
    ({}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 2]}, "prompt"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "model": ""}, "model"),
])
def test_bad_completion_requests_name_their_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        _completion(**body)
    assert caught.value.param == param


def test_completion_chunks_go_through_the_relay_and_come_back() -> None:
    upstream = orjson.dumps({"id": "cmpl-1", "object": "text_completion", "created": 5,
                             "model": "m", "choices": [{"index": 0, "text": "Hi",
                                                        "logprobs": None,
                                                        "finish_reason": None}]})
    relayed = as_chat_chunk(upstream)
    facts, chunk = inspect_chunk(relayed)
    assert facts.content and not facts.finished  # the relay sees content: the commit point
    assert chunk["choices"][0]["delta"] == {"content": "Hi"}
    assert orjson.loads(as_completion_chunk(relayed)) == orjson.loads(upstream)
    finish = as_chat_chunk(orjson.dumps({"choices": [{"index": 0, "text": "",
                                                      "finish_reason": "length"}]}))
    assert inspect_chunk(finish)[0].finished
    for untouched in (b"[DONE]", b"{not json", b'{"error": {"message": "x"}}'):
        assert as_chat_chunk(untouched) == untouched


def test_a_non_streamed_completion_is_one_text_completion() -> None:
    builder = CompletionBuilder()
    for text, finish in (("Hel", None), ("lo", None), ("", "stop")):
        builder.add(inspect_chunk(as_chat_chunk(orjson.dumps({
            "id": "cmpl-1", "created": 5, "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": finish}]})))[1])
    builder.add({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                          "total_tokens": 3}})
    assert text_completion(builder.result()) == {
        "id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
        "choices": [{"index": 0, "text": "Hello", "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}


@pytest.mark.parametrize("value", ["x", ["a", "b"], [1, 2], [[1], [2, 3]]])
def test_embeddings_inputs(value: Any) -> None:
    assert parse_embeddings_request(orjson.dumps({"model": "m", "input": value}))["input"] \
        == value


@pytest.mark.parametrize("value", [None, "", [], [""], ["a", 1], [[]], [True], 3, {"a": 1}])
def test_bad_embeddings_inputs(value: Any) -> None:
    body = {"model": "m"} if value is None else {"model": "m", "input": value}
    with pytest.raises(RequestError) as caught:
        parse_embeddings_request(orjson.dumps(body))
    assert caught.value.param == "input"


async def test_the_simulated_model_embeds_deterministically() -> None:
    backend = SimulatedBackend(parse_settings({"backends": [
        {"name": "sim", "kind": "simulated", "models": ["s"]}]}).backends[0])
    first = orjson.loads(await backend.embed({"model": "s", "input": ["a", "b"]}))
    again = orjson.loads(await backend.embed({"model": "s", "input": "a", "dimensions": 16}))
    assert first["data"][0]["embedding"] == again["data"][0]["embedding"]
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]
    assert sum(x * x for x in first["data"][1]["embedding"]) == pytest.approx(1.0)
    packed = orjson.loads(await backend.embed({"model": "s", "input": "a", "dimensions": 4,
                                               "encoding_format": "base64"}))
    vector = struct.unpack("<4f", base64.b64decode(packed["data"][0]["embedding"]))
    assert len(vector) == 4 and sum(x * x for x in vector) == pytest.approx(1.0, abs=1e-6)


def test_which_backends_declare_the_endpoints() -> None:
    settings = parse_settings({"backends": [
        {"name": "sim", "kind": "simulated", "models": ["s"]},
        {"name": "vllm", "kind": "openai", "base_url": "http://h/v1", "models": ["m"]},
        {"name": "emb", "kind": "openai", "base_url": "http://h/v1", "models": ["e"],
         "embeddings": True, "completions": True},
    ]})
    assert [(b.embeddings, b.completions) for b in settings.backends] == [
        (True, True), (False, False), (True, True)]
    with pytest.raises(ConfigError, match="embeddings and completions"):
        parse_settings({"backends": [{"name": "o", "kind": "ollama", "models": ["m"],
                                      "base_url": "http://h:11434", "embeddings": True}]})
