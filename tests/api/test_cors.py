"""CORS: the pure policy, its settings, and preflights and streams through the real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from server.api.cors import allowed_origin, covers, preflight, response_headers
from server.config import ConfigError, CorsSettings, parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import RunningSluice, chat_body, running_sluice
from tests.sse_client import receive_stream

APP = "https://app.example"
EVIL = "https://evil.example"
POLICY = CorsSettings(allow_origins=(APP,))
ANY = CorsSettings(allow_origins=("*",))
BACKENDS = [{"name": "sim", "kind": "simulated", "models": ["m"]}]


# ------------------------------------------------------------------ the policy


def test_only_the_api_is_covered() -> None:
    assert covers("/v1/chat/completions") and covers("/v1/models") and covers("/chat")
    assert covers("/chat/chatstream_1/stream") and covers("/chat/chatstream_1/cancel")
    assert not covers("/") and not covers("/healthz") and not covers("/metrics")
    assert not covers("/chatter") and not covers("/v1")


def test_no_origin_is_allowed_by_default() -> None:
    default = CorsSettings()
    assert allowed_origin(default, APP) is None
    assert response_headers(default, APP) == []
    assert preflight(default, APP, "POST", "").refusal is not None


def test_listed_origins_are_echoed_and_the_answer_varies_by_origin() -> None:
    assert allowed_origin(POLICY, APP) == APP
    assert allowed_origin(POLICY, EVIL) is None
    assert allowed_origin(POLICY, None) is None
    assert response_headers(POLICY, APP) == [
        ("Vary", "Origin"),
        ("Access-Control-Allow-Origin", APP),
        ("Access-Control-Expose-Headers", "X-Request-ID, Retry-After, X-Sluice-Stream-ID"),
    ]
    assert response_headers(POLICY, EVIL) == [("Vary", "Origin")]


def test_a_wildcard_allows_any_origin_without_vary() -> None:
    assert allowed_origin(ANY, EVIL) == "*"
    assert ("Access-Control-Allow-Origin", "*") in response_headers(ANY, EVIL)
    assert all(name != "Vary" for name, _ in response_headers(ANY, EVIL))


def test_a_preflight_answers_methods_headers_and_max_age() -> None:
    answer = preflight(POLICY, APP, "POST", "Content-Type, authorization")
    assert answer.refusal is None
    headers = dict(answer.headers)
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert headers["Access-Control-Allow-Headers"] == (
        "Authorization, Content-Type, X-Request-ID, X-Sluice-Resumable, Last-Event-ID")
    assert headers["Access-Control-Max-Age"] == "600"
    assert "Origin" in headers["Vary"]


def test_the_default_headers_let_a_page_opt_in_to_resuming_and_resume() -> None:
    """A cross-origin page's resumable stream and its resume pass the default policy."""
    opt_in = preflight(POLICY, APP, "POST", "content-type, x-sluice-resumable")
    resume = preflight(POLICY, APP, "GET", "last-event-id")
    assert opt_in.refusal is None and resume.refusal is None
    assert "X-Sluice-Stream-ID" in dict(response_headers(POLICY, APP))[
        "Access-Control-Expose-Headers"]


@pytest.mark.parametrize(("origin", "method", "asked", "reason"), [
    (EVIL, "POST", "", "origin"),
    (None, "POST", "", "origin"),
    (APP, "DELETE", "", "method 'DELETE'"),
    (APP, "POST", "content-type, x-secret", "header 'x-secret'"),
])
def test_a_preflight_is_refused_with_a_reason(origin: str | None, method: str, asked: str,
                                              reason: str) -> None:
    answer = preflight(POLICY, origin, method, asked)
    assert answer.refusal is not None and reason in answer.refusal
    assert all(name == "Vary" for name, _ in answer.headers)


def test_wildcard_headers_echo_what_was_asked() -> None:
    """``*`` would not cover Authorization (Fetch standard): echo the request's list."""
    policy = CorsSettings(allow_origins=(APP,), allow_headers=("*",), allow_methods=("*",))
    answer = preflight(policy, APP, "patch", "Authorization, X-Stainless-Lang")
    headers = dict(answer.headers)
    assert headers["Access-Control-Allow-Headers"] == "authorization, x-stainless-lang"
    assert headers["Access-Control-Allow-Methods"] == "PATCH"


# ------------------------------------------------------------------ settings


def test_cors_settings_are_parsed_and_normalised() -> None:
    cors = parse_settings({"backends": BACKENDS, "cors": {
        "allow_origins": ["HTTP://LocalHost:5173"], "allow_methods": ["post"],
        "allow_headers": ["Content-Type"], "max_age": 0}}).cors
    assert cors == CorsSettings(allow_origins=("http://localhost:5173",),
                                allow_methods=("POST",), allow_headers=("Content-Type",),
                                max_age=0)
    assert parse_settings({"backends": BACKENDS}).cors == CorsSettings()


@pytest.mark.parametrize(("cors", "message"), [
    ({"allow_origin": [APP]}, r"cors\.allow_origin: unknown setting"),
    ({"allow_origins": APP}, r"cors\.allow_origins: expected a list"),
    ({"allow_origins": ["*", APP]}, r"cors\.allow_origins: '\*' must be the only entry"),
    ({"allow_origins": [APP + "/"]}, r"cors\.allow_origins\[0\]: .*no path"),
    ({"allow_origins": ["app.example"]}, r"cors\.allow_origins\[0\]"),
    ({"allow_origins": [""]}, r"cors\.allow_origins: expected a list of non-empty strings"),
    ({"allow_methods": ["PO ST"]}, r"cors\.allow_methods\[0\]: not a valid name"),
    ({"allow_headers": ["x:y"]}, r"cors\.allow_headers\[0\]: not a valid name"),
    ({"max_age": -1}, r"cors\.max_age: must be ≥ 0"),
    ({"max_age": "600"}, r"cors\.max_age: expected an integer"),
])
def test_bad_cors_settings_name_the_key(cors: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"backends": BACKENDS, "cors": cors})


# ------------------------------------------------------------------ end to end


@pytest.fixture
async def cors_sluice(upstream: FakeUpstream) -> AsyncIterator[RunningSluice]:
    settings = parse_settings({"cors": {"allow_origins": [APP]}, "backends": [{
        "name": "fake", "kind": "openai", "base_url": upstream.base_url, "models": ["*"]}]})
    async with running_sluice(settings) as running:
        yield running


def _preflight_headers(origin: str, method: str = "POST",
                       headers: str = "content-type") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat", "/v1/models"])
async def test_a_preflight_from_an_allowed_origin_is_answered(
    cors_sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient, path: str
) -> None:
    response = await client.options(cors_sluice.base_url + path,
                                    headers=_preflight_headers(APP))
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == APP
    assert response.headers["access-control-allow-methods"] == "GET, POST"
    assert "Content-Type" in response.headers["access-control-allow-headers"]
    assert response.headers["access-control-max-age"] == "600"
    assert "Origin" in response.headers["vary"]
    assert upstream.requests == []


async def test_a_preflight_from_another_origin_is_refused(
    cors_sluice: RunningSluice, client: httpx.AsyncClient
) -> None:
    response = await client.options(cors_sluice.base_url + "/v1/chat/completions",
                                    headers=_preflight_headers(EVIL))
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert response.json()["error"]["code"] == "cors_not_allowed"
    assert EVIL in response.json()["error"]["message"]
    asked_header = await client.options(
        cors_sluice.base_url + "/chat", headers=_preflight_headers(APP, headers="x-secret"))
    assert asked_header.status_code == 403
    assert "x-secret" in asked_header.json()["error"]["message"]


async def test_by_default_no_preflight_succeeds(sluice: RunningSluice,
                                                client: httpx.AsyncClient) -> None:
    response = await client.options(sluice.base_url + "/v1/chat/completions",
                                    headers=_preflight_headers(APP))
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    streamed = await client.post(sluice.base_url + "/v1/chat/completions", json=chat_body(),
                                 headers={"Origin": APP})
    assert streamed.status_code == 200
    assert "access-control-allow-origin" not in streamed.headers


async def test_a_plain_options_request_is_not_a_preflight(
    cors_sluice: RunningSluice, client: httpx.AsyncClient
) -> None:
    response = await client.options(cors_sluice.base_url + "/v1/chat/completions")
    assert response.status_code == 200
    assert "POST" in response.headers["allow"]


async def test_a_cross_origin_stream_carries_the_cors_headers(
    cors_sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    async with client.stream("POST", cors_sluice.base_url + "/v1/chat/completions",
                             json=chat_body(), headers={"Origin": APP}) as response:
        got = await receive_stream(response)
    assert got.status == 200 and got.done
    assert got.content == "t0 t1 t2 t3 t4 "
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.headers["access-control-allow-origin"] == APP
    assert "X-Request-ID" in got.headers["access-control-expose-headers"]
    assert got.headers["x-request-id"].startswith("req_")
    assert got.headers["vary"] == "Origin"


async def test_a_cross_origin_chat_stream_and_early_error_carry_the_cors_headers(
    cors_sluice: RunningSluice, upstream: FakeUpstream, client: httpx.AsyncClient
) -> None:
    """The error a page most needs to read — a 4xx before the stream — is readable too."""
    body = {"conversation": [{"role": "user", "content": "hi"}], "model": "m", "stream": True}
    async with client.stream("POST", cors_sluice.base_url + "/chat", json=body,
                             headers={"Origin": APP}) as response:
        got = await receive_stream(response)
    assert got.status == 200 and got.chunks[-1]["done"] is True
    assert got.headers["access-control-allow-origin"] == APP
    upstream.scenario = Scenario(status=400, error_message="Too long.")
    failed = await client.post(cors_sluice.base_url + "/v1/chat/completions",
                               json=chat_body(), headers={"Origin": APP})
    assert failed.status_code == 400
    assert failed.headers["access-control-allow-origin"] == APP
    assert "Retry-After" in failed.headers["access-control-expose-headers"]


async def test_other_origins_and_non_api_paths_get_no_cors_headers(
    cors_sluice: RunningSluice, client: httpx.AsyncClient
) -> None:
    evil = await client.post(cors_sluice.base_url + "/v1/chat/completions", json=chat_body(),
                             headers={"Origin": EVIL})
    assert evil.status_code == 200  # served; the browser withholds it from the page
    assert "access-control-allow-origin" not in evil.headers
    assert evil.headers["vary"] == "Origin"
    for path in ("/healthz", "/"):
        same_origin_only = await client.get(cors_sluice.base_url + path,
                                            headers={"Origin": APP})
        assert "access-control-allow-origin" not in same_origin_only.headers
    refused = await client.options(cors_sluice.base_url + "/healthz",
                                   headers=_preflight_headers(APP))
    assert "access-control-allow-origin" not in refused.headers


async def test_a_wildcard_allows_any_origin(upstream: FakeUpstream,
                                           client: httpx.AsyncClient) -> None:
    settings = parse_settings({"cors": {"allow_origins": ["*"]}, "backends": [{
        "name": "fake", "kind": "openai", "base_url": upstream.base_url, "models": ["*"]}]})
    async with running_sluice(settings) as sluice:
        answer = await client.options(sluice.base_url + "/chat",
                                      headers=_preflight_headers(EVIL))
        streamed = await client.post(sluice.base_url + "/v1/chat/completions",
                                     json=chat_body(), headers={"Origin": EVIL})
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "*"
    assert streamed.headers["access-control-allow-origin"] == "*"
    assert "vary" not in streamed.headers
