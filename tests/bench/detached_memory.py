"""What a detached stream holds in memory: its record, its log and its events (tracemalloc).

    python -m tests.bench.detached_memory [--streams 200] [--tokens 500] [--redis URL]

Builds finished detached streams the way Sluice does — a `DetachedStream`
with its `EventLog`, the dialect's shaper fed realistic chunks (the
simulated model's), and the task that sleeps out its retention in a
`BackgroundStreams` nursery — and reports, per stream, the bytes Python
allocated (tracemalloc) beside the bytes of events the log counts. A
stream's *live* cost adds the relay's own (~57 KB per stream, measured by
`nox -s bench`); this is what a finished stream keeps for late readers, and
what a live one adds to the relay. With ``--redis``, each stream is also
mirrored into that Redis (`RedisMirror.publish`) and its keys' ``MEMORY
USAGE`` is reported.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Callable
from functools import partial

import trio

from server.api.responses_events import ResponseMeta, ResponseTranscript
from server.api.responses_writer import ResponseLogShaper
from server.api.resume import ChatLogShaper
from server.backends.simulated import reply_tokens
from server.chunks import chunk_bytes
from server.config import ResumeSettings
from server.errors import SluiceError
from server.stream.background import BackgroundStreams
from server.stream.detached_stream import DetachedStream, LogShaper, end_log
from server.stream.event_log import EventLog


def answer_chunks(tokens: int) -> list[bytes]:
    """The chunks of a ``tokens``-token answer, as the simulated model sends them."""
    words = reply_tokens([{"role": "user", "content": "measure"}], tokens)
    chunk = partial(chunk_bytes, completion_id="chatcmpl-sim-0123456789ab",
                    created=int(time.time()), model="sluice-sim")
    usage = {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}
    return [chunk(delta={"role": "assistant", "content": ""}),
            *(chunk(delta={"content": word}) for word in words),
            chunk(finish_reason="stop"), chunk(usage=usage)]


def chat_shaper(i: int) -> tuple[LogShaper, list[bytes]]:
    return ChatLogShaper(), []


def response_shaper(i: int) -> tuple[LogShaper, list[bytes]]:
    meta = ResponseMeta(f"resp_{i:032x}", "sluice-sim", int(time.time()), {"background": True})
    shaper = ResponseLogShaper(ResponseTranscript(meta))
    return shaper, shaper.transcript.opening()  # what the view logs at once


async def measure_redis(url: str, streams: int, tokens: int,
                        shaper_for: Callable[[int], tuple[LogShaper, list[bytes]]]) -> float:
    """Per finished stream mirrored into Redis: bytes Redis reports (MEMORY USAGE) for its keys."""
    from server.stream.redis_log import RedisMirror, open_redis

    chunks = answer_chunks(tokens)
    settings = ResumeSettings(redis_url=url)
    total = 0
    async with open_redis(url) as client:
        mirror = RedisMirror(client, settings)
        for i in range(streams):
            log = EventLog(max_events=settings.max_events, max_bytes=settings.max_bytes)
            shaper, opening = shaper_for(i)
            log.extend(opening)
            for payload in chunks:
                log.extend(shaper.chunk(payload))
            end_log(log, shaper, None)
            stream = DetachedStream(BackgroundStreams.new_id("x_"), "chat", "auth:" + "0" * 32,
                                    log, shaper, grace=None)
            await mirror.publish(stream)
            for key in (f"sluice:ds:{{{stream.id}}}", f"sluice:ds:{{{stream.id}}}:events"):
                total += await client.memory_usage(key, samples=0) or 0
    return total / streams


async def measure(streams: int, tokens: int,
                  shaper_for: Callable[[int], tuple[LogShaper, list[bytes]]],
                  kind: str) -> tuple[float, float, float]:
    """Per finished stream: (allocated bytes, event bytes the log counts, events)."""
    chunks = answer_chunks(tokens)
    settings = ResumeSettings(max_events=100_000, max_bytes=1 << 30,
                              max_retained_bytes=1 << 40)
    background = BackgroundStreams(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(background.serve)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        logs = []
        for i in range(streams):
            log = EventLog(max_events=settings.max_events, max_bytes=settings.max_bytes)
            shaper, opening = shaper_for(i)
            log.extend(opening)
            stream = background.add(DetachedStream(BackgroundStreams.new_id("x_"), "chat",
                                                   "auth:" + "0" * 32, log, shaper,
                                                   grace=None))
            logs.append(log)

            async def produce(client_gone: trio.Event, stream: DetachedStream = stream
                              ) -> SluiceError | None:
                for payload in chunks:
                    stream.log.extend(stream.shaper.chunk(payload))
                end_log(stream.log, stream.shaper, None)
                return None

            background.start(stream, produce)
        for log in logs:
            await log.wait_closed()  # every producer has finished...
        await trio.sleep(0.1)  # ...and each task sleeps out its retention
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        allocated = sum(s.size_diff for s in after.compare_to(before, "filename"))
        assert background.retained == streams, kind
        await background.stop()
    return (allocated / streams, sum(log.bytes for log in logs) / streams,
            sum(log.next for log in logs) / streams)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, nargs="*", default=[0, 100, 500, 2000])
    parser.add_argument("--redis", metavar="URL", help="also measure the Redis mirror there")
    args = parser.parse_args()
    print(f"{'dialect':<22}{'tokens':>7}{'events':>8}{'event bytes':>13}"
          f"{'allocated':>12}{'per event':>11}" + (f"{'in Redis':>11}" if args.redis else ""))
    for kind, shaper_for in (("resumable chat", chat_shaper),
                             ("background response", response_shaper)):
        fixed = None
        for tokens in args.tokens:
            allocated, event_bytes, events = trio.run(measure, args.streams, tokens,
                                                      shaper_for, kind)
            if fixed is None:
                fixed = allocated
            per_event = (allocated - fixed) / max(1.0, events) if tokens else 0.0
            in_redis = ""
            if args.redis:
                used = trio.run(measure_redis, args.redis, min(args.streams, 20), tokens,
                                shaper_for)
                in_redis = f"{used:>11,.0f}"
            print(f"{kind:<22}{tokens:>7}{events:>8.0f}{event_bytes:>13,.0f}"
                  f"{allocated:>12,.0f}{per_event:>11,.0f}{in_redis}")


if __name__ == "__main__":
    main()
