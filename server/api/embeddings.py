"""``POST /v1/embeddings``: relayed to the backends that declare ``embeddings = true``.

    POST /v1/embeddings  {"model": "m", "input": "text" | ["a", "b"] | [1, 2] | [[1, 2]]}

An embeddings answer is one JSON body, so it is relayed whole
(`server.api.one_shot`): the same routing, retries and fail-over as a
stream before its first chunk, the same admission slots
(``buffered_weight``), the client's rate limit (and, with API keys, the
key's models and requests per minute), and the backend's ``upstream_model``
and key. ``input`` and ``model`` are checked; every other
field (``encoding_format``, ``dimensions``, ``user``) travels untouched. The
built-in simulated model answers with deterministic unit vectors.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, cast

from quart import Quart, Response, request

from server.api.chat_completions import json_object, non_empty_string, required_field
from server.api.one_shot import admitted, relay_once
from server.backends.base import EmbeddingBackend
from server.config import BackendSettings
from server.errors import RequestError, ShuttingDown
from server.limits.routing import Route
from server.stream.pump import PumpContext

if TYPE_CHECKING:
    from server.gateway import Gateway


def serves_embeddings(backend: BackendSettings) -> bool:
    return backend.embeddings


def parse_embeddings_request(raw: bytes) -> dict[str, Any]:
    body = json_object(raw)
    required_field(body, "model", non_empty_string, "a non-empty string")
    value = body.get("input")
    if not _embeddable(value):
        raise RequestError("'input' must be a string, an array of strings, an array of token "
                           "ids or an array of token-id arrays (none empty).", param="input",
                           code="invalid_type" if value is not None
                           else "missing_required_parameter")
    return body


def _embeddable(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(item, str) for item in value):
        return all(value)
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return True
    return all(isinstance(item, list) and item and all(
        isinstance(token, int) and not isinstance(token, bool) for token in item)
        for item in value)


async def _embed(body: dict[str, Any], route: Route) -> bytes:
    backend = cast(EmbeddingBackend, route.backend)
    model = route.backend.settings.upstream_model
    return await backend.embed(body if model is None else {**body, "model": model})


def register_embeddings_api(app: Quart, gateway: Gateway) -> None:
    """Add ``POST /v1/embeddings``."""
    admission = gateway.settings.admission

    @app.post("/v1/embeddings")
    async def embeddings() -> Response:
        body = parse_embeddings_request(await request.get_data(False, False, False))
        record = None
        if gateway.settings.auth.required:  # 401 / 403 and the key's alias
            if gateway.gate is None:
                raise ShuttingDown()
            record, served = await gateway.gate.authorize_model(request.headers, body["model"])
            body = {**body, "model": served}
        routes = await gateway.admit(body["model"], serves_embeddings)
        if record is not None and gateway.gate is not None:
            # The key's requests per minute (429). Its tokens are not metered here: an
            # embedding has no completion to reserve for, and its usage is not settled.
            await gateway.gate.admit_request(record)
        context = PumpContext(routes=routes, policy=gateway.settings.retry,
                              queue_timeout=admission.queue_timeout, metrics=gateway.metrics,
                              rng=gateway.rng)
        async with admitted(gateway.slots, admission.buffered_weight, admission.queue_timeout):
            answer = await relay_once(routes, partial(_embed, body), context)
        return Response(answer, content_type="application/json")
