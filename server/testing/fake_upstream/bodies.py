"""Whole (non-streamed) OpenAI JSON bodies the fake answers with.

These are sent once per request, so unlike `chunks` they are plain dicts
through orjson: clarity over speed. Every error the fake produces, whether
scripted by a `Scenario` or caused by a bad request, has OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` so gateways map the fake's
errors exactly as they would map OpenAI's::

    error_body(429)  # b'{"error":{"message":"fake upstream: Too Many Requests",...}}'
"""

from __future__ import annotations

from http import HTTPStatus
from types import MappingProxyType

import orjson

from server.testing.fake_upstream.chunks import token_text
from server.testing.fake_upstream.request import DEFAULT_MODEL

_ERROR_TYPES = MappingProxyType(
    {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        409: "conflict_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }
)


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status (``server_error`` for 5xx and the rest)."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(
    status: int,
    message: str | None = None,
    *,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    if message is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = f"status {status}"
        message = f"fake upstream: {phrase}"
    error = {"message": message, "type": error_type(status), "param": param, "code": code}
    return orjson.dumps({"error": error})


def completion_body(
    completion_id: str,
    *,
    created: int,
    model: str,
    completion_tokens: int,
    prompt_tokens: int,
    finish_reason: str,
) -> bytes:
    """A ``chat.completion`` whose content is tokens ``t0 t1 ...`` and usage to match."""
    content = "".join(token_text(i) for i in range(completion_tokens))
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def models_body() -> bytes:
    """The ``GET /v1/models`` list."""
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "sluice"},
            ],
        }
    )
