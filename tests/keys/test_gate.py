"""The gate's pure parts: the request as metered, the estimate, refusals and their headers."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from server.api.chat_completions import parse_chat_request
from server.backends.openai import upstream_body
from server.keys.gate import duration, metered, period_end, prompt_token_estimate, refusal
from server.limits.store import Verdict, Window


def test_a_metered_request_asks_for_usage_and_names_the_served_model() -> None:
    chat = parse_chat_request(orjson.dumps({"model": "gpt-4o", "stream": True,
                                            "messages": [{"role": "user", "content": "hi"}]}))
    served = metered(chat, "llama3")
    assert served.model == "llama3" and served.include_usage
    assert upstream_body(served)["model"] == "llama3"
    assert upstream_body(served)["stream_options"] == {"include_usage": True}
    assert chat.body["model"] == "gpt-4o"  # the client's request is not changed
    buffered = metered(parse_chat_request(orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]})), "m")
    assert "stream_options" not in buffered.body  # a non-streaming request asks anyway


def test_the_prompt_estimate() -> None:
    assert prompt_token_estimate([{"role": "user", "content": "x" * 400}]) == 104
    assert prompt_token_estimate(None) == 1


def test_durations_as_openai_writes_them() -> None:
    assert [duration(s) for s in (0.12, 1, 6.2, 90, 7200)] == \
        ["120ms", "1s", "7s", "1m30s", "2h0m0s"]


def test_a_refusal_carries_retry_after_and_the_headers() -> None:
    verdict = Verdict(False, "requests", 1.5, requests=Window(60, 0, 59.0),
                      tokens=Window(1000, 800, 12.0))
    error = refusal(verdict, now=0.0)
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert error.retry_after == 1.5
    assert dict(error.headers) == {
        b"x-ratelimit-limit-requests": b"60", b"x-ratelimit-remaining-requests": b"0",
        b"x-ratelimit-reset-requests": b"59s", b"x-ratelimit-limit-tokens": b"1000",
        b"x-ratelimit-remaining-tokens": b"800", b"x-ratelimit-reset-tokens": b"12s"}


def test_a_spent_budget_waits_for_its_period_to_end() -> None:
    now = datetime(2026, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    assert period_end("daily_tokens", now) - now == 3600
    assert period_end("monthly_tokens", now) == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    error = refusal(Verdict(False, "monthly_spend"), now)
    assert error.type == "insufficient_quota" and error.retry_after == 3600
