"""The suite's rules, and the real parts every end-to-end test stands on.

Rules:
- Pure modules are tested without sockets. End-to-end tests use real
  loopback sockets only: Sluice under hypercorn's trio server on port 0,
  the fake upstream (`server.testing.fake_upstream`) on port 0, and real clients
  (httpx, the openai SDK). No mocks of our own components.
- Every wait that could hang is bounded (`trio.fail_after`), and pytest-timeout
  bounds each test. Timing constants are named; none asserts speed — speed
  belongs to the benchmark. Bounds here are about *behaviour* (a cancelled
  upstream closes within `CLOSE_BOUND`, a chunk is not held back).
- Cleanup is proven: disconnect tests assert the upstream saw its
  connection close and the gauges came back to zero.
- In-process Sluice (`running_sluice`) runs without the overload guard
  unless a test asks for it (``overload=True``): its event loop is the
  test's, shared with the clients and the fake upstream on a machine the
  suite shares, so its lag is the test's, not a server's. Sluice started as
  a process (`tests.e2e.sluice_process`) keeps the default, on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trio
from hypercorn.trio import serve

from server.config import Settings, parse_settings
from server.gateway import SluiceApp, create_app
from server.metrics import Metrics
from server.serving import tcp_server
from server.serving.launch import hypercorn_config
from server.testing.fake_upstream import FakeUpstream, Scenario
from server.testing.redis_server import MISSING, RedisServer, find_redis_server, redis_required

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

tcp_server.install()  # as server.app does: the tests' server is the one `sluice serve` runs

# The upstream must see its connection closed this soon after the client left.
CLOSE_BOUND = 0.1
# Generous bound for things that should happen "at once" on loopback.
PROMPTLY = 2.0
# How long streams still running at the end of a test get to finish.
SHUTDOWN_GRACE = 1.0


@dataclass
class RunningSluice:
    base_url: str
    app: SluiceApp

    @property
    def metrics(self) -> Metrics:
        metrics: Metrics = self.app.extensions["sluice.metrics"]
        return metrics

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def settle(self) -> None:
        """Wait (bounded) until no stream is active: cleanup finishes just after a close."""
        await wait_until(lambda: self.sample("sluice_active_streams") == 0)


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll a condition nothing signals (a metric), bounded by `PROMPTLY`."""
    with trio.fail_after(PROMPTLY):
        while not condition():  # noqa: ASYNC110  (no event exists for a gauge's value)
            await trio.sleep(0.002)


def settings_for(upstream_url: str, kind: str = "openai", **overrides: Any) -> Settings:
    """One backend serving every model (``openai`` unless told), with [timeouts]/[server] keys."""
    timeouts = {k: overrides.pop(k) for k in ("connect", "first_chunk", "idle") if k in overrides}
    document: dict[str, Any] = {
        "backends": [{"name": "fake", "kind": kind, "base_url": upstream_url,
                      "models": ["*"]}],
        "timeouts": timeouts,
        # Retries wait briefly here: the suite tests what is retried, not how long.
        "retry": {"retry_after_cap": 0.2, "backoff_base": 0.01, "backoff_max": 0.05},
        "server": overrides,
    }
    return parse_settings(document)


@asynccontextmanager
async def running_sluice(
    settings: Settings, environ: dict[str, str] | None = None, bind: str = "127.0.0.1:0",
    keep_alive_timeout: float | None = None, span_processor: SpanProcessor | None = None,
    overload: bool = False,
) -> AsyncIterator[RunningSluice]:
    """Sluice under hypercorn on a free loopback port, shut down gracefully on exit.

    ``span_processor`` receives the spans (when the settings turn traces on).
    """
    if not overload:  # (the suite's rules, above)
        settings = replace(settings, overload=replace(settings.overload, enabled=False))
    app = create_app(settings, environ=environ or {}, span_processor=span_processor)
    config = hypercorn_config(bind)
    if keep_alive_timeout is not None:
        config.keep_alive_timeout = keep_alive_timeout
    config.errorlog = None
    config.graceful_timeout = SHUTDOWN_GRACE
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown.wait))
        try:
            yield RunningSluice(base_url=binds[0], app=app)
        finally:
            shutdown.set()


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> FakeUpstream:
    fake = FakeUpstream(Scenario(tokens=5))
    await nursery.start(fake.serve, 0)
    return fake


@pytest.fixture
async def sluice(upstream: FakeUpstream) -> AsyncIterator[RunningSluice]:
    async with running_sluice(settings_for(upstream.base_url)) as running:
        yield running


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session. Without the binary the tests that need it
    skip — except in CI or with SLUICE_REQUIRE_REDIS=1, where they fail."""
    binary = find_redis_server()
    if binary is None:
        if redis_required():
            pytest.fail(f"{MISSING} — required here (CI or SLUICE_REQUIRE_REDIS is set)")
        pytest.skip(MISSING)
    with RedisServer.running(binary) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    assert redis_server.command("FLUSHALL") == b"+OK"
    return redis_server.url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0)) as client:
        yield client


def chat_body(stream: bool = True, **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "stream": stream,
            "messages": [{"role": "user", "content": "hello"}], **extra}
