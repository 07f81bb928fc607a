"""A client hangs up mid-stream, and Sluice lets go of the upstream at once.

Self-contained: it starts the fake model server (1000 tokens at 20 per
second, so a stream nobody stops would last 50 s) and Sluice, both
in-process on free loopback ports, then streams through Sluice with httpx,
reads a few tokens and walks away. The point of the example is what follows:

- the fake upstream records the moment its connection closes, which shows
  that Sluice cancelled the upstream request instead of draining it, and
- Sluice's ``sluice_active_streams`` gauge comes back to 0.

    python examples/abort_mid_stream.py

Exit code 0 when both happened, 1 when they did not within `CLOSE_BOUND` seconds.
Shutdown is the structured kind: Sluice's hypercorn stops gracefully when its
shutdown event is set, and the fake upstream stops when its nursery is cancelled.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import orjson
import trio
from hypercorn.trio import serve

from server.config import parse_settings
from server.gateway import SluiceApp, create_app
from server.metrics import Metrics
from server.serving.launch import hypercorn_config
from server.testing.fake_upstream import FakeUpstream, Scenario

TOKENS_BEFORE_ABORT = 5
# How long the upstream may take to see its connection close; the tests ask for 0.1 s.
CLOSE_BOUND = 2.0
# How long streams still running at shutdown get to finish (there should be none).
SHUTDOWN_GRACE = 1.0


async def main() -> int:
    upstream = FakeUpstream(Scenario(tokens=1000, tps=20))
    async with trio.open_nursery() as upstream_nursery:
        await upstream_nursery.start(upstream.serve, 0)
        print(f"fake upstream at {upstream.base_url}")
        async with running_sluice(upstream.base_url) as (base_url, app):
            print(f"sluice at {base_url}")
            ok = await abort_mid_stream(base_url, upstream, app)
        upstream_nursery.cancel_scope.cancel("example finished")
    return 0 if ok else 1


@asynccontextmanager
async def running_sluice(upstream_url: str) -> AsyncIterator[tuple[str, SluiceApp]]:
    """Sluice under hypercorn on a free port, in front of one OpenAI-compatible backend."""
    settings = parse_settings({
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream_url,
                      "models": ["*"]}],
    })
    app = create_app(settings, environ={})
    config = hypercorn_config("127.0.0.1:0")
    config.graceful_timeout = SHUTDOWN_GRACE
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        # `serve` reports readiness through task_status: the URLs it is bound to.
        binds: list[str] = await nursery.start(
            partial(serve, app, config, shutdown_trigger=shutdown.wait))
        try:
            yield binds[0], app
        finally:
            shutdown.set()


async def abort_mid_stream(base_url: str, upstream: FakeUpstream, app: SluiceApp) -> bool:
    metrics: Metrics = app.extensions["sluice.metrics"]
    body = {"model": "any-model", "stream": True,
            "messages": [{"role": "user", "content": "Count to a thousand."}]}
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10.0)) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        response.raise_for_status()
        tokens = await read_tokens(response, TOKENS_BEFORE_ABORT)
        print(f"read {len(tokens)} tokens: {''.join(tokens)!r}; "
              f"sluice_active_streams = {sample(metrics, 'sluice_active_streams'):g}; hanging up")
        aborted_at = trio.current_time()
    # Leaving the `async with` closed the half-read response, and with it the connection:
    # that is all a client has to do. Sluice notices, and cancels the upstream request.

    try:
        with trio.fail_after(CLOSE_BOUND):
            await upstream.wait_all_closed()
    except trio.TooSlowError:
        print(f"FAIL: the upstream still had its connection open {CLOSE_BOUND} s later")
        return False
    closed_at = upstream.connections[-1].closed_at
    assert closed_at is not None  # wait_all_closed returned
    print(f"upstream saw its connection close {(closed_at - aborted_at) * 1000:.1f} ms "
          f"after the client hung up")

    try:
        with trio.fail_after(CLOSE_BOUND):
            # Nothing signals a gauge's value, so poll it: the stream's scope records
            # its end just after its nursery (and so the upstream request) is done.
            while sample(metrics, "sluice_active_streams") != 0:  # noqa: ASYNC110
                await trio.sleep(0.005)
    except trio.TooSlowError:
        print(f"FAIL: sluice_active_streams = {sample(metrics, 'sluice_active_streams'):g}, "
              f"expected 0")
        return False
    print(f"sluice_active_streams = {sample(metrics, 'sluice_active_streams'):g}")
    disconnects = sample(metrics, "sluice_stream_outcomes_total", outcome="client_disconnect")
    print(f'sluice_stream_outcomes_total{{outcome="client_disconnect"}} = {disconnects:g}')
    return True


async def read_tokens(response: httpx.Response, count: int) -> list[str]:
    """The content of the first `count` content chunks of an OpenAI SSE stream."""
    tokens: list[str] = []
    async for line in response.aiter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue  # blank separators, `: keepalive` comments, the end
        for choice in orjson.loads(line.removeprefix("data: ")).get("choices", []):
            content = choice.get("delta", {}).get("content")
            if content:
                tokens.append(content)
        if len(tokens) >= count:
            break  # the caller's `client.stream(...)` block closes the response
    return tokens


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A metric's current value, as Prometheus would scrape it from /metrics."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


if __name__ == "__main__":
    sys.exit(trio.run(main))
