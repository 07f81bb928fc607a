"""What traces cost a stream: CPU per request with ``[telemetry] traces`` off and on.

    python -m tests.bench.trace_cost [--requests 1000] [--rounds 5] [--tokens 20]

One process holds the fake upstream (`server.testing.fake_upstream`) and two
Sluice apps in front of it, driven through Quart's test client (no sockets
between client and gateway; the upstream is on loopback, so the
``traceparent`` really goes upstream): one with traces off (the null
tracer), one with traces on, sampling every request, its spans batched by
the SDK's `BatchSpanProcessor` to an exporter that drops them (the cost of
making and queueing spans, not of a collector). Rounds alternate between
the two, so drift on a shared machine hits both alike; each round reports
CPU time (``time.process_time``: every thread, the exporter's included)
per streamed request, and the medians are compared.

It also times the null tracer's calls one stream makes (`server.telemetry.tracer`),
the whole cost of tracing when it is off.
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Sequence
from typing import Any

import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from server.config import parse_settings
from server.gateway import SluiceApp, create_app
from server.telemetry.tracer import NULL_TRACER
from server.testing.fake_upstream import FakeUpstream, Scenario

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
WARM_UP = 50


class DropSpans(SpanExporter):
    """Takes every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def app_for(upstream: FakeUpstream, traces: bool) -> SluiceApp:
    settings = parse_settings({
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream.base_url,
                      "models": ["*"]}],
        "logging": {"access_log": False},
        "telemetry": {"traces": traces},
    })
    return create_app(settings, environ={},
                      span_processor=BatchSpanProcessor(DropSpans()) if traces else None)


async def cpu_per_request(app: SluiceApp, requests: int) -> float:
    """Seconds of CPU per streamed request, after a warm-up."""
    async with app.test_app() as test_app:
        client = test_app.test_client()

        async def one() -> None:
            response = await client.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 200, response.status_code
            await response.get_data()

        for _ in range(WARM_UP):
            await one()
        started = time.process_time()
        for _ in range(requests):
            await one()
        return (time.process_time() - started) / requests


def null_calls_per_stream() -> float:
    """Seconds for the null tracer's calls of one stream with one attempt."""
    none: Any = None

    def stream() -> None:
        trace = NULL_TRACER.stream(none)
        span = trace.attempt(none, none)
        span.upstream_headers()
        span.end(none, "completed", None)
        trace.end(none)

    number = 200_000
    return min(timeit.repeat(stream, number=number, repeat=5)) / number


async def main(requests: int, rounds: int, tokens: int) -> None:
    upstream = FakeUpstream(Scenario(tokens=tokens))
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve, 0)
        apps = {"off": app_for(upstream, False), "on": app_for(upstream, True)}
        results: dict[str, list[float]] = {name: [] for name in apps}
        for round_ in range(rounds):
            for name, app in apps.items():
                cost = await cpu_per_request(app, requests)
                results[name].append(cost)
                print(f"round {round_ + 1} traces {name:>3}: {cost * 1e6:7.1f} µs CPU/request")
        off, on = (statistics.median(results[n]) for n in ("off", "on"))
        print(f"median: off {off * 1e6:.1f} µs, on {on * 1e6:.1f} µs; "
              f"tracing adds {(on - off) * 1e6:.1f} µs per stream ({on / off - 1:+.1%})")
        print(f"the null tracer's calls per stream: {null_calls_per_stream() * 1e9:.0f} ns")
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="per round and setting")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20, help="content chunks per reply")
    args = parser.parse_args()
    trio.run(main, args.requests, args.rounds, args.tokens)
