"""coredis under Trio, as the Redis store uses it: shared by many tasks, cancelled mid-call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from server.keys.record import KeyRecord
from server.limits.quota import Quota
from server.limits.redis_store import RedisStore, open_redis_store
from server.limits.state_settings import StateSettings
from server.limits.store import Admission, Periods
from server.testing.redis_server import RedisServer

PERIODS = Periods("2026-01-31", "2026-01")


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    async with open_redis_store(StateSettings(backend="redis", url=redis_url,
                                              timeout=5.0)) as opened:
        yield opened


async def test_many_tasks_share_one_client_and_the_limit_is_exact(store: RedisStore) -> None:
    quota = Quota(rpm=10)  # a burst of 10, then one per 6 s
    allowed: list[bool] = []

    async def one() -> None:
        verdict = await store.admit(Admission("k1", quota, 1, 0.0, PERIODS))
        allowed.append(verdict.allowed)

    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(one)
    assert len(allowed) == 200 and allowed.count(True) == 10


async def test_a_call_cancelled_mid_flight_leaves_the_client_usable(
        store: RedisStore, redis_server: RedisServer) -> None:
    record = KeyRecord(id="000000000001", name="a", hash="0" * 64, created_at=1.0)
    await store.create_key(record)
    assert redis_server.command("CLIENT", "PAUSE", "300", "ALL") == b"+OK"
    with trio.move_on_after(0.05) as scope:
        await store.usage("000000000001", "2026-01")  # sent; its answer comes after the pause
    assert scope.cancelled_caught
    # The late answer to the cancelled call must not be taken for these ones'.
    assert await store.get_key("000000000001") == record
    assert await store.usage("000000000001", "2026-01") == {}


async def test_scripts_redis_lost_are_loaded_again(store: RedisStore,
                                                   redis_server: RedisServer) -> None:
    quota = Quota(rpm=60, burst=1)
    assert (await store.admit(Admission("k1", quota, 1, 0.0, PERIODS))).allowed
    assert redis_server.command("SCRIPT", "FLUSH") == b"+OK"  # as after a restart
    assert (await store.admit(Admission("k1", quota, 1, 0.0, PERIODS))).reason == "requests"
