"""End-to-end: one access-log line per stream, however it ends, and the GenAI metrics beside it."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

import httpx
import pytest

from server.config import LoggingSettings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import RunningSluice, chat_body, running_sluice, settings_for
from tests.sse_client import receive_stream

URL = "/v1/chat/completions"
SECRET_KEY = "sk-do-not-log-me-0123456789"
SECRET_PROMPT = "my bank password is hunter2"
GENAI = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai",
         "gen_ai_request_model": "other", "backend": "fake"}  # "*" backends: model "other"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sluice.access"]


def body(stream: bool = True, **extra: Any) -> dict[str, Any]:
    return chat_body(stream, messages=[{"role": "user", "content": SECRET_PROMPT}], **extra)


async def test_a_completed_stream_is_one_line_with_usage_and_no_secrets(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.access")
    async with client.stream("POST", sluice.base_url + URL,
                             json=body(stream_options={"include_usage": True}),
                             headers={"X-Request-ID": "req-one",
                                      "Authorization": f"Bearer {SECRET_KEY}"}) as response:
        await receive_stream(response)
    await sluice.settle()
    (line,) = access_lines(caplog)
    text = line.getMessage()
    assert text.startswith("stream request_id=req-one key=- model=fake-model backend=fake "
                           "attempts=1 outcome=completed error_id=- error=- status=200 "
                           "stream=true ttfb_ms=")
    # 5 content chunks, the finish chunk and the usage chunk (the role preamble is not counted)
    assert text.endswith("chunks=7 prompt_tokens=5 completion_tokens=5")
    for secret in (SECRET_KEY, SECRET_PROMPT, "hunter2", upstream.base_url,
                   upstream.origin.split("//")[1]):
        assert secret not in text
    # The GenAI-convention metrics of the same stream.
    assert sluice.sample("gen_ai_server_time_to_first_token_seconds_count", **GENAI) == 1
    assert sluice.sample("gen_ai_server_time_per_output_token_seconds_count", **GENAI) == 1
    assert sluice.sample("gen_ai_client_token_usage_sum", **GENAI,
                         gen_ai_token_type="output") == 5
    assert sluice.sample("gen_ai_client_token_usage_sum", **GENAI,
                         gen_ai_token_type="input") == 5
    assert sluice.sample("gen_ai_server_request_duration_seconds_count", **GENAI,
                         error_type="") == 1


async def test_a_stream_without_usage_logs_no_tokens_and_no_per_token_metric(
    sluice: RunningSluice, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.access")
    async with client.stream("POST", sluice.base_url + URL, json=body()) as response:
        await receive_stream(response)
    await sluice.settle()
    (line,) = access_lines(caplog)
    assert line.getMessage().endswith("prompt_tokens=- completion_tokens=-")
    assert sluice.sample("gen_ai_server_time_to_first_token_seconds_count", **GENAI) == 1
    assert sluice.sample("gen_ai_server_time_per_output_token_seconds_count", **GENAI) == 0


async def test_a_non_streaming_request_logs_the_usage_of_its_reply(
    sluice: RunningSluice, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.access")
    reply = await client.post(sluice.base_url + URL, json=body(stream=False))
    await sluice.settle()
    (line,) = access_lines(caplog)
    assert "stream=false" in line.getMessage()
    assert line.getMessage().endswith(
        f"prompt_tokens={reply.json()['usage']['prompt_tokens']} completion_tokens=5")


async def test_a_failure_before_the_first_byte_logs_its_status_and_error_id(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluice")
    upstream.scenario = Scenario(status=500)
    reply = await client.post(sluice.base_url + URL, json=body())
    assert reply.status_code == 502
    error_id = reply.json()["error"]["error_id"]
    await sluice.settle()
    (line,) = access_lines(caplog)
    fields = dict(pair.split("=", 1) for pair in line.getMessage().split()[1:])
    assert fields["outcome"] == "upstream_error"
    assert (fields["status"], fields["error_id"], fields["backend"]) == ("502", error_id, "-")
    assert fields["attempts"] == str(len(upstream.requests))
    # The detail is in the warning that shares the error id, not in the access line.
    assert any(error_id in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records if r.name == "sluice.stream")
    assert sluice.sample("gen_ai_server_request_duration_seconds_count",
                         gen_ai_operation_name="chat", gen_ai_provider_name="none",
                         gen_ai_request_model="other", backend="none",
                         error_type="upstream_error") == 1
    assert sluice.sample("gen_ai_server_time_to_first_token_seconds_count", **GENAI) == 0


async def test_a_client_that_leaves_is_logged_with_the_status_it_got(
    sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.access")
    upstream.scenario = Scenario(tokens=1000, tps=50)
    async with client.stream("POST", sluice.base_url + URL, json=body()) as response:
        await receive_stream(response, stop_after=2)
    await sluice.settle()
    (line,) = access_lines(caplog)
    assert " outcome=client_disconnect " in line.getMessage()
    assert " status=200 " in line.getMessage()


async def test_json_format_and_switching_the_log_off(
    upstream: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.access")
    settings = settings_for(upstream.base_url)
    async with running_sluice(replace(settings, logging=LoggingSettings("json"))) as sluice:
        async with client.stream("POST", sluice.base_url + URL, json=body(),
                                 headers={"X-Request-ID": "req-json"}) as response:
            await receive_stream(response)
        await sluice.settle()
    (line,) = access_lines(caplog)
    fields = json.loads(line.getMessage())
    assert fields["event"] == "stream"
    assert (fields["request_id"], fields["outcome"], fields["status"]) == (
        "req-json", "completed", 200)
    assert fields["key"] is None
    async with running_sluice(replace(settings, logging=LoggingSettings(access_log=False))) \
            as sluice:
        await client.post(sluice.base_url + URL, json=body(stream=False))
        await sluice.settle()
    assert len(access_lines(caplog)) == 1
