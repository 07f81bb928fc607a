"""Is this stream really streaming? The verdict rule, as pure functions over a `Timeline`.

In order, the first rule that applies decides:

1. **error** — no response, a status other than 200, a body that is not an
   event stream, or a stream that ended before its first content chunk.
2. **cut** — content came, but the stream did not end with ``[DONE]``
   (the connection closed, an in-band error, or the probe's idle bound).
3. **buffered** — more than half of the gaps between content chunks are
   *zero intervals* (under 1 ms: the chunks reached the client together)
   and the groups that arrived together came after long silences (median
   ≥ 50 ms). The chunks were produced one by one but held somewhere and
   released in bursts: a buffering proxy, a server that writes the whole
   reply at the end, a batch-flushing framework.
4. **streaming** — otherwise. Also when the reply has fewer than 3 content
   chunks (too few to tell), and when chunks came back to back but never
   after a long silence (a fast server: the whole reply took less time than
   a stutter a reader could notice).

The thresholds are named below. 1 ms is the bound of the report this rule
comes from (a buffered router showed 95–98 % zero intervals); 50 ms is a
silence a reader notices; "more than half" is "most chunks".

    verdict = judge(timeline)
    verdict.kind, verdict.reason     # ("buffered", "19 of 19 gaps under 1 ms ...")
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

from server.probe.timeline import (
    ZERO_GAP,
    Timeline,
    bursts,
    intervals,
    silences_before_bursts,
)

VerdictKind = Literal["streaming", "buffered", "cut", "error"]
VERDICTS: tuple[VerdictKind, ...] = ("streaming", "buffered", "cut", "error")

MIN_CHUNKS = 3  # fewer content chunks than this cannot show how they were sent
MOST = 0.5  # "most" gaps: strictly more than this share
LONG_SILENCE = 0.05  # seconds: a silence before a burst that a reader notices


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: VerdictKind
    reason: str


def judge(t: Timeline) -> Verdict:
    """The first rule that applies; see the module docstring."""
    n = len(t.content_at)
    if t.status is None:
        return Verdict("error", f"no response: {t.error or 'unknown failure'}")
    if t.status != 200:
        return Verdict("error", f"HTTP {t.status}" + (f": {t.error}" if t.error else ""))
    if n == 0:
        why = t.error or ("complete, but with no content to measure" if t.done
                          else "the body ended before any content")
        return Verdict("error", why)
    if not t.done:
        why = t.error or "the body ended without [DONE]"
        return Verdict("cut", f"after {n} content chunk{'s' * (n != 1)}: {why}")
    return _pace(t.content_at)


def _pace(content_at: tuple[float, ...]) -> Verdict:
    n = len(content_at)
    if n < MIN_CHUNKS:
        return Verdict("streaming", f"only {n} content chunk{'s' * (n != 1)}: too few to tell")
    gaps = intervals(content_at)
    zeros = sum(1 for g in gaps if g < ZERO_GAP)
    together = f"{zeros} of {len(gaps)} gaps under {ZERO_GAP * 1000:g} ms"
    if zeros / len(gaps) <= MOST:
        p50 = statistics.median(gaps)
        return Verdict("streaming", f"{together}; median gap {p50 * 1000:.1f} ms")
    silences = silences_before_bursts(content_at)
    silence = statistics.median(silences)
    groups = [size for size in bursts(content_at) if size > 1]
    shape = (f"{together}: {len(groups)} burst{'s' * (len(groups) != 1)} "
             f"(largest {max(groups)} chunks) after a median silence of "
             f"{silence * 1000:.0f} ms")
    if silence >= LONG_SILENCE:
        return Verdict("buffered", shape)
    return Verdict("streaming", f"{shape}: back to back, but never held long enough to notice")
