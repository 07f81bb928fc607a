"""The state store in one process's memory: for a single worker, tests, and failing open.

Everything `server.limits.redis_store` keeps in Redis, kept in dicts and
computed with the same pure arithmetic (`server.limits.quota`) on
`trio.current_time()` — so under `trio.testing.MockClock` the contract
tests run it in virtual time. It shares nothing: with several workers each
has its own counts (the limit times the workers), which is why
``[state] backend = "redis"`` exists. It is also the local fallback that
counts while Redis is unreachable and ``on_error = "open"``.

Memory stays bounded by the keys: per principal one TAT, one bucket, its
live leases, the budget counters of the current day and month only (a new
period starts from zero), and its usage per period.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import trio

from server.keys.record import KeyRecord
from server.limits.quota import bucket_admits, bucket_reset, gcra, refill
from server.limits.store import (
    USAGE_FIELDS,
    Admission,
    KeyNameTaken,
    Settlement,
    UsageTotals,
    Verdict,
    Window,
)

# When a request is refused for want of a stream slot, nothing says when one
# frees up: streams end when they end. Clients are told to try again after this.
STREAMS_RETRY_AFTER = 1.0


class MemoryStore:
    def __init__(self, lease_seconds: float = 30.0) -> None:
        self._lease_ms = lease_seconds * 1000
        self._tat: dict[str, float] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (level, at ms)
        self._leases: dict[str, dict[str, float]] = {}  # principal -> lease -> expiry ms
        # (principal, budget reason) -> (period, amount): the current period only
        self._budgets: dict[tuple[str, str], tuple[str, float]] = {}
        self._usage: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
        self._keys: dict[str, KeyRecord] = {}

    async def admit(self, admission: Admission) -> Verdict:
        await trio.lowlevel.checkpoint()
        now = trio.current_time() * 1000
        principal, quota = admission.principal, admission.quota
        if admission.check_record:
            record = self._keys.get(principal)
            if record is None or record.revoked_at is not None:
                return Verdict(False, "revoked")
        requests = tokens = None
        tat = None
        if quota.rpm:
            step = gcra(self._tat.get(principal), now, 60_000 / quota.rpm, quota.request_burst)
            requests = Window(quota.request_burst, step.remaining, step.reset / 1000)
            if not step.allowed:
                return Verdict(False, "requests", step.retry_after / 1000, requests)
            tat = step.tat
        level = 0.0
        if quota.tpm:
            rate = quota.tpm / 60_000
            level = self._level(principal, now, quota.tpm)
            ok, wait = bucket_admits(level, admission.tokens, quota.tpm, rate)
            after = level - admission.tokens if ok else level
            tokens = Window(quota.tpm, max(0, math.floor(after)),
                            bucket_reset(after, quota.tpm, rate) / 1000)
            if not ok:
                return Verdict(False, "tokens", wait / 1000, requests, tokens)
        leases = self._leases.setdefault(principal, {})
        if quota.max_streams:
            for lease in [lease for lease, expiry in leases.items() if expiry <= now]:
                del leases[lease]
            if len(leases) >= quota.max_streams:
                return Verdict(False, "streams", STREAMS_RETRY_AFTER, requests, tokens)
        for reason, limit, period, _ in _budgets(admission, 0, 0):
            if limit and self._budget(principal, reason, period) >= limit:
                return Verdict(False, reason, 0.0, requests, tokens)
        # Every limit allows it: take them all.
        if tat is not None:
            self._tat[principal] = tat
        if quota.tpm:
            self._buckets[principal] = (level - admission.tokens, now)
        if quota.max_streams:
            leases[admission.lease] = now + self._lease_ms
        self._add_to_budgets(admission, admission.tokens, admission.spend)
        return Verdict(True, None, 0.0, requests, tokens)

    async def settle(self, settlement: Settlement) -> None:
        await trio.lowlevel.checkpoint()
        now = trio.current_time() * 1000
        admission, usage = settlement.admission, settlement.usage
        principal, quota = admission.principal, admission.quota
        self._leases.get(principal, {}).pop(admission.lease, None)
        extra = usage.tokens - admission.tokens  # < 0: a refund
        if quota.tpm:
            level = self._level(principal, now, quota.tpm)
            self._buckets[principal] = (min(quota.tpm, level - extra), now)
        self._add_to_budgets(admission, extra, usage.spend - admission.spend)
        for period in (admission.periods.day, admission.periods.month):
            totals = self._usage.setdefault((principal, period), {}).setdefault(
                settlement.model, dict.fromkeys(USAGE_FIELDS, 0.0))
            totals["requests"] += 1
            totals["prompt_tokens"] += usage.prompt_tokens
            totals["completion_tokens"] += usage.completion_tokens
            totals["streams_cut"] += usage.cut
            totals["spend"] += usage.spend

    async def renew(self, leases: Sequence[tuple[str, str]]) -> None:
        await trio.lowlevel.checkpoint()
        expiry = trio.current_time() * 1000 + self._lease_ms
        for principal, lease in leases:
            held = self._leases.get(principal, {})
            if lease in held:  # a released lease stays released
                held[lease] = expiry

    async def usage(self, principal: str, period: str) -> UsageTotals:
        await trio.lowlevel.checkpoint()
        return {model: dict(totals)
                for model, totals in self._usage.get((principal, period), {}).items()}

    async def create_key(self, record: KeyRecord) -> None:
        await trio.lowlevel.checkpoint()
        self._check_name(record)
        self._keys[record.id] = record

    async def save_key(self, record: KeyRecord) -> None:
        await trio.lowlevel.checkpoint()
        self._check_name(record)
        self._keys[record.id] = record

    async def get_key(self, key_id: str) -> KeyRecord | None:
        await trio.lowlevel.checkpoint()
        return self._keys.get(key_id)

    async def list_keys(self) -> list[KeyRecord]:
        await trio.lowlevel.checkpoint()
        return sorted(self._keys.values(), key=lambda record: record.created_at)

    def _check_name(self, record: KeyRecord) -> None:
        if any(other.name == record.name and other.id != record.id
               for other in self._keys.values()):
            raise KeyNameTaken(record.name)

    def _level(self, principal: str, now: float, capacity: int) -> float:
        level, updated = self._buckets.get(principal, (None, now))
        return refill(level, updated, now, capacity, capacity / 60_000)

    def _budget(self, principal: str, kind: str, period: str) -> float:
        held_period, amount = self._budgets.get((principal, kind), (period, 0.0))
        return amount if held_period == period else 0.0

    def _add_to_budgets(self, admission: Admission, tokens: float, spend: float) -> None:
        for reason, limit, period, amount in _budgets(admission, tokens, spend):
            if limit:
                held = self._budget(admission.principal, reason, period)
                self._budgets[(admission.principal, reason)] = (period, held + amount)


def _budgets(admission: Admission, tokens: float,
             spend: float) -> tuple[tuple[str, float, str, float], ...]:
    """(reason, limit, period, amount) of each budget: what ``tokens``/``spend`` add to."""
    quota, periods = admission.quota, admission.periods
    return (("daily_tokens", quota.daily_tokens, periods.day, tokens),
            ("monthly_tokens", quota.monthly_tokens, periods.month, tokens),
            ("monthly_spend", quota.monthly_spend, periods.month, spend))
