"""The state store: what API keys' limits and usage need to share, behind one interface.

Two stores implement `StateStore`: `server.limits.memory_store` (one
process: tests, a single worker) and `server.limits.redis_store` (every
worker of every instance against one Redis). The config chooses
(``[state] backend``); `server.limits.shared_state` wraps either with the
time bound and the fail-open/closed policy. The contract tests
(`tests/limits/test_store_contract.py`) run the same cases against both.

A request's life, as the store sees it::

    verdict = await store.admit(admission)     # all limits at once, all or nothing
    ...                                        # the stream runs; `renew` keeps its lease
    await store.settle(Settlement(admission, model, usage))
                                               # refund/charge tokens, release the lease,
                                               # add to the key's usage for the day and month

`admit` checks every limit before it changes anything, so a refused request
costs the principal nothing. Periods (``2026-01-31``, ``2026-01``) are UTC
and named by the caller, so both stores bucket budgets and usage alike.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from server.keys.record import KeyRecord
from server.limits.quota import Quota

# Why a request was refused (`Verdict.reason`), in the order they are checked.
REASONS = ("revoked", "requests", "tokens", "streams", "daily_tokens", "monthly_tokens",
           "monthly_spend")
# What the store counts per key, model and period (`usage`).
USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "streams_cut", "spend")


class StoreUnavailable(Exception):
    """The store did not answer in time, or failed; the caller applies ``on_error``."""


class KeyNameTaken(Exception):
    """Another key already has this name (names label metrics: they must be unique)."""


@dataclass(frozen=True, slots=True)
class Periods:
    """The UTC day and month a request counts against."""

    day: str  # "2026-01-31"
    month: str  # "2026-01"

    @classmethod
    def at(cls, unix_time: float) -> Periods:
        moment = datetime.fromtimestamp(unix_time, UTC)
        return cls(moment.strftime("%Y-%m-%d"), moment.strftime("%Y-%m"))


@dataclass(frozen=True, slots=True)
class Admission:
    """One request asking to start."""

    principal: str  # the key's public id
    quota: Quota
    tokens: int  # the reservation: estimated prompt tokens + max_tokens (or the cap)
    spend: float  # the reservation's price (0 without a price for the model)
    periods: Periods
    check_record: bool = False  # refuse unless the principal's stored record is active
    lease: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass(frozen=True, slots=True)
class Window:
    """A limit as the ``x-ratelimit-*`` headers show it."""

    limit: int
    remaining: int
    reset: float  # seconds until it is whole again


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str | None = None  # one of REASONS when refused
    retry_after: float = 0.0  # seconds (for budgets: the caller knows when the period ends)
    requests: Window | None = None  # with an rpm limit
    tokens: Window | None = None  # with a tpm limit


@dataclass(frozen=True, slots=True)
class Usage:
    """What a finished request really used."""

    prompt_tokens: int
    completion_tokens: int
    spend: float = 0.0
    cut: bool = False  # the stream did not complete (client left, upstream failed...)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Settlement:
    admission: Admission
    model: str
    usage: Usage


UsageTotals = Mapping[str, Mapping[str, float]]  # model -> field (USAGE_FIELDS) -> total


class StateStore(Protocol):
    async def admit(self, admission: Admission) -> Verdict:
        """Check every limit of the admission's quota; take them all, or nothing."""
        ...

    async def settle(self, settlement: Settlement) -> None:
        """Turn the reservation into real usage, release the lease, count the usage."""
        ...

    async def renew(self, leases: Sequence[tuple[str, str]]) -> None:
        """Extend the leases (principal, lease id) of requests still running."""
        ...

    async def usage(self, principal: str, period: str) -> UsageTotals:
        """Per-model totals for a day (``2026-01-31``) or a month (``2026-01``)."""
        ...

    async def create_key(self, record: KeyRecord) -> None:
        """Store a new key; `KeyNameTaken` if its name is in use."""
        ...

    async def save_key(self, record: KeyRecord) -> None:
        """Replace an existing key's record (an update or a revocation)."""
        ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]: ...
