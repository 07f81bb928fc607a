"""What every lesson's test stands on: a gateway staged on loopback, a client's view, the symptom.

A lesson's test is written once, as the behaviour a correct gateway has, and
runs against both versions::

    @lesson("01_closed_before_read")
    async def test_the_body_reaches_the_client(gateway: Gateway) -> None:
        async with stage(gateway, Scenario(tokens=5)) as gw, gw.stream() as response:
            reply = await read_reply(response)
        symptom(len(reply.tokens) == 5, f"the client got {len(reply.tokens)} of 5 tokens")

The lesson's own failure is checked with `symptom`, which raises `Symptom`;
everything else with plain ``assert``. The broken version is expected to
fail with a `Symptom` and nothing else: passing, or failing any other way,
fails the run (`conftest` holds the verdicts). The fixed version must pass.

Real parts only: the gateway under hypercorn on port 0, the fake upstream on
port 0, httpx (or the openai SDK) as the client.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import httpx
import orjson
import pytest
import trio
from quart_trio import QuartTrio

from server.testing.fake_upstream import FakeUpstream, Scenario
from server.testing.lessons import running_gateway

LESSONS = Path(__file__).parent
VERSIONS = ("broken", "fixed")
CLOSE_BOUND = 0.1
"""The upstream must see its connection close this soon after the client leaves."""
PROMPTLY = 5.0
"""A generous bound for what should happen at once on loopback."""

Test = TypeVar("Test", bound=Callable[..., Any])


class Symptom(AssertionError):
    """The failure a lesson is about. A broken gateway must fail with this, and only this."""


def symptom(ok: bool, message: str) -> None:
    """Fail with the lesson's `Symptom` unless `ok`; `message` says what a user would see."""
    if not ok:
        raise Symptom(message)


@dataclass(frozen=True)
class Gateway:
    """One version of one lesson's gateway, loaded from its file."""

    lesson: str
    version: str
    module: ModuleType

    @property
    def path(self) -> Path:
        return LESSONS / self.lesson / f"{self.version}.py"


def load_module(lesson: str, name: str) -> ModuleType:
    """Import ``examples/lessons/<lesson>/<name>.py`` under a name of its own."""
    path = LESSONS / lesson / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"lesson_{lesson}_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def load(lesson: str, version: str) -> Gateway:
    """One version of a lesson's gateway (loaded once, however many tests it has)."""
    return Gateway(lesson, version, load_module(lesson, version))


def lesson(name: str) -> Callable[[Test], Test]:
    """Run the decorated test once per version of lesson `name` (its ``gateway`` argument)."""
    return pytest.mark.parametrize("gateway", [load(name, version) for version in VERSIONS],
                                   ids=VERSIONS)


# ----------------------------------------------------------------- staging


@dataclass
class Staged:
    """A gateway serving on loopback in front of its own fake upstream."""

    url: str
    upstream: FakeUpstream
    app: QuartTrio
    client: httpx.AsyncClient

    def stream(self, **extra: Any) -> AbstractAsyncContextManager[httpx.Response]:
        """``async with gw.stream() as response``: one streamed chat request."""
        return self.client.stream("POST", f"{self.url}/v1/chat/completions", json=chat(**extra))


@asynccontextmanager
async def stage(gateway: Gateway, scenario: Scenario, **config: Any) -> AsyncIterator[Staged]:
    """Serve `gateway` in front of a fake upstream playing `scenario`.

    `config` updates the app's config before it serves: how a test compresses
    a gateway's minutes into its seconds (``RESPONSE_TIMEOUT=1.0``).
    """
    upstream = FakeUpstream(scenario)
    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.serve, 0)
        app: QuartTrio = gateway.module.create_app(upstream.base_url)
        app.config.update(config)
        tune = getattr(gateway.module, "tune_listener", None)
        errors = logging.getLogger(f"lessons.{gateway.lesson}.{gateway.version}")
        async with (
            running_gateway(app, tune_listener=tune, errorlog=errors) as url,
            httpx.AsyncClient(timeout=httpx.Timeout(PROMPTLY, read=None),
                              limits=httpx.Limits(max_connections=None)) as client,
        ):
            yield Staged(url, upstream, app, client)
        nursery.cancel_scope.cancel("the test is over")


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            **extra}


# ------------------------------------------------------- what a client reads


@dataclass
class Reply:
    """What a client made of a streamed answer."""

    status: int = 0
    tokens: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    """`trio.current_time()` when each token's event was read."""
    done: bool = False
    """``data: [DONE]`` arrived: the stream says it is complete."""
    error: dict[str, Any] | None = None
    """An in-band ``{"error": ...}`` event arrived."""
    cut: str | None = None
    """The body ended without its HTTP framing: the connection was cut."""
    lines: AsyncIterator[str] | None = field(default=None, repr=False)
    """The response's line iterator: while it is referenced, the connection stays open."""


async def read_reply(response: httpx.Response, tokens: int | None = None) -> Reply:
    """Read an SSE answer to its end (or to `tokens` tokens) as a client would.

    A reader that stops early stays connected as long as it holds the reply
    (httpx closes a response whose line iterator is dropped half-read).
    """
    reply = Reply(status=response.status_code, lines=response.aiter_lines())
    assert reply.lines is not None
    try:
        async for line in reply.lines:
            if line == "data: [DONE]":
                reply.done = True
            elif line.startswith("data: "):
                event = orjson.loads(line.removeprefix("data: "))
                if "error" in event:
                    reply.error = event["error"]
                for choice in event.get("choices", []):
                    if content := choice.get("delta", {}).get("content"):
                        reply.tokens.append(content)
                        reply.arrivals.append(trio.current_time())
            if tokens is not None and len(reply.tokens) >= tokens:
                break
    except httpx.RemoteProtocolError as exc:
        reply.cut = str(exc)
    return reply


async def linter_sees_nothing(gateway: Gateway, codes: str, what: str) -> None:
    """Fail with the lesson's `Symptom` if flake8-async reports `codes` in the gateway's file.

    ``--isolated`` ignores ``.flake8``, where the broken gateways that show a
    lint rule are exempted from the repo's lint run. `what` names the flagged code.
    """
    result = await trio.run_process(
        [sys.executable, "-m", "flake8", "--isolated", f"--select={codes}",
         "--transform-async-generator-decorators=as_safe_channel",
         "--format=%(path)s:%(row)d: %(code)s", str(gateway.path)],
        capture_stdout=True, check=False)
    findings = [line.removeprefix(f"{LESSONS}/") for line in result.stdout.decode().splitlines()]
    symptom(not findings, f"flake8-async flags {what}: " + ", ".join(findings))


def raw_chat_request() -> bytes:
    """One streamed chat request as HTTP/1.1 bytes, for a client made of a bare socket."""
    body = orjson.dumps(chat())
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: lesson\r\ncontent-length: {len(body)}"
    return f"{head}\r\ncontent-type: application/json\r\n\r\n".encode() + body


async def seconds_until_closed(upstream: FakeUpstream, bound: float = PROMPTLY) -> float:
    """How long until the upstream saw all its connections close (inf if not within `bound`).

    The gateway must have asked the upstream something first (within `PROMPTLY`).
    """
    with trio.fail_after(PROMPTLY):
        await upstream.wait_for_request(1)
    started = trio.current_time()
    with trio.move_on_after(bound):
        await upstream.wait_all_closed()
        return trio.current_time() - started
    return float("inf")
