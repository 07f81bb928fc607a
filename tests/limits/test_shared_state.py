"""When Redis is slow or gone: bounded calls, failing open (count locally) or closed (503).

These stop, pause and restart a real ``redis-server`` of their own (not the
session's). The renewer is tested on the memory store, in virtual time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from server.errors import LimitsUnavailable
from server.keys.metrics import TenancyMetrics
from server.limits.memory_store import MemoryStore
from server.limits.quota import Quota
from server.limits.shared_state import open_shared_state
from server.limits.state_settings import OnError, StateSettings
from server.limits.store import Admission, Periods, Settlement, Usage
from server.testing.redis_server import RedisServer

TIMEOUT = 0.2  # each Redis call's bound here
PERIODS = Periods("2026-01-31", "2026-01")


def _metrics() -> TenancyMetrics:
    return TenancyMetrics(CollectorRegistry(), max_keys=10, models=["m"])


def _sample(metrics: TenancyMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


def ask(quota: Quota) -> Admission:
    return Admission("k1", quota, 10, 0.0, PERIODS)


@pytest.fixture
async def own_redis(redis_server: RedisServer) -> AsyncIterator[RedisServer]:
    """A redis-server this test may stop and start (the session's stays up)."""
    with RedisServer.running(redis_server.binary) as redis:
        yield redis


def _settings(url: str, on_error: OnError) -> StateSettings:
    return StateSettings(backend="redis", url=url, timeout=TIMEOUT, connect_timeout=TIMEOUT,
                         on_error=on_error, retry_interval=0.3)


async def test_fail_open_counts_locally_and_goes_back_to_redis(own_redis: RedisServer) -> None:
    metrics = _metrics()
    quota = Quota(rpm=60, burst=1)
    async with open_shared_state(_settings(own_redis.url, "open"), metrics) as state:
        verdict, store = await state.admit(ask(quota))
        assert verdict.allowed and store is state.primary
        await trio.to_thread.run_sync(own_redis.stop)
        with trio.fail_after(TIMEOUT * 3):  # bounded: one timeout, not a hang
            verdict, store = await state.admit(ask(quota))
        assert verdict.allowed and store is state.local  # served, and counted here
        assert (await state.admit(ask(quota)))[0].reason == "requests"  # the limit holds locally
        assert _sample(metrics, "sluice_state_store_available") == 0
        assert _sample(metrics, "sluice_state_store_errors_total", operation="admit") == 1
        assert _sample(metrics, "sluice_state_store_fallbacks_total", decision="open") == 2
        await state.settle(store, Settlement(ask(quota), "m", Usage(1, 1)))  # no error
        await trio.to_thread.run_sync(own_redis.start)
        await trio.sleep(0.3)  # retry_interval
        verdict, store = await state.admit(ask(quota))
        assert store is state.primary and verdict.allowed  # a new, empty Redis
        assert _sample(metrics, "sluice_state_store_available") == 1


async def test_fail_closed_answers_503(own_redis: RedisServer) -> None:
    metrics = _metrics()
    async with open_shared_state(_settings(own_redis.url, "closed"), metrics) as state:
        await trio.to_thread.run_sync(own_redis.stop)
        with pytest.raises(LimitsUnavailable) as refused:
            await state.admit(ask(Quota(rpm=60)))
        assert refused.value.status == 503 and refused.value.retry_after
        assert _sample(metrics, "sluice_state_store_fallbacks_total", decision="closed") == 1


async def test_a_redis_that_does_not_answer_is_bounded(own_redis: RedisServer) -> None:
    metrics = _metrics()
    async with open_shared_state(_settings(own_redis.url, "open"), metrics) as state:
        assert (await state.admit(ask(Quota(rpm=60))))[0].allowed  # connected
        assert own_redis.command("CLIENT", "PAUSE", "2000", "ALL") == b"+OK"  # Redis stalls
        with trio.fail_after(TIMEOUT * 3):
            verdict, store = await state.admit(ask(Quota(rpm=60)))
        assert verdict.allowed and store is state.local
        assert _sample(metrics, "sluice_state_store_errors_total", operation="admit") == 1


async def test_the_renewer_keeps_live_leases(autojump_clock: trio.testing.MockClock) -> None:
    settings = StateSettings(lease_seconds=3.0)
    quota = Quota(max_streams=1)
    async with open_shared_state(settings, _metrics()) as state:
        assert isinstance(state.primary, MemoryStore)
        held = ask(quota)
        assert (await state.admit(held))[0].allowed
        await trio.sleep(10.0)  # three lease lifetimes: renewed all along
        assert (await state.admit(ask(quota)))[0].reason == "streams"
        await state.settle(state.primary, Settlement(held, "m", Usage(1, 1)))
        assert (await state.admit(ask(quota)))[0].allowed
