"""A paced upstream that can offer 50,000 chunks/s from a shared core: the bench's ``pacer``.

The fake upstream (`server.testing.fake_upstream`) gives every paced stream its own
trio task, a ``sleep_until`` and a ``send_all`` per token: on this machine
kind that is ~30 µs of CPU per chunk, so one core (shared with the load
generator) cannot offer more than ~20k paced chunks/s — short of the 50k the
1,000-stream scenario needs. The pacer sends the *same bytes* (built with
the fake's own `ChunkTemplates`, framing and request parsing) from one
``epoll`` loop: all streams share one deadline heap, a chunk is one
``%``-format and one non-blocking ``send``, and streams due in the same
tick are served in one pass. Only what the benchmark uses is supported:
``POST /v1/chat/completions`` with ``stream: true``, ``tokens``, ``tps``,
``first_delay``; every content chunk carries ``sent_at`` (``time.time()``
taken just before the send).

    python -m tests.bench.pacer --port 9000 --scenario tokens=1000,tps=50

A stream whose peer reads slowly is not sent more until its buffered bytes
drain (like ``send_all`` blocking), and catches up afterwards in one write,
as the fake does.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import select
import socket
import sys
import time
from dataclasses import dataclass, field

import orjson

from server.testing.fake_upstream import chunks as c
from server.testing.fake_upstream.http11 import (
    LAST_CHUNK,
    MAX_HEAD_BYTES,
    BadRequest,
    chunk,
    parse_head,
    response,
    response_head,
)
from server.testing.fake_upstream.plan import JSON, SSE_HEADERS
from server.testing.fake_upstream.request import ChatRequest, InvalidChatRequest
from server.testing.fake_upstream.scenario import Scenario, parse_fields

RECEIVE_BYTES = 64 * 1024
_SUPPORTED = {"tokens", "tps", "first_delay", "timestamps"}


@dataclass(slots=True)
class _Stream:
    """The response being played on one connection."""

    templates: c.ChunkTemplates
    total: int
    finish_reason: str
    started: float
    sent: int = 0


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    inbox: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    stream: _Stream | None = None
    keep_alive: bool = True
    scheduled: bool = False
    closed: bool = False
    requests: int = 0


class Pacer:
    """The epoll loop; `serve_forever` until the process is killed."""

    def __init__(self, scenario: Scenario, host: str, port: int) -> None:
        self.scenario = scenario
        self.period = 1.0 / scenario.tps if scenario.tps else 0.0
        self.listener = socket.create_server((host, port), backlog=8192, reuse_port=False)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.epoll = select.epoll()
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.conns: dict[int, _Conn] = {}
        self.due: list[tuple[float, int, _Conn]] = []  # (when, unique seq, conn)
        self.seq = 0
        self.responses = 0

    def serve_forever(self) -> None:
        listen_fd = self.listener.fileno()
        while True:
            timeout = -1.0
            if self.due:
                timeout = max(0.0, self.due[0][0] - time.monotonic())
            for fd, events in self.epoll.poll(timeout, 4096):
                if fd == listen_fd:
                    self._accept()
                    continue
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                if events & select.EPOLLOUT:
                    self._drain(conn)
                if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    self._read(conn)
            self._send_due()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    print(f"pacer: accept failed: {error}", file=sys.stderr, flush=True)
                    return
                raise
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns[sock.fileno()] = _Conn(sock)
            self.epoll.register(sock.fileno(), select.EPOLLIN)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.inbox += data
        self._next_request(conn)

    def _next_request(self, conn: _Conn) -> None:
        if conn.stream is not None or conn.closed:
            return  # a pipelined request waits for the current response
        end = conn.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.inbox) > MAX_HEAD_BYTES:
                self._refuse(conn, BadRequest(431, "request head too large"))
            return
        try:
            head = parse_head(bytes(conn.inbox[:end]))
        except BadRequest as error:
            self._refuse(conn, error)
            return
        if len(conn.inbox) < end + 4 + head.content_length:
            return  # the body is still on its way
        body = bytes(conn.inbox[end + 4 : end + 4 + head.content_length])
        del conn.inbox[: end + 4 + head.content_length]
        conn.keep_alive = "close" not in head.headers.get("connection", "").lower()
        conn.requests += 1
        try:
            chat = ChatRequest.from_json(orjson.loads(body))
        except (InvalidChatRequest, orjson.JSONDecodeError):
            self._write(conn, response(400, [JSON], b'{"error":{"message":"bad request"}}',
                                       keep_alive=conn.keep_alive))
            return
        self.responses += 1
        total = chat.completion_tokens(self.scenario.tokens)
        templates = c.ChunkTemplates.render(f"chatcmpl-pacer-{self.responses}",
                                            created=int(time.time()), model=chat.model)
        conn.stream = _Stream(templates, total, chat.finish_reason(self.scenario.tokens),
                              started=time.monotonic())
        self._write(conn, response_head(200, SSE_HEADERS, keep_alive=conn.keep_alive)
                    + chunk(c.role_event(templates)))
        self._schedule(conn, conn.stream.started + self.scenario.first_delay)

    def _schedule(self, conn: _Conn, when: float) -> None:
        if not conn.scheduled:
            conn.scheduled = True
            self.seq += 1
            heapq.heappush(self.due, (when, self.seq, conn))

    def _send_due(self) -> None:
        due = self.due
        if not due:
            return
        now = time.monotonic()
        wall = time.time()
        while due and due[0][0] <= now:
            conn = heapq.heappop(due)[2]
            if conn.closed:
                continue
            conn.scheduled = False
            stream = conn.stream
            if stream is None:
                continue
            if conn.out:
                continue  # still draining: EPOLLOUT reschedules it
            self._play(conn, stream, now, wall)

    def _play(self, conn: _Conn, stream: _Stream, now: float, wall: float) -> None:
        """Send every token due by `now` (one write), then the end if it is reached."""
        t = stream.templates
        parts: list[bytes] = []
        first = stream.started + self.scenario.first_delay
        while stream.sent < stream.total and first + stream.sent * self.period <= now:
            parts.append(chunk(c.stamped_content_event(t, stream.sent, wall)))
            stream.sent += 1
        if stream.sent >= stream.total:
            parts.append(chunk(c.finish_event(t, stream.finish_reason)))
            parts.append(chunk(c.done_event(t)))
            parts.append(LAST_CHUNK)
            conn.stream = None
        if parts:
            self._write(conn, b"".join(parts))
        if conn.stream is not None:
            self._schedule(conn, first + stream.sent * self.period)
        elif not conn.keep_alive:
            self._close(conn)
        elif conn.inbox and not conn.out:
            self._next_request(conn)

    def _write(self, conn: _Conn, data: bytes) -> None:
        if conn.closed:
            return
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent < len(data):
            conn.out += data[sent:]
            self.epoll.modify(conn.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def _drain(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        del conn.out[:sent]
        if not conn.out:
            self.epoll.modify(conn.sock.fileno(), select.EPOLLIN)
            if conn.stream is not None:
                self._schedule(conn, time.monotonic())
            elif not conn.keep_alive:
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        fd = conn.sock.fileno()
        self.conns.pop(fd, None)
        with contextlib.suppress(OSError):
            self.epoll.unregister(fd)
        conn.sock.close()  # its heap entry, if any, is skipped when it comes due

    def _refuse(self, conn: _Conn, error: BadRequest) -> None:
        conn.keep_alive = False
        self._write(conn, response(error.status, [JSON], b"{}", keep_alive=False))
        if not conn.out:
            self._close(conn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.pacer", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scenario", default="tokens=100,tps=50")
    args = parser.parse_args(argv)
    try:
        unsupported = set(parse_fields(args.scenario)) - _SUPPORTED
        scenario = Scenario.parse(args.scenario)
    except ValueError as error:
        parser.error(str(error))
    if unsupported:
        parser.error(f"the pacer does not support {', '.join(sorted(unsupported))}")
    pacer = Pacer(scenario, args.host, args.port)
    print(f"pacer listening on http://{args.host}:{pacer.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        pacer.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
