"""server/backends/upstream_errors.py: an upstream's refusal, as the client will see it."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.backends.upstream_errors import MAX_ERROR_BODY, parse_retry_after, redact, status_error
from server.errors import UpstreamStatusError, error_headers, openai_error_body

BASE_URL = "http://10.1.2.3:8000/v1"
API_KEY = "sk-upstream-secret-0123456789"
SECRETS = (BASE_URL, API_KEY)
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def error_body(**error: Any) -> bytes:
    return orjson.dumps({"error": error})


def relay(status: int, body: bytes, retry_after: str | None = None) -> UpstreamStatusError:
    return status_error(status, body, retry_after, secrets=SECRETS)


# ------------------------------------------------------------ Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("5", 5.0),
        ("120", 120.0),
        ("1.5", 1.5),
        ("0.25", 0.25),
        (" 7 ", 7.0),
        ("-3", 0.0),  # negative: retry now
        ("-0.5", 0.0),
    ],
)
def test_retry_after_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Sat, 01 Mar 2025 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Saturday, 01-Mar-25 12:02:00 GMT", 120.0),  # obsolete RFC 850 form
        ("Sat, 01 Mar 2025 11:59:00 GMT", 0.0),  # in the past: retry now
        ("Sat, 01 Mar 2025 12:00:00 GMT", 0.0),
        ("Sat, 01 Mar 2025 13:00:00 +0100", 0.0),  # a numeric zone is honoured
    ],
)
def test_retry_after_http_date(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_retry_after_http_date_defaults_to_the_clock() -> None:
    soon = format_datetime(datetime.fromtimestamp(time.time() + 3600, UTC), usegmt=True)
    seconds = parse_retry_after(soon)
    assert seconds is not None
    assert 3500 < seconds <= 3600


@pytest.mark.parametrize(
    "value",
    [None, "", "soon", "5s", "1,5", "nan", "NaN", "inf", "1e999", "Sat, 99 Foo 2025",
     "Sat, 01 Mar 99999 12:00:00 GMT"],
)
def test_retry_after_unreadable(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None


@given(st.text(max_size=40))
def test_retry_after_never_raises_and_is_never_negative(value: str) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_retry_after_seconds_round_trip(seconds: float) -> None:
    assert parse_retry_after(repr(seconds)) == seconds


@pytest.fixture
def non_utc_local_time() -> Iterator[None]:
    """Run with a local time zone five hours behind UTC (POSIX TZ; no tzdata needed)."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = "EST5"
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


@pytest.mark.usefixtures("non_utc_local_time")
def test_retry_after_gmt_date_does_not_depend_on_the_local_zone() -> None:
    assert time.timezone == 5 * 3600  # the fixture took effect
    assert parse_retry_after("Sat, 01 Mar 2025 12:00:30 GMT", now=NOW) == 30.0


@pytest.mark.usefixtures("non_utc_local_time")
@pytest.mark.parametrize("value", ["Sat Mar  1 12:00:30 2025", "Sat, 01 Mar 2025 12:00:30 -0000"])
def test_retry_after_zoneless_http_date_is_gmt(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == 30.0


# -------------------------------------------------------- relayed statuses


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 429])
def test_client_statuses_are_relayed_faithfully(status: int) -> None:
    error = relay(status, error_body(message="This model's maximum context length is 8192.",
                                     type="invalid_request_error",
                                     code="context_length_exceeded", param="messages"))
    assert isinstance(error, UpstreamStatusError)
    assert error.status == status
    assert error.upstream_status == status
    assert error.public_message == "This model's maximum context length is 8192."
    assert (error.type, error.code, error.param) == (
        "invalid_request_error", "context_length_exceeded", "messages")
    body = orjson.loads(openai_error_body(error))["error"]
    assert body["message"] == "This model's maximum context length is 8192."
    assert body["code"] == "context_length_exceeded"
    assert body["param"] == "messages"


@pytest.mark.parametrize(
    ("status", "default_type"),
    [(400, "invalid_request_error"), (404, "invalid_request_error"),
     (401, "invalid_request_error"), (429, "rate_limit_error")],
)
def test_a_missing_type_gets_a_sensible_default(status: int, default_type: str) -> None:
    error = relay(status, error_body(message="nope"))
    assert error.type == default_type
    assert error.code is None
    assert error.param is None


def test_429_keeps_its_retry_after_and_stays_retryable() -> None:
    error = relay(429, error_body(message="Rate limit reached", type="requests",
                                  code="rate_limit_exceeded"), retry_after="2")
    assert error.status == 429
    assert error.retry_after == 2.0
    assert error.retryable
    assert (b"retry-after", b"2") in error_headers(error)


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_other_relayed_statuses_are_not_retried_elsewhere(status: int) -> None:
    assert not relay(status, error_body(message="bad")).retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529, 402, 405, 408, 418, 300, 302])
def test_other_statuses_become_a_generic_502(status: int) -> None:
    error = relay(status, error_body(message="CUDA out of memory at /srv/model.py:42",
                                     type="InternalServerError", code="oom", param="x"))
    assert error.status == 502
    assert error.upstream_status == status
    assert error.public_message == "The upstream model server failed."
    assert (error.type, error.code, error.param) == ("upstream_error", None, None)
    assert error.retryable
    assert b"CUDA" not in openai_error_body(error)
    assert "CUDA" in error.detail  # kept for the log, beside the error id
    assert str(status) in error.detail


def test_a_503_retry_after_is_kept() -> None:
    error = relay(503, b"overloaded", retry_after="30")
    assert error.status == 502
    assert error.retry_after == 30.0


def test_garbage_retry_after_is_dropped() -> None:
    error = relay(429, error_body(message="slow down"), retry_after="later")
    assert error.retry_after is None
    assert all(name != b"retry-after" for name, _ in error_headers(error))


# ------------------------------------------------------------- body shapes


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"Bad Request", "The upstream model server answered HTTP 400."),
        (b"<html><body>400 Bad Request</body></html>",
         "The upstream model server answered HTTP 400."),
        (b"", "The upstream model server answered HTTP 400."),
        (b"\xff\xfe", "The upstream model server answered HTTP 400."),
        (b"[1, 2]", "The upstream model server answered HTTP 400."),
        (b'"just a string"', "The upstream model server answered HTTP 400."),
        (b"null", "The upstream model server answered HTTP 400."),
        # FastAPI-style.
        (b'{"detail": "Model not loaded"}', "Model not loaded"),
        # FastAPI validation errors: a list, not a message.
        (b'{"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}',
         "The upstream model server answered HTTP 400."),
        # "error" as a plain string (llama.cpp, some proxies).
        (b'{"error": "context too long"}', "context too long"),
        # vLLM: the error object's fields at the top level.
        (b'{"object": "error", "message": "max_tokens too large", "type": "BadRequestError",'
         b' "param": null, "code": 400}', "max_tokens too large"),
        (b'{"error": {"message": "m"}, "detail": "d"}', "m"),
        (b'{"error": {"type": "x"}, "detail": "from detail"}', "from detail"),
        (b'{"error": null, "detail": "from detail"}', "from detail"),
        (b'{"error": {"message": ""}}', "The upstream model server answered HTTP 400."),
        (b'{"error": {"message": 7}}', "The upstream model server answered HTTP 400."),
        (b'{"error": {"message": {"text": "nested"}}}',
         "The upstream model server answered HTTP 400."),
        (b'{"error": 5}', "The upstream model server answered HTTP 400."),
    ],
)
def test_body_shapes(body: bytes, message: str) -> None:
    error = relay(400, body)
    assert error.status == 400
    assert error.public_message == message


def test_vllm_style_fields_are_read_and_stringified() -> None:
    error = relay(400, b'{"object": "error", "message": "bad", "type": "BadRequestError",'
                       b' "param": null, "code": 400}')
    assert (error.type, error.code, error.param) == ("BadRequestError", "400", None)


def test_an_oversized_body_is_cut_before_parsing() -> None:
    body = error_body(message="x" * (MAX_ERROR_BODY + 10))
    error = relay(400, body)
    assert error.public_message == "The upstream model server answered HTTP 400."
    assert len(error.detail) < 1000


# --------------------------------------------------------------- redaction


def test_redaction_of_url_and_key_in_every_relayed_field() -> None:
    error = relay(401, error_body(
        message=f"Incorrect API key {API_KEY} for {BASE_URL}/chat/completions",
        type=f"auth ({BASE_URL})", code=f"bad_key:{API_KEY}", param=f"{BASE_URL}"))
    assert error.public_message == "Incorrect API key [redacted] for [redacted]/chat/completions"
    assert (error.type, error.code, error.param) == (
        "auth ([redacted])", "bad_key:[redacted]", "[redacted]")
    wire = openai_error_body(error)
    assert API_KEY.encode() not in wire
    assert BASE_URL.encode() not in wire


def test_redaction_of_detail_and_string_error_messages() -> None:
    for body in (orjson.dumps({"detail": f"cannot reach {BASE_URL}"}),
                 orjson.dumps({"error": f"key {API_KEY} revoked"})):
        wire = openai_error_body(relay(403, body))
        assert b"[redacted]" in wire
        assert API_KEY.encode() not in wire
        assert BASE_URL.encode() not in wire


def test_redaction_of_a_json_escaped_url() -> None:
    # "http:\/\/..." in JSON is the same URL once parsed.
    body = b'{"error": {"message": "see http:\\/\\/10.1.2.3:8000\\/v1\\/models"}}'
    assert relay(404, body).public_message == "see [redacted]/models"


def test_redact_ignores_empty_secrets() -> None:
    assert redact("plain text", ("", API_KEY)) == "plain text"
    assert redact(f"a {API_KEY} b {API_KEY}", ("", API_KEY)) == "a [redacted] b [redacted]"
    assert redact("unchanged", ()) == "unchanged"


def test_the_upstream_origin_is_redacted_under_any_path() -> None:
    error = relay(404, error_body(message="No route http://10.1.2.3:8000/v2/chat/completions"))
    assert "10.1.2.3" not in error.public_message
