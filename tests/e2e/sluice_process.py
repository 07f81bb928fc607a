"""The real ``sluice serve`` as a child process, for tests that signal or kill it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio


@asynccontextmanager
async def sluice_process(config: Path) -> AsyncIterator[tuple[str, trio.Process]]:
    """``sluice serve --config CONFIG`` on a free loopback port: its URL and the process.

    Killed (if still running) and reaped on exit.
    """
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(config),
         "--bind", "127.0.0.1:0"],
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    try:
        log = b""
        with trio.fail_after(20):
            while not (found := re.search(rb"Running on (http://\S+)", log)):
                chunk = await process.stderr.receive_some()
                assert chunk, log.decode()
                log += chunk
        yield found.group(1).decode(), process
    finally:
        with trio.move_on_after(5, shield=True):
            if process.returncode is None:
                process.kill()
            await process.wait()
