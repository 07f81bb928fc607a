"""The gateway as a Quart-Trio app: endpoints, error handlers, the serving lifespan.

    app = create_app(settings)          # tests, embedding; server.app builds the served one

Views are thin. The chat view validates, routes and returns a
`StreamResponse` — a plan — which `SluiceHTTPConnection` runs as one
stream in one nursery (`server.stream.nursery`). Shared resources (the backends and
their idle connections) are opened in the app's serving lifespan and closed when
it ends; nothing lives at module level but `app` itself.

Quart's defaults are set on purpose: ``RESPONSE_TIMEOUT`` would silently cut
every response at 60 s, so it is off (streams are bounded by the first-chunk
and idle timers instead); ``MAX_CONTENT_LENGTH`` is the configured body limit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from collections.abc import Mapping
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from server.access_log import AccessLog
from server.api.browser_chat import register_chat_api
from server.api.chat_completions import ChatRequest, parse_chat_request
from server.api.completions import register_completions_api
from server.api.connection import SluiceHTTPConnection, StreamResponse
from server.api.cors import install_cors, response_headers
from server.api.detached import key_owner, owner_of
from server.api.embeddings import register_embeddings_api
from server.api.page import register_page
from server.api.responses import register_responses_api
from server.api.resume import ResumableStreams
from server.api.resume_header import RESUMABLE_HEADER, wants_resumable
from server.backends import open_backends
from server.backends.http import api_key_from_env
from server.config import Accepts, ConfigError, CorsSettings, Settings
from server.errors import (
    BodyTooLarge,
    ModelNotFound,
    RequestError,
    ShuttingDown,
    SluiceError,
    TooManyRequests,
    error_headers,
    http_error,
    new_error_id,
    openai_error_body,
)
from server.keys.admin import KeyAdmin
from server.keys.admin_api import register_admin_api
from server.keys.gate import Gate, GateKeeper
from server.keys.metrics import TenancyMetrics
from server.limits.admission import Slots
from server.limits.overload import LagGuard, is_new_work, refusal
from server.limits.rate_limit import MemoryRateLimiter, RateLimiter
from server.limits.routing import Route, candidates, make_routes
from server.metrics import Metrics
from server.serving.immediate import answer_after_body
from server.serving.lifecycle import Lifecycle
from server.stream.background import BackgroundStreams, watch_background
from server.stream.channel import BodyWriter
from server.stream.nursery import StreamPlan
from server.stream.pump import PumpContext, fallback_routes
from server.stream.writers import write_completion, write_sse
from server.telemetry import open_tracer
from server.telemetry.tracer import NULL_TRACER, Tracer

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

log = logging.getLogger("sluice")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class SluiceApp(QuartTrio):
    asgi_http_class = SluiceHTTPConnection
    # Read by the TCP server for each accepted connection (server.serving.tcp_server).
    send_stall_timeout: float | None = None
    # Set while serving when [overload] is enabled: new streams are refused while it sheds.
    overload: LagGuard | None = None
    cors: CorsSettings = CorsSettings()  # a refusal carries the API's CORS headers too

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable,
                       send: ASGISendCallable) -> None:
        """Refuse new streams while the loop is behind, before Quart makes anything of them."""
        messages = self.immediate_response(scope)
        if messages is not None:
            await answer_after_body(receive, send, messages)
            return
        await self.asgi_app(scope, receive, send)

    def immediate_response(self, scope: Scope) -> list[ASGISendEvent] | None:
        """The answer to a request that needs none of the app: a refusal while shedding.

        Asked once per request: by `__call__` on the ASGI way, or earlier by
        Sluice's TCP server, which then answers from the connection's own task
        without starting the app's (`server.serving.tcp_server.LeanTaskGroup`):
        a refusal comes one pass of a busy loop sooner and costs less.
        """
        guard = self.overload
        if guard is None or not guard.shedding or scope["type"] != "http" \
                or not is_new_work(scope) or not guard.refuse_next():
            return None
        guard.refusals += 1
        origin = next((value.decode("latin-1") for name, value in scope["headers"]
                       if name == b"origin"), None)
        cors = [(name.encode(), value.encode())
                for name, value in response_headers(self.cors, origin)]
        return refusal(guard.settings, cors)


def create_app(settings: Settings, environ: Mapping[str, str] | None = None, *,
               span_processor: SpanProcessor | None = None) -> SluiceApp:
    """The app for ``settings``; ``span_processor`` receives its spans instead of the
    configured exporter (tests: the SDK's in-memory exporter; traces must be on)."""
    environ = os.environ if environ is None else environ
    for backend in settings.backends:
        api_key_from_env(backend, environ)  # a missing key stops the server at start
    admin_key = _admin_key(settings, environ)

    app = SluiceApp("sluice")
    app.send_stall_timeout = settings.server.send_stall_timeout
    app.cors = settings.cors
    app.config.update(
        RESPONSE_TIMEOUT=None,
        MAX_CONTENT_LENGTH=settings.server.max_body_bytes,
        BODY_TIMEOUT=60,
        JSON_SORT_KEYS=False,
    )
    metrics = Metrics()
    tracer = open_tracer(settings.telemetry, span_processor)
    gateway = Gateway(settings, metrics, tracer)
    app.extensions["sluice.gateway"] = gateway
    background = BackgroundStreams(settings.resume)  # detached streams (server.stream.background)
    watch_background(metrics, background)
    app.extensions["sluice.background"] = background
    resumable = ResumableStreams(settings, gateway.stream_response, background, gateway)

    # The backends (and their idle connections) live as long as serving does. An exit
    # stack rather than a `while_serving` generator: a generator that is never
    # resumed (serving cancelled outright) would be finalised by the GC, outside
    # any task.
    lifetime = AsyncExitStack()

    @app.before_serving
    async def open_serving() -> None:
        backends = await lifetime.enter_async_context(open_backends(settings, environ))
        gateway.routes = make_routes(backends, settings.breaker, settings.retry)
        await app.nursery.start(background.serve)
        if settings.overload.enabled:  # the loop's lag, sampled while serving
            guard = LagGuard(settings.overload)
            monitor = await app.nursery.start(guard.serve, metrics.event_loop_lag.observe)
            lifetime.callback(monitor.cancel)
            metrics.watch_overload(guard)
            app.overload = guard
        if gateway.tenancy is not None:  # API keys: their store (Redis: one client per worker)
            keeper = GateKeeper(settings.auth, settings.state, gateway.tenancy)
            await app.nursery.start(keeper.serve)  # quart-trio's lifespan nursery
            gateway.gate = keeper.gate
            lifetime.push_async_callback(keeper.aclose)

    @app.after_serving
    async def close_serving() -> None:
        await background.stop()  # detached streams end before the backends they use close
        gateway.routes = ()
        gateway.gate = None
        app.overload = None
        await lifetime.aclose()
        await tracer.aclose()  # the last spans exported (bounded)

    @app.before_request
    async def assign_request_id() -> None:
        g.request_id = _request_id(request.headers.get("x-request-id"))

    @app.after_request
    async def echo_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.request_id
        return response

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        received_at = trio.current_time()
        chat = parse_chat_request(await request.get_data(False, False, False))
        if wants_resumable(request.headers.get(RESUMABLE_HEADER)):
            return await resumable.start_chat(chat, received_at)
        write_body: BodyWriter = write_sse if chat.stream else write_completion
        return await gateway.stream_response(chat, write_body, received_at,
                                             heartbeats=chat.stream)

    @app.get("/v1/models")
    async def list_models() -> Response:
        names = settings.model_names
        if settings.auth.required:  # a key sees what it may use (401 without one)
            if gateway.gate is None:
                raise ShuttingDown()
            names = (await gateway.gate.directory.authenticate(request.headers)).visible(names)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "sluice"}
                for name in names]
        return _json({"object": "list", "data": data})

    @app.get("/healthz")
    async def healthz() -> Response:
        """Liveness: the process serves (also while draining)."""
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        """Readiness: 503 once draining began, so load balancers send new work elsewhere."""
        if gateway.lifecycle.draining:
            return _json({"status": "draining"}, status=503)
        return _json({"status": "ready"})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.errorhandler(SluiceError)
    async def sluice_error(error: SluiceError) -> Response:
        return _error_response(error)

    @app.errorhandler(HTTPException)
    async def http_exception(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 413:
            return _error_response(BodyTooLarge(
                f"The request body is larger than {settings.server.max_body_bytes} bytes."))
        if status == 400:  # werkzeug's own parse failures (e.g. a body that never completes)
            return _error_response(RequestError("The request could not be read."))
        kind = "not_found_error" if status == 404 else "invalid_request_error"
        return _error_response(http_error(status, error.description or error.name,
                                          type_=kind, code=error.name.lower().replace(" ", "_")))

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        error_id = new_error_id()
        log.exception("unexpected error [%s]", error_id)
        failure = http_error(500, "The gateway failed unexpectedly.", type_="server_error")
        failure.error_id = error_id
        return _error_response(failure, logged=True)

    if admin_key is not None:
        register_admin_api(app, admin_key, gateway.key_admin)  # /admin/keys, /admin/usage
    register_chat_api(app, settings, gateway.stream_response,  # POST /chat
                      resumable.start_browser_chat)
    register_responses_api(app, settings, gateway.stream_response, background,  # /v1/responses
                           gateway)
    resumable.register(app)  # resume and cancel resumable chat streams (/v1 and /chat)
    register_completions_api(app, gateway.stream_response)  # POST /v1/completions
    register_embeddings_api(app, gateway)  # POST /v1/embeddings
    register_page(app)  # GET /
    install_cors(app, settings.cors)
    app.extensions["sluice.metrics"] = metrics
    return app


class Gateway:
    """The state every stream shares: routes, admission slots, rate limits, metrics.

    Views that answer with a stream (``/v1/chat/completions``, ``/chat``) turn a
    validated request into a `StreamResponse` with `stream_response`.
    """

    def __init__(self, settings: Settings, metrics: Metrics,
                 tracer: Tracer = NULL_TRACER) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracer = tracer  # traces of every stream (`server.telemetry`), null when off
        self.routes: tuple[Route, ...] = ()
        self.slots = Slots(settings.admission.max_streams)
        self.lifecycle = Lifecycle()
        self.rng = random.Random()
        admission = settings.admission
        self.rate_limiter: RateLimiter | None = None
        if admission.requests_per_minute > 0:
            self.rate_limiter = MemoryRateLimiter(admission.requests_per_minute, admission.burst)
        metrics.watch(lambda: self.routes, self.slots, self.lifecycle)
        self.access_log = AccessLog(settings.logging.access_log, settings.logging.format)
        # API keys (server.keys): the gate lives while serving, with its state store.
        self.tenancy: TenancyMetrics | None = None
        self.gate: Gate | None = None
        if settings.auth.required:
            self.tenancy = TenancyMetrics(metrics.registry, models=settings.model_names,
                                          max_keys=settings.auth.metrics_max_keys)

    def key_admin(self) -> KeyAdmin | None:
        """Run-time key management, on the serving gate's store (None when not serving)."""
        if self.gate is None:
            return None
        return KeyAdmin(self.settings.auth.keys, self.gate.state.primary,
                        on_change=self.gate.directory.forget)

    async def admit(self, model: str, accepts: Accepts | None = None) -> tuple[Route, ...]:
        """The checks every request passes first: draining, the client's rate limit, the model.

        Returns the routes serving ``model`` (only the backends ``accepts``
        allows, when given: those that serve embeddings, say).
        """
        if self.lifecycle.draining:
            raise ShuttingDown()
        await self._check_rate_limit()
        routes = candidates(self.routes, model)
        if accepts is not None:
            routes = tuple(route for route in routes if accepts(route.backend.settings))
        if not routes:
            raise ModelNotFound(model)
        return routes

    async def owner(self) -> str:
        """Who is asking, as a detached stream records its owner (`server.api.detached`).

        With keys required, the key (401 without a valid one); else a hash of
        the request's ``Authorization`` header.
        """
        if self.settings.auth.required:
            record = await self._serving_gate().directory.authenticate(request.headers)
            return key_owner(record.id)
        return owner_of(request.headers.get("authorization"))

    async def admit_reader(self) -> str:
        """The checks a request to resume, poll or cancel a detached stream passes; its owner.

        It counts against the client's rate limit and its key's requests per
        minute (429), like any request; it takes no concurrency slot and
        reserves no tokens — the stream it reads holds those already. Not
        refused while draining: the stream is work already admitted, and
        draining waits for it.
        """
        await self._check_rate_limit()
        if self.settings.auth.required:
            gate = self._serving_gate()
            record = await gate.directory.authenticate(request.headers)
            await gate.admit_request(record)
            return key_owner(record.id)
        return owner_of(request.headers.get("authorization"))

    def _serving_gate(self) -> Gate:
        if self.gate is None:  # keys are required but serving has ended (or not begun)
            raise ShuttingDown()
        return self.gate

    async def _check_rate_limit(self) -> None:
        """The gateway's own per-client limit (``[admission] requests_per_minute``): 429."""
        if self.rate_limiter is not None:
            wait = await self.rate_limiter.check(_client_key())
            if wait is not None:
                self.metrics.rate_limited.inc()
                raise TooManyRequests("Rate limit exceeded for this client.",
                                      code="rate_limit_exceeded", retry_after=wait)

    async def stream_response(self, chat: ChatRequest, write_body: BodyWriter,
                              received_at: float, *, heartbeats: bool,
                              accepts: Accepts | None = None) -> StreamResponse:
        """Check the client's key, rate limit and model, then plan the stream.

        ``heartbeats``: the body format shows it is alive during silence (an SSE
        keepalive comment) every ``keepalive_interval``; a buffered one cannot.
        """
        grant = None
        if self.settings.auth.required:  # 401 / 403, and the key's model alias
            if self.gate is None:
                raise ShuttingDown()
            grant = await self.gate.authorize(request.headers, chat)
            chat = grant.chat
        routes = await self.admit(chat.model, accepts)
        ticket = None
        if grant is not None and self.gate is not None:  # 429 / 503; settled as the stream ends
            ticket = await self.gate.admit(grant)
            if ticket.meter is not None:  # the client did not ask for usage: hide it
                write_body = partial(write_body, meter=ticket.meter)
        admission = self.settings.admission
        plan = StreamPlan(
            request=chat,
            request_id=g.request_id,
            received_at=received_at,
            pump=PumpContext(routes=routes, policy=self.settings.retry,
                             queue_timeout=admission.queue_timeout, metrics=self.metrics,
                             rng=self.rng, model=self.settings.model(chat.model),
                             fallback_routes=fallback_routes(self.routes, self.settings,
                                                             chat.model)),
            slots=self.slots,
            lifecycle=self.lifecycle,
            weight=admission.stream_weight if chat.stream else admission.buffered_weight,
            buffer=self.settings.server.stream_buffer,
            write_body=write_body,
            keepalive_interval=self.settings.server.keepalive_interval if heartbeats else None,
            access_log=self.access_log,
            key_name=grant.record.name if grant is not None else None,
            ticket=ticket,
            endpoint=request.path,
            tracer=self.tracer,
            trace_headers=self.tracer.parent_headers(request.headers),
        )
        response = StreamResponse(plan, self.metrics)
        for name, value in ticket.headers if ticket else ():
            response.headers[name.decode()] = value.decode()
        return response


def _client_key() -> str:
    """Whom a rate limit counts: the API key if one was sent (hashed), else the address."""
    authorization = request.headers.get("authorization", "")
    if authorization:
        return "key:" + hashlib.blake2b(authorization.encode(), digest_size=12).hexdigest()
    return "addr:" + (request.remote_addr or "unknown")


def _admin_key(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """The admin key, from the variable ``[auth] admin_key_env`` names (required if named)."""
    name = settings.auth.admin_key_env
    if name is None:
        return None
    if not environ.get(name):
        raise ConfigError(f"auth.admin_key_env: environment variable {name} is not set")
    return environ[name]


def _request_id(sent: str | None) -> str:
    """The client's X-Request-ID if it is sane, else a new one."""
    if sent and _REQUEST_ID.fullmatch(sent):
        return sent
    return f"req_{_REQUEST_IDS.getrandbits(96):024x}"


# Request IDs need to be unique, not secret: a seeded PRNG, not a getrandom()
# system call per request (measured at ~1% of opening a stream).
_REQUEST_IDS = random.Random()


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def _error_response(error: SluiceError, *, logged: bool = False) -> Response:
    """The OpenAI-shaped answer; logged at info with its ``error_id``, so a client's id can be
    looked up (streams log their own ending, `server.stream.nursery`)."""
    if not logged:
        log.info("request %s: %s %s answered %d %s [%s] %s", getattr(g, "request_id", "-"),
                 request.method, request.path, error.status, error.code or error.type,
                 error.error_id, error.detail)
    response = Response(openai_error_body(error), status=error.status)
    for name, value in error_headers(error):
        response.headers[name.decode()] = value.decode()
    return response
