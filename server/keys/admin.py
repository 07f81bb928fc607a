"""Managing keys at run time: make, list, change, revoke, and read their usage.

One service behind both the admin API (`server.keys.admin_api`) and the
``sluice keys`` command (`server.keys.cli`), over a state store. Keys from
the config file are listed too, but are the file's: they cannot be changed
or revoked here (edit the file and restart).

    admin = KeyAdmin(settings.auth.keys, store)
    record, key = await admin.create({"name": "team-a", "rpm": 60})   # `key`: show it once
    await admin.revoke(record.id)
    await admin.usage(record.id, "2026-01")
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from server.keys.record import KeyRecord, key_fields
from server.keys.secret import new_key
from server.limits.store import USAGE_FIELDS, KeyNameTaken, Periods, StateStore

PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?")


class KeyNotFound(LookupError):
    """No key has this id."""


class StaticKey(ValueError):
    """The key comes from the config file: change it there."""


class KeyAdmin:
    def __init__(self, static: tuple[KeyRecord, ...], store: StateStore, *,
                 on_change: Callable[[str], None] = lambda key_id: None,
                 wall: Callable[[], float] = time.time) -> None:
        self._static = {record.id: record for record in static}
        self._store = store
        self._on_change = on_change
        self._wall = wall

    async def create(self, document: Mapping[str, Any]) -> tuple[KeyRecord, str]:
        """A new key: its record, and the key itself (shown once, stored only as a hash)."""
        fields = key_fields(document)
        if any(record.name == fields["name"] for record in self._static.values()):
            raise KeyNameTaken(fields["name"])
        key = new_key()
        record = KeyRecord(id=key.id, hash=key.hash, created_at=self._wall(), **fields)
        await self._store.create_key(record)
        return record, key.text

    async def list(self) -> list[KeyRecord]:
        return [*self._static.values(), *await self._store.list_keys()]

    async def get(self, key_id: str) -> KeyRecord:
        record = self._static.get(key_id) or await self._store.get_key(key_id)
        if record is None:
            raise KeyNotFound(key_id)
        return record

    async def update(self, key_id: str, document: Mapping[str, Any]) -> KeyRecord:
        record = await self._stored(key_id)
        fields = key_fields(document, base=record)
        if any(other.name == fields["name"] for other in self._static.values()):
            raise KeyNameTaken(fields["name"])
        updated = dataclasses.replace(record, **fields)
        await self._store.save_key(updated)
        self._on_change(key_id)
        return updated

    async def revoke(self, key_id: str) -> KeyRecord:
        record = await self._stored(key_id)
        if record.revoked_at is None:
            record = dataclasses.replace(record, revoked_at=self._wall())
            await self._store.save_key(record)
        self._on_change(key_id)
        return record

    async def usage(self, key_id: str, period: str | None = None) -> dict[str, Any]:
        """The key's usage per model and in total, for a UTC day or month (default: this month)."""
        record = await self.get(key_id)
        period = period or Periods.at(self._wall()).month
        if not PERIOD.fullmatch(period):
            raise ValueError(f"period: expected YYYY-MM or YYYY-MM-DD, got {period!r}")
        models = await self._store.usage(key_id, period)
        total = {field: sum(counts[field] for counts in models.values())
                 for field in USAGE_FIELDS}
        return {"object": "usage", "key": {"id": record.id, "name": record.name,
                                           "prefix": record.prefix},
                "period": period, "models": {m: dict(c) for m, c in models.items()},
                "total": total}

    async def _stored(self, key_id: str) -> KeyRecord:
        if key_id in self._static:
            raise StaticKey(key_id)
        record = await self._store.get_key(key_id)
        if record is None:
            raise KeyNotFound(key_id)
        return record
