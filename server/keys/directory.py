"""Finding the record of a presented API key, and deciding whether it is valid.

    record = await directory.authenticate(headers)   # the KeyRecord, or Unauthorized (401)

The key comes from ``Authorization: Bearer <key>`` or ``x-api-key: <key>``.
Its public id finds the record — first among the config file's keys, then in
the state store — and the SHA-256 of the whole key is compared with the
record's in constant time. Expired and revoked keys are refused like
unknown ones; no answer ever repeats the key.

A stored record is cached for ``cache_seconds`` (0.5 s by default) so a busy
key costs no Redis read per request. The cache does not decide revocation
alone: every admission of a stored key also checks, in the same Redis
script, that its record is still active — so a revoked key stops on every
worker and instance with the next request, and at the latest when the cache
turns over. While the store is unreachable a cached record keeps serving;
a key never seen cannot be checked and is answered 503, not 401 (the key may
well be valid).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import trio
from werkzeug.datastructures import Headers

from server.errors import LimitsUnavailable, Unauthorized
from server.keys.metrics import TenancyMetrics
from server.keys.record import KeyRecord
from server.keys.secret import key_id, verify
from server.limits.shared_state import SharedState
from server.limits.store import StoreUnavailable

# Past this many cached ids (most of them, then, made up by someone probing), start afresh.
MAX_CACHED = 10_000


RequestHeaders = Headers | Mapping[str, str]


def presented_key(headers: RequestHeaders) -> str | None:
    """The key a request carries: ``Authorization: Bearer ...`` or ``x-api-key``."""
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get("x-api-key") or None


class KeyDirectory:
    def __init__(self, static: tuple[KeyRecord, ...], state: SharedState,
                 metrics: TenancyMetrics, *, cache_seconds: float,
                 wall: Callable[[], float] = time.time) -> None:
        self._static = {record.id: record for record in static}
        self._state = state
        self._metrics = metrics
        self._cache_seconds = cache_seconds
        self._wall = wall
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}  # id -> (read at, record)

    async def authenticate(self, headers: RequestHeaders) -> KeyRecord:
        presented = presented_key(headers)
        if presented is None:
            self._metrics.unauthorized.labels("missing").inc()
            raise Unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.")
        public_id = key_id(presented)
        record = None if public_id is None else await self.find(public_id)
        if record is None or not verify(presented, record.hash):
            self._metrics.unauthorized.labels("invalid").inc()
            raise Unauthorized("Invalid API key.")
        if not record.active(self._wall()):
            reason = "revoked" if record.revoked_at is not None else "expired"
            self._metrics.unauthorized.labels(reason).inc()
            raise Unauthorized(f"This API key has been {reason}.")
        return record

    async def find(self, public_id: str) -> KeyRecord | None:
        """The record with this id: the config's, else the store's (briefly cached)."""
        if public_id in self._static:
            return self._static[public_id]
        now = trio.current_time()
        cached = self._cache.get(public_id)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        try:
            record = await self._state.get_key(public_id)
        except StoreUnavailable as error:
            if cached is not None:
                return cached[1]  # stale, but the best there is while the store is down
            raise LimitsUnavailable(1.0, detail=f"cannot read key records: {error}") from None
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[public_id] = (now, record)
        return record

    def forget(self, public_id: str) -> None:
        """Drop a cached record (this worker just changed it)."""
        self._cache.pop(public_id, None)
