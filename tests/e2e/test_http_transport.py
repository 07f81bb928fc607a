"""End-to-end: Sluice's upstream transport over TLS (`server.backends.http`).

Hosted APIs are ``https://``. The fake upstream speaks plain HTTP, so a small
TLS-terminating proxy with a certificate from a test CA (trustme) stands in
front of it. Verification must be on: a backend that does not trust the CA
fails with a clean 502, one configured with ``tls_ca_file`` streams.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme

from server.config import parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, chat_body, running_sluice
from tests.sse_client import receive_stream

URL = "/v1/chat/completions"


async def _pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@pytest.fixture
async def tls_origin(nursery: trio.Nursery, upstream: FakeUpstream,
                     tmp_path: Path) -> tuple[str, str]:
    """(https base URL, CA file) of a TLS proxy in front of the fake upstream."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    plain_port = int(upstream.base_url.split(":")[2].split("/")[0])

    async def forward(tls: trio.SSLStream[trio.SocketStream]) -> None:
        async with tls, await trio.open_tcp_stream("127.0.0.1", plain_port) as plain, \
                trio.open_nursery() as pipes:
            pipes.start_soon(_pipe, tls, plain)
            await _pipe(plain, tls)
            pipes.cancel_scope.cancel()

    listeners = await nursery.start(trio.serve_ssl_over_tcp, forward, 0, server_context)
    port = listeners[0].transport_listener.socket.getsockname()[1]
    return f"https://localhost:{port}/v1", str(ca_file)


def _settings(base_url: str, **extra: Any) -> Any:
    return parse_settings({"backends": [{"name": "tls", "kind": "openai", "base_url": base_url,
                                         "models": ["*"], **extra}],
                           "retry": {"backoff_base": 0.01, "backoff_max": 0.02}})


async def test_an_https_upstream_streams_when_its_ca_is_trusted(
    tls_origin: tuple[str, str], upstream: FakeUpstream
) -> None:
    base_url, ca_file = tls_origin
    async with running_sluice(_settings(base_url, tls_ca_file=ca_file)) as sluice, \
            httpx.AsyncClient() as client:
        for _ in range(2):  # the second stream reuses the TLS connection
            async with client.stream("POST", sluice.base_url + URL,
                                     json=chat_body()) as response:
                got = await receive_stream(response)
            assert got.content == "t0 t1 t2 t3 t4 " and got.done
    assert len(upstream.requests) == 2
    assert [c.requests for c in upstream.connections] == [2]


async def test_an_untrusted_certificate_is_refused_cleanly(
    tls_origin: tuple[str, str], upstream: FakeUpstream
) -> None:
    base_url, _ = tls_origin
    async with running_sluice(_settings(base_url)) as sluice, httpx.AsyncClient() as client:
        response = await client.post(sluice.base_url + URL, json=chat_body())
    assert response.status_code == 502
    assert response.json()["error"]["message"] == (
        "Could not connect to the upstream model server.")
    assert upstream.requests == []  # nothing was sent over an unverified connection


async def test_a_client_leaving_closes_the_tls_upstream(
    tls_origin: tuple[str, str], upstream: FakeUpstream
) -> None:
    base_url, ca_file = tls_origin
    upstream.scenario = Scenario(tokens=1000, tps=20)
    async with running_sluice(_settings(base_url, tls_ca_file=ca_file)) as sluice:
        async with httpx.AsyncClient() as client, client.stream(
            "POST", sluice.base_url + URL, json=chat_body()
        ) as response:
            got = await receive_stream(response, stop_after=2)
            assert got.content == "t0 t1 "
        with trio.fail_after(PROMPTLY):
            await upstream.wait_all_closed()  # through the proxy: the upstream saw it
        await sluice.settle()
