"""hypercorn's trio TCP server, made cheaper per write and per request.

Two changes to hypercorn's ``TCPServer``, each measured on the benchmark and
each keeping hypercorn's behaviour (`tests/e2e/test_tcp_server.py`,
`tests/e2e/test_lifecycle.py`): a direct write path, and one keep-alive timer task
per connection instead of one per request (`KeepAliveTimer`: opening a
stream went from 27 to 22 task steps).

Every ASGI body message reaches the socket through hypercorn's
``TCPServer.protocol_send``: a `trio.Lock`, a shielded `trio.CancelScope`,
then `trio.SocketStream.send_all`, which adds a conflict detector, an
error-translating context manager and two scheduler checkpoints. Measured on
the benchmark machine (`tests/bench`), that is ~25 µs of Python per write
for what the kernel does in ~2 µs; a relay makes one write per batch of
chunks, so it was the largest single cost of relaying a chunk.

`LeanTCPServer.protocol_send` first tries the write the way the kernel
sees it: one non-blocking ``send`` of the whole block, when no other write is
in progress. Only what the kernel does not take (a full send buffer: a slow
or stalled client) goes the original way, under the lock and the shield,
which then waits for the socket to drain — so backpressure, ordering and the
slow-client bound (``TCP_USER_TIMEOUT``, below) are unchanged.
A failed send means the client is gone, exactly as hypercorn treats a
`trio.BrokenResourceError`. TLS connections always take the original path.

The fast path never yields to the scheduler. That is safe for hypercorn's
callers (the write was shielded anyway) and fair for ours: a stream's writer
checkpoints on its channel between writes (`server.stream.writers`).

**The stall bound.** hypercorn writes with a *shielded* ``send_all``: no
cancel scope can interrupt a write to a client that stopped reading, and a
client that vanished without FIN/RST is invisible until TCP gives up (~15
minutes). Each accepted connection is bounded in the kernel instead
(`bound_stalls`): ``TCP_USER_TIMEOUT`` — data unacknowledged, or unsendable
into a zero window, for longer than the app's ``send_stall_timeout`` aborts
the connection — and TCP keepalive for idle ones. The write then fails,
hypercorn reports ``http.disconnect`` and the stream's watcher cancels it,
closing the upstream. Set per accepted connection (not on the listening
socket), it holds however the sockets were made: by hypercorn's command, by
``sluice serve``, from ``fd://`` or ``unix:`` binds (the latter have no TCP).

**Cheaper responses** (`DirectBody`, used by `server.stream.late_status`). A
stream's response goes out as many small writes, and each ASGI message costs
hypercorn's ``app_send`` and h11's ``send`` on the way (~8 % of a relayed
chunk's CPU at 100 streams). Two shortcuts, each taken only when hypercorn
and h11 would produce the very same bytes:

- *one write for what goes out together*: the status line and headers with
  the first body message, and the last body message with the end of the
  chunked body (`LeanTCPServer.cork`): one system call and one TCP segment
  instead of two or three, so a client sees the headers and the first chunk
  at once;
- *a body chunk framed here*: while h11's response is in its body with
  chunked framing (HTTP/1.1, no length), a chunk is ``size CRLF data CRLF``
  whatever else is going on, and h11 keeps no count of it. The end of the
  body still goes through hypercorn and h11, which move their states.

The response finds its connection through `CONNECTION`, a context variable
each connection's task sets for the tasks it starts, and checks that the ASGI
``send`` it was given is that connection's own; under any other server, or
wrapped by a middleware, it takes the ASGI path.

`LeanTaskGroup` hands the app its request messages without a trip through the
scheduler when its queue has room (three task steps fewer per request).

`install` points hypercorn's trio ``worker_serve`` at this class;
`server.serving.worker.install` calls it, and so does the test suite's
server, so what is tested is what is served.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import h11
import trio
from h11._writers import ChunkedWriter
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState
from hypercorn.trio import run as hypercorn_trio_run
from hypercorn.trio import tcp_server as hypercorn_tcp_server
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer

from server.serving.immediate import AnswerAfterBody, ImmediateAnswer, content_length


class KeepAliveTimer:
    """Stands in for hypercorn's `TrioSingleTask` as a connection's keep-alive timer.

    hypercorn *restarts* the timer after every response — cancels the old
    task and starts a new one with ``nursery.start``, behind a lock — and
    *stops* it at every request: three trips through the scheduler and a
    task per request. Here one task per connection (`LeanTCPServer._idle_timeout`)
    waits under a cancel scope whose deadline moves instead: ``inf`` while a
    request is served, ``keep_alive_timeout`` after the last response.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.deadline = math.inf
        self.scope: trio.CancelScope | None = None
        self.running = False
        self.ended = False

    async def restart(self, task_group: TaskGroup, action: Callable[[], Any]) -> None:
        """The connection is idle: close it after ``timeout`` unless a request comes."""
        self._move(trio.current_time() + self.timeout)
        if not self.running and not self.ended:
            self.running = True
            task_group.spawn(action)

    async def stop(self) -> None:
        """A request is being served: no keep-alive timeout until it is answered."""
        self._move(math.inf)

    def end(self) -> None:
        """The connection is closing: the timer's task ends at once."""
        self._move(-math.inf)
        self.ended = True

    def _move(self, deadline: float) -> None:
        if self.ended:
            return  # closing: nothing may re-arm it
        self.deadline = deadline
        if self.scope is not None:
            self.scope.deadline = deadline


class LeanTaskGroup(TaskGroup):
    """hypercorn's per-connection task group, whose messages to the app skip the scheduler
    when the app's queue has room, and which answers at once what the app can answer at once.

    hypercorn hands the app each request message (a body, its end, the
    disconnect) with ``await channel.send(...)``, which always yields — one
    task step each, three per request. Here a message goes in with
    ``send_nowait`` and only a full queue waits the usual way.

    An app with an ``immediate_response(scope)`` method (`server.gateway.SluiceApp`:
    a refusal while the loop is behind) is asked first. When it returns the
    response's messages and the request's body came whole with its head, no
    task is started: `server.serving.immediate.ImmediateAnswer` sends them
    from the connection's own task as hypercorn parses the body's end. A body
    still on its way is read by a task the usual way (`AnswerAfterBody`).
    """

    async def spawn_app(self, app: Any, config: Any, scope: Any,
                        send: Callable[..., Any]) -> Callable[[Any], Any]:
        answer = getattr(getattr(app, "app", None), "immediate_response", None)
        messages = answer(scope) if answer is not None else None  # None unless shedding
        if messages is not None:
            found, length = _h11_request(send), content_length(scope)
            if found is not None and length is not None \
                    and len(found[1].connection.trailing_data[0]) >= length:
                return ImmediateAnswer(messages, send)  # the body is here: no task
            app = ASGIWrapper(AnswerAfterBody(messages))  # a task waits for the rest
        return await self._spawn(app, config, scope, send)

    async def _spawn(self, app: Any, config: Any, scope: Any,
                     send: Callable[..., Any]) -> Callable[[Any], Any]:
        put = await super().spawn_app(app, config, scope, send)
        channel = getattr(put, "__self__", None)
        if not isinstance(channel, trio.MemorySendChannel):
            return put

        async def put_without_a_step(message: Any) -> None:
            try:
                channel.send_nowait(message)
            except trio.WouldBlock:
                await channel.send(message)

        return put_without_a_step


class LeanTCPServer(TCPServer):
    """hypercorn's `TCPServer`: writes go straight to the socket when the kernel takes them
    whole, and the keep-alive timer is one task per connection, not one per request."""

    def __init__(self, app: Any, config: Any, context: Any, state: Any, stream: Any) -> None:
        super().__init__(app, config, context, state, stream)
        self.idle_task = KeepAliveTimer(self.config.keep_alive_timeout)  # type: ignore[assignment]
        self._corked: list[bytes] | None = None
        # The served framework (inside hypercorn's ASGIWrapper) says how long a send may stall.
        seconds = getattr(getattr(app, "app", None), "send_stall_timeout", None)
        if seconds is not None:
            transport = getattr(stream, "transport_stream", stream)  # under TLS: the TCP stream
            # OSError: the connection is already gone; hypercorn's first read will say so.
            with contextlib.suppress(OSError):
                bound_stalls(transport.socket, seconds)

    async def run(self) -> None:
        CONNECTION.set(self)  # this task's context: inherited by the tasks it starts
        await super().run()

    def cork(self) -> None:
        """Hold this connection's writes until `uncork` (`abandon_cork` on an exception's way
        out); a write that is not plain data (a close) sends what was held first."""
        if self._corked is None:
            self._corked = []

    async def uncork(self) -> None:
        """Write what was held, as one write."""
        held, self._corked = self._corked, None
        if held:
            await self.protocol_send(RawData(data=b"".join(held)))

    def abandon_cork(self) -> None:
        """The response failed while corked: write what the kernel takes now, drop the rest.

        Synchronous, for an exception's way out; the response is broken and
        hypercorn closes the connection after it.
        """
        held, self._corked = self._corked, None
        stream = self.stream
        if held and isinstance(stream, trio.SocketStream) and stream.socket.fileno() >= 0:
            with contextlib.suppress(OSError):
                os.write(stream.socket.fileno(), b"".join(held))

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            self.idle_task.end()  # type: ignore[attr-defined]

    async def _idle_timeout(self) -> None:
        """Close the connection once it has been idle too long, or idle when the server stops."""
        timer = self.idle_task
        assert isinstance(timer, KeepAliveTimer)
        terminated = self.context.terminated
        try:
            while True:
                with trio.CancelScope(deadline=timer.deadline) as timer.scope:
                    await terminated.wait()
                timer.scope = None
                if timer.ended:
                    return  # the client is gone; hypercorn is closing the connection
                if timer.deadline < math.inf:
                    break  # idle, and the time is up or the server is stopping
                if terminated.is_set():
                    return  # busy as the server stops: hypercorn closes it after the response
        finally:
            timer.scope = None
            timer.running = False
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def protocol_send(self, event: Event) -> None:
        if self._corked is not None:
            if type(event) is RawData:
                self._corked.append(event.data)
                return
            await self.uncork()  # a close or a state change: what was held goes first
        if type(event) is not RawData or self.send_lock.locked():
            await super().protocol_send(event)
            return
        stream = self.stream
        if not isinstance(stream, trio.SocketStream):
            await super().protocol_send(event)  # TLS: the SSL object frames the bytes
            return
        data = event.data
        fd = stream.socket.fileno()  # -1 once closed: never a recycled descriptor
        if fd < 0:
            await super().protocol_send(event)  # reports the closed socket the usual way
            return
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            await self.protocol.handle(Closed())  # reset, broken pipe, timed out
            return
        if sent < len(data):  # the send buffer is full: wait for it the original way
            await super().protocol_send(RawData(data=data[sent:]))


# The connection (`LeanTCPServer`) whose task tree the current task belongs to, if any.
CONNECTION: ContextVar[LeanTCPServer | None] = ContextVar("sluice_connection", default=None)


class DirectBody:
    """A response's shortcuts to its own HTTP/1.1 connection (see the module's docstring).

    ``DirectBody.of(send)`` is None unless ``send`` is the ASGI send of the
    current request on a `LeanTCPServer` connection speaking HTTP/1.1.
    """

    __slots__ = ("_connection", "_server", "_stream")

    def __init__(self, server: LeanTCPServer, protocol: H11Protocol, stream: Any) -> None:
        self._server = server
        self._connection: h11.Connection = protocol.connection  # type: ignore[assignment]
        self._stream = stream

    @classmethod
    def of(cls, send: Callable[..., Any]) -> DirectBody | None:
        found = _h11_request(send)
        if found is None:
            return None
        server, protocol = found
        return cls(server, protocol, protocol.stream)

    def cork(self) -> None:
        self._server.cork()

    async def uncork(self) -> None:
        await self._server.uncork()

    def abandon_cork(self) -> None:
        self._server.abandon_cork()

    async def write_chunk(self, data: bytes) -> bool:
        """Frame and write one body chunk, if h11 is in a chunked body; else False."""
        connection = self._connection
        if (connection.our_state is not h11.SEND_BODY
                or type(connection._writer) is not ChunkedWriter
                or self._stream.state is not ASGIHTTPState.RESPONSE or not data):
            return False
        await self._server.protocol_send(RawData(data=b"%x\r\n%b\r\n" % (len(data), data)))
        return True


def _h11_request(send: Callable[..., Any]) -> tuple[LeanTCPServer, H11Protocol] | None:
    """The connection and its HTTP/1.1 protocol, if ``send`` is the ASGI send of the current
    request on a `LeanTCPServer` connection (as seen from that connection's tasks)."""
    server = CONNECTION.get()
    if server is None:
        return None
    protocol = getattr(getattr(server, "protocol", None), "protocol", None)
    if not isinstance(protocol, H11Protocol) \
            or not isinstance(protocol.connection, h11.Connection):
        return None  # HTTP/2 or a WebSocket: hypercorn's own path
    if getattr(send, "__self__", None) is not protocol.stream:
        return None  # not this connection's current request, or wrapped
    return server, protocol


def bound_stalls(sock: trio.socket.SocketType | socket.socket, seconds: float) -> None:
    """Abort a TCP connection whose sent data stays unacknowledged for ``seconds``."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets: no TCP
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
    if hasattr(socket, "TCP_KEEPIDLE"):
        idle = max(1, int(seconds / 2))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def install() -> None:
    """Make hypercorn's trio ``worker_serve`` (and so ``hypercorn.trio.serve``) use it."""
    hypercorn_trio_run.TCPServer = LeanTCPServer  # type: ignore[attr-defined]
    hypercorn_tcp_server.TaskGroup = LeanTaskGroup  # type: ignore[attr-defined]
