"""A real ``redis-server`` for tests and the benchmark: a free loopback port, nothing on disk.

Debian's ``redis-server`` package provides the binary (``apt-get install
redis-server``); ``$SLUICE_REDIS_SERVER`` names another one. The server runs
in the foreground as our child, listens on 127.0.0.1 only, saves nothing
(no RDB snapshots, no AOF) and is stopped — by its PID — when the block ends::

    with RedisServer.running() as redis:      # sync: session fixtures, the bench
        redis.url                             # "redis://127.0.0.1:PORT/0"
        redis.command("FLUSHALL")             # one command, for set-up between tests
        redis.stop()                          # a Redis outage, on purpose...
        redis.start()                         # ...and it is back, on the same port, empty

It is synchronous on purpose (a session fixture and the bench's process
manager are plain functions); async code calls `stop` and `start` through
``trio.to_thread.run_sync``.

`redis_required` says whether a missing binary is a failure (CI, or
``SLUICE_REQUIRE_REDIS=1``) rather than a reason to skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

# How long a starting server may take to answer PING, and a stopping one to exit.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

MISSING = ("needs redis-server: apt-get install redis-server "
           "(or set SLUICE_REDIS_SERVER to the binary)")


class RedisServerError(RuntimeError):
    """The server could not be started (or would not answer)."""


def find_redis_server(environ: Mapping[str, str] = os.environ) -> str | None:
    """The ``redis-server`` to run: ``$SLUICE_REDIS_SERVER``, else the one on PATH."""
    return shutil.which(environ.get("SLUICE_REDIS_SERVER") or "redis-server")


def redis_required(environ: Mapping[str, str] = os.environ) -> bool:
    """True where tests needing Redis must run, not skip: CI, or SLUICE_REQUIRE_REDIS=1."""
    return any(environ.get(name, "").lower() not in ("", "0", "false")
               for name in ("CI", "SLUICE_REQUIRE_REDIS"))


class RedisServer:
    """One ``redis-server`` child process; `start` and `stop` may alternate."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    @contextmanager
    def running(cls, binary: str | None = None) -> Iterator[RedisServer]:
        """A started server in a temporary directory; stopped and removed on exit."""
        binary = binary or find_redis_server()
        if binary is None:
            raise RedisServerError(MISSING)
        with tempfile.TemporaryDirectory(prefix="sluice-redis-") as directory:
            server = cls(binary, Path(directory))
            server.start()
            try:
                yield server
            finally:
                server.stop()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port — the same one again after a `stop` — and wait for PING."""
        if self.process is not None:
            raise RedisServerError("already running")
        for _ in range(3):  # a free port can be taken between choosing and binding it
            port = self.port or _free_port()
            self.process = subprocess.Popen(
                [self.binary, "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                 "--logfile", str(self.directory / "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready(port):
                self.port = port
                return
            self.stop()
        raise RedisServerError(f"redis-server did not start; see {self.directory / 'redis.log'}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and reap it; nothing is saved."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def command(self, *args: str) -> bytes:
        """Send one command; return the raw reply's first line (``b"+OK"``, ``b":3"``...)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=START_TIMEOUT) as sock:
            sock.sendall(_resp(args))
            return _read_line(sock)

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False  # exited: the port was taken, or a bad option
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(_resp(("PING",)))
                    if _read_line(sock) == b"+PONG":
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _resp(args: tuple[str, ...]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        more = sock.recv(4096)
        if not more:
            break
        data += more
    return data.split(b"\r\n", 1)[0]
