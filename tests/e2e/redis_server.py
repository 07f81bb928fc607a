"""A real ``redis-server`` on a free loopback port, started and stopped by the test that needs it.

    async with running_redis() as url:     # "redis://127.0.0.1:PORT/0"
        ...

No persistence, no config file; skipped (not failed) where Debian's
redis-server is not installed. (Another branch brings a shared harness in
``server/testing/``; this one can give way to it.)
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from tests.conftest import PROMPTLY


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def running_redis() -> AsyncIterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = _free_port()
    process = await trio.lowlevel.open_process(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--loglevel", "warning"])
    try:
        with trio.fail_after(PROMPTLY * 5):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        with trio.move_on_after(5, shield=True):
            await process.wait()
