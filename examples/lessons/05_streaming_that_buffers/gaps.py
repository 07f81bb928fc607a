"""The gap table: does an answer arrive token by token, or in bursts?

    python examples/lessons/05_streaming_that_buffers/gaps.py [URL]

streams one answer from the gateway at URL (default http://127.0.0.1:8100)
and prints one plain table of the gaps between its tokens' arrivals::

    tokens  zero gaps  largest burst  median gap  whole answer
        20       100%             20      0.0 ms         4.0 s

A *zero gap* (under 1 ms) means two tokens came out of the same read: they
were held back somewhere and released together. A gateway that streams, in
front of a model writing 5 tokens a second, shows gaps of about 200 ms and
bursts of one token.
"""

from __future__ import annotations

import itertools
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import orjson
import trio

ZERO = 0.001
"""A gap shorter than this is a zero gap: the two tokens arrived together."""


@dataclass(frozen=True)
class Gaps:
    tokens: int
    zero_share: float
    """The share of gaps between consecutive tokens that were zero."""
    largest_burst: int
    """The most tokens that arrived together (one after another with zero gaps)."""
    median_gap: float
    took: float
    """From the first token to the last."""

    def table(self) -> str:
        return (f"tokens  zero gaps  largest burst  median gap  whole answer\n"
                f"{self.tokens:>6}  {self.zero_share:>9.0%}  {self.largest_burst:>13}  "
                f"{self.median_gap * 1000:>7.1f} ms  {self.took:>10.1f} s")


def gaps(arrivals: Sequence[float]) -> Gaps:
    """The gap table of tokens that arrived at `arrivals` (seconds, ascending)."""
    between = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    burst = largest = min(len(arrivals), 1)
    for gap in between:
        burst = burst + 1 if gap < ZERO else 1
        largest = max(largest, burst)
    return Gaps(tokens=len(arrivals),
                zero_share=sum(gap < ZERO for gap in between) / len(between) if between else 0.0,
                largest_burst=largest,
                median_gap=statistics.median(between) if between else 0.0,
                took=arrivals[-1] - arrivals[0] if arrivals else 0.0)


async def main(url: str) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    arrivals: list[float] = []
    async with (httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client,
                client.stream("POST", f"{url}/v1/chat/completions", json=body) as response):
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                delta = orjson.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    arrivals.append(trio.current_time())
    print(gaps(arrivals).table())


if __name__ == "__main__":
    trio.run(main, sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8100")
