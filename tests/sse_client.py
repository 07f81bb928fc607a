"""A test client's view of a Sluice stream: raw bytes, events and when each arrived."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio


@dataclass
class Received:
    status: int
    headers: httpx.Headers
    raw: bytes = b""
    events: list[bytes] = field(default_factory=list)  # data payloads, in order
    arrivals: list[float] = field(default_factory=list)  # trio.current_time() per event

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.events if e != b"[DONE]"]

    @property
    def content(self) -> str:
        return "".join(
            choice["delta"].get("content") or ""
            for chunk in self.chunks if "choices" in chunk
            for choice in chunk["choices"]
        )

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [chunk["error"] for chunk in self.chunks if "error" in chunk]

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == b"[DONE]"


def _split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete ``data:`` events from Sluice's output (which uses LF only)."""
    events = []
    while b"\n\n" in buffer:
        block, buffer = buffer.split(b"\n\n", 1)
        lines = [line for line in block.split(b"\n") if not line.startswith(b":")]
        data = [line[6:] for line in lines if line.startswith(b"data: ")]
        if data:
            events.append(b"\n".join(data))
    return events, buffer


async def receive_stream(response: httpx.Response, *, stop_after: int | None = None) -> Received:
    """Read a streamed response, stamping each event; stop early after N content events."""
    received = Received(response.status_code, response.headers)
    pending = b""
    content_events = 0
    async for raw in response.aiter_raw():
        received.raw += raw
        pending += raw
        # Keepalive comments have no blank line after them: drop them before splitting.
        while pending.startswith(b": keepalive\n"):
            pending = pending[len(b": keepalive\n"):]
        events, pending = _split_events(pending)
        now = trio.current_time()
        for event in events:
            received.events.append(event)
            received.arrivals.append(now)
            if b'"content"' in event and b'"content":""' not in event:
                content_events += 1
        if stop_after is not None and content_events >= stop_after:
            break
    return received
