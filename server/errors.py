"""Every failure Sluice reports to a client, in one hierarchy.

Expected failures — bad input, an upstream that refuses, breaks or stays
silent — are *data*: each is a `SluiceError` that knows its HTTP status and
its OpenAI error ``type``/``code``. `openai_error_body` turns one into the
JSON a client sees; nothing else in the gateway builds error bodies.

    SluiceError
    ├── RequestError                 400  the client's request is wrong
    │   ├── BodyTooLarge             413
    │   ├── ModelNotFound            404  no backend serves that model
    │   ├── StreamNotFound           404  no such detached stream (or not the caller's)
    │   └── EventsExpired            400  a resume from events no longer kept
    ├── UpstreamError                     an upstream failed us
    │   ├── UpstreamStatusError      4xx faithfully relayed, 5xx → 502
    │   ├── UpstreamUnavailable      502  refused, reset, broken, malformed
    │   ├── UpstreamTimeout          504  connect / first chunk / idle
    │   └── StreamCut                502  ended before its finish_reason
    ├── NoBackendAvailable           503  all backends failed this request, or saturated
    ├── TooManyRequests              429  the gateway is full, or the client's rate limit
    ├── ShuttingDown                 503  the worker is draining; retry elsewhere
    ├── Overloaded                   503  the worker's event loop is behind; retry elsewhere
    ├── StreamCancelled                   a detached stream stopped on purpose (in-band only)
    ├── ProducerLost                 502  the instance producing a shared stream is gone
    ├── Unauthorized                 401  no API key, or not a valid one
    ├── PermissionDenied             403  the key may not use that model
    └── LimitsUnavailable            503  the shared limits store failed (on_error = "closed")

A client never sees a traceback, an upstream URL or a key: `public_message`
is written for clients; `detail` (logged beside the error id) is not sent.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import orjson


def new_error_id() -> str:
    """A short id that ties a client's error to the log line with the cause."""
    return "err_" + secrets.token_hex(8)


class SluiceError(Exception):
    """Base of every expected failure. Subclasses fix status/type/code."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None
    param: str | None = None
    retryable: bool = False

    def __init__(self, public_message: str, *, detail: str = "") -> None:
        super().__init__(public_message)
        self.public_message = public_message
        self.detail = detail or public_message
        self.error_id = new_error_id()
        self.retry_after: float | None = None
        self.headers: list[tuple[bytes, bytes]] = []  # more response headers (x-ratelimit-*)


class RequestError(SluiceError):
    status = 400
    type = "invalid_request_error"

    def __init__(self, public_message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(public_message)
        self.param = param
        if code is not None:
            self.code = code


class BodyTooLarge(RequestError):
    status = 413
    code = "request_too_large"


class ModelNotFound(RequestError):
    status = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist or is not served here.",
                         param="model")


class StreamNotFound(RequestError):
    status = 404
    code = "not_found"

    def __init__(self, what: str, stream_id: str) -> None:
        super().__init__(f"No {what} with id '{stream_id[:100]}' (it may have expired, or "
                         "belong to another client).", param="id")


class EventsExpired(RequestError):
    """A reader asked for events the stream's log no longer keeps."""

    code = "events_expired"

    def __init__(self, first_kept: int) -> None:
        super().__init__(f"Events before sequence number {first_kept} are no longer kept; "
                         f"resume from {first_kept - 1} or later.", param="starting_after")


class UpstreamError(SluiceError):
    type = "upstream_error"
    status = 502
    retryable = True


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-2xx status before streaming.

    Client-side statuses (400, 401, 403, 404, 409, 413, 422, 429) are relayed
    faithfully — they describe the request, and retrying elsewhere would not
    help (429 excepted, which keeps its Retry-After). Anything else is the
    upstream's own failure and becomes 502.
    """

    RELAYED = frozenset({400, 401, 403, 404, 409, 413, 422, 429})

    def __init__(
        self,
        upstream_status: int,
        *,
        public_message: str,
        type_: str | None,
        code: str | None,
        param: str | None,
        retry_after: float | None,
        detail: str,
    ) -> None:
        relayed = upstream_status in self.RELAYED
        super().__init__(public_message if relayed else "The upstream model server failed.",
                         detail=detail)
        self.upstream_status = upstream_status
        self.status = upstream_status if relayed else 502
        if relayed:
            self.type = type_ or ("rate_limit_error" if upstream_status == 429
                                  else "invalid_request_error")
            self.code = code
            self.param = param
        self.retry_after = retry_after
        self.retryable = not relayed or upstream_status == 429


class UpstreamUnavailable(UpstreamError):
    """Connection refused or reset, broken protocol, malformed stream."""


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "timeout_error"

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"The upstream sent nothing for {seconds:g} s ({phase} timeout).",
                         detail=f"{phase} timeout after {seconds:g} s")
        self.phase = phase
        self.code = f"{phase}_timeout"


class StreamCut(UpstreamError):
    """The upstream's stream ended before it said why it finished."""

    code = "stream_truncated"


class NoBackendAvailable(SluiceError):
    status = 503
    type = "service_unavailable"
    code = "no_backend_available"
    retryable = True


class TooManyRequests(SluiceError):
    status = 429
    type = "rate_limit_error"
    retryable = True

    def __init__(self, public_message: str, *, code: str, retry_after: float) -> None:
        super().__init__(public_message)
        self.code = code
        self.retry_after = retry_after


class ShuttingDown(SluiceError):
    status = 503
    type = "service_unavailable"
    code = "server_shutting_down"
    retryable = True

    def __init__(self) -> None:
        super().__init__("The server is shutting down; retry the request.")
        self.retry_after = 1.0


class Overloaded(SluiceError):
    """The worker refuses new streams while its event loop is behind (`server.limits.overload`)."""

    status = 503
    type = "service_unavailable"
    code = "gateway_overloaded"
    retryable = True

    def __init__(self, retry_after: float) -> None:
        super().__init__("The gateway is overloaded; retry the request shortly.")
        self.retry_after = retry_after


class ProducerLost(SluiceError):
    """A detached stream read from another instance whose producing instance went away."""

    status = 502
    type = "upstream_error"
    code = "producer_lost"
    retryable = True

    def __init__(self) -> None:
        super().__init__("The instance producing this stream is gone; it cannot be resumed.")


class StreamCancelled(SluiceError):
    """A detached stream was stopped on purpose: a cancel request, or nobody came back."""

    status = 409
    type = "invalid_request_error"
    code = "stream_cancelled"

    def __init__(self, reason: str) -> None:
        super().__init__(f"The stream was stopped: {reason}.")


class Unauthorized(SluiceError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(SluiceError):
    status = 403
    type = "invalid_request_error"
    code = "model_not_allowed"
    param = "model"


class LimitsUnavailable(SluiceError):
    status = 503
    type = "service_unavailable"
    code = "limits_unavailable"
    retryable = True

    def __init__(self, retry_after: float, *, detail: str = "") -> None:
        super().__init__("Usage limits cannot be checked right now; retry shortly.",
                         detail=detail)
        self.retry_after = retry_after


def error_object(error: SluiceError) -> dict[str, Any]:
    """The inner ``{"message", "type", "param", "code"}`` object, plus the error id."""
    return {
        "message": error.public_message,
        "type": error.type,
        "param": error.param,
        "code": error.code,
        "error_id": error.error_id,
    }


def openai_error_body(error: SluiceError) -> bytes:
    """The JSON body for an error response (before the first byte was sent)."""
    return orjson.dumps({"error": error_object(error)})


def error_headers(error: SluiceError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if error.retry_after is not None:
        # Round up: a client told to wait less than the upstream asked would be refused again.
        headers.append((b"retry-after", str(max(0, math.ceil(error.retry_after))).encode()))
    headers.extend(error.headers)
    return headers


def http_error(status: int, message: str, *, type_: str, code: str | None = None) -> SluiceError:
    """A plain error for a framework-level failure (404 route, 405 method, 413 body)."""
    error = SluiceError(message)
    error.status = status
    error.type = type_
    error.code = code
    return error
