"""Hiding the upstream's usage chunk from a client that did not ask for it.

With API keys, a request's tokens are reserved before it starts and settled
from its real usage when it ends, so the gateway asks the upstream for
``stream_options.include_usage`` on every metered stream. The usage itself
is recorded where every chunk is read anyway, on the stream's progress
(`server.stream.attempt`); a client that did not ask for it must not get the
usage chunk, so an SSE writer strips it:

    payloads = meter.take(payloads)     # without the usage, for a client that did not ask

Finding it costs a substring search per chunk; only a chunk that carries a
non-null ``usage`` is parsed (OpenAI puts ``"usage": null`` on every chunk).
Requests whose client asked for usage get no meter at all.
"""

from __future__ import annotations

import orjson

_USAGE = b'"usage"'


class UsageMeter:
    """Strips the usage from the chunks of a stream whose client did not ask for it."""

    __slots__ = ()

    def take(self, payloads: list[bytes]) -> list[bytes]:
        """``payloads`` without the usage (the same list when none carries it)."""
        kept = payloads
        for i, payload in enumerate(payloads):
            if not _may_carry_usage(payload):
                continue
            chunk = orjson.loads(payload)
            if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
                continue
            if kept is payloads:
                kept = list(payloads)
            # A usage-only chunk goes; one that also carries a choice keeps the choice.
            kept[i] = b"" if not chunk.get("choices") else orjson.dumps(
                {key: value for key, value in chunk.items() if key != "usage"})
        return kept if kept is payloads else [payload for payload in kept if payload]


def _may_carry_usage(payload: bytes) -> bool:
    """A ``"usage"`` key whose value is not ``null`` (without parsing the chunk)."""
    at = payload.find(_USAGE)
    if at < 0:
        return False
    rest = payload[at + len(_USAGE):].lstrip(b" \t\r\n")
    return rest[:1] == b":" and not rest[1:].lstrip(b" \t\r\n").startswith(b"null")
