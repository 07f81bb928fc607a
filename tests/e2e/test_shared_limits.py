"""End-to-end: two Sluice instances, each ``sluice serve --workers 2``, against one Redis.

Four worker processes in two instances share one set of limits: a key's
requests per minute, tokens per minute and concurrent streams hold for the
whole deployment — not per worker, not per instance — and a key revoked on
one instance stops on the other within a second. Then Redis restarts under
load: streams in flight keep streaming, nothing crashes, limits come back.

Everything is real: the instances are separate processes started by the
test (by PID, stopped by it), the Redis is a real ``redis-server``, the model
server is the fake upstream, and requests open a fresh connection each so
they land on either worker of an instance.

**Tolerance.** Requests per minute are GCRA with a burst: over a run of
``t`` seconds a key with ``rpm = 10`` may get ``10 + t / 6`` requests (plus
one for rounding) — never the 40 that four separate workers would allow.
Tokens per minute refill continuously (1,000 per minute: ~17 per second),
so one more reservation than the bucket holds may fit if opening the
streams takes longer than a second. Concurrent streams are leases: exact.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from server.keys.secret import NewKey, new_key
from server.testing.fake_upstream import FakeUpstream, Scenario
from server.testing.redis_server import RedisServer
from tests.conftest import chat_body
from tests.e2e.test_keys import ADMIN, bearer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

URL = "/v1/chat/completions"
START_BOUND = 120.0  # four workers importing the app on a busy two-core machine
STOP_BOUND = 20.0
REVOCATION_BOUND = 1.0  # the promise: revoked everywhere within a second


def _config(path: Path, upstream: FakeUpstream, redis_url: str,
            keys: dict[str, tuple[NewKey, dict[str, Any]]]) -> Path:
    lines = ["[server]", "drain_seconds = 0",
             "[[backends]]", 'name = "fake"', 'kind = "openai"', 'models = ["*"]',
             f'base_url = "{upstream.base_url}"',
             "[state]", 'backend = "redis"', f'url = "{redis_url}"', "retry_interval = 0.5",
             "[auth]", 'admin_key_env = "SLUICE_ADMIN_KEY"']
    for name, (key, fields) in keys.items():
        lines += ["[[auth.keys]]", f'id = "{key.id}"', f'hash = "{key.hash}"',
                  f'name = "{name}"', *(f"{k} = {v}" for k, v in fields.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


@asynccontextmanager
async def sluice_instance(config: Path, log: Path) -> AsyncIterator[str]:
    """``python -m server.cli serve --workers 2`` on a free port; its base URL once ready."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, SLUICE_ADMIN_KEY=ADMIN, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "server.cli", "serve", "--config", str(config),
             "--bind", f"127.0.0.1:{port}", "--workers", "2", "--log-level", "warning"],
            stdin=None, stdout=out, stderr=out, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            with trio.fail_after(START_BOUND):
                while True:
                    if process.poll() is not None:
                        tail = (await trio.Path(log).read_text())[-2000:]
                        raise RuntimeError(f"sluice exited:\n{tail}")
                    try:
                        if (await client.get(base_url + "/readyz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.2)
        yield base_url
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGTERM)  # the master stops its two workers
            with trio.move_on_after(STOP_BOUND):
                await process.wait()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # its session: our children only
                await process.wait()


@asynccontextmanager
async def two_instances(tmp_path: Path, upstream: FakeUpstream, redis_url: str,
                        keys: dict[str, tuple[NewKey, dict[str, Any]]],
                        ) -> AsyncIterator[tuple[str, str]]:
    config = _config(tmp_path / "sluice.toml", upstream, redis_url, keys)
    async with (sluice_instance(config, tmp_path / "a.log") as a,
                sluice_instance(config, tmp_path / "b.log") as b):
        yield a, b


def fresh_connections() -> httpx.AsyncClient:
    """A client that opens a connection per request: requests spread over the workers."""
    return httpx.AsyncClient(timeout=30.0, limits=httpx.Limits(max_keepalive_connections=0))


async def hold_streams(client: httpx.AsyncClient, urls: list[str], key: NewKey,
                       release: trio.Event, **body: Any) -> list[int]:
    """Open one stream per URL at once; keep the admitted ones open until ``release``."""
    statuses: list[int] = []

    async def one(url: str) -> None:
        async with client.stream("POST", url + URL, json=chat_body(**body),
                                 headers=bearer(key)) as response:
            statuses.append(response.status_code)
            if response.status_code == 200:
                await release.wait()

    async with trio.open_nursery() as nursery:
        for url in urls:
            nursery.start_soon(one, url)
        with trio.fail_after(30):
            while len(statuses) < len(urls):  # noqa: ASYNC110  (no event for "all answered")
                await trio.sleep(0.05)
        release.set()
    return statuses


async def test_two_instances_share_a_keys_limits_and_its_revocation(
        tmp_path: Path, upstream: FakeUpstream, redis_url: str) -> None:
    rpm, tpm, streams = new_key(), new_key(), new_key()
    keys = {"rpm": (rpm, {"rpm": 10}), "tpm": (tpm, {"tpm": 1000}),
            "streams": (streams, {"max_streams": 3})}
    async with two_instances(tmp_path, upstream, redis_url, keys) as (a, b), \
            fresh_connections() as client:
        # Requests per minute: 24 requests, alternating instances.
        started = trio.current_time()
        answers = [await client.post((a, b)[i % 2] + URL, json=chat_body(stream=False),
                                     headers=bearer(rpm)) for i in range(24)]
        elapsed = trio.current_time() - started
        allowed = [r for r in answers if r.status_code == 200]
        assert {r.status_code for r in answers} == {200, 429}
        assert 10 <= len(allowed) <= 10 + int(elapsed / 6) + 1, (len(allowed), elapsed)
        assert {answers.index(r) % 2 for r in allowed} == {0, 1}  # both instances served
        assert all(r.headers["x-ratelimit-limit-requests"] == "10" for r in answers)

        # Tokens per minute: each holds a reservation of ~205 (prompt + max_tokens 200).
        upstream.scenario = Scenario(tokens=10, stall_after=2)  # streams stay open
        statuses = await hold_streams(client, [a, b] * 5, tpm, trio.Event(), max_tokens=200)
        assert statuses.count(200) in (4, 5), statuses  # 1000 // 205 = 4; a refill: 5
        assert statuses.count(429) == 10 - statuses.count(200)

        # Concurrent streams: leases, exact.
        statuses = await hold_streams(client, [a, b] * 4, streams, trio.Event())
        assert statuses.count(200) == 3, statuses
        upstream.scenario = Scenario(tokens=5)
        with trio.fail_after(10):  # the released streams settle: their slots come back
            while (await client.post(  # noqa: ASYNC110  (another process's state: polled)
                    b + URL, json=chat_body(stream=False), headers=bearer(streams))
                   ).status_code != 200:
                await trio.sleep(0.1)  # settling is after the client leaves: a moment

        # Revocation: made and revoked on A, refused on B within a second.
        made = (await client.post(a + "/admin/keys", headers=bearer(ADMIN),
                                  json={"name": "temp"})).json()
        assert (await client.post(b + URL, json=chat_body(),
                                  headers=bearer(made["key"]))).status_code == 200
        await client.post(f"{a}/admin/keys/{made['id']}/revoke", headers=bearer(ADMIN))
        revoked_at = trio.current_time()
        with trio.fail_after(REVOCATION_BOUND):
            while (await client.post(  # noqa: ASYNC110  (another instance's state: polled)
                    b + URL, json=chat_body(), headers=bearer(made["key"]))
                   ).status_code != 401:
                await trio.sleep(0.02)
        assert trio.current_time() - revoked_at < REVOCATION_BOUND
        usage = (await client.get(f"{b}/admin/usage/{rpm.id}", headers=bearer(ADMIN))).json()
        assert usage["total"]["requests"] == len(allowed)  # counted once, across instances


async def test_a_redis_restart_under_load(tmp_path: Path, upstream: FakeUpstream,
                                          redis_server: RedisServer) -> None:
    rpm = new_key()
    with RedisServer.running(redis_server.binary) as redis:
        async with two_instances(tmp_path, upstream, redis.url,
                                 {"rpm": (rpm, {"rpm": 5})}) as (a, b), \
                fresh_connections() as client:
            upstream.scenario = Scenario(tokens=30, tps=10)  # a 3 s stream
            long: list[httpx.Response] = []

            async def stream_through() -> None:
                async with client.stream("POST", a + URL, json=chat_body(),
                                         headers=bearer(rpm)) as response:
                    await response.aread()
                    long.append(response)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_through)
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(redis.stop)
                upstream.scenario = Scenario(tokens=2)
                during = [await client.post((a, b)[i % 2] + URL, json=chat_body(stream=False),
                                            headers=bearer(rpm)) for i in range(4)]
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(redis.start)
            assert long[0].status_code == 200
            assert long[0].text.endswith("data: [DONE]\n\n")  # streamed to the end
            assert "t29" in long[0].text
            assert all(r.status_code == 200 for r in during)  # failing open: still served
            await trio.sleep(0.6)  # retry_interval: Redis is asked again
            after = [await client.post((a, b)[i % 2] + URL, json=chat_body(stream=False),
                                       headers=bearer(rpm)) for i in range(12)]
            # A fresh Redis: one burst of 5 for the whole deployment again.
            assert 5 <= sum(r.status_code == 200 for r in after) <= 6
            for url in (a, b):
                assert (await client.get(url + "/healthz")).status_code == 200
