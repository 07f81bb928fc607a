"""server/stream/outcome.py: one vocabulary for how streams and attempts end."""

from __future__ import annotations

import pytest

from server.backends.upstream_errors import status_error
from server.errors import (
    NoBackendAvailable,
    ShuttingDown,
    SluiceError,
    StreamCut,
    TooManyRequests,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from server.metrics import Metrics
from server.stream.outcome import OUTCOMES, Outcome, attempt_outcome, stream_outcome


def status(code: int) -> SluiceError:
    return status_error(code, b"", None, secrets=())


BUSY = TooManyRequests("full", code="gateway_busy", retry_after=1)


@pytest.mark.parametrize(("error", "stream", "attempt"), [
    (None, "completed", "completed"),
    (UpstreamTimeout("idle", 5), "upstream_timeout", "upstream_timeout"),
    (status(400), "rejected", "rejected"),
    (status(429), "upstream_error", "upstream_error"),  # the backend's trouble, not the request's
    (status(503), "upstream_error", "upstream_error"),
    (StreamCut("cut"), "upstream_error", "upstream_error"),
    (UpstreamUnavailable("reset"), "upstream_error", "upstream_error"),
    (BUSY, "overloaded", "rejected"),
    (ShuttingDown(), "shutdown", "rejected"),
    (NoBackendAvailable("none"), "upstream_error", "rejected"),
])
def test_outcomes(error: SluiceError | None, stream: Outcome, attempt: Outcome) -> None:
    assert stream_outcome(error) == stream
    assert attempt_outcome(error) == attempt


def test_every_outcome_is_exported_before_it_happens() -> None:
    rendered = Metrics().render().decode()
    for outcome in OUTCOMES:
        assert f'sluice_stream_outcomes_total{{outcome="{outcome}"}} 0.0' in rendered
    assert len(OUTCOMES) == len(set(OUTCOMES)) == 8
