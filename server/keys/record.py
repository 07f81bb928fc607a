"""One API key's record: who it is, what it may use, and its limits.

A record holds everything about a key but the key itself: its public id,
the SHA-256 of the key, a unique name (the label of its metrics), the models
it may use and an optional alias map, its `Quota`, an expiry and free-form
metadata. The same fields come from three places — a ``[[auth.keys]]`` table
in the config, the admin API's JSON and the ``sluice keys`` command — so one
pure function reads them all (`key_fields`), and one pair turns a record into
JSON and back for the store.

    fields = key_fields({"name": "team-a", "rpm": 60, "models": ["llama3"]})
    record = KeyRecord(id=key.id, hash=key.hash, created_at=now, **fields)
    record.resolve("gpt-4o")         # the model served (alias applied), or None: not allowed
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import orjson

from server.keys.secret import public_prefix
from server.limits.quota import Quota

NAME_SHAPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_INT_QUOTA = ("burst", "tpm", "max_streams", "daily_tokens", "monthly_tokens")
_FLOAT_QUOTA = ("rpm", "monthly_spend")
SETTABLE = frozenset({"name", "models", "aliases", "expires_at", "metadata",
                      *_INT_QUOTA, *_FLOAT_QUOTA})


class KeyFieldError(ValueError):
    """A key field is wrong; ``field`` names it (the caller adds where it came from)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    hash: str
    created_at: float
    models: tuple[str, ...] = ()  # empty: every model served
    aliases: Mapping[str, str] = field(default_factory=dict)  # client's name -> served name
    quota: Quota = field(default_factory=Quota)
    expires_at: float | None = None  # Unix time
    metadata: Mapping[str, Any] = field(default_factory=dict)
    revoked_at: float | None = None
    static: bool = False  # from the config file: not changeable at run time

    @property
    def prefix(self) -> str:
        return public_prefix(self.id)

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def resolve(self, model: str) -> str | None:
        """The model to serve for ``model`` (after the alias map), or None if not allowed."""
        served = self.aliases.get(model, model)
        if self.models and "*" not in self.models and served not in self.models:
            return None
        return served

    def visible(self, served: tuple[str, ...]) -> tuple[str, ...]:
        """What ``/v1/models`` shows this key: the served names it may use, then its aliases."""
        names = [name for name in served if self.resolve(name) == name]
        names += [alias for alias in self.aliases if self.resolve(alias) is not None]
        return tuple(dict.fromkeys(names))

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the hash."""
        document = self.document()
        del document["hash"]
        document["prefix"] = self.prefix
        document["static"] = self.static
        return document

    def document(self) -> dict[str, Any]:
        quota = dataclasses.asdict(self.quota)
        return {"id": self.id, "name": self.name, "hash": self.hash,
                "models": list(self.models), "aliases": dict(self.aliases), **quota,
                "expires_at": self.expires_at, "metadata": dict(self.metadata),
                "created_at": self.created_at, "revoked_at": self.revoked_at}

    def to_json(self) -> bytes:
        return orjson.dumps(self.document())

    @classmethod
    def from_json(cls, raw: bytes | str) -> KeyRecord:
        document = orjson.loads(raw)
        fields = key_fields({k: v for k, v in document.items() if k in SETTABLE})
        return cls(id=document["id"], hash=document["hash"],
                   created_at=document["created_at"], revoked_at=document.get("revoked_at"),
                   **fields)


def key_fields(document: Mapping[str, Any], *, base: KeyRecord | None = None) -> dict[str, Any]:
    """The settable fields of ``document`` as `KeyRecord` keyword arguments.

    Without ``base`` every field but ``name`` is optional; with it, the
    fields not given keep the base record's values (an update).
    """
    unknown = sorted(set(document) - SETTABLE)
    if unknown:
        raise KeyFieldError(unknown[0], "unknown field")
    quota = dataclasses.asdict(base.quota) if base else {}
    for key in _INT_QUOTA:
        if key in document:
            quota[key] = _count(key, document[key])
    for key in _FLOAT_QUOTA:
        if key in document:
            quota[key] = _amount(key, document[key])
    name = document.get("name", base.name if base else None)
    if not isinstance(name, str) or not NAME_SHAPE.fullmatch(name):
        raise KeyFieldError("name", "required: 1-64 letters, digits, '.', '_' or '-'")
    fields: dict[str, Any] = {"name": name, "quota": Quota(**quota)}
    if base is not None:
        fields.update(models=base.models, aliases=base.aliases, expires_at=base.expires_at,
                      metadata=base.metadata)
    if "models" in document:
        models = document["models"]
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise KeyFieldError("models", "expected a list of model names")
        fields["models"] = tuple(models)
    if "aliases" in document:
        aliases = document["aliases"]
        if not isinstance(aliases, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v
                for k, v in aliases.items()):
            raise KeyFieldError("aliases", "expected a table of model name -> model name")
        fields["aliases"] = dict(aliases)
    if "expires_at" in document:
        fields["expires_at"] = _instant("expires_at", document["expires_at"])
    if "metadata" in document:
        if not isinstance(document["metadata"], Mapping):
            raise KeyFieldError("metadata", "expected a table / JSON object")
        fields["metadata"] = dict(document["metadata"])
    return fields


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KeyFieldError(key, f"expected an integer ≥ 0 (0: no limit), got {value!r}")
    return value


def _amount(key: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value)
            or value < 0 or math.isinf(value)):
        raise KeyFieldError(key, f"expected a number ≥ 0 (0: no limit), got {value!r}")
    return float(value)


def _instant(key: str, value: Any) -> float | None:
    """Unix time from a number, an ISO 8601 string, or a TOML date-time (UTC if naive)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise KeyFieldError(key, f"not an ISO 8601 date-time: {value!r}") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise KeyFieldError(key, f"expected Unix time or an ISO 8601 date-time, got {value!r}")
    return float(value)
