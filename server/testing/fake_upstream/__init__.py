"""A fake OpenAI-compatible (and Ollama) model server for tests, benchmarks and load tests.

It streams deterministic ``chat.completion.chunk`` events (token ``i`` is
``"t{i} "``) at a chosen pace and injects the faults real upstreams commit:
HTTP errors, cut or stalled streams, resets, malformed events. It records
every request and every connection's lifetime, so tests can assert that the
gateway let go of an upstream connection when its client left::

    upstream = FakeUpstream(Scenario(tokens=5))
    port = await nursery.start(upstream.serve, 0)
    upstream.script.append(Scenario(stall_after=2))   # the next chat request stalls
    ...
    with trio.fail_after(0.1):
        await upstream.wait_all_closed()

Like a real Ollama it also speaks Ollama's native API on the same port
(``POST /api/chat`` as NDJSON, ``GET /api/tags``), with the same scenarios:
point a kind ``ollama`` backend at ``upstream.origin``.

Modules, inside out: `scenario` (what a response does), `request` (what the
fake reads from a chat request), `chunks` and `bodies` (OpenAI JSON bytes),
`http11` (minimal HTTP/1.1), `plan` (a response as steps over time),
`ollama` (the Ollama mode's request, lines and plans),
`playback` (writing a plan while watching for the peer), `server`
(`FakeUpstream`), `cli` (``sluice fake-upstream``).
"""

from __future__ import annotations

from server.testing.fake_upstream.records import ConnectionRecord, RecordedRequest
from server.testing.fake_upstream.scenario import Scenario
from server.testing.fake_upstream.server import FakeUpstream

__all__ = ["ConnectionRecord", "FakeUpstream", "RecordedRequest", "Scenario"]
