"""What the fake upstream saw: one record per request and per connection.

Tests assert on these after (or while) driving the gateway: what the gateway
forwarded, and — the reason the fake exists — when it let go of a connection.
`RecordedRequest` is a frozen snapshot. `ConnectionRecord` is deliberately
mutable: the server fills in ``requests`` and ``closed_at`` as the connection
lives, and a test holding the record sees them change::

    record = upstream.connections[0]
    await upstream.wait_all_closed()
    assert record.closed_at is not None and record.requests == 2
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    method: str
    path: str
    """The request target without its query string."""
    headers: Mapping[str, str]
    """Lower-case names; repeated headers joined with ``", "``."""
    json: dict[str, Any] | None
    """The body parsed as a JSON object, or None if it was empty, not JSON or not an object."""
    received_at: float
    """`trio.current_time()` when the whole request had arrived."""
    body: bytes = b""
    query: str = ""


@dataclass(slots=True, kw_only=True)
class ConnectionRecord:
    opened_at: float
    """`trio.current_time()` when the connection was accepted."""
    closed_at: float | None = None
    """`trio.current_time()` when the server saw the peer leave or closed the connection itself."""
    peer: str
    """The client's ``host:port``."""
    requests: int = 0
    """Requests received on this connection (keep-alive reuse makes it > 1)."""
