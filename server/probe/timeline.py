"""One probe run as the client saw it (`Timeline`), and the numbers read off it (`RunStats`).

A timeline is what `server.probe.measure` records from one real streaming
request: when the response head came, when each chunk arrived, how the body
ended. Everything else is pure arithmetic over it, so the verdict and the
report are tested with plain numbers::

    t = Timeline(status=200, headers_at=0.01, chunk_at=(0.1, 0.2, 0.3),
                 content_at=(0.1, 0.2, 0.3), ended_at=0.31, done=True)
    stats = run_stats(t)        # ttft 0.1, gaps (0.1, 0.1), no zero intervals

Times are seconds from the moment the request was sent. Chunks read from
the socket in one read share one arrival time: that is what a *zero
interval* (a gap under `ZERO_GAP`) shows — chunks that reached the client
together, however far apart the model produced them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# A chunk arriving less than this after the previous one arrived "together" with it.
ZERO_GAP = 0.001


@dataclass(frozen=True, slots=True)
class Timeline:
    """One streaming request, from the client's side; times in seconds from the request."""

    status: int | None = None  # None: no response head at all
    headers_at: float | None = None  # the response head arrived (TTFB)
    chunk_at: tuple[float, ...] = ()  # every data event but [DONE]
    content_at: tuple[float, ...] = ()  # the events carrying content (text, reasoning, tools)
    ended_at: float = 0.0  # the body ended, failed, or the probe gave up
    done: bool = False  # `data: [DONE]` came
    finished: bool = False  # some chunk carried a finish_reason
    usage: Mapping[str, int] | None = None  # the usage chunk's numbers, if one came
    error: str | None = None  # what went wrong: transport, HTTP error body, in-band error
    endpoint: str = ""  # which endpoint this run measured (a label)


@dataclass(frozen=True, slots=True)
class RunStats:
    """The numbers of one run. ``None`` where the run has nothing to measure."""

    ttfb: float | None  # response head
    ttft: float | None  # first content chunk
    total: float
    chunks: int
    content_chunks: int
    tokens: int  # usage.completion_tokens if reported, else content chunks
    tokens_per_second: float | None  # after the first content chunk
    gap_p50: float | None
    gap_p90: float | None
    gap_p99: float | None
    gap_max: float | None
    zero_share: float | None  # share of content gaps under ZERO_GAP
    largest_burst: int  # most content chunks that arrived together
    gaps: tuple[float, ...] = field(repr=False, default=())


def run_stats(t: Timeline) -> RunStats:
    gaps = intervals(t.content_at)
    tokens = completion_tokens(t)
    span = t.content_at[-1] - t.content_at[0] if len(t.content_at) > 1 else 0.0
    # Tokens after the first, over the time they took: the decode rate the client saw.
    rate = (tokens - 1) / span if tokens > 1 and span >= ZERO_GAP else None
    return RunStats(
        ttfb=t.headers_at,
        ttft=t.content_at[0] if t.content_at else None,
        total=t.ended_at,
        chunks=len(t.chunk_at),
        content_chunks=len(t.content_at),
        tokens=tokens,
        tokens_per_second=rate,
        gap_p50=percentile(gaps, 0.50),
        gap_p90=percentile(gaps, 0.90),
        gap_p99=percentile(gaps, 0.99),
        gap_max=max(gaps) if gaps else None,
        zero_share=zero_share(gaps),
        largest_burst=max(bursts(t.content_at), default=0),
        gaps=gaps,
    )


def completion_tokens(t: Timeline) -> int:
    reported = (t.usage or {}).get("completion_tokens")
    return reported if isinstance(reported, int) else len(t.content_at)


def intervals(times: Sequence[float]) -> tuple[float, ...]:
    return tuple(b - a for a, b in itertools.pairwise(times))


def zero_share(gaps: Sequence[float]) -> float | None:
    if not gaps:
        return None
    return sum(1 for g in gaps if g < ZERO_GAP) / len(gaps)


def bursts(times: Sequence[float]) -> list[int]:
    """Sizes of the groups of chunks that arrived together (gaps under `ZERO_GAP`)."""
    sizes: list[int] = []
    for i, at in enumerate(times):
        if i and at - times[i - 1] < ZERO_GAP:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def silences_before_bursts(times: Sequence[float]) -> list[float]:
    """For each group of two or more chunks that arrived together, the silence before it.

    The first group's silence is counted from the request: a server that
    holds the whole reply makes the client wait from the start.
    """
    silences: list[float] = []
    start = 0
    for size in bursts(times):
        if size > 1:
            silences.append(times[start] - (times[start - 1] if start else 0.0))
        start += size
    return silences


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (an observed value); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
