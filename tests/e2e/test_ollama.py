"""End-to-end: Sluice with a kind ``ollama`` backend, against the fake upstream's Ollama mode.

Real sockets both sides: clients (httpx, the openai SDK) speak OpenAI to
Sluice; Sluice speaks NDJSON ``/api/chat`` to the fake at its root URL.
What every backend kind does alike (disconnects, timeouts, refused
connections, non-streaming aggregation and its cut) is proven for both kinds in
`tests/e2e/test_relay.py`; this module holds what is Ollama's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import trio

from server.config import Settings, parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import RunningSluice, chat_body, running_sluice
from tests.sse_client import receive_stream

URL = "/v1/chat/completions"
TOOLS: list[Any] = [{"type": "function", "function": {"name": "get_weather",
                                                      "parameters": {"type": "object"}}}]


def ollama_settings(upstream: FakeUpstream, **timeouts: float) -> Settings:
    return parse_settings({
        "backends": [{"name": "ollama", "kind": "ollama", "base_url": upstream.origin,
                      "models": ["*"]}],
        "timeouts": timeouts,
    })


@pytest.fixture
async def sluice(upstream: FakeUpstream) -> AsyncIterator[RunningSluice]:
    async with running_sluice(ollama_settings(upstream)) as running:
        yield running


def sdk(sluice: RunningSluice) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sluice.base_url + "/v1", api_key="unused",
                              max_retries=0)


def sent(upstream: FakeUpstream, index: int = 0) -> dict[str, Any]:
    """The /api/chat body Sluice sent the fake."""
    request = upstream.requests[index]
    assert (request.method, request.path) == ("POST", "/api/chat")
    assert request.json is not None
    return request.json


async def test_streamed_text(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    async with client.stream("POST", sluice.base_url + URL,
                             json=chat_body(temperature=0.3, seed=7)) as response:
        got = await receive_stream(response)
    assert got.status == 200
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.content == "t0 t1 t2 t3 t4 "
    assert got.done and not got.errors
    assert got.chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["finish_reason"] for c in got.chunks][-1] == "stop"
    assert {c["model"] for c in got.chunks} == {"fake-model"}
    assert all("usage" not in c for c in got.chunks)  # not asked for
    assert sent(upstream) == {"model": "fake-model", "messages": [{"role": "user",
                                                                   "content": "hello"}],
                              "stream": True, "options": {"temperature": 0.3, "seed": 7}}
    assert upstream.requests[0].headers["accept"] == "application/x-ndjson"
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="completed") == 1


async def test_openai_sdk_streams_with_include_usage(
    sluice: RunningSluice, upstream: FakeUpstream
) -> None:
    async with sdk(sluice) as client:
        stream = await client.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "two words"}], stream=True,
            stream_options={"include_usage": True})
        text, finish, usage = [], [], []
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish.append(chunk.choices[0].finish_reason)
            if chunk.usage is not None:
                usage.append(chunk.usage)
    assert "".join(text) == "t0 t1 t2 t3 t4 "
    assert finish[-1] == "stop"
    assert len(usage) == 1
    assert (usage[0].prompt_tokens, usage[0].completion_tokens, usage[0].total_tokens) == \
        (2, 5, 7)
    assert "stream_options" not in sent(upstream)


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
async def test_token_limit_is_num_predict_and_finishes_with_length(
    sluice: RunningSluice, upstream: FakeUpstream, limit: str
) -> None:
    async with sdk(sluice) as client:
        if limit == "max_tokens":
            completion = await client.chat.completions.create(
                model="llama3.2", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        else:
            completion = await client.chat.completions.create(
                model="llama3.2", messages=[{"role": "user", "content": "hi"}],
                max_completion_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "t0 t1 "
    assert completion.usage is not None and completion.usage.completion_tokens == 2
    assert sent(upstream)["options"] == {"num_predict": 2}


async def test_tool_calls_and_thinking_through_the_sdk(
    sluice: RunningSluice, upstream: FakeUpstream
) -> None:
    upstream.scenario = Scenario(tokens=0)
    async with sdk(sluice) as client:
        completion = await client.chat.completions.create(
            model="qwen3", messages=[{"role": "user", "content": "weather?"}],
            tools=TOOLS, reasoning_effort="high")
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"fake":true}'
    assert call.id.startswith("call_")
    assert (choice.message.model_extra or {}).get("reasoning_content") == "r0 r1 "
    body = sent(upstream)
    assert (body["tools"], body["think"]) == (TOOLS, "high")


async def test_upstream_404_model_not_found_is_404(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.scenario = Scenario(status=404)
    response = await client.post(sluice.base_url + URL, json=chat_body(model="nope"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"] == "model 'nope' not found"
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert upstream.origin not in response.text and "127.0.0.1" not in response.text
    async with sdk(sluice) as client_sdk:
        with pytest.raises(openai.NotFoundError) as caught:
            await client_sdk.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}], stream=True)
    assert caught.value.code == "model_not_found"


async def test_upstream_400_message_is_relayed(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    upstream.scenario = Scenario(status=400,
                                 error_message="registry.ollama.ai/library/gemma does not "
                                               "support tools")
    response = await client.post(sluice.base_url + URL, json=chat_body(tools=TOOLS))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == upstream.scenario.error_message
    assert error["code"] is None  # only a 404 names a missing model
    assert len(upstream.requests) == 1  # a client error is never retried


async def test_an_unmappable_request_is_400_before_connecting(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    image = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/cat.png"}}
    body = chat_body(messages=[{"role": "user", "content": [image]}])
    response = await client.post(sluice.base_url + URL, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[0].image_url.url"
    assert upstream.requests == [] and upstream.connections == []


@pytest.mark.parametrize(
    ("scenario", "content", "code"),
    [
        (Scenario(tokens=10, cut_after=3), "t0 t1 t2 ", "stream_truncated"),
        (Scenario(tokens=4, omit_finish=True), "t0 t1 t2 t3 ", "stream_truncated"),
        (Scenario(tokens=10, error_event_after=3), "t0 t1 t2 ", None),
        (Scenario(tokens=10, malformed_after=3), "t0 t1 t2 ", None),
    ],
)
async def test_failures_mid_stream_are_in_band_without_done(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    scenario: Scenario, content: str, code: str | None,
) -> None:
    """A cut body, a body without its ``done`` line, an error line, a malformed line."""
    upstream.scenario = scenario
    async with client.stream("POST", sluice.base_url + URL, json=chat_body()) as response:
        got = await receive_stream(response)
    assert got.status == 200
    assert got.content == content
    assert not got.done and b"[DONE]" not in got.raw
    assert len(got.errors) == 1 and got.chunks[-1] == {"error": got.errors[0]}
    assert got.errors[0]["error_id"].startswith("err_")
    assert got.errors[0]["type"] == "upstream_error"
    if code is not None:
        assert got.errors[0]["code"] == code
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="upstream_error") == 1


async def test_a_cut_is_continued_by_an_ollama_prefill_backend(
    nursery: trio.Nursery, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """Ollama continues a final assistant message: fail-over mid-stream reads as one answer."""
    upstream.scenario = Scenario(tokens=10, cut_after=4)
    fallback = FakeUpstream(Scenario(tokens=10))
    await nursery.start(fallback.serve, 0)
    settings = parse_settings({"backends": [
        {"name": "primary", "kind": "ollama", "base_url": upstream.origin, "models": ["*"]},
        {"name": "fallback", "kind": "ollama", "base_url": fallback.origin, "models": ["*"],
         "priority": 1, "continuation": "prefill"},
    ]})
    async with running_sluice(settings) as sluice, client.stream(
        "POST", sluice.base_url + URL, json=chat_body(stream_options={"include_usage": True})
    ) as response:
        got = await receive_stream(response)
    assert got.content == "".join(f"t{i} " for i in range(10))
    assert got.done and not got.errors
    usage = [c["usage"] for c in got.chunks if c.get("usage")]
    assert len(usage) == 1 and usage[0]["completion_tokens"] == 10
    continued = sent(fallback)
    assert continued["messages"][-1] == {"role": "assistant", "content": "t0 t1 t2 t3 "}
    assert "continue_final_message" not in continued  # vLLM's flag; Ollama needs none
