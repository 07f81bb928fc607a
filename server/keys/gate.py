"""API keys on the request path: who asks (401), for what (403), within which limits (429).

The chat views call it before a stream is planned
(`server.gateway.Gateway.stream_response`), in two steps around routing::

    grant = await gate.authorize(request.headers, chat)   # 401 / 403; the alias applied
    routes = candidates(routes, grant.chat.model)          # 404 before anything is reserved
    ticket = await gate.admit(grant)                       # 429 / 503; tokens reserved
    ...                                                    # the stream runs, metered
    await ticket.settle(progress, outcome)                 # at its end, whatever the end

A granted request is *metered*: the upstream is asked for
``stream_options.include_usage`` (the writer strips the usage chunk again
for a client that did not ask, `server.stream.usage`), and its reservation —
estimated prompt tokens plus ``max_tokens``, or ``[auth] reserve_tokens``
when it sets none — is settled from the real usage. A stream that reported
no usage (cut, cancelled, a server that sends none) is settled from an
estimate: the prompt estimate plus one token per relayed chunk; one that
never got a chunk costs nothing.

Refusals carry OpenAI's ``x-ratelimit-*`` headers and ``Retry-After``; so do
successful responses, so clients can pace themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import trio

from server.api.chat_completions import ChatRequest
from server.errors import PermissionDenied, SluiceError, TooManyRequests, Unauthorized
from server.keys.directory import KeyDirectory, RequestHeaders
from server.keys.metrics import TenancyMetrics
from server.keys.record import KeyRecord
from server.keys.settings import AuthSettings, Price
from server.limits.quota import Quota
from server.limits.shared_state import SharedState, open_shared_state
from server.limits.state_settings import StateSettings
from server.limits.store import Admission, Periods, Settlement, StateStore, Usage, Verdict
from server.stream.progress import StreamProgress
from server.stream.usage import UsageMeter

Headers = list[tuple[bytes, bytes]]

_REFUSALS = {  # reason -> (code, what was exceeded)
    "requests": ("rate_limit_exceeded", "requests per minute"),
    "tokens": ("rate_limit_exceeded", "tokens per minute"),
    "streams": ("concurrency_limit_exceeded", "concurrent streams"),
    "daily_tokens": ("insufficient_quota", "daily token budget"),
    "monthly_tokens": ("insufficient_quota", "monthly token budget"),
    "monthly_spend": ("insufficient_quota", "monthly spend budget"),
}


@asynccontextmanager
async def open_gate(auth: AuthSettings, state: StateSettings,
                    metrics: TenancyMetrics) -> AsyncIterator[Gate]:
    """The gate of one worker, on its state store (Redis: its one client), for serving."""
    async with open_shared_state(state, metrics) as shared:
        directory = KeyDirectory(auth.keys, shared, metrics, cache_seconds=auth.cache_seconds)
        yield Gate(auth, shared, directory, metrics)


class GateKeeper:
    """Holds a worker's gate open for as long as it serves, in one task of its own.

    The gate's store runs task groups (coredis's connection pool, the lease
    renewer) that must be exited by the task that entered them, in order.
    Entered straight in ``before_serving`` and left in ``after_serving`` they
    would be — but when serving is cancelled outright (a crash, a test that
    fails) ``after_serving`` never runs and the lifespan task leaves its own
    nursery with ours still open: trio reports a corrupted nursery stack.
    So the lifespan starts this task in its nursery instead; ``aclose`` (from
    ``after_serving``) or any cancellation ends it, and it closes what it opened.

        keeper = GateKeeper(auth, state, metrics)
        await app.nursery.start(keeper.serve)      # keeper.gate is open
        await keeper.aclose()
    """

    def __init__(self, auth: AuthSettings, state: StateSettings,
                 metrics: TenancyMetrics) -> None:
        self._open = partial(open_gate, auth, state, metrics)
        self.gate: Gate | None = None
        self._scope = trio.CancelScope()
        self._closed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                    ) -> None:
        try:
            with self._scope:
                async with self._open() as gate:
                    self.gate = gate
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self.gate = None
            self._closed.set()

    async def aclose(self) -> None:
        self._scope.cancel("serving ended")
        await self._closed.wait()


@dataclass(frozen=True, slots=True)
class Grant:
    """An authenticated request for a model its key may use."""

    record: KeyRecord
    chat: ChatRequest  # as it will be served: the alias applied, usage asked of the upstream
    client_wants_usage: bool


class Gate:
    def __init__(self, auth: AuthSettings, state: SharedState, directory: KeyDirectory,
                 metrics: TenancyMetrics, *, wall: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self.state = state
        self.directory = directory
        self.metrics = metrics
        self._wall = wall

    async def authorize(self, headers: RequestHeaders, chat: ChatRequest) -> Grant:
        record, served = await self.authorize_model(headers, chat.model)
        return Grant(record, metered(chat, served), chat.include_usage)

    async def authorize_model(self, headers: RequestHeaders,
                              model: str) -> tuple[KeyRecord, str]:
        """401 without a valid key, 403 for a model it may not use; else the model served."""
        record = await self.directory.authenticate(headers)
        served = record.resolve(model)
        if served is None:
            self.metrics.forbidden.labels(self.metrics.key(record.name)).inc()
            raise PermissionDenied(f"This API key may not use the model '{model}'.")
        return record, served

    async def admit(self, grant: Grant) -> Ticket:
        record, chat = grant.record, grant.chat
        prompt = prompt_token_estimate(chat.body.get("messages"))
        completion = chat.max_tokens or self.auth.reserve_tokens
        price = self.auth.prices.get(chat.model)
        admission = Admission(record.id, record.quota, prompt + completion,
                              price.cost(prompt, completion) if price else 0.0,
                              Periods.at(self._wall()), check_record=not record.static)
        verdict, store = await self.state.admit(admission)
        key = self.metrics.key(record.name)
        if not verdict.allowed:
            raise self._refused(record, verdict)
        self.metrics.requests.labels(key, self.metrics.model(chat.model)).inc()
        hide_usage = chat.stream and not grant.client_wants_usage
        return Ticket(self, admission, store, chat.model, ratelimit_headers(verdict), price,
                      prompt, UsageMeter() if hide_usage else None, key)

    async def admit_request(self, record: KeyRecord) -> None:
        """Count one request against the key's requests per minute, and nothing else.

        For the requests that read, poll or cancel a detached stream: the stream
        they read holds its concurrency slot and its tokens already, so a resume
        takes neither; it is a request like any other for the key's rpm (429).
        """
        if not record.quota.rpm:
            return
        quota = Quota(rpm=record.quota.rpm, burst=record.quota.burst)
        admission = Admission(record.id, quota, 0, 0.0, Periods.at(self._wall()),
                              check_record=not record.static)
        verdict, _ = await self.state.admit(admission)
        if not verdict.allowed:
            raise self._refused(record, verdict)

    def _refused(self, record: KeyRecord, verdict: Verdict) -> SluiceError:
        if verdict.reason == "revoked":  # by another worker or instance, just now
            self.directory.forget(record.id)
            self.metrics.unauthorized.labels("revoked").inc()
            return Unauthorized("This API key has been revoked.")
        self.metrics.refused.labels(self.metrics.key(record.name), verdict.reason or "").inc()
        return refusal(verdict, self._wall())


@dataclass(slots=True)
class Ticket:
    """An admitted request: its reservation, its meter, and how to settle it."""

    gate: Gate
    admission: Admission
    store: StateStore  # the store that admitted it settles it
    model: str
    headers: Headers  # x-ratelimit-* for the response
    price: Price | None
    prompt_estimate: int
    meter: UsageMeter | None  # hides the usage chunk; None: the client asked for it
    key_label: str

    async def settle(self, progress: StreamProgress, outcome: str) -> None:
        """Turn the reservation into real usage. Shielded and bounded: call it in a finally."""
        chunks = progress.chunks
        if progress.completion_tokens is not None:  # the upstream's usage, as relayed
            prompt = progress.prompt_tokens or 0
            completion = progress.completion_tokens
        elif chunks:
            prompt, completion = self.prompt_estimate, chunks  # ≈ one token per chunk
        else:
            prompt = completion = 0  # nothing came back: nothing to charge
        spend = self.price.cost(prompt, completion) if self.price else 0.0
        # Cut: something was relayed, then the stream did not complete.
        usage = Usage(prompt, completion, spend, cut=bool(chunks) and outcome != "completed")
        metrics, model = self.gate.metrics, self.gate.metrics.model(self.model)
        metrics.tokens.labels(self.key_label, model, "prompt").inc(prompt)
        metrics.tokens.labels(self.key_label, model, "completion").inc(completion)
        if usage.cut:
            metrics.streams_cut.labels(self.key_label, model).inc()
        if spend:
            metrics.spend.labels(self.key_label, model).inc(spend)
        await self.gate.state.settle(self.store, Settlement(self.admission, self.model, usage))


def metered(chat: ChatRequest, served: str) -> ChatRequest:
    """The request as served: the served model's name, and the upstream asked for usage."""
    body = chat.body
    if served != chat.model:
        body = {**body, "model": served}
    if chat.stream and not chat.include_usage:
        options = body.get("stream_options")
        body = {**body, "stream_options": {**(options or {}), "include_usage": True}}
    return replace(chat, model=served, include_usage=True, body=body)


def prompt_token_estimate(messages: Any) -> int:
    """About one token per four characters of the messages, plus a few per message."""
    if not isinstance(messages, list):
        return 1
    chars = sum(len(str(m.get("content") or "")) for m in messages if isinstance(m, dict))
    return chars // 4 + 4 * len(messages)


def refusal(verdict: Verdict, now: float) -> SluiceError:
    """The 429 for a refused admission, with Retry-After and the x-ratelimit-* headers."""
    reason = verdict.reason or "requests"
    code, what = _REFUSALS.get(reason, ("rate_limit_exceeded", reason))
    retry_after = verdict.retry_after
    if code == "insufficient_quota":
        retry_after = period_end(reason, now) - now
    error = TooManyRequests(f"This API key has reached its {what}; retry after "
                            f"{math.ceil(retry_after)} s.", code=code, retry_after=retry_after)
    if code == "insufficient_quota":
        error.type = "insufficient_quota"
    error.headers = ratelimit_headers(verdict)
    return error


def period_end(reason: str, now: float) -> float:
    """When the budget's period (a UTC day, or month) ends: Unix time."""
    moment = datetime.fromtimestamp(now, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if reason == "daily_tokens":
        return start.timestamp() + 86400
    start = start.replace(day=1)
    following = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return following.timestamp()


def ratelimit_headers(verdict: Verdict) -> Headers:
    """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the set limits."""
    headers: Headers = []
    for kind, window in (("requests", verdict.requests), ("tokens", verdict.tokens)):
        if window is not None:
            headers += [(f"x-ratelimit-limit-{kind}".encode(), str(window.limit).encode()),
                        (f"x-ratelimit-remaining-{kind}".encode(),
                         str(window.remaining).encode()),
                        (f"x-ratelimit-reset-{kind}".encode(), duration(window.reset).encode())]
    return headers


def duration(seconds: float) -> str:
    """A reset time as OpenAI writes it: ``120ms``, ``6s``, ``1m30s``, ``2h0m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
