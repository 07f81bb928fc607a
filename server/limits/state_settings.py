"""``[state]``: where API keys' limits and usage are kept, and what happens when it fails.

    [state]
    backend = "redis"                    # "memory" (default): this process only
    url = "redis://127.0.0.1:6379/0"     # redis://, rediss:// (TLS) or unix://
    timeout = 0.25                       # seconds for each Redis call
    on_error = "open"                    # Redis failing: "open" serves and counts locally,
                                         # "closed" answers 503 with Retry-After

Read by `server.config.parse_settings` through `parse_state`; the table is
strict like every other (an unknown key names itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from server.config import _Table

StateBackend = Literal["memory", "redis"]
OnError = Literal["open", "closed"]


@dataclass(frozen=True, slots=True)
class StateSettings:
    backend: StateBackend = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "sluice"  # of every Redis key (then the layout version, then the key id)
    timeout: float = 0.25  # bound of each Redis call, seconds
    connect_timeout: float = 1.0
    max_connections: int = 16  # per worker; coredis multiplexes calls over them
    on_error: OnError = "open"
    retry_interval: float = 1.0  # after a failure, calls go local (or 503) this long
    lease_seconds: float = 30.0  # a stream slot of a crashed worker frees after this


def parse_state(table: _Table) -> StateSettings:
    from server.config import ConfigError, _non_empty, _one_of, _positive

    d = StateSettings()
    settings = StateSettings(
        backend=table.take("backend", str, d.backend,  # type: ignore[arg-type]
                           _one_of(("memory", "redis"))),
        url=table.take("url", str, d.url, _non_empty),
        prefix=table.take("prefix", str, d.prefix, _non_empty),
        timeout=table.number("timeout", d.timeout),
        connect_timeout=table.number("connect_timeout", d.connect_timeout),
        max_connections=table.take("max_connections", int, d.max_connections, _positive),
        on_error=table.take("on_error", str, d.on_error,  # type: ignore[arg-type]
                            _one_of(("open", "closed"))),
        retry_interval=table.number("retry_interval", d.retry_interval, allow_zero=True),
        lease_seconds=table.number("lease_seconds", d.lease_seconds),
    )
    if not settings.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{table.path}.url: expected a redis://, rediss:// or unix:// URL")
    if "{" in settings.prefix or "}" in settings.prefix:
        raise ConfigError(f"{table.path}.prefix: must not contain braces (the key id's "
                          "hash tag follows it)")
    table.finish()
    return settings
