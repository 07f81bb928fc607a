"""The verdict rule and the numbers it reads, with plain timelines (no sockets)."""

from __future__ import annotations

import pytest

from server.probe.timeline import (
    Timeline,
    bursts,
    percentile,
    run_stats,
    silences_before_bursts,
)
from server.probe.verdict import judge


def stream(content_at: list[float], *, done: bool = True, status: int | None = 200,
           error: str | None = None) -> Timeline:
    """A timeline whose chunks are its content chunks, head at 5 ms, ended just after."""
    ended = (content_at[-1] if content_at else 0.0) + 0.001
    return Timeline(status=status, headers_at=0.005, chunk_at=tuple(content_at),
                    content_at=tuple(content_at), ended_at=ended, done=done, error=error)


def paced(n: int, gap: float, first: float = 0.1) -> list[float]:
    return [first + i * gap for i in range(n)]


def clumped(groups: int, size: int, every: float, spread: float = 0.00005) -> list[float]:
    """``groups`` bursts of ``size`` chunks, ``every`` seconds apart, 50 µs within a burst."""
    return [(g + 1) * every + i * spread for g in range(groups) for i in range(size)]


# ------------------------------------------------------------------ the four verdicts


def test_an_even_pace_is_streaming() -> None:
    verdict = judge(stream(paced(30, 0.02)))
    assert verdict.kind == "streaming"
    assert verdict.reason == "0 of 29 gaps under 1 ms; median gap 20.0 ms"


def test_everything_at_the_end_after_a_long_silence_is_buffered() -> None:
    verdict = judge(stream(clumped(1, 30, every=0.6)))
    assert verdict.kind == "buffered"
    assert verdict.reason.startswith("29 of 29 gaps under 1 ms: 1 burst (largest 30 chunks)")
    assert "silence of 600 ms" in verdict.reason


def test_bursts_after_silences_are_buffered() -> None:
    verdict = judge(stream(clumped(6, 5, every=0.1)))
    assert verdict.kind == "buffered"
    assert "24 of 29 gaps under 1 ms: 6 bursts (largest 5 chunks)" in verdict.reason


def test_back_to_back_without_a_long_silence_is_a_fast_stream() -> None:
    # A fast server on loopback: the whole reply within 2 ms of the request.
    verdict = judge(stream(clumped(1, 30, every=0.002, spread=0.00001)))
    assert verdict.kind == "streaming"
    assert "never held long enough to notice" in verdict.reason


@pytest.mark.parametrize(
    ("zeros", "kind"),
    [(14, "streaming"),   # 14 of 29 gaps: not most
     (15, "buffered")],   # 15 of 29: more than half
)
def test_most_means_more_than_half_of_the_gaps(zeros: int, kind: str) -> None:
    times = [0.1]
    for i in range(29):
        times.append(times[-1] + (0.00001 if i < zeros else 0.08))
    times.sort()
    assert judge(stream(times)).kind == kind


def test_a_long_silence_starts_at_50_ms() -> None:
    assert judge(stream(clumped(3, 10, every=0.051))).kind == "buffered"  # 50.5 ms between
    assert judge(stream(clumped(3, 10, every=0.049))).kind == "streaming"  # 48.5 ms


def test_no_done_after_content_is_cut() -> None:
    verdict = judge(stream(paced(5, 0.02), done=False))
    assert (verdict.kind, verdict.reason) == (
        "cut", "after 5 content chunks: the body ended without [DONE]")
    in_band = judge(stream(paced(1, 0.02), done=False, error="in-band error x: boom"))
    assert (in_band.kind, in_band.reason) == ("cut", "after 1 content chunk: in-band error x: boom")


@pytest.mark.parametrize(
    ("timeline", "reason"),
    [(stream([], status=None, error="ConnectError: refused"), "no response: ConnectError: refused"),
     (stream([], status=503, error="no_backend_available: busy"),
      "HTTP 503: no_backend_available: busy"),
     (stream([], status=404), "HTTP 404"),
     (stream([], done=False), "the body ended before any content"),
     (stream([], done=True), "complete, but with no content to measure")],
)
def test_errors(timeline: Timeline, reason: str) -> None:
    verdict = judge(timeline)
    assert (verdict.kind, verdict.reason) == ("error", reason)


def test_an_error_beats_a_buffered_shape() -> None:
    assert judge(stream(clumped(1, 30, every=0.6), status=500)).kind == "error"


def test_too_few_chunks_to_tell() -> None:
    verdict = judge(stream([0.5, 0.5]))
    assert (verdict.kind, verdict.reason) == ("streaming", "only 2 content chunks: too few to tell")


# ------------------------------------------------------------------ the numbers


def test_bursts_and_the_silences_before_them() -> None:
    times = [0.2, 0.2, 0.2, 0.3, 0.5, 0.5005]
    assert bursts(times) == [3, 1, 2]
    # The first burst waited since the request; the third since the chunk before it.
    assert silences_before_bursts(times) == pytest.approx([0.2, 0.2])


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert [percentile(values, q) for q in (0.5, 0.9, 0.99)] == [3.0, 5.0, 5.0]
    assert percentile([], 0.5) is None


def test_run_stats() -> None:
    t = Timeline(status=200, headers_at=0.01, chunk_at=(0.05, 0.1, 0.1, 0.2, 0.25),
                 content_at=(0.1, 0.1, 0.2), ended_at=0.3, done=True,
                 usage={"completion_tokens": 5})
    s = run_stats(t)
    assert (s.ttfb, s.ttft, s.total, s.chunks, s.content_chunks) == (0.01, 0.1, 0.3, 5, 3)
    assert s.tokens == 5  # the usage's count wins over the content chunks
    assert s.tokens_per_second == pytest.approx(4 / 0.1)
    assert s.gaps == pytest.approx((0.0, 0.1))
    assert (s.zero_share, s.largest_burst) == (0.5, 2)
    assert (s.gap_p50, s.gap_max) == pytest.approx((0.0, 0.1))


def test_run_stats_of_nothing() -> None:
    s = run_stats(Timeline(status=None, ended_at=0.5))
    assert (s.ttfb, s.ttft, s.tokens, s.tokens_per_second) == (None, None, 0, None)
    assert (s.gap_p50, s.zero_share, s.largest_burst) == (None, None, 0)
