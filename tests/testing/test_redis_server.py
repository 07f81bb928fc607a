"""The Redis harness: a real server that starts, answers, stops and comes back on its port."""

from __future__ import annotations

import socket

import pytest

from server.testing.redis_server import RedisServer, redis_required


def test_stops_and_starts_again_on_the_same_port_empty(redis_server: RedisServer) -> None:
    with RedisServer.running(redis_server.binary) as redis:
        assert redis.command("SET", "k", "v") == b"+OK"
        port = redis.port
        redis.stop()
        with pytest.raises(ConnectionRefusedError):  # nothing listens while it is stopped
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        redis.start()
        assert redis.port == port
        assert redis.command("EXISTS", "k") == b":0"  # nothing was persisted


@pytest.mark.parametrize(("environ", "required"), [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "0"}, False),
    ({"SLUICE_REQUIRE_REDIS": "1"}, True),
    ({"SLUICE_REQUIRE_REDIS": "false"}, False),
])
def test_ci_requires_redis(environ: dict[str, str], required: bool) -> None:
    assert redis_required(environ) is required
