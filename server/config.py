"""Settings: what a deployment tells Sluice, validated before anything serves.

The settings are frozen dataclasses built from a TOML document by pure
functions. Every key is known: an unknown key, a wrong type or an impossible
value raises `ConfigError` naming the key's path (``timeouts.idle``; a backend
by its name, ``backends["local-vllm"].timeouts.idle``, or by its place,
``backends[1].name``, when it has no usable name), so a typo stops the server
at start instead of being silently ignored.

    settings = load_settings(os.environ)          # SLUICE_CONFIG or the default
    settings = parse_settings(tomllib.loads(text))

With no file, `DEFAULT_CONFIG` applies: one simulated backend, so a fresh
install answers `/v1/chat/completions` with no model server at all.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

from server.keys.settings import AuthSettings, parse_auth
from server.limits.state_settings import StateSettings, parse_state

BackendKind = Literal["openai", "simulated", "ollama"]
BACKEND_KINDS: tuple[BackendKind, ...] = ("openai", "simulated", "ollama")
Continuation = Literal["none", "prefill"]
CONTINUATIONS: tuple[Continuation, ...] = ("none", "prefill")
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
SpanExporterKind = Literal["otlp", "console"]
SPAN_EXPORTERS: tuple[SpanExporterKind, ...] = ("otlp", "console")

DEFAULT_CONFIG = """
[[backends]]
name = "simulated"
kind = "simulated"
models = ["sluice-sim"]
"""


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. None of them bounds a whole stream: long generations are fine."""

    connect: float = 5.0
    first_chunk: float = 60.0  # request sent → first *content* token
    idle: float = 60.0  # between content chunks; keepalives don't reset it


@dataclass(frozen=True, slots=True)
class SimulatedModel:
    """How the built-in simulated model paces its reply."""

    tokens_per_second: float = 40.0
    first_token_delay: float = 0.35
    reply_tokens: int = 60


@dataclass(frozen=True, slots=True)
class BackendSettings:
    name: str
    kind: BackendKind
    models: tuple[str, ...]
    base_url: str = ""
    api_key_env: str | None = None
    priority: int = 0  # fail-over tier: lower is tried first
    weight: float = 1.0  # share within a tier, among the least busy
    max_concurrency: int | None = None  # streams in flight to this backend
    continuation: Continuation = "none"  # "prefill": can continue a final assistant message
    upstream_model: str | None = None  # the model name sent upstream (default: the client's)
    tls_ca_file: str | None = None  # PEM bundle to verify an https upstream (default: certifi)
    stream_options: bool = True  # False: never send `stream_options` (servers that reject it)
    embeddings: bool = False  # serves /v1/embeddings (the simulated model always can)
    completions: bool = False  # serves /v1/completions (the simulated model always can)
    timeouts: Timeouts = field(default_factory=Timeouts)
    simulated: SimulatedModel = field(default_factory=SimulatedModel)

    def serves(self, model: str) -> bool:
        return "*" in self.models or model in self.models


Accepts = Callable[[BackendSettings], bool]  # which backends may serve an endpoint


@dataclass(frozen=True, slots=True)
class ServerSettings:
    max_body_bytes: int = 4 * 1024 * 1024
    keepalive_interval: float = 15.0  # seconds of silence before `: keepalive`
    stream_buffer: int = 64  # events held between the upstream reader and the writer
    upstream_max_connections: int = 1000  # idle connections kept per backend for reuse
    send_stall_timeout: float = 60.0  # a client that accepts no bytes this long is dropped
    drain_seconds: float = 30.0  # at shutdown, how long live streams may run on


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """What may happen before the commit point (the first content chunk)."""

    max_attempts: int = 4  # upstream requests per client request, all backends together
    same_backend_retries: int = 1  # after a 5xx/reset/429, before failing over
    retry_after_cap: float = 10.0  # longest Retry-After honoured, seconds
    backoff_base: float = 0.2  # exponential backoff with full jitter, seconds
    backoff_max: float = 5.0
    budget: float = 120.0  # total seconds from request to commit, retries included
    continuation_attempts: int = 2  # re-requests after a cut, with prefill-capable backends
    # The retry budget, per backend (server.limits.retry_budget): re-requests its failures
    # may cause over `budget_window` seconds: this share of its requests, plus a floor.
    budget_ratio: float = 0.2
    budget_min_per_second: float = 1.0
    budget_window: float = 10.0
    # A backend that refuses a prefill continuation is not asked for one again this long.
    prefill_cooldown: float = 600.0
    hedge_share: float = 0.1  # of a backend's recent requests, at most this share hedged


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a failing backend is taken out, and for how long."""

    consecutive_failures: int = 5
    failure_ratio: float = 0.5  # of the last `window` outcomes...
    window: int = 20
    min_requests: int = 10  # ...once the window holds at least this many
    cooldown: float = 30.0  # open this long, then one probe request


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """How many streams may run at once, and how long a request may wait for a slot."""

    max_streams: int = 10_000  # slots in the whole gateway (per worker process)
    stream_weight: int = 1  # slots a streaming request holds for its whole life
    buffered_weight: int = 1  # slots a non-streaming request holds
    queue_timeout: float = 10.0  # waiting longer answers 429 (gateway) / 503 (backend)
    requests_per_minute: float = 0.0  # per client (API key, else address); 0 = no limit
    burst: int = 0  # bucket size; 0 = one minute's worth


@dataclass(frozen=True, slots=True)
class OverloadSettings:
    """``[overload]``: when a worker stops taking new streams (`server.limits.overload`).

    Seconds here; the TOML keys say their unit (``lag_threshold_ms``, ``hold_s``).
    """

    enabled: bool = True
    lag_threshold: float = 0.02  # smoothed event-loop lag above this...
    onset: float = 1.0  # ...for this long: refuse new streams
    lag_clear: float = 0.01  # ...until it stays below this
    hold: float = 1.0  # ...for this long
    retry_after: float = 1.0  # the Retry-After a refused client is given
    interval: float = 0.01  # how often the loop's lag is sampled


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """Which other origins' pages may call ``/v1/*`` and ``/chat`` from a browser."""

    allow_origins: tuple[str, ...] = ()  # exact ``scheme://host[:port]``s, or ("*",)
    allow_methods: tuple[str, ...] = ("GET", "POST")
    allow_headers: tuple[str, ...] = ("Authorization", "Content-Type", "X-Request-ID",
                                      "X-Sluice-Resumable", "Last-Event-ID")
    max_age: int = 600  # seconds a browser may cache a preflight answer


@dataclass(frozen=True, slots=True)
class ChatApiSettings:
    """The browser-friendly ``/chat`` endpoint."""

    default_model: str | None = None  # when a request names none; None: the first model


Strategy = Literal["least_busy", "latency"]
STRATEGIES: tuple[Strategy, ...] = ("least_busy", "latency")


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """What one model's requests may do besides fail-over (``[models."name"]``)."""

    context_fallback: tuple[str, ...] = ()  # models to try when a request does not fit
    hedge_after: float | Literal["auto"] | None = None  # seconds; "auto": the backend's p95
    strategy: Strategy = "least_busy"  # how a route is chosen within a tier


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """What Sluice logs, and how (`server.access_log`)."""

    format: LogFormat = "text"  # "json": every line one JSON object (under `sluice serve`)
    access_log: bool = True  # one line per stream on the ``sluice.access`` logger


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """OpenTelemetry traces (`server.telemetry`): off unless ``traces = true``."""

    traces: bool = False
    service_name: str = "sluice"
    exporter: SpanExporterKind = "otlp"  # "console": spans as JSON on standard output
    # OTLP/HTTP traces URL; "" = $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
    # $OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, else http://localhost:4318/v1/traces
    endpoint: str = ""
    sample_ratio: float = 1.0  # of traces started here; a caller's sampled flag is obeyed


@dataclass(frozen=True, slots=True)
class ResumeSettings:
    """Detached streams: background responses and resumable chat streams."""

    retention: float = 600.0  # seconds a finished stream's events are kept for late readers
    grace: float = 60.0  # a resumable chat stream nobody reads runs on this long
    max_events: int = 10_000  # events kept per stream (the oldest go first)
    max_bytes: int = 4 * 1024 * 1024  # bytes of events kept per stream
    max_retained_bytes: int = 256 * 1024 * 1024  # all finished streams' events together
    redis_url: str = ""  # "redis://host:6379/0": share detached streams between instances


@dataclass(frozen=True, slots=True)
class Settings:
    backends: tuple[BackendSettings, ...]
    server: ServerSettings = field(default_factory=ServerSettings)
    timeouts: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    overload: OverloadSettings = field(default_factory=OverloadSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    chat: ChatApiSettings = field(default_factory=ChatApiSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    resume: ResumeSettings = field(default_factory=ResumeSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    state: StateSettings = field(default_factory=StateSettings)  # server.limits.state_settings
    auth: AuthSettings = field(default_factory=AuthSettings)  # server.keys.settings
    models: Mapping[str, ModelSettings] = field(default_factory=dict)

    def model(self, name: str) -> ModelSettings:
        """The model's own settings (the defaults if it has no ``[models]`` table)."""
        return self.models.get(name) or _DEFAULT_MODEL

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every concrete model name served, in configuration order, without repeats."""
        names = (m for b in self.backends for m in b.models if m != "*")
        return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------- loading


def load_settings(environ: Mapping[str, str], path: str | None = None) -> Settings:
    """Settings from ``path``, else ``$SLUICE_CONFIG``, else the default."""
    path = path or environ.get("SLUICE_CONFIG") or None
    if path is None:
        return parse_settings(tomllib.loads(DEFAULT_CONFIG))
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path!r}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path!r} is not valid TOML: {error}") from None
    return parse_settings(document)


def parse_settings(document: Mapping[str, Any]) -> Settings:
    table = _Table(document, "")
    timeouts = _timeouts(table.table("timeouts"), Timeouts())
    server = _server(table.table("server"))
    retry = _retry(table.table("retry"))
    breaker = _breaker(table.table("breaker"))
    admission = _admission(table.table("admission"))
    overload = _overload(table.table("overload"))
    cors = _cors(table.table("cors"))
    chat_table = table.table("chat")  # read once the backends are known
    logging = _logging(table.table("logging"))
    resume = _resume(table.table("resume"))
    telemetry = _telemetry(table.table("telemetry"))
    state = parse_state(table.table("state"))
    auth = parse_auth(table.table("auth"))
    models_table = table.table("models")
    raw_backends: list[Any] | None = table.take("backends", list, None)
    table.finish()
    if not raw_backends:
        raise ConfigError("backends: at least one [[backends]] table is required")
    backends = tuple(
        _backend(_Table(_require_table(raw, f"backends[{i}]"), _backend_path(raw, i)), timeouts)
        for i, raw in enumerate(raw_backends)
    )
    names = [b.name for b in backends]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"{backend_path(name)}: two backends have this name")
    return Settings(backends=backends, server=server, timeouts=timeouts, retry=retry,
                    breaker=breaker, admission=admission, overload=overload, cors=cors,
                    chat=_chat(chat_table, backends), logging=logging,
                    resume=resume, telemetry=telemetry, state=state, auth=auth,
                    models=_models(models_table, backends))


def backend_path(name: str) -> str:
    """How every error names a backend: ``backends["local-vllm"]``."""
    return f'backends["{name}"]'


def _backend_path(raw: Mapping[str, Any], index: int) -> str:
    """By name when the table has a usable one; by its place among the tables otherwise."""
    name = raw.get("name")
    return backend_path(name) if isinstance(name, str) and name else f"backends[{index}]"


def _server(table: _Table) -> ServerSettings:
    default = ServerSettings()
    settings = ServerSettings(
        max_body_bytes=table.take("max_body_bytes", int, default.max_body_bytes, _positive),
        keepalive_interval=table.number("keepalive_interval", default.keepalive_interval),
        stream_buffer=table.take("stream_buffer", int, default.stream_buffer, _positive),
        upstream_max_connections=table.take(
            "upstream_max_connections", int, default.upstream_max_connections, _positive
        ),
        send_stall_timeout=table.number("send_stall_timeout", default.send_stall_timeout),
        drain_seconds=table.number("drain_seconds", default.drain_seconds, allow_zero=True),
    )
    table.finish()
    return settings


def _retry(table: _Table) -> RetryPolicy:
    d = RetryPolicy()
    policy = RetryPolicy(
        max_attempts=table.take("max_attempts", int, d.max_attempts, _positive),
        same_backend_retries=table.take("same_backend_retries", int, d.same_backend_retries,
                                        _not_negative),
        retry_after_cap=table.number("retry_after_cap", d.retry_after_cap, allow_zero=True),
        backoff_base=table.number("backoff_base", d.backoff_base, allow_zero=True),
        backoff_max=table.number("backoff_max", d.backoff_max, allow_zero=True),
        budget=table.number("budget", d.budget),
        continuation_attempts=table.take("continuation_attempts", int,
                                         d.continuation_attempts, _not_negative),
        budget_ratio=table.number("budget_ratio", d.budget_ratio, allow_zero=True),
        budget_min_per_second=table.number("budget_min_per_second", d.budget_min_per_second,
                                           allow_zero=True),
        budget_window=table.number("budget_window", d.budget_window),
        prefill_cooldown=table.number("prefill_cooldown", d.prefill_cooldown, allow_zero=True),
        hedge_share=table.number("hedge_share", d.hedge_share, allow_zero=True),
    )
    if policy.hedge_share > 1:
        raise ConfigError(f"{table.path}.hedge_share: must be ≤ 1, got {policy.hedge_share}")
    table.finish()
    return policy


def _breaker(table: _Table) -> BreakerSettings:
    d = BreakerSettings()
    settings = BreakerSettings(
        consecutive_failures=table.take("consecutive_failures", int, d.consecutive_failures,
                                        _positive),
        failure_ratio=table.number("failure_ratio", d.failure_ratio),
        window=table.take("window", int, d.window, _positive),
        min_requests=table.take("min_requests", int, d.min_requests, _positive),
        cooldown=table.number("cooldown", d.cooldown),
    )
    if settings.failure_ratio > 1:
        raise ConfigError(f"{table.path}.failure_ratio: must be ≤ 1, got {settings.failure_ratio}")
    table.finish()
    return settings


def _admission(table: _Table) -> AdmissionSettings:
    d = AdmissionSettings()
    settings = AdmissionSettings(
        max_streams=table.take("max_streams", int, d.max_streams, _positive),
        stream_weight=table.take("stream_weight", int, d.stream_weight, _positive),
        buffered_weight=table.take("buffered_weight", int, d.buffered_weight, _positive),
        queue_timeout=table.number("queue_timeout", d.queue_timeout, allow_zero=True),
        requests_per_minute=table.number("requests_per_minute", d.requests_per_minute,
                                         allow_zero=True),
        burst=table.take("burst", int, d.burst, _not_negative),
    )
    for key in ("stream_weight", "buffered_weight"):
        if getattr(settings, key) > settings.max_streams:
            raise ConfigError(f"{table.path}.{key}: larger than max_streams "
                              f"({settings.max_streams}): no request could ever start")
    table.finish()
    return settings


def _overload(table: _Table) -> OverloadSettings:
    d = OverloadSettings()
    ms = 1000.0
    settings = OverloadSettings(
        enabled=table.take("enabled", bool, d.enabled),
        lag_threshold=table.number("lag_threshold_ms", d.lag_threshold * ms) / ms,
        onset=table.number("onset_s", d.onset, allow_zero=True),
        lag_clear=table.number("lag_clear_ms", d.lag_clear * ms, allow_zero=True) / ms,
        hold=table.number("hold_s", d.hold, allow_zero=True),
        retry_after=table.number("retry_after_s", d.retry_after, allow_zero=True),
        interval=table.number("sample_interval_ms", d.interval * ms) / ms,
    )
    if settings.lag_clear >= settings.lag_threshold:
        raise ConfigError(f"{table.path}.lag_clear_ms: must be below lag_threshold_ms "
                          f"({settings.lag_threshold * ms:g}), or shedding could never end")
    table.finish()
    return settings


_ORIGIN = re.compile(r"https?://[^/?#\s@]+")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP method or header name


def _cors(table: _Table) -> CorsSettings:
    default = CorsSettings()
    origins = tuple(o.lower() for o in _strings(table, "allow_origins", default.allow_origins))
    for i, origin in enumerate(origins):
        if origin == "*":
            if len(origins) > 1:
                raise ConfigError(f"{table.path}.allow_origins: '*' must be the only entry")
        elif not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"{table.path}.allow_origins[{i}]: expected '*' or an origin "
                              f"like 'https://app.example.com' (no path), got {origin!r}")
    methods = tuple(m.upper() for m in _strings(table, "allow_methods", default.allow_methods))
    headers = _strings(table, "allow_headers", default.allow_headers)
    for key, values in (("allow_methods", methods), ("allow_headers", headers)):
        for i, value in enumerate(values):
            if not _TOKEN.fullmatch(value):
                raise ConfigError(f"{table.path}.{key}[{i}]: not a valid name: {value!r}")
    max_age = table.take("max_age", int, default.max_age)
    if max_age < 0:
        raise ConfigError(f"{table.path}.max_age: must be ≥ 0, got {max_age!r}")
    table.finish()
    return CorsSettings(allow_origins=origins, allow_methods=methods, allow_headers=headers,
                        max_age=max_age)


def _strings(table: _Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    values: list[Any] | None = table.take(key, list, None)
    if values is None:
        return default
    if not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{table.path}.{key}: expected a list of non-empty strings")
    return tuple(values)


def _chat(table: _Table, backends: tuple[BackendSettings, ...]) -> ChatApiSettings:
    model = table.take("default_model", str, None, _non_empty)
    if model is not None and not any(b.serves(model) for b in backends):
        raise ConfigError(f"{table.path}.default_model: no backend serves {model!r}")
    table.finish()
    return ChatApiSettings(default_model=model)


def _logging(table: _Table) -> LoggingSettings:
    default = LoggingSettings()
    settings = LoggingSettings(
        format=table.take("format", str, default.format,  # type: ignore[arg-type]
                          _one_of(LOG_FORMATS)),
        access_log=table.take("access_log", bool, default.access_log),
    )
    table.finish()
    return settings


def _resume(table: _Table) -> ResumeSettings:
    d = ResumeSettings()
    settings = ResumeSettings(
        retention=table.number("retention", d.retention, allow_zero=True),
        grace=table.number("grace", d.grace, allow_zero=True),
        max_events=table.take("max_events", int, d.max_events, _positive),
        max_bytes=table.take("max_bytes", int, d.max_bytes, _positive),
        max_retained_bytes=table.take("max_retained_bytes", int, d.max_retained_bytes,
                                      _positive),
        redis_url=table.take("redis_url", str, d.redis_url),
    )
    if settings.redis_url and not settings.redis_url.startswith(("redis://", "rediss://",
                                                                 "unix://")):
        raise ConfigError(f"{table.path}.redis_url: expected a redis://, rediss:// or unix:// "
                          f"URL, got {settings.redis_url!r}")
    table.finish()
    return settings


# What `[telemetry]` needs installed: the extra ``sluice[otel]``.
OTEL_MODULES = ("opentelemetry.trace", "opentelemetry.sdk.trace")
OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


def _telemetry(table: _Table) -> TelemetrySettings:
    d = TelemetrySettings()
    settings = TelemetrySettings(
        traces=table.take("traces", bool, d.traces),
        service_name=table.take("service_name", str, d.service_name, _non_empty),
        exporter=table.take("exporter", str, d.exporter,  # type: ignore[arg-type]
                            _one_of(SPAN_EXPORTERS)),
        endpoint=table.take("endpoint", str, d.endpoint),
        sample_ratio=table.number("sample_ratio", d.sample_ratio, allow_zero=True),
    )
    if settings.endpoint and not settings.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{table.path}.endpoint: expected an http:// or https:// URL "
                          f"(OTLP over HTTP), got {settings.endpoint!r}")
    if settings.sample_ratio > 1:
        raise ConfigError(f"{table.path}.sample_ratio: must be ≤ 1, got {settings.sample_ratio}")
    table.finish()
    if settings.traces:
        needed = OTEL_MODULES + ((OTLP_MODULE,) if settings.exporter == "otlp" else ())
        missing = [name for name in needed if not _importable(name)]
        if missing:
            raise ConfigError(f"{table.path}.traces: OpenTelemetry is not installed "
                              f"({missing[0]} is missing): pip install 'sluice[otel]'")
    return settings


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


_DEFAULT_MODEL = ModelSettings()


def _models(table: _Table, backends: tuple[BackendSettings, ...]) -> dict[str, ModelSettings]:
    models = {}
    for name in list(table.remaining):
        entry = table.table(name)
        fallback: Any = entry.remaining.pop("context_fallback", [])
        names: list[Any] = [fallback] if isinstance(fallback, str) else fallback
        if not isinstance(names, list):
            raise ConfigError(f"{entry.path}.context_fallback: expected a model name or a "
                              f"list of them, got {fallback!r}")
        for i, other in enumerate(names):
            if not isinstance(other, str) or not any(b.serves(other) for b in backends):
                raise ConfigError(f"{entry.path}.context_fallback: no backend serves {other!r}")
            if other == name or other in names[:i]:
                raise ConfigError(f"{entry.path}.context_fallback: {other!r} repeats a model")
        hedge: Any = entry.remaining.pop("hedge_after", None)
        if hedge is not None and hedge != "auto" and (
                isinstance(hedge, bool) or not isinstance(hedge, int | float) or not hedge > 0):
            raise ConfigError(f"{entry.path}.hedge_after: expected seconds > 0 or \"auto\", "
                              f"got {hedge!r}")
        models[name] = ModelSettings(
            context_fallback=tuple(names),
            hedge_after=hedge if hedge in (None, "auto") else float(hedge),
            strategy=entry.take("strategy", str, "least_busy",  # type: ignore[arg-type]
                                _one_of(STRATEGIES)),
        )
        entry.finish()
    return models


def _timeouts(table: _Table, inherited: Timeouts) -> Timeouts:
    timeouts = Timeouts(
        connect=table.number("connect", inherited.connect),
        first_chunk=table.number("first_chunk", inherited.first_chunk),
        idle=table.number("idle", inherited.idle),
    )
    table.finish()
    return timeouts


def _backend(table: _Table, timeouts: Timeouts) -> BackendSettings:
    name = table.take("name", str, REQUIRED, _non_empty)
    kind = table.take("kind", str, REQUIRED, _one_of(BACKEND_KINDS))
    models: list[Any] = table.take("models", list, REQUIRED)
    if not models or not all(isinstance(m, str) and m for m in models):
        raise ConfigError(f"{table.path}.models: expected a non-empty list of model names")
    base_url = table.take("base_url", str, "")
    if kind in ("openai", "ollama") and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{table.path}.base_url: an http:// or https:// URL is required "
                          f"for kind {kind!r}")
    if kind == "ollama" and base_url.rstrip("/").endswith("/v1"):
        # /v1 is Ollama's OpenAI-compatible API: that is kind "openai". Kind "ollama"
        # speaks the native /api/chat and wants the server's root URL.
        raise ConfigError(f"{table.path}.base_url: for kind 'ollama' give the server's root "
                          f"URL (like http://127.0.0.1:11434), without /v1")
    backend = BackendSettings(
        name=name,
        kind=kind,  # type: ignore[arg-type]  # checked by _one_of
        models=tuple(models),
        base_url=base_url.rstrip("/"),
        api_key_env=table.take("api_key_env", str, None, _non_empty),
        priority=table.take("priority", int, 0),
        weight=table.number("weight", 1.0),
        max_concurrency=table.take("max_concurrency", int, None, _positive),
        continuation=table.take("continuation", str, "none",  # type: ignore[arg-type]
                                _one_of(CONTINUATIONS)),
        upstream_model=table.take("upstream_model", str, None, _non_empty),
        tls_ca_file=table.take("tls_ca_file", str, None, _readable_file),
        # Only an OpenAI-compatible upstream is ever sent the field.
        stream_options=table.take("stream_options", bool, True) if kind == "openai" else True,
        timeouts=_timeouts(table.table("timeouts"), timeouts),
        embeddings=table.take("embeddings", bool, kind == "simulated"),
        completions=table.take("completions", bool, kind == "simulated"),
    )
    if kind == "ollama" and (backend.embeddings or backend.completions):
        raise ConfigError(f"{table.path}: embeddings and completions are served by kinds "
                          "'openai' and 'simulated' only")
    simulated_keys = ("tokens_per_second", "first_token_delay", "reply_tokens")
    if kind == "simulated":
        default = SimulatedModel()
        backend = replace(backend, simulated=SimulatedModel(
            tokens_per_second=table.number("tokens_per_second", default.tokens_per_second,
                                           allow_zero=False),
            first_token_delay=table.number("first_token_delay", default.first_token_delay,
                                           allow_zero=True),
            reply_tokens=table.take("reply_tokens", int, default.reply_tokens, _positive),
        ))
    else:
        for key in simulated_keys:
            if key in table.remaining:
                raise ConfigError(f"{table.path}.{key}: only valid for kind 'simulated'")
    if "stream_options" in table.remaining:
        raise ConfigError(f"{table.path}.stream_options: only valid for kind 'openai'")
    table.finish()
    return backend


# ------------------------------------------------------- strict table access

T = TypeVar("T")


class _Required:
    """Marks a key that has no default."""


REQUIRED = _Required()


class _Table:
    """A TOML table read key by key; `finish` rejects whatever was not read."""

    def __init__(self, document: Mapping[str, Any], path: str) -> None:
        self.remaining = dict(document)
        self.path = path

    def _key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def take(
        self,
        key: str,
        kind: type[T],
        default: T | _Required | None,
        check: Callable[[str, T], None] | None = None,
    ) -> T:
        if key not in self.remaining:
            if isinstance(default, _Required):
                raise ConfigError(f"{self._key_path(key)}: required")
            return default  # type: ignore[return-value]  # None only where T admits it
        value = self.remaining.pop(key)
        # bool is an int in Python; a TOML `true` is never a valid number here.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{self._key_path(key)}: expected {_type_name(kind)}, got {value!r}"
            )
        if check is not None:
            check(self._key_path(key), value)
        return value

    def number(self, key: str, default: float, *, allow_zero: bool = False) -> float:
        if key not in self.remaining:
            return default
        value = self.remaining.pop(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{self._key_path(key)}: expected a number, got {value!r}")
        if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
            bound = "≥ 0" if allow_zero else "> 0"
            raise ConfigError(f"{self._key_path(key)}: must be {bound}, got {value!r}")
        return float(value)

    def table(self, key: str) -> _Table:
        value = self.remaining.pop(key, {})
        return _Table(_require_table(value, self._key_path(key)), self._key_path(key))

    def finish(self) -> None:
        if self.remaining:
            key = sorted(self.remaining)[0]
            raise ConfigError(f"{self._key_path(key)}: unknown setting")


def _require_table(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a table, got {value!r}")
    return value


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", list: "a list"}.get(kind, kind.__name__)


def _positive(path: str, value: int) -> None:
    if value <= 0:
        raise ConfigError(f"{path}: must be > 0, got {value!r}")


def _readable_file(path: str, value: str) -> None:
    if not os.path.isfile(value):
        raise ConfigError(f"{path}: no such file: {value!r}")


def _not_negative(path: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{path}: must be ≥ 0, got {value!r}")


def _non_empty(path: str, value: str) -> None:
    if not value:
        raise ConfigError(f"{path}: must not be empty")


def _one_of(choices: tuple[str, ...]) -> Callable[[str, str], None]:
    def check(path: str, value: str) -> None:
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(choices)}; got {value!r}")

    return check
