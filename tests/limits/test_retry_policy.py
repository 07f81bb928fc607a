"""The retry policy as tables: what follows a failed attempt, and what counts against a backend.

Errors are built the way the backends build them: an upstream's HTTP refusal
through `status_error` (from its status, body and Retry-After header), the
transport's failures as the `server.errors` classes the backends raise.
"""

from __future__ import annotations

import random

import orjson
import pytest

from server.backends.upstream_errors import status_error
from server.config import RetryPolicy
from server.errors import (
    NoBackendAvailable,
    ShuttingDown,
    SluiceError,
    StreamCut,
    TooManyRequests,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.limits.retry_policy import Action, backoff, counts_against_backend, decide

POLICY = RetryPolicy(same_backend_retries=1, retry_after_cap=10.0, backoff_base=0.2,
                     backoff_max=5.0)


class Ceiling(random.Random):
    """Jitter that always draws its maximum, so a backoff delay is its ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def refused(status: int, code: str | None = None, retry_after: str | None = None) -> UpstreamError:
    body = orjson.dumps({"error": {"message": "no", "type": None, "code": code}})
    return status_error(status, body, retry_after, secrets=())


def reset() -> UpstreamError:
    return UpstreamUnavailable("Could not connect to the upstream model server.")


def malformed() -> UpstreamError:
    return UpstreamUnavailable("The upstream sent a malformed stream.")


def cut() -> UpstreamError:
    return StreamCut("The upstream stream broke off before it was complete.")


def gateway_busy() -> SluiceError:
    return TooManyRequests("full", code="gateway_busy", retry_after=1.0)


DECISIONS: list[tuple[str, SluiceError, int, Action, float]] = [
    # name, error, retries already made on this backend, action, delay (at full jitter)
    ("context too long is the request's fault", refused(400, "context_length_exceeded"), 0,
     "give_up", 0.0),
    ("a content-filter refusal is relayed", refused(400, "content_filter"), 0, "give_up", 0.0),
    ("bad credentials are relayed", refused(401), 0, "give_up", 0.0),
    ("an unknown model is relayed", refused(404, "model_not_found"), 0, "give_up", 0.0),
    ("invalid parameters are relayed", refused(422), 0, "give_up", 0.0),
    ("429 waits its Retry-After", refused(429, retry_after="2"), 0, "retry", 2.0),
    ("429's Retry-After is capped", refused(429, retry_after="600"), 0, "retry", 10.0),
    ("429 without Retry-After backs off", refused(429), 0, "retry", 0.2),
    ("429 again fails over", refused(429, retry_after="2"), 1, "fail_over", 0.0),
    ("500 is retried after a backoff", refused(500), 0, "retry", 0.2),
    ("503 is retried after a backoff", refused(503), 0, "retry", 0.2),
    ("500 again fails over", refused(500), 1, "fail_over", 0.0),
    ("an unlisted 4xx is the upstream's failure", refused(405), 0, "retry", 0.2),
    ("a reset is retried", reset(), 0, "retry", 0.2),
    ("a malformed stream is retried", malformed(), 0, "retry", 0.2),
    ("a stream cut before content is retried", cut(), 0, "retry", 0.2),
    ("a cut again fails over", cut(), 1, "fail_over", 0.0),
    ("a connect timeout fails over at once", UpstreamTimeout("connect", 5), 0, "fail_over", 0.0),
    ("no first chunk in time fails over at once", UpstreamTimeout("first_chunk", 60), 0,
     "fail_over", 0.0),
    ("an idle timeout fails over at once", UpstreamTimeout("idle", 60), 0, "fail_over", 0.0),
    ("no backend is not an upstream failure", NoBackendAvailable("none"), 0, "give_up", 0.0),
    ("shutting down is not an upstream failure", ShuttingDown(), 0, "give_up", 0.0),
    ("a full gateway is not an upstream failure", gateway_busy(), 0, "give_up", 0.0),
]


@pytest.mark.parametrize(("error", "retries", "action", "delay"),
                         [row[1:] for row in DECISIONS], ids=[row[0] for row in DECISIONS])
def test_decide(error: SluiceError, retries: int, action: Action, delay: float) -> None:
    decision = decide(error, retries, POLICY, Ceiling())
    assert (decision.action, decision.delay) == (action, delay)


def test_more_same_backend_retries_allow_more_retries() -> None:
    policy = RetryPolicy(same_backend_retries=3, backoff_base=0.2, backoff_max=5.0)
    actions = [decide(refused(502), n, policy, Ceiling()) for n in range(4)]
    assert [(d.action, d.delay) for d in actions] == [
        ("retry", 0.2), ("retry", 0.4), ("retry", 0.8), ("fail_over", 0.0)]


@pytest.mark.parametrize(("retries", "ceiling"), [
    (0, 0.2), (1, 0.4), (2, 0.8), (3, 1.6), (4, 3.2), (5, 5.0), (12, 5.0),
])
def test_backoff_doubles_up_to_its_maximum(retries: int, ceiling: float) -> None:
    assert backoff(retries, POLICY, Ceiling()) == pytest.approx(ceiling)


def test_backoff_jitter_is_full() -> None:
    """Delays spread over the whole of [0, ceiling], so retrying clients fall out of step."""
    rng = random.Random(7)
    delays = [backoff(3, POLICY, rng) for _ in range(1000)]
    assert all(0 <= d <= 1.6 for d in delays)
    assert min(delays) < 0.1 and max(delays) > 1.5


BREAKER_COUNTS: list[tuple[str, SluiceError, bool]] = [
    # The request's own fault: any backend would answer the same.
    ("a 400 relayed to the client", refused(400, "context_length_exceeded"), False),
    ("a content-filter refusal", refused(400, "content_filter"), False),
    ("a 401", refused(401), False),
    ("a 403", refused(403), False),
    ("a 404", refused(404, "model_not_found"), False),
    ("a 413", refused(413), False),
    ("a 422", refused(422), False),
    # Sluice's own refusals never reached a backend.
    ("no backend available", NoBackendAvailable("none"), False),
    ("shutting down", ShuttingDown(), False),
    ("the gateway full", gateway_busy(), False),
    # The backend's failures.
    ("a 429: the backend is out of capacity for everyone", refused(429, retry_after="1"), True),
    ("a 500", refused(500), True),
    ("a 502", refused(502), True),
    ("a 503 (a server loading its weights)", refused(503), True),
    ("an unlisted 4xx", refused(405), True),
    ("a reset or refused connection", reset(), True),
    ("a malformed stream", malformed(), True),
    ("a cut stream", cut(), True),
    ("a connect timeout", UpstreamTimeout("connect", 5), True),
    ("a first-chunk timeout", UpstreamTimeout("first_chunk", 60), True),
    ("an idle timeout", UpstreamTimeout("idle", 60), True),
]


@pytest.mark.parametrize(("error", "counts"), [row[1:] for row in BREAKER_COUNTS],
                         ids=[row[0] for row in BREAKER_COUNTS])
def test_counts_against_backend(error: SluiceError, counts: bool) -> None:
    assert counts_against_backend(error) is counts
