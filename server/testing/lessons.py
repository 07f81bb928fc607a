"""What the lessons' tiny gateways share (``examples/lessons/``): their frame, and a stage.

Each lesson is a pair of tiny quart-trio gateways, ``broken.py`` and
``fixed.py``, in front of the fake upstream. What is the same in all of them
lives here, so that each file shows its lesson and little else:

- `app_and_client`: a `QuartTrio` app and an ``httpx.AsyncClient`` to the
  upstream, closed when the app stops serving.
- `Body` and `sse`. Quart sends a response body as ``async with body as
  chunks: async for chunk in chunks: await send(chunk)``, all in the
  request's own task, and quart-trio cancels that task when the client
  leaves. That ``async with`` is the one place in Quart where a stream's
  scope can outlive the view and still die with the request (lesson 1).
  `Body` makes any async context manager that gives chunks — a
  `trio.as_safe_channel` generator, a memory channel — such a body; `sse`
  wraps it in a ``text/event-stream`` response.
- `chat_route`, which gives an app its ``POST /v1/chat/completions`` for a
  stream of the request's body; `relay`, lesson 1's fix; and
  `plain_gateway`, the whole gateway built of them, for the lessons that
  are about something else::

      app, client = app_and_client(upstream)
      return chat_route(app, functools.partial(relay, client))

- The stage. ``python examples/lessons/NN_name/broken.py [--port N]
  [--scenario S] [--set NAME=SECONDS]`` runs `serve_lesson`: the fake
  upstream in-process on a free port, the gateway under hypercorn, what to
  try with curl, and a running account of what the fake upstream sees. The
  lessons' tests use `running_gateway`, the same on port 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import socket
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio import serve
from quart import Response, request
from quart.wrappers.response import ResponseBody
from quart_trio import QuartTrio

from server.testing.fake_upstream import FakeUpstream, Scenario

SSE = {"content-type": "text/event-stream", "cache-control": "no-cache"}
"""The headers of a relayed stream."""

PORT = 8100
CHAT = ("curl -N {url}/v1/chat/completions -H 'content-type: application/json' -d "
        """'{{"model": "m", "stream": true, "messages": [{{"role": "user", "content": "hi"}}]}}'""")
"""What to try first, in every lesson: one streamed chat request."""

CreateApp = Callable[[str], QuartTrio]
"""A lesson's gateway: ``create_app(upstream_base_url)``."""
Stream = Callable[[Any], AbstractAsyncContextManager[AsyncIterable[bytes]]]
"""What a chat route streams: ``stream(request_body)``, entered by Quart as the response body."""
TuneListener = Callable[[QuartTrio, socket.socket], None]
"""Optional in a gateway module: ``tune_listener(app, sock)`` sets its listening sockets up."""


class Body(ResponseBody):
    """A Quart response body made of an async context manager that gives chunks."""

    def __init__(self, stream: AbstractAsyncContextManager[AsyncIterable[bytes]]) -> None:
        self._stream = stream

    async def __aenter__(self) -> AsyncIterable[bytes]:
        return await self._stream.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stream.__aexit__(exc_type, exc, tb)


def app_and_client(upstream: str, **client_options: Any) -> tuple[QuartTrio, httpx.AsyncClient]:
    """A quart-trio app, and its ``httpx.AsyncClient(base_url=upstream, **client_options)``."""
    app = QuartTrio("lesson")
    client = httpx.AsyncClient(base_url=upstream, **client_options)

    @app.after_serving
    async def close_client() -> None:
        await client.aclose()

    return app, client


def sse(stream: AbstractAsyncContextManager[AsyncIterable[bytes]]) -> Response:
    """A ``text/event-stream`` response whose body is `stream` (see `Body`)."""
    return Response(Body(stream), headers=SSE)


@trio.as_safe_channel
async def relay(client: httpx.AsyncClient, body: Any) -> AsyncGenerator[bytes]:
    """The upstream's answer to `body`, line by line, in a scope of its own (lesson 1)."""
    async with client.stream("POST", "/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            yield f"{line}\n".encode()


def chat_route(app: QuartTrio, stream: Stream) -> QuartTrio:
    """Give `app` its ``POST /v1/chat/completions``: `stream` of the request's body, as SSE."""

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        return sse(stream(await request.get_json()))

    return app


def plain_gateway(upstream: str, **client_options: Any) -> QuartTrio:
    """A gateway with nothing wrong in sight: POST /v1/chat/completions relays the upstream."""
    app, client = app_and_client(upstream, **client_options)
    return chat_route(app, functools.partial(relay, client))


class _Config(Config):
    """hypercorn's Config, with a hook for the listening sockets' options."""

    tune_listener: Callable[[socket.socket], None] | None = None

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        if self.tune_listener is not None:
            for sock in sockets.insecure_sockets:
                self.tune_listener(sock)
        return sockets


@asynccontextmanager
async def running_gateway(
    app: QuartTrio, bind: str = "127.0.0.1:0", tune_listener: TuneListener | None = None,
    errorlog: logging.Logger | str | None = "-",
) -> AsyncIterator[str]:
    """Serve `app` under hypercorn's trio worker; yield its URL; stop gracefully on exit."""
    config = _Config()
    config.bind = [bind]
    if tune_listener is not None:
        config.tune_listener = functools.partial(tune_listener, app)
    config.errorlog = errorlog
    config.graceful_timeout = 1.0  # a broken gateway may hold streams that never end
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            functools.partial(serve, app, config, shutdown_trigger=shutdown.wait))
        try:
            yield binds[0]
        finally:
            shutdown.set()


def serve_lesson(path: str, create_app: CreateApp, scenario: str, *,
                 tune_listener: TuneListener | None = None, tries: tuple[str, ...] = ()) -> None:
    """Run a lesson's gateway for a person: ``python broken.py [--port N] [--scenario S]``.

    `scenario` is the fake upstream's default behaviour (`Scenario.parse`);
    `tries` are commands worth trying besides one streamed request, with
    ``{url}`` for the gateway's URL.
    """
    lesson = Path(path)
    parser = argparse.ArgumentParser(description=f"{lesson.parent.name}: {lesson.name}")
    parser.add_argument("--port", type=int, default=PORT, help="default %(default)s")
    parser.add_argument("--scenario", default=scenario,
                        help='the fake upstream\'s behaviour (default "%(default)s")')
    parser.add_argument("--set", action="append", default=[], metavar="NAME=SECONDS",
                        help="set one of the gateway's app.config timeouts, e.g. IDLE_TIMEOUT=5")
    args = parser.parse_args()
    config = {name: float(value) for name, _, value in (s.partition("=") for s in args.set)}
    run = functools.partial(_stage, lesson, create_app, Scenario.parse(args.scenario),
                            args.port, config, tune_listener, tries)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is meant to stop
        trio.run(run)


async def _stage(lesson: Path, create_app: CreateApp, scenario: Scenario, port: int,
                 config: dict[str, float], tune_listener: TuneListener | None,
                 tries: tuple[str, ...]) -> None:
    upstream = FakeUpstream(scenario)
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve, 0)
        app = create_app(upstream.base_url)
        app.config.update(config)
        async with running_gateway(app, f"127.0.0.1:{port}", tune_listener) as url:
            print(f"{lesson.parent.name}/{lesson.name} at {url}, in front of the fake upstream "
                  f"at {upstream.base_url} ({scenario.format() or 'defaults'}).\nTry:")
            for command in (CHAT, *tries):
                print("  " + command.format(url=url))
            print("Ctrl-C to stop. What the fake upstream sees:", flush=True)
            started = trio.current_time()
            nursery.start_soon(_tell_requests, upstream, started)
            nursery.start_soon(_tell_closes, upstream, started)
            await trio.sleep_forever()


async def _tell_requests(upstream: FakeUpstream, started: float) -> None:
    """Print each request the fake upstream receives, as it arrives."""
    told = 0
    while True:
        await upstream.wait_for_request(told + 1)
        for received in upstream.requests[told:]:
            told += 1
            _tell(started, f"request {told}: {received.method} {received.path}")


async def _tell_closes(upstream: FakeUpstream, started: float) -> None:
    """Print when the fake upstream has no connection open any more (the gateway let go)."""
    seen = 0
    while True:
        await upstream.wait_for_request(seen + 1)
        await upstream.wait_all_closed()
        seen = len(upstream.requests)
        _tell(started, "no connection open any more: the gateway let go")


def _tell(started: float, what: str) -> None:
    print(f"  [{trio.current_time() - started:7.2f} s] fake upstream: {what}", flush=True)
