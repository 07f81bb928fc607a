"""End-to-end: spans reach an OTLP/HTTP collector, as ``[telemetry]`` configures them.

The collector is a few lines of HTTP on a loopback port that keeps each
``POST /v1/traces`` body; the bodies are decoded with OpenTelemetry's own
protobuf messages. Sluice exports with its configured exporter (the SDK's
OTLP/HTTP one, batched in its thread); the last batch is flushed when
serving ends.
"""

from __future__ import annotations

import gzip

import httpx
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from server.testing.fake_upstream import FakeUpstream
from tests.conftest import PROMPTLY, chat_body, running_sluice
from tests.e2e.test_failover import URL, two_tier
from tests.e2e.test_failover import fallback as fallback
from tests.e2e.test_failover import primary as primary


class Collector:
    """Keeps the body of each request; answers 200 and closes."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._answer, listeners)

    async def _answer(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += await stream.receive_some(65536)
            if b"content-encoding: gzip" in head.lower():
                body = gzip.decompress(body)
            self.requests.append((head, body))
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                                  b"Content-Length: 0\r\nConnection: close\r\n\r\n")


async def test_spans_are_exported_to_the_configured_otlp_endpoint(
    nursery: trio.Nursery, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    collector = Collector()
    await nursery.start(collector.serve)
    endpoint = f"http://127.0.0.1:{collector.port}/v1/traces"
    settings = two_tier(primary, fallback, telemetry={
        "traces": True, "service_name": "sluice-test", "endpoint": endpoint})
    async with running_sluice(settings) as sluice, httpx.AsyncClient(timeout=10) as client:
        response = await client.post(sluice.base_url + URL, json=chat_body(stream=False))
        assert response.status_code == 200
    # Serving has ended: the batch was flushed to the collector.
    with trio.fail_after(PROMPTLY):
        while not collector.requests:  # noqa: ASYNC110  (the exporter is another thread)
            await trio.sleep(0.01)
    head, body = collector.requests[0]
    assert head.startswith(b"POST /v1/traces HTTP/1.1")
    exported = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = exported.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "sluice-test"
    names = sorted(span.name for scope in resource_spans.scope_spans for span in scope.spans)
    assert names == ["POST /v1/chat/completions", "chat fake-model"]
