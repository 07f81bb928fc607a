"""server/errors.py: the one error hierarchy, its OpenAI JSON and its headers."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.errors import (
    BodyTooLarge,
    ModelNotFound,
    NoBackendAvailable,
    RequestError,
    SluiceError,
    StreamCut,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_headers,
    error_object,
    http_error,
    new_error_id,
    openai_error_body,
)


def status_error(status: int, **overrides: Any) -> UpstreamStatusError:
    fields: dict[str, Any] = {"public_message": "upstream said no", "type_": None,
                              "code": None, "param": None, "retry_after": None,
                              "detail": "raw upstream body"}
    return UpstreamStatusError(status, **{**fields, **overrides})


@pytest.mark.parametrize(
    ("error", "status", "type_", "code", "param", "retryable"),
    [
        (SluiceError("boom"), 500, "server_error", None, None, False),
        (RequestError("bad"), 400, "invalid_request_error", None, None, False),
        (RequestError("bad", param="temperature", code="invalid_value"),
         400, "invalid_request_error", "invalid_value", "temperature", False),
        (BodyTooLarge("too big"), 413, "invalid_request_error", "request_too_large", None,
         False),
        (ModelNotFound("gpt-9"), 404, "invalid_request_error", "model_not_found", "model",
         False),
        (UpstreamError("x"), 502, "upstream_error", None, None, True),
        (UpstreamUnavailable("refused"), 502, "upstream_error", None, None, True),
        (UpstreamTimeout("first_chunk", 60), 504, "timeout_error", "first_chunk_timeout", None,
         True),
        (UpstreamTimeout("connect", 5), 504, "timeout_error", "connect_timeout", None, True),
        (UpstreamTimeout("idle", 1.5), 504, "timeout_error", "idle_timeout", None, True),
        (StreamCut("cut"), 502, "upstream_error", "stream_truncated", None, True),
        (NoBackendAvailable("busy"), 503, "service_unavailable", "no_backend_available", None,
         True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, SluiceError) else None,
)
def test_status_type_code_per_class(
    error: SluiceError, status: int, type_: str, code: str | None, param: str | None,
    retryable: bool,
) -> None:
    assert (error.status, error.type, error.code, error.param, error.retryable) == (
        status, type_, code, param, retryable)
    assert error.retry_after is None


def test_the_hierarchy() -> None:
    request_errors: list[type[SluiceError]] = [BodyTooLarge, ModelNotFound]
    upstream_errors: list[type[SluiceError]] = [
        UpstreamStatusError, UpstreamUnavailable, UpstreamTimeout, StreamCut]
    roots: list[type[SluiceError]] = [RequestError, UpstreamError, NoBackendAvailable]
    assert all(issubclass(cls, RequestError) for cls in request_errors)
    assert all(issubclass(cls, UpstreamError) for cls in upstream_errors)
    assert all(issubclass(cls, SluiceError) for cls in roots)
    assert not issubclass(NoBackendAvailable, UpstreamError)
    assert issubclass(SluiceError, Exception)


def test_a_request_error_code_does_not_leak_into_the_class() -> None:
    RequestError("bad", code="invalid_type")
    assert RequestError("bad").code is None
    assert BodyTooLarge("big", code="custom").code == "custom"
    assert BodyTooLarge("big").code == "request_too_large"


def test_messages() -> None:
    assert ModelNotFound("gpt-9").public_message == \
        "The model 'gpt-9' does not exist or is not served here."
    assert UpstreamTimeout("idle", 1.5).public_message == \
        "The upstream sent nothing for 1.5 s (idle timeout)."
    assert UpstreamTimeout("first_chunk", 60.0).public_message == \
        "The upstream sent nothing for 60 s (first_chunk timeout)."
    assert UpstreamTimeout("idle", 2).phase == "idle"
    assert str(RequestError("plain")) == "plain"


def test_detail_defaults_to_the_public_message_and_stays_private() -> None:
    assert SluiceError("public").detail == "public"
    error = UpstreamUnavailable("The upstream failed.", detail="reset by http://10.0.0.1:8000")
    assert error.detail == "reset by http://10.0.0.1:8000"
    assert b"10.0.0.1" not in openai_error_body(error)


def test_error_ids() -> None:
    ids = {new_error_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"err_[0-9a-f]{16}", i) for i in ids)
    first, second = SluiceError("a"), SluiceError("a")
    assert first.error_id != second.error_id
    assert re.fullmatch(r"err_[0-9a-f]{16}", first.error_id)


# ------------------------------------------------------ UpstreamStatusError


@pytest.mark.parametrize("status", sorted(UpstreamStatusError.RELAYED))
def test_relayed_status(status: int) -> None:
    error = status_error(status, type_="t", code="c", param="p")
    assert (error.status, error.public_message) == (status, "upstream said no")
    assert (error.type, error.code, error.param) == ("t", "c", "p")
    assert error.retryable is (status == 429)


def test_relayed_statuses_are_exactly_the_documented_ones() -> None:
    assert frozenset({400, 401, 403, 404, 409, 413, 422, 429}) == UpstreamStatusError.RELAYED


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 402, 405, 410, 451])
def test_unrelayed_status(status: int) -> None:
    error = status_error(status, type_="t", code="c", param="p", retry_after=4.0)
    assert error.status == 502
    assert error.upstream_status == status
    assert error.public_message == "The upstream model server failed."
    assert (error.type, error.code, error.param) == ("upstream_error", None, None)
    assert error.retryable
    assert error.retry_after == 4.0
    assert error.detail == "raw upstream body"


def test_relayed_type_defaults() -> None:
    assert status_error(429).type == "rate_limit_error"
    assert status_error(422).type == "invalid_request_error"


def test_instance_attributes_do_not_touch_the_class() -> None:
    status_error(404, type_="x", code="y", param="z")
    status_error(503)
    assert (UpstreamStatusError.status, UpstreamStatusError.type) == (502, "upstream_error")
    assert (UpstreamStatusError.code, UpstreamStatusError.param) == (None, None)
    http_error(405, "Method not allowed", type_="invalid_request_error", code="x")
    assert (SluiceError.status, SluiceError.type, SluiceError.code) == (500, "server_error", None)


# ------------------------------------------------------------ the JSON body


@pytest.mark.parametrize(
    "error",
    [
        SluiceError("boom"),
        RequestError("'messages' must be a non-empty array.", param="messages",
                     code="invalid_type"),
        ModelNotFound("m"),
        UpstreamTimeout("idle", 3),
        NoBackendAvailable("All backends are busy."),
        status_error(429, type_="rate_limit_error", code="rate_limit_exceeded"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_openai_error_body_shape(error: SluiceError) -> None:
    body = orjson.loads(openai_error_body(error))
    assert body == {"error": {
        "message": error.public_message,
        "type": error.type,
        "param": error.param,
        "code": error.code,
        "error_id": error.error_id,
    }}
    assert list(body["error"]) == ["message", "type", "param", "code", "error_id"]
    assert body["error"] == error_object(error)


def test_openai_error_body_nulls() -> None:
    body = orjson.loads(openai_error_body(UpstreamUnavailable("down")))
    assert body["error"]["param"] is None
    assert body["error"]["code"] is None


def test_http_error() -> None:
    error = http_error(405, "Method Not Allowed", type_="invalid_request_error",
                       code="method_not_allowed")
    assert isinstance(error, SluiceError)
    assert (error.status, error.type, error.code) == (405, "invalid_request_error",
                                                      "method_not_allowed")
    assert orjson.loads(openai_error_body(error))["error"]["message"] == "Method Not Allowed"
    assert http_error(404, "Not Found", type_="not_found").code is None


# ------------------------------------------------------------------ headers


def test_headers_without_retry_after() -> None:
    assert error_headers(UpstreamUnavailable("x")) == [(b"content-type", b"application/json")]


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [(0.0, b"0"), (1.0, b"1"), (30.0, b"30"), (3600.0, b"3600"), (-2.0, b"0"), (-0.4, b"0")],
)
def test_retry_after_header_for_whole_seconds(retry_after: float, header: bytes) -> None:
    error = status_error(429, retry_after=retry_after)
    assert error_headers(error) == [(b"content-type", b"application/json"),
                                    (b"retry-after", header)]


@pytest.mark.parametrize(("retry_after", "header"), [(0.7, b"1"), (1.6, b"2"), (29.9, b"30")])
def test_retry_after_header_rounds_to_whole_seconds(retry_after: float, header: bytes) -> None:
    error = status_error(429, retry_after=retry_after)
    assert dict(error_headers(error))[b"retry-after"] == header


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_retry_after_header_is_delta_seconds(retry_after: float) -> None:
    error = NoBackendAvailable("busy")
    error.retry_after = retry_after
    value = dict(error_headers(error))[b"retry-after"]
    # RFC 9110 delta-seconds: digits only, close to the wait asked for.
    assert re.fullmatch(rb"[0-9]+", value)
    assert abs(int(value) - max(0.0, retry_after)) <= 1
