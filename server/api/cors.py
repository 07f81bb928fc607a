"""CORS: which other origins' pages may call Sluice's API from a browser.

A pure policy over `CorsSettings` and two thin Quart hooks. The API — every
``/v1/*`` path, ``/chat`` and its resume and cancel (``/chat/*``) — is
covered; the page at ``/``, ``/healthz`` and ``/metrics`` are same-origin
only. By default no other origin is allowed; ``allow_origins = ["*"]``
allows any, and only when configured so.

    answer = preflight(cors, origin, "POST", "content-type, authorization")
    headers = response_headers(cors, origin)    # on the actual response

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered
204 with the allowed methods, headers and ``Max-Age``, or refused 403 with an
OpenAI-shaped error naming why (browsers only show "CORS error"; curl shows
the reason). Actual responses from an allowed origin get
``Access-Control-Allow-Origin`` and ``Access-Control-Expose-Headers``
(``X-Request-ID``, ``Retry-After``, ``X-Sluice-Stream-ID``), so a page can read them.

Streams are covered too: `server.api.connection` builds a stream's headers from the
Quart response object *after* the ``after_request`` hooks ran, so an SSE
stream, its early error (a 429 with ``Retry-After``) and a plain JSON answer
all carry the same CORS headers.

A wildcard ``Access-Control-Allow-Headers: *`` does not cover
``Authorization`` (Fetch standard, "CORS-safelisted request-header"), so
``allow_headers = ["*"]`` is answered by echoing the headers the browser asked
for. Credentials (cookies) are never allowed: Sluice does not use them.
"""

from __future__ import annotations

from dataclasses import dataclass

from quart import Quart, Response, request

from server.config import CorsSettings
from server.errors import http_error

EXPOSED_HEADERS = "X-Request-ID, Retry-After, X-Sluice-Stream-ID"
_PREFLIGHT_VARY = ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


@dataclass(frozen=True, slots=True)
class Preflight:
    """The answer to one preflight: headers to send, or why it is refused."""

    headers: tuple[tuple[str, str], ...]
    refusal: str | None = None  # None: allowed (204)


def covers(path: str) -> bool:
    """Is ``path`` part of the API that other origins may be allowed to call?"""
    return path == "/chat" or path.startswith(("/chat/", "/v1/"))


def allowed_origin(cors: CorsSettings, origin: str | None) -> str | None:
    """The ``Access-Control-Allow-Origin`` value for a request from ``origin``, or None."""
    if origin is None or not cors.allow_origins:
        return None
    if cors.allow_origins == ("*",):
        return "*"
    return origin if origin in cors.allow_origins else None


def response_headers(cors: CorsSettings, origin: str | None) -> list[tuple[str, str]]:
    """Headers for an actual (non-preflight) response to a request from ``origin``."""
    headers = []
    if cors.allow_origins and cors.allow_origins != ("*",):
        # The answer depends on Origin: a cache must not serve one origin's answer to another.
        headers.append(("Vary", "Origin"))
    allowed = allowed_origin(cors, origin)
    if allowed is not None:
        headers.append(("Access-Control-Allow-Origin", allowed))
        headers.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
    return headers


def preflight(
    cors: CorsSettings, origin: str | None, method: str, request_headers: str
) -> Preflight:
    """Answer a preflight asking to send ``method`` with ``request_headers`` (comma list)."""
    vary = (_PREFLIGHT_VARY,)
    allowed = allowed_origin(cors, origin)
    if allowed is None:
        return Preflight(vary, f"CORS: the origin {origin!r} is not allowed.")
    methods = cors.allow_methods
    if "*" not in methods and method.upper() not in methods:
        return Preflight(vary, f"CORS: the method {method!r} is not allowed.")
    asked = [h.strip().lower() for h in request_headers.split(",") if h.strip()]
    if "*" in cors.allow_headers:
        allow_headers = ", ".join(asked)
    else:
        permitted = {h.lower() for h in cors.allow_headers}
        refused = [h for h in asked if h not in permitted]
        if refused:
            return Preflight(vary, f"CORS: the header {refused[0]!r} is not allowed.")
        allow_headers = ", ".join(cors.allow_headers)
    headers = [
        ("Access-Control-Allow-Origin", allowed),
        ("Access-Control-Allow-Methods", method.upper() if "*" in methods else ", ".join(methods)),
        ("Access-Control-Max-Age", str(cors.max_age)),
        *vary,
    ]
    if allow_headers:
        headers.append(("Access-Control-Allow-Headers", allow_headers))
    return Preflight(tuple(headers))


def install_cors(app: Quart, cors: CorsSettings) -> None:
    """Answer preflights for the API and add CORS headers to its responses."""

    @app.before_request
    async def answer_preflight() -> Response | None:
        method = request.headers.get("Access-Control-Request-Method")
        if request.method != "OPTIONS" or method is None or not covers(request.path):
            return None  # not a preflight for the API: route as usual
        answer = preflight(cors, request.headers.get("Origin"), method,
                           request.headers.get("Access-Control-Request-Headers", ""))
        if answer.refusal is not None:
            raise http_error(403, answer.refusal, type_="invalid_request_error",
                             code="cors_not_allowed")
        response = Response(b"", status=204)
        del response.headers["Content-Type"]
        for name, value in answer.headers:
            response.headers.add(name, value)
        return response

    @app.after_request
    async def add_cors_headers(response: Response) -> Response:
        if covers(request.path) and "Access-Control-Allow-Methods" not in response.headers:
            for name, value in response_headers(cors, request.headers.get("Origin")):
                if name == "Vary":
                    response.vary.add(value)
                else:
                    response.headers[name] = value
        return response
