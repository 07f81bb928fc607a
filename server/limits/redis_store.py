"""The state store in Redis, through coredis: one set of limits for every worker and instance.

Opened once per worker, in the serving lifespan (`open_redis_store` is an
``async with``: coredis's pool runs its connections in a task group that the
task entering it must also exit — Quart runs ``before_serving`` and
``after_serving`` in the one lifespan task). Requests only use it.

Each operation is one round trip: a Lua script (`server/limits/scripts/`)
that reads the server's clock with ``TIME`` and checks or changes all of a
principal's state atomically. Every call is bounded by ``timeout``; a call
that fails or runs out of time raises `StoreUnavailable`, and
`server.limits.shared_state` decides what that means (fail open or closed).

**Key layout.** ``<prefix>:v1:{<key id>}:<what>``. The braces are a Redis
Cluster hash tag: all of one principal's keys live in one slot, so each
script touches one slot. **Versions.** The ``v1`` is the version of the
layout and of the scripts (``sluice_admit_v1``...): a change of either
gets a new version, so during a rolling deploy old and new gateways never
run different scripts against the same keys.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Any, TypeVar

import anyio
import coredis
import trio
from coredis.commands.script import Script
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import NoScriptError, RedisError

from server.keys.record import KeyRecord
from server.limits.state_settings import StateSettings
from server.limits.store import (
    USAGE_FIELDS,
    Admission,
    KeyNameTaken,
    Settlement,
    StoreUnavailable,
    UsageTotals,
    Verdict,
    Window,
)

VERSION = "v1"
T = TypeVar("T")

# What a failing or slow Redis call may raise through coredis and anyio.
_FAILURES = (RedisError, OSError, TimeoutError, trio.TooSlowError, anyio.BrokenResourceError,
             anyio.ClosedResourceError, anyio.EndOfStream)


def _script(name: str) -> str:
    return (resources.files("server.limits") / "scripts" / f"{name}.lua").read_text()


ADMIT, SETTLE, RENEW = _script("admit"), _script("settle"), _script("renew")


@asynccontextmanager
async def open_redis_store(settings: StateSettings) -> AsyncIterator[RedisStore]:
    """A `RedisStore` on a coredis client for ``settings.url``, closed when the block ends.

    Nothing connects here: the first command does, so a Redis that is down at
    start-up does not stop the gateway (its calls fail until Redis is back).
    """
    # No stream_timeout: every call is bounded by our own `timeout` (`_bound`), and
    # coredis would add a cancel scope of its own to each reply it waits for.
    client: coredis.Redis[str] = coredis.Redis.from_url(
        settings.url, decode_responses=True, connect_timeout=settings.connect_timeout,
        max_connections=settings.max_connections)
    async with client:
        store = RedisStore(client, prefix=settings.prefix, timeout=settings.timeout,
                           lease_seconds=settings.lease_seconds)
        try:
            yield store
        finally:
            store.closed = True  # a request ending late fails cleanly, not on a closed pool


class RedisStore:
    def __init__(self, client: coredis.Redis[str], *, prefix: str, timeout: float,
                 lease_seconds: float) -> None:
        self._client = client
        self._root = f"{prefix}:{VERSION}"
        self._timeout = timeout
        self._lease_ms = round(lease_seconds * 1000)
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._renew = client.register_script(RENEW)
        self.closed = False

    def _key(self, principal: str, what: str) -> str:
        return f"{self._root}:{{{principal}}}:{what}"

    async def _bounded(self, what: str, call: Awaitable[T]) -> T:
        with self._bound(what):
            return await call
        raise AssertionError("unreachable")  # for mypy: `_bound` does not swallow

    @contextmanager
    def _bound(self, what: str) -> Iterator[None]:
        """Bound the block by ``timeout``; its failures become `StoreUnavailable`."""
        if self.closed:
            raise StoreUnavailable(f"redis {what}: the store is closed")
        try:
            with trio.fail_after(self._timeout):
                yield
        except _FAILURES as error:
            raise StoreUnavailable(f"redis {what}: {error!r}") from error

    async def admit(self, admission: Admission) -> Verdict:
        p, quota, periods = admission.principal, admission.quota, admission.periods
        reply: list[Any] = await self._bounded("admit", self._eval(self._admit,
            [self._key(p, "key"), self._key(p, "tat"), self._key(p, "bucket"),
             self._key(p, "leases"), self._key(p, f"budget:daily_tokens:{periods.day}"),
             self._key(p, f"budget:monthly_tokens:{periods.month}"),
             self._key(p, f"budget:monthly_spend:{periods.month}")],
            [int(admission.check_record), repr(quota.rpm), quota.request_burst, quota.tpm,
             admission.tokens, quota.max_streams, admission.lease, self._lease_ms,
             quota.daily_tokens, quota.monthly_tokens, repr(quota.monthly_spend),
             repr(admission.spend)]))
        allowed, reason, retry_ms, req_left, req_reset, tok_left, tok_reset = reply
        requests = (Window(quota.request_burst, int(req_left), int(req_reset) / 1000)
                    if int(req_left) >= 0 else None)
        tokens = Window(quota.tpm, int(tok_left), int(tok_reset) / 1000) \
            if int(tok_left) >= 0 else None
        return Verdict(bool(int(allowed)), str(reason) or None, int(retry_ms) / 1000,
                       requests, tokens)

    async def settle(self, settlement: Settlement) -> None:
        admission, usage = settlement.admission, settlement.usage
        p, quota, periods = admission.principal, admission.quota, admission.periods
        await self._bounded("settle", self._eval(self._settle,
            [self._key(p, "bucket"), self._key(p, "leases"), self._key(p, "released"),
             self._key(p, f"budget:daily_tokens:{periods.day}"),
             self._key(p, f"budget:monthly_tokens:{periods.month}"),
             self._key(p, f"budget:monthly_spend:{periods.month}"),
             self._key(p, f"usage:{periods.day}"), self._key(p, f"usage:{periods.month}")],
            [admission.lease, self._lease_ms if quota.max_streams else 0, quota.tpm,
             usage.tokens - admission.tokens, int(bool(quota.daily_tokens)),
             int(bool(quota.monthly_tokens)), int(bool(quota.monthly_spend)),
             repr(usage.spend - admission.spend), settlement.model, usage.prompt_tokens,
             usage.completion_tokens, int(usage.cut), repr(usage.spend)]))

    async def _eval(self, script: Script[str], keys: list[str], args: list[Any]) -> Any:
        """``EVALSHA`` straight on a pooled connection, for the two calls of every request.

        coredis's own command path (retry policy, telemetry span, type adapters,
        response callbacks) cost ~0.2 ms of CPU more per call, sequential, and
        twice that with 50 requests at once (measured on this machine); the
        connection's request is the same multiplexed round trip without them.
        Redis may have lost the script (a restart): it is loaded and asked
        again; a pooled connection may have died with it: a new one is taken.
        """
        pool = self._client.connection_pool
        for attempt in (1, 2):
            connection = await pool.get_connection()
            try:
                request = connection.create_request(b"EVALSHA", script.sha, len(keys), *keys,
                                                    *args)
            finally:
                pool.release(connection)  # commands share connections: release before the reply
            try:
                return await request
            except NoScriptError:
                if attempt == 2:
                    raise
                await self._client.script_load(script.script)
            except RedisConnectionError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def renew(self, leases: Sequence[tuple[str, str]]) -> None:
        by_principal: defaultdict[str, list[str]] = defaultdict(list)
        for principal, lease in leases:
            by_principal[principal].append(lease)
        with self._bound("renew"):
            # One round trip for all: the pipeline is sent as its block ends.
            async with self._client.pipeline(transaction=False) as pipeline:
                for principal, ids in by_principal.items():
                    self._renew([self._key(principal, "leases"),
                                 self._key(principal, "released")],
                                [self._lease_ms, *ids], client=pipeline)

    async def usage(self, principal: str, period: str) -> UsageTotals:
        raw: dict[str, str] = await self._bounded(
            "usage", self._client.hgetall(self._key(principal, f"usage:{period}")))
        totals: dict[str, dict[str, float]] = {}
        for name, value in raw.items():
            field, _, model = name.partition(":")
            if field in USAGE_FIELDS:
                totals.setdefault(model, dict.fromkeys(USAGE_FIELDS, 0.0))[field] = float(value)
        return totals

    # ---------------------------------------------------------------- key records

    async def create_key(self, record: KeyRecord) -> None:
        names = f"{self._root}:key-names"
        taken = not await self._bounded("create key",
                                        self._client.hsetnx(names, record.name, record.id))
        if taken:
            raise KeyNameTaken(record.name)
        await self._write_record(record)

    async def save_key(self, record: KeyRecord) -> None:
        old = await self.get_key(record.id)
        if old is not None and old.name != record.name:
            names = f"{self._root}:key-names"
            if not await self._bounded("rename key",
                                       self._client.hsetnx(names, record.name, record.id)):
                raise KeyNameTaken(record.name)
            await self._bounded("rename key", self._client.hdel(names, [old.name]))
        await self._write_record(record)

    async def _write_record(self, record: KeyRecord) -> None:
        state = "active" if record.revoked_at is None else "revoked"
        mapping: dict[str | bytes, Any] = {"doc": record.to_json().decode(), "state": state}
        await self._bounded("save key", self._client.hset(self._key(record.id, "key"), mapping))
        await self._bounded("save key", self._client.sadd(f"{self._root}:keys", [record.id]))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        doc = await self._bounded("get key", self._client.hget(self._key(key_id, "key"), "doc"))
        return None if doc is None else KeyRecord.from_json(doc)

    async def list_keys(self) -> list[KeyRecord]:
        ids = await self._bounded("list keys", self._client.smembers(f"{self._root}:keys"))
        records = [await self.get_key(key_id) for key_id in sorted(ids)]
        return sorted((r for r in records if r is not None), key=lambda r: r.created_at)
