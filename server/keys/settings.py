"""``[auth]``: API keys in the config file, the admin key, and the price table.

    [auth]
    admin_key_env = "SLUICE_ADMIN_KEY"   # turns on the admin API and run-time keys
    reserve_tokens = 1024                # max_tokens assumed for requests that set none

    [[auth.keys]]                        # a key kept in the file (its hash only)
    id = "0a1b2c3d4e5f"
    hash = "9f86d0...(64 hex digits)"
    name = "team-a"
    models = ["llama3"]
    rpm = 60
    tpm = 100000

    [auth.prices."llama3"]               # per million tokens, in any one currency
    prompt = 0.5
    completion = 1.5

Keys are required as soon as there is one in the file or an admin key:
without either, Sluice stays open (the embedded default needs no set-up).
``sluice keys new`` makes a key and prints its ``[[auth.keys]]`` table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from server.keys.record import KeyFieldError, KeyRecord, key_fields
from server.keys.secret import HASH_SHAPE, ID_SHAPE

if TYPE_CHECKING:
    from server.config import _Table


@dataclass(frozen=True, slots=True)
class Price:
    """Per million tokens."""

    prompt: float = 0.0
    completion: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1e6


@dataclass(frozen=True, slots=True)
class AuthSettings:
    keys: tuple[KeyRecord, ...] = ()  # from the file: static, hashes only
    admin_key_env: str | None = None  # the variable holding the admin key
    cache_seconds: float = 0.5  # how long a worker trusts a stored key record it read
    reserve_tokens: int = 1024  # max_tokens reserved for a request that sets none
    metrics_max_keys: int = 1000  # key names labelled in metrics; later ones are "_other"
    prices: Mapping[str, Price] = field(default_factory=dict)  # model -> price

    @property
    def required(self) -> bool:
        """Keys are checked once any exist: in the file, or at run time (an admin key)."""
        return bool(self.keys) or self.admin_key_env is not None


def parse_auth(table: _Table) -> AuthSettings:
    from server.config import _non_empty, _positive

    d = AuthSettings()
    raw_keys: list[object] = table.take("keys", list, [])
    raw_prices: dict[str, object] = table.take("prices", dict, {})
    settings = AuthSettings(
        keys=_static_keys(raw_keys, f"{table.path}.keys"),
        admin_key_env=table.take("admin_key_env", str, None, _non_empty),
        cache_seconds=table.number("cache_seconds", d.cache_seconds, allow_zero=True),
        reserve_tokens=table.take("reserve_tokens", int, d.reserve_tokens, _positive),
        metrics_max_keys=table.take("metrics_max_keys", int, d.metrics_max_keys, _positive),
        prices={model: _price(raw, f"{table.path}.prices.{model}")
                for model, raw in raw_prices.items()},
    )
    table.finish()
    return settings


def _static_keys(raw_keys: list[object], path: str) -> tuple[KeyRecord, ...]:
    from server.config import ConfigError, _Table

    keys: list[KeyRecord] = []
    for i, raw in enumerate(raw_keys):
        key_table = _Table(_mapping(raw, f"{path}[{i}]"), f"{path}[{i}]")
        key_id = key_table.take("id", str, "")
        if not ID_SHAPE.fullmatch(key_id):
            raise ConfigError(f"{key_table.path}.id: expected the key's id, 12 hex digits")
        digest = key_table.take("hash", str, "")
        if not HASH_SHAPE.fullmatch(digest):
            raise ConfigError(f"{key_table.path}.hash: expected the key's SHA-256 "
                              "(64 hex digits)")
        try:
            fields = key_fields(key_table.remaining)
        except KeyFieldError as error:
            raise ConfigError(f"{key_table.path}.{error}") from None
        if any(other.id == key_id or other.name == fields["name"] for other in keys):
            raise ConfigError(f"{key_table.path}: the same id or name as an earlier key")
        keys.append(KeyRecord(id=key_id, hash=digest, created_at=0.0, static=True, **fields))
    return tuple(keys)


def _price(raw: object, path: str) -> Price:
    from server.config import _Table

    table = _Table(_mapping(raw, path), path)
    price = Price(prompt=table.number("prompt", 0.0, allow_zero=True),
                  completion=table.number("completion", 0.0, allow_zero=True))
    table.finish()
    return price


def _mapping(value: object, path: str) -> Mapping[str, object]:
    from server.config import ConfigError

    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a table")
    return value
