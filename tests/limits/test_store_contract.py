"""The state store's contract, held against both stores: memory (virtual time) and Redis (real).

Every test runs twice. The memory store runs under `MockClock` (its sleeps
are instant and its arithmetic exact); the Redis store runs against a real
``redis-server`` on the real clock, so each wait there is real and each
bound leaves `SLACK` for a loaded machine. Limits are chosen so those waits
stay short (600 requests per minute: one every 100 ms).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from server.keys.record import KeyRecord
from server.limits.memory_store import MemoryStore
from server.limits.quota import Quota
from server.limits.redis_store import open_redis_store
from server.limits.state_settings import StateSettings
from server.limits.store import (
    Admission,
    KeyNameTaken,
    Periods,
    Settlement,
    StateStore,
    Usage,
)

LEASE = 0.5  # seconds a stream's lease lives unless renewed
SLACK = 0.03  # what real time may add to a wait on a busy machine
TODAY = Periods("2026-01-31", "2026-01")
TOMORROW = Periods("2026-02-01", "2026-02")


class WallClock(trio.abc.Clock):
    """Trio's real clock, as an object: a parametrised test takes a Clock either way."""

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.perf_counter()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - self.current_time()


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> trio.abc.Clock:
    return trio.testing.MockClock(autojump_threshold=0) if kind == "memory" else WallClock()


@pytest.fixture
def state_url(kind: str, request: pytest.FixtureRequest) -> str | None:
    return str(request.getfixturevalue("redis_url")) if kind == "redis" else None


@pytest.fixture
async def store(state_url: str | None) -> AsyncIterator[StateStore]:
    if state_url is None:
        yield MemoryStore(lease_seconds=LEASE)
        return
    settings = StateSettings(backend="redis", url=state_url, timeout=2.0,
                             lease_seconds=LEASE)
    async with open_redis_store(settings) as redis:
        yield redis


def ask(quota: Quota, tokens: int = 0, *, principal: str = "k1", spend: float = 0.0,
        periods: Periods = TODAY, check_record: bool = False) -> Admission:
    return Admission(principal, quota, tokens, spend, periods, check_record=check_record)


def used(admission: Admission, prompt: int, completion: int, *, model: str = "m",
         spend: float = 0.0, cut: bool = False) -> Settlement:
    return Settlement(admission, model, Usage(prompt, completion, spend, cut))


async def test_requests_conform_to_the_rate_and_burst(
        store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(rpm=600, burst=3)  # 3 at once, then one every 100 ms
    remaining = []
    for _ in range(3):
        verdict = await store.admit(ask(quota))
        assert verdict.allowed and verdict.requests is not None
        remaining.append(verdict.requests.remaining)
    assert remaining == [2, 1, 0]
    refused = await store.admit(ask(quota))
    assert not refused.allowed and refused.reason == "requests"
    assert 0 < refused.retry_after <= 0.1
    assert refused.requests is not None and refused.requests.limit == 3
    await trio.sleep(refused.retry_after + SLACK)
    assert (await store.admit(ask(quota))).allowed


async def test_a_refused_request_takes_nothing(store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(rpm=600, burst=1, tpm=1000)
    assert (await store.admit(ask(quota, 100))).allowed  # the bucket: 900 left
    refused = await store.admit(ask(quota, 100))
    assert refused.reason == "requests"  # ...and it did not take its 100 tokens
    await trio.sleep(refused.retry_after + SLACK)
    assert (await store.admit(ask(quota, 900))).allowed


async def test_tokens_are_reserved_then_refunded(store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(tpm=1000)
    first = ask(quota, 800)
    verdict = await store.admit(first)
    assert verdict.allowed and verdict.tokens is not None
    assert verdict.tokens.remaining == 200 and verdict.tokens.limit == 1000
    refused = await store.admit(ask(quota, 300))
    assert refused.reason == "tokens"
    assert refused.retry_after == pytest.approx(6.0, abs=0.1)  # 100 tokens at 1000/min
    await store.settle(used(first, 50, 50))  # 700 of the 800 come back
    assert (await store.admit(ask(quota, 300))).allowed


async def test_usage_beyond_the_reservation_is_charged(
        store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(tpm=1000)
    small = ask(quota, 100)
    assert (await store.admit(small)).allowed
    await store.settle(used(small, 100, 1000))  # 1,000 more than reserved: the bucket owes
    refused = await store.admit(ask(quota, 1))
    assert refused.reason == "tokens"
    assert refused.retry_after == pytest.approx(6.06, abs=0.1)  # 101 tokens at 1000/min


async def test_a_reservation_larger_than_the_bucket_runs_when_it_is_full(
        store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(tpm=1000)
    assert (await store.admit(ask(quota, 5000))).allowed
    assert (await store.admit(ask(quota, 1))).reason == "tokens"


async def test_streams_hold_leases_until_settled(store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(max_streams=2)
    first, second = ask(quota), ask(quota)
    assert (await store.admit(first)).allowed
    assert (await store.admit(second)).allowed
    third = await store.admit(ask(quota))
    assert third.reason == "streams" and third.retry_after > 0
    await store.settle(used(first, 1, 1))
    assert (await store.admit(ask(quota))).allowed


async def test_a_rate_only_admission_counts_the_rate_and_takes_no_lease(
        store: StateStore, clock: trio.abc.Clock) -> None:
    """What a resume, a poll or a cancel asks (`Gate.admit_request`): the key's rpm only."""
    full = Quota(rpm=600, burst=2, tpm=1000, max_streams=1)
    stream = ask(full, 100)
    assert (await store.admit(stream)).allowed  # the stream: a request, a lease, 100 tokens
    assert (await store.admit(ask(Quota(rpm=600, burst=2)))).allowed  # a resume beside it
    refused = await store.admit(ask(Quota(rpm=600, burst=2)))
    assert refused.reason == "requests"  # the two share the key's burst
    await store.settle(used(stream, 1, 1))
    await trio.sleep(refused.retry_after + SLACK)
    assert (await store.admit(ask(full))).allowed  # the resume left no lease behind


async def test_a_lease_lives_while_renewed_and_expires_after(
        store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(max_streams=1)
    held = ask(quota)
    assert (await store.admit(held)).allowed
    for _ in range(3):
        await trio.sleep(LEASE * 0.6)
        await store.renew([(held.principal, held.lease)])
        assert (await store.admit(ask(quota))).reason == "streams"
    await trio.sleep(LEASE + SLACK)  # no renewal: as if its worker had crashed
    assert (await store.admit(ask(quota))).allowed


async def test_renewing_a_released_lease_does_not_bring_it_back(
        store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(max_streams=1)
    held = ask(quota)
    assert (await store.admit(held)).allowed
    await store.settle(used(held, 1, 1))
    await store.renew([(held.principal, held.lease)])  # a renewal that was already on its way
    assert (await store.admit(ask(quota))).allowed


async def test_token_budgets_count_reservations_and_settle_to_real_usage(
        store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(daily_tokens=1000, monthly_tokens=5000)
    first, second = ask(quota, 600), ask(quota, 600)
    assert (await store.admit(first)).allowed
    assert (await store.admit(second)).allowed  # 600 used of 1000: still under
    assert (await store.admit(ask(quota, 600))).reason == "daily_tokens"
    await store.settle(used(first, 50, 50))
    await store.settle(used(second, 50, 50))  # 200 really used today
    assert (await store.admit(ask(quota, 600))).allowed
    assert (await store.admit(ask(quota, 10, periods=TOMORROW))).allowed  # a new day
    month = Quota(monthly_tokens=1000)
    assert (await store.admit(ask(month, 1000, principal="k2"))).allowed
    assert (await store.admit(ask(month, 1, principal="k2"))).reason == "monthly_tokens"
    assert (await store.admit(ask(month, 1, principal="k2", periods=TOMORROW))).allowed


async def test_spend_budget(store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(monthly_spend=1.0)
    first = ask(quota, spend=0.6)
    assert (await store.admit(first)).allowed
    assert (await store.admit(ask(quota, spend=0.6))).allowed
    assert (await store.admit(ask(quota, spend=0.01))).reason == "monthly_spend"
    await store.settle(used(first, 1, 1, spend=0.1))  # 0.7 spent
    assert (await store.admit(ask(quota, spend=0.01))).allowed


async def test_usage_is_counted_per_model_for_the_day_and_the_month(
        store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota()
    await store.settle(used(ask(quota), 10, 20, model="llama3", spend=0.25))
    await store.settle(used(ask(quota), 1, 2, model="llama3", spend=0.25))
    await store.settle(used(ask(quota), 5, 0, model="qwen", cut=True))
    for period in ("2026-01-31", "2026-01"):
        totals = await store.usage("k1", period)
        assert totals["llama3"] == {"requests": 2, "prompt_tokens": 11,
                                    "completion_tokens": 22, "streams_cut": 0,
                                    "spend": pytest.approx(0.5)}
        assert totals["qwen"]["streams_cut"] == 1
        assert totals["qwen"]["requests"] == 1
    assert await store.usage("k1", "2026-02-01") == {}
    assert await store.usage("k2", "2026-01") == {}


async def test_principals_do_not_share_limits(store: StateStore, clock: trio.abc.Clock) -> None:
    quota = Quota(rpm=60, burst=1)
    assert (await store.admit(ask(quota, principal="a"))).allowed
    assert (await store.admit(ask(quota, principal="a"))).reason == "requests"
    assert (await store.admit(ask(quota, principal="b"))).allowed


def _record(key_id: str, name: str, **changes: object) -> KeyRecord:
    return KeyRecord(id=key_id, name=name, hash="0" * 64, created_at=float(int(key_id, 16)),
                     **changes)  # type: ignore[arg-type]


async def test_key_records_are_kept_with_unique_names(
        store: StateStore, clock: trio.abc.Clock) -> None:
    one = _record("000000000001", "team-a", models=("llama3",), quota=Quota(rpm=60))
    await store.create_key(one)
    await store.create_key(_record("000000000002", "team-b"))
    assert await store.get_key("000000000001") == one
    assert await store.get_key("00000000000f") is None
    assert [r.name for r in await store.list_keys()] == ["team-a", "team-b"]
    with pytest.raises(KeyNameTaken):
        await store.create_key(_record("000000000003", "team-a"))
    with pytest.raises(KeyNameTaken):
        await store.save_key(_record("000000000002", "team-a"))
    await store.save_key(_record("000000000002", "team-c"))  # a rename frees the old name
    await store.create_key(_record("000000000004", "team-b"))


async def test_an_admission_that_checks_the_record_needs_an_active_one(
        store: StateStore, clock: trio.abc.Clock) -> None:
    record = _record("000000000001", "team-a")
    await store.create_key(record)
    assert (await store.admit(ask(Quota(), principal=record.id, check_record=True))).allowed
    await store.save_key(_record("000000000001", "team-a", revoked_at=1.0))
    refused = await store.admit(ask(Quota(), principal=record.id, check_record=True))
    assert not refused.allowed and refused.reason == "revoked"
    missing = await store.admit(ask(Quota(), principal="00000000000f", check_record=True))
    assert missing.reason == "revoked"
