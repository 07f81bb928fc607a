"""`FakeUpstream`: an OpenAI-compatible (and Ollama) model server that misbehaves on request.

One object is the server, its configuration and its memory: tests start it in
their nursery, choose the next responses (`scenario`, `script`), point the
gateway at `base_url`, then assert on what it recorded (`requests`,
`connections`)::

    upstream = FakeUpstream(Scenario(tokens=5))
    await nursery.start(upstream.serve, 0)
    upstream.script.extend([Scenario(status=500), Scenario(status=500)])
    ...  # drive the gateway at upstream.base_url
    with trio.fail_after(1):
        await upstream.wait_all_closed()

Each ``POST /v1/chat/completions`` — or ``POST /api/chat``, the Ollama mode
(`server.testing.fake_upstream.ollama`; its base URL is `origin`), or
``/v1/completions`` and ``/v1/embeddings`` (`server.testing.fake_upstream.legacy`)
— takes the next scenario from `script` (FIFO), or `scenario` once the script
is empty; other endpoints ignore both. Each
connection is one task: it reads a request, routes it to a `plan`, and plays
the plan with `playback.play`, whose watcher notices the peer leaving.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import orjson
import trio

from server.testing.fake_upstream.bodies import error_body, models_body
from server.testing.fake_upstream.http11 import (
    BadRequest,
    Request,
    RequestBuffer,
    receive_request,
    response,
)
from server.testing.fake_upstream.legacy import plan_completion, plan_embeddings
from server.testing.fake_upstream.ollama import OllamaChat, plan_ollama_chat, tags_body
from server.testing.fake_upstream.ollama import error_body as ollama_error_body
from server.testing.fake_upstream.plan import JSON, ResponseFacts, Step, plan_chat, plan_json
from server.testing.fake_upstream.playback import Outcome, play
from server.testing.fake_upstream.records import ConnectionRecord, RecordedRequest
from server.testing.fake_upstream.request import ChatRequest, InvalidChatRequest
from server.testing.fake_upstream.scenario import Scenario

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
OLLAMA_CHAT_PATH = "/api/chat"
OLLAMA_TAGS_PATH = "/api/tags"


class FakeUpstream:
    """An in-process fake model server; see the module docstring."""

    def __init__(self, scenario: Scenario | None = None) -> None:
        self.scenario: Scenario = scenario if scenario is not None else Scenario()
        """Applies to every chat request once `script` is empty; replace it at any time."""
        self.script: deque[Scenario] = deque()
        """Per-request overrides, consumed first-in first-out by chat requests."""
        self.requests: list[RecordedRequest] = []
        self.connections: list[ConnectionRecord] = []
        self._address: tuple[str, int] | None = None
        self._changed = trio.Event()

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``; valid once `serve` has started."""
        return f"{self.origin}/v1"

    @property
    def origin(self) -> str:
        """``http://HOST:PORT``; valid once `serve` has started."""
        if self._address is None:
            raise RuntimeError("FakeUpstream.serve has not started yet")
        host, port = self._address
        host = _connectable(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def open_connections(self) -> int:
        return sum(1 for record in self.connections if record.closed_at is None)

    async def serve(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Bind, report the actual port through `task_status`, serve until cancelled."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        if port == 0 and len(listeners) > 1:
            # Port 0 on a name with several addresses gets a different port on each;
            # keep one so that `base_url` is the whole truth.
            for extra in listeners[1:]:
                await extra.aclose()
            listeners = listeners[:1]
        actual_port: int = listeners[0].socket.getsockname()[1]
        self._address = (host, actual_port)
        task_status.started(actual_port)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def wait_for_request(self, n: int) -> None:
        """Return once at least `n` requests have been received in total."""
        await self._wait_until(lambda: len(self.requests) >= n)

    async def wait_all_closed(self) -> None:
        """Return once every connection seen so far has closed."""
        await self._wait_until(lambda: all(r.closed_at is not None for r in self.connections))

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        await trio.lowlevel.checkpoint()
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        record = ConnectionRecord(opened_at=trio.current_time(), peer=_peer(stream))
        self.connections.append(record)
        self._notify()
        buffer = RequestBuffer()
        try:
            while True:
                try:
                    request = await receive_request(stream, buffer)
                except BadRequest as exc:
                    await _refuse(stream, exc)
                    return
                if request is None:
                    return
                record.requests += 1
                started_at = trio.current_time()
                plan = self._respond(request, started_at)
                outcome = await play(stream, plan, started_at=started_at, buffer=buffer)
                if outcome is not Outcome.COMPLETE or not request.keep_alive:
                    return
        except trio.BrokenResourceError:
            return  # reset by the peer between requests
        finally:
            stream.socket.close()
            record.closed_at = trio.current_time()
            self._notify()

    def _respond(self, request: Request, received_at: float) -> Iterator[Step]:
        body = _json_object(request.body)
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=request.headers,
                json=body,
                received_at=received_at,
                body=request.body,
                query=request.query,
            )
        )
        self._notify()
        keep_alive = request.keep_alive
        if request.path == CHAT_PATH:
            if request.method != "POST":
                return _error(405, f"use POST for {CHAT_PATH}", keep_alive)
            if body is None:
                return _error(400, "request body must be a JSON object", keep_alive)
            try:
                chat = ChatRequest.from_json(body)
            except InvalidChatRequest as exc:
                return plan_json(
                    400, error_body(400, exc.message, param=exc.param), keep_alive=keep_alive
                )
            scenario = self.script.popleft() if self.script else self.scenario
            facts = ResponseFacts(
                completion_id=f"chatcmpl-fake-{len(self.requests)}",
                created=int(time.time()),
                keep_alive=keep_alive,
            )
            return plan_chat(scenario, chat, facts)
        if request.path in (COMPLETIONS_PATH, EMBEDDINGS_PATH):
            if request.method != "POST":
                return _error(405, f"use POST for {request.path}", keep_alive)
            if body is None:
                return _error(400, "request body must be a JSON object", keep_alive)
            scenario = self.script.popleft() if self.script else self.scenario
            facts = ResponseFacts(completion_id=f"cmpl-fake-{len(self.requests)}",
                                  created=int(time.time()), keep_alive=keep_alive)
            plan = plan_completion if request.path == COMPLETIONS_PATH else plan_embeddings
            try:
                return plan(scenario, body, facts)
            except InvalidChatRequest as exc:
                return plan_json(400, error_body(400, exc.message, param=exc.param),
                                 keep_alive=keep_alive)
        if request.path == MODELS_PATH:
            if request.method != "GET":
                return _error(405, f"use GET for {MODELS_PATH}", keep_alive)
            return plan_json(200, models_body(), keep_alive=keep_alive)
        if request.path in (OLLAMA_CHAT_PATH, OLLAMA_TAGS_PATH):
            return self._respond_ollama(request, body)
        return _error(404, f"no route for {request.path[:200]}", keep_alive)

    def _respond_ollama(self, request: Request, body: dict[str, Any] | None) -> Iterator[Step]:
        """Ollama's native API: its errors are ``{"error": "message"}``."""
        keep_alive = request.keep_alive

        def error(status: int, message: str) -> Iterator[Step]:
            return plan_json(status, ollama_error_body(message), keep_alive=keep_alive)

        if request.path == OLLAMA_TAGS_PATH:
            if request.method != "GET":
                return error(405, f"use GET for {OLLAMA_TAGS_PATH}")
            return plan_json(200, tags_body(), keep_alive=keep_alive)
        if request.method != "POST":
            return error(405, f"use POST for {OLLAMA_CHAT_PATH}")
        try:
            chat = OllamaChat.from_json(body)
        except InvalidChatRequest as exc:
            return error(400, exc.message)
        scenario = self.script.popleft() if self.script else self.scenario
        facts = ResponseFacts(completion_id="", created=int(time.time()), keep_alive=keep_alive)
        return plan_ollama_chat(scenario, chat, facts)


def _error(status: int, message: str, keep_alive: bool) -> Iterator[Step]:
    return plan_json(status, error_body(status, message), keep_alive=keep_alive)


async def _refuse(stream: trio.SocketStream, exc: BadRequest) -> None:
    """Answer an unparseable request, best effort: the peer may already be gone."""
    body = error_body(exc.status, exc.message)
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(response(exc.status, [JSON], body, keep_alive=False))


def _connectable(host: str) -> str:
    """A wildcard bind address is not one a client can connect to: use loopback."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    return "::1" if host == "::" else host


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _peer(stream: trio.SocketStream) -> str:
    address = stream.socket.getpeername()
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
