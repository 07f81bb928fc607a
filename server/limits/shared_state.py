"""The state store as requests use it: bounded in time, failing open or closed, leases renewed.

    async with open_shared_state(settings.state, metrics) as state:   # once per worker
        verdict, store = await state.admit(admission)   # StoreUnavailable never escapes
        ...                                             # the renewer keeps its lease alive
        await state.settle(store, settlement)           # shielded, bounded: in a finally

**When Redis is slow or gone** (``[state] on_error``), a gateway must not
fall over because its limiter did. Each Redis call is bounded by
``timeout``; when one fails, Redis is left alone for ``retry_interval`` and
every request meanwhile is decided without it:

* ``"open"`` (the default): served, and counted in this worker's memory
  store, with the same limits — so a key's limits still hold per worker —
  and settled there too;
* ``"closed"``: refused with 503 and ``Retry-After``.

Either way the failure is logged once per outage (and once when Redis is
back) and counted (``sluice_state_store_errors_total``,
``sluice_state_store_fallbacks_total``, ``sluice_state_store_available``).
Streams in flight are never touched: a settlement that cannot reach Redis
is dropped (its lease expires on its own, its reservation stays charged).

**Leases.** A request admitted under a ``max_streams`` limit holds a lease
that expires after ``lease_seconds`` unless renewed, so a crashed worker
cannot hold a stream slot for ever. One task per worker renews all of the
worker's live leases every third of that, in one round trip — not one timer
per stream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from server.errors import LimitsUnavailable
from server.keys.metrics import TenancyMetrics
from server.keys.record import KeyRecord
from server.limits.memory_store import MemoryStore
from server.limits.redis_store import open_redis_store
from server.limits.state_settings import StateSettings
from server.limits.store import (
    Admission,
    Settlement,
    StateStore,
    StoreUnavailable,
    Verdict,
)

log = logging.getLogger("sluice.state")


@asynccontextmanager
async def open_shared_state(settings: StateSettings,
                            metrics: TenancyMetrics) -> AsyncIterator[SharedState]:
    """The configured store (Redis: one client for this worker) and its lease renewer."""
    local = MemoryStore(settings.lease_seconds)
    async with AsyncExitStack() as stack:
        primary: StateStore = local
        if settings.backend == "redis":
            primary = await stack.enter_async_context(open_redis_store(settings))
        state = SharedState(primary, local, settings, metrics)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(state.renew_leases)
            yield state
            nursery.cancel_scope.cancel("serving ended")


class SharedState:
    def __init__(self, primary: StateStore, local: MemoryStore, settings: StateSettings,
                 metrics: TenancyMetrics) -> None:
        self.primary = primary  # where keys and limits live: Redis, or `local`
        self.local = local  # this worker's own counts (the fallback when failing open)
        self.settings = settings
        self._metrics = metrics
        self._down_until = -math.inf
        self._up = True
        self._leases: dict[str, tuple[str, StateStore]] = {}  # lease -> (principal, store)

    @property
    def shared(self) -> bool:
        return self.primary is not self.local

    @property
    def available(self) -> bool:
        """Should the primary be asked now? (Not within ``retry_interval`` of a failure.)"""
        return not self.shared or trio.current_time() >= self._down_until

    async def admit(self, admission: Admission) -> tuple[Verdict, StateStore]:
        """The verdict, and the store that gave it (which settles the request too)."""
        if self.available:
            try:
                verdict = await self.primary.admit(admission)
            except StoreUnavailable as error:
                self.failed("admit", error)
            else:
                self.succeeded()
                return self._hold(admission, verdict, self.primary)
        if self.settings.on_error == "closed":
            self._metrics.store_fallbacks.labels("closed").inc()
            raise LimitsUnavailable(max(1.0, self.settings.retry_interval),
                                    detail="the state store is unavailable")
        self._metrics.store_fallbacks.labels("open").inc()
        return self._hold(admission, await self.local.admit(admission), self.local)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """A stored key record; `StoreUnavailable` while the primary store is failing."""
        if not self.available:
            raise StoreUnavailable("within retry_interval of a failure")
        try:
            record = await self.primary.get_key(key_id)
        except StoreUnavailable as error:
            self.failed("get_key", error)
            raise
        self.succeeded()
        return record

    async def settle(self, store: StateStore, settlement: Settlement) -> None:
        """Settle with the store that admitted; shielded (it runs as a stream ends)."""
        self._leases.pop(settlement.admission.lease, None)
        if store is self.primary and not self.available:
            self._metrics.store_errors.labels("settle").inc()
            return  # Redis is down: the lease expires on its own
        with trio.CancelScope(shield=True):  # bounded: each store call has its timeout
            try:
                await store.settle(settlement)
            except StoreUnavailable as error:
                self.failed("settle", error)

    async def renew_leases(self) -> None:
        """Forever: renew the live leases, a third of their lifetime apart."""
        while True:
            await trio.sleep(self.settings.lease_seconds / 3)
            for store in {self.primary, self.local}:
                leases = [(principal, lease) for lease, (principal, held_by)
                          in self._leases.items() if held_by is store]
                if not leases or (store is self.primary and not self.available):
                    continue
                try:
                    await store.renew(leases)
                except StoreUnavailable as error:
                    self.failed("renew", error)

    def failed(self, operation: str, error: StoreUnavailable) -> None:
        """Note a failed call: Redis is left alone for ``retry_interval``."""
        self._metrics.store_errors.labels(operation).inc()
        self._down_until = trio.current_time() + self.settings.retry_interval
        if self._up:
            self._up = False
            self._metrics.store_available.set(0)
            log.warning("state store unavailable (%s): %s; failing %s", operation, error,
                        self.settings.on_error)

    def succeeded(self) -> None:
        if not self._up:
            self._up = True
            self._metrics.store_available.set(1)
            log.warning("state store is back")

    def _hold(self, admission: Admission, verdict: Verdict,
              store: StateStore) -> tuple[Verdict, StateStore]:
        if verdict.allowed and admission.quota.max_streams:
            self._leases[admission.lease] = (admission.principal, store)
        return verdict, store
