"""What a stream used, read from the upstream's usage chunk as it passes the writer.

With API keys, a request's tokens are reserved before it starts and
settled from its real usage when it ends. The usage comes from the upstream
(`stream_options.include_usage`, which the gateway then asks for on every
metered stream); a client that did not ask for it must not get the usage
chunk, so the writer strips it. `UsageMeter` does both for the writers of
`server.stream.writers` and `server.api.browser_chat_writers`:

    payloads = meter.take(payloads)     # SSE writers: note the usage, drop it if unwanted
    add = meter.watch(add)              # single-reply writers: note it on the way in

Finding it costs a substring search per chunk; only a chunk that carries a
non-null ``usage`` is parsed (OpenAI puts ``"usage": null`` on every chunk).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

_USAGE = b'"usage"'


class UsageMeter:
    __slots__ = ("strip", "usage")

    def __init__(self, *, strip: bool) -> None:
        self.strip = strip  # the client did not ask for usage: hide it
        self.usage: dict[str, Any] | None = None  # the last usage the upstream reported

    @property
    def prompt_tokens(self) -> int | None:
        return _count(self.usage, "prompt_tokens")

    @property
    def completion_tokens(self) -> int | None:
        return _count(self.usage, "completion_tokens")

    def take(self, payloads: list[bytes]) -> list[bytes]:
        """Note the usage in ``payloads``; without it if the client did not ask for usage."""
        kept = payloads
        for i, payload in enumerate(payloads):
            if not _may_carry_usage(payload):
                continue
            chunk = orjson.loads(payload)
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if not isinstance(usage, dict):
                continue
            self.usage = usage
            if self.strip:
                if kept is payloads:
                    kept = list(payloads)
                # A usage-only chunk goes; one that also carries a choice keeps the choice.
                kept[i] = b"" if not chunk.get("choices") else orjson.dumps(
                    {key: value for key, value in chunk.items() if key != "usage"})
        return kept if kept is payloads else [payload for payload in kept if payload]

    def watch(self, add: Callable[[dict[str, Any]], object]) -> Callable[[dict[str, Any]], object]:
        """``add``, noting the usage of each parsed chunk first."""
        def adding(chunk: dict[str, Any]) -> object:
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                self.usage = usage
            return add(chunk)

        return adding


def _may_carry_usage(payload: bytes) -> bool:
    """A ``"usage"`` key whose value is not ``null`` (without parsing the chunk)."""
    at = payload.find(_USAGE)
    if at < 0:
        return False
    rest = payload[at + len(_USAGE):].lstrip(b" \t\r\n")
    return rest[:1] == b":" and not rest[1:].lstrip(b" \t\r\n").startswith(b"null")


def _count(usage: dict[str, Any] | None, key: str) -> int | None:
    value = None if usage is None else usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
