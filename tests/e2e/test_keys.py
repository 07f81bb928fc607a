"""End-to-end: API keys on a live Sluice — 401, 403, 429 with headers, metering, the admin API.

One Sluice in-process with the memory store (the Redis store's own end-to-end
tests are `tests/e2e/test_shared_limits.py`), the fake upstream, and real
clients: httpx and the openai SDK.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import orjson
import pytest

from server.config import Settings, parse_settings
from server.keys.secret import NewKey, new_key
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import RunningSluice, chat_body, running_sluice
from tests.sse_client import receive_stream

URL = "/v1/chat/completions"
ADMIN = "admin-secret-for-tests"


def keyed_settings(upstream_url: str, keys: dict[str, tuple[NewKey, dict[str, Any]]],
                   *, state: dict[str, Any] | None = None, **auth: Any) -> Settings:
    """The suite's usual settings, plus ``[[auth.keys]]`` (name -> (key, fields)) and more."""
    document: dict[str, Any] = {
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream_url,
                      "models": ["*"]}],
        "retry": {"retry_after_cap": 0.2, "backoff_base": 0.01, "backoff_max": 0.05},
        "auth": {**auth, "keys": [{"id": key.id, "hash": key.hash, "name": name, **fields}
                                  for name, (key, fields) in keys.items()]},
    }
    if state is not None:
        document["state"] = state
    return parse_settings(document)


@asynccontextmanager
async def sluice_with_key(upstream: FakeUpstream,
                          **fields: Any) -> AsyncIterator[tuple[RunningSluice, NewKey]]:
    """Sluice with one key in the file, named "a", with these fields."""
    key = new_key()
    async with running_sluice(keyed_settings(upstream.base_url, {"a": (key, fields)})) as sluice:
        yield sluice, key


def bearer(key: NewKey | str) -> dict[str, str]:
    return {"authorization": f"Bearer {key if isinstance(key, str) else key.text}"}


@pytest.fixture
def key() -> NewKey:
    return new_key()


@pytest.fixture
async def keyed(upstream: FakeUpstream, key: NewKey) -> AsyncIterator[RunningSluice]:
    settings = keyed_settings(upstream.base_url, {"team-a": (key, {"rpm": 3})})
    async with running_sluice(settings) as running:
        yield running


async def test_a_missing_or_invalid_key_is_401_and_never_echoed(
        keyed: RunningSluice, client: httpx.AsyncClient, key: NewKey) -> None:
    url = keyed.base_url + URL
    missing = await client.post(url, json=chat_body())
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    forged = key.text[:-4] + "AAAA"  # the right id, the wrong secret
    for headers in (bearer(forged), {"x-api-key": forged}, bearer("sk-not-ours"),
                    {"authorization": "Basic " + key.text}):
        refused = await client.post(url, json=chat_body(), headers=headers)
        assert refused.status_code == 401, headers
        assert forged not in refused.text and key.text not in refused.text
    assert keyed.sample("sluice_unauthorized_total", reason="invalid") == 3
    assert keyed.sample("sluice_unauthorized_total", reason="missing") == 2  # no, or Basic
    for headers in (bearer(key), {"x-api-key": key.text}):
        assert (await client.post(url, json=chat_body(), headers=headers)).status_code == 200


async def test_the_openai_sdk_sees_typed_errors(keyed: RunningSluice, key: NewKey) -> None:
    async with openai.AsyncOpenAI(base_url=keyed.base_url + "/v1", api_key="slk_wrong",
                                  max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model="m", messages=[{"role": "user",
                                                                    "content": "x"}])
    async with openai.AsyncOpenAI(base_url=keyed.base_url + "/v1", api_key=key.text,
                                  max_retries=0) as sdk:
        for _ in range(3):
            await sdk.chat.completions.create(model="m", messages=[{"role": "user",
                                                                    "content": "x"}])
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk.chat.completions.create(model="m", messages=[{"role": "user",
                                                                    "content": "x"}])
    headers = limited.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.value.code == "rate_limit_exceeded"


async def test_successful_responses_carry_the_rate_limit_headers(
        keyed: RunningSluice, client: httpx.AsyncClient, key: NewKey) -> None:
    remaining = []
    for stream in (True, False, True):
        response = await client.post(keyed.base_url + URL, json=chat_body(stream=stream),
                                     headers=bearer(key))
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(response.headers["x-ratelimit-remaining-requests"])
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    assert remaining == ["2", "1", "0"]


async def test_models_and_aliases(upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    key = new_key()
    fields = {"models": ["llama3"], "aliases": {"gpt-4o": "llama3"}}
    async with running_sluice(keyed_settings(upstream.base_url, {"a": (key, fields)})) as sluice:
        forbidden = await client.post(sluice.base_url + URL,
                                      json=chat_body(model="mistral"), headers=bearer(key))
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "model_not_allowed"
        aliased = await client.post(sluice.base_url + URL, json=chat_body(model="gpt-4o"),
                                    headers=bearer(key))
        assert aliased.status_code == 200
        assert upstream.requests[-1].json is not None
        assert upstream.requests[-1].json["model"] == "llama3"  # served under its real name
        assert (await client.get(sluice.base_url + "/v1/models")).status_code == 401
        models = await client.get(sluice.base_url + "/v1/models", headers=bearer(key))
        assert [m["id"] for m in models.json()["data"]] == ["gpt-4o"]  # "*" names nothing
        assert sluice.sample("sluice_key_forbidden_total", key="a") == 1


async def test_usage_is_asked_of_the_upstream_and_shown_only_to_who_asked(
        keyed: RunningSluice, client: httpx.AsyncClient, upstream: FakeUpstream,
        key: NewKey) -> None:
    for asked in (False, True):
        body = chat_body()
        if asked:
            body["stream_options"] = {"include_usage": True}
        async with client.stream("POST", keyed.base_url + URL, json=body,
                                 headers=bearer(key)) as response:
            received = await receive_stream(response)
        sent = upstream.requests[-1].json
        assert sent is not None and sent["stream_options"] == {"include_usage": True}
        assert len([chunk for chunk in received.chunks if chunk.get("usage")]) == int(asked)
        assert received.done and received.content == "t0 t1 t2 t3 t4 "


async def test_tokens_are_reserved_and_refunded_from_real_usage(
        upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    async with sluice_with_key(upstream, tpm=1000) as (sluice, key):
        url = sluice.base_url + URL
        first = await client.post(url, json=chat_body(max_tokens=600), headers=bearer(key))
        assert first.status_code == 200  # reserved ~605 of 1000; used 1 + 5
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 400
        await sluice.settle()
        # Without the refund the bucket would hold < 400: this one could not start.
        upstream.scenario = Scenario(tokens=5, tps=10)  # ~0.5 s: still running below
        async with client.stream("POST", url, json=chat_body(max_tokens=600),
                                 headers=bearer(key)) as second:
            assert second.status_code == 200
            third = await client.post(url, json=chat_body(max_tokens=600),
                                      headers=bearer(key))
            assert third.status_code == 429  # the running one holds its reservation
            assert third.headers["x-ratelimit-limit-tokens"] == "1000"
            assert third.json()["error"]["code"] == "rate_limit_exceeded"
            await second.aread()
        await sluice.settle()
        assert sluice.sample("sluice_key_tokens_total", key="a", model="_other",
                             kind="completion") == 10
        assert sluice.sample("sluice_key_refused_total", key="a", reason="tokens") == 1


async def test_a_stream_slot_is_held_until_the_stream_ends(
        upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    upstream.scenario = Scenario(tokens=50, tps=100)
    async with sluice_with_key(upstream, max_streams=1) as (sluice, key):
        url = sluice.base_url + URL
        async with client.stream("POST", url, json=chat_body(), headers=bearer(key)) as held:
            assert held.status_code == 200
            busy = await client.post(url, json=chat_body(), headers=bearer(key))
            assert busy.status_code == 429
            assert busy.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert busy.headers["retry-after"] == "1"
        # The client left mid-stream: the slot comes back as the stream ends.
        await sluice.settle()
        upstream.scenario = Scenario(tokens=2)
        assert (await client.post(url, json=chat_body(), headers=bearer(key))).status_code == 200
        await sluice.settle()  # settled as its stream's scope exits, just after the last byte
        assert sluice.sample("sluice_key_streams_cut_total", key="a", model="_other") == 1
        # The cut stream reported no usage: it was charged one token per chunk relayed.
        charged = sluice.sample("sluice_key_tokens_total", key="a", model="_other",
                                kind="completion")
        assert 2 + 1 <= charged < 2 + 50  # the second request's 2, the cut one's few


async def test_a_spent_budget_is_429_until_the_period_ends(
        upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    async with sluice_with_key(upstream, daily_tokens=10) as (sluice, key):
        url = sluice.base_url + URL
        statuses = []
        for _ in range(3):  # each uses 1 + 5 tokens: the third finds 12 used of 10
            response = await client.post(url, json=chat_body(), headers=bearer(key))
            statuses.append(response.status_code)
            await sluice.settle()
        assert statuses == [200, 200, 429]
        assert response.json()["error"]["type"] == "insufficient_quota"
        assert 0 < int(response.headers["retry-after"]) <= 86400


async def test_the_chat_api_is_metered_too(keyed: RunningSluice, client: httpx.AsyncClient,
                                           key: NewKey) -> None:
    body = {"conversation": [{"role": "user", "content": "hi"}], "model": "m", "stream": True}
    refused = await client.post(keyed.base_url + "/chat", json=body)
    assert refused.status_code == 401
    async with client.stream("POST", keyed.base_url + "/chat", json=body,
                             headers=bearer(key)) as response:
        events = [orjson.loads(e) for e in (await receive_stream(response)).events]
    assert events[-1]["done"] and events[-1]["usage"]["completion_tokens"] == 5


# ------------------------------------------------------------------ the admin API


@pytest.fixture
async def admin_sluice(upstream: FakeUpstream, key: NewKey) -> AsyncIterator[RunningSluice]:
    settings = keyed_settings(upstream.base_url, {"static": (key, {})},
                              admin_key_env="SLUICE_ADMIN_KEY", cache_seconds=0.2)
    async with running_sluice(settings, environ={"SLUICE_ADMIN_KEY": ADMIN}) as running:
        yield running


async def test_keys_made_changed_and_revoked_at_run_time(
        admin_sluice: RunningSluice, client: httpx.AsyncClient, key: NewKey) -> None:
    admin = admin_sluice.base_url + "/admin"
    assert (await client.get(admin + "/keys")).status_code == 401
    assert (await client.get(admin + "/keys", headers=bearer("wrong"))).status_code == 401
    made = await client.post(admin + "/keys", headers=bearer(ADMIN),
                             json={"name": "team-b", "rpm": 100, "metadata": {"team": "b"}})
    assert made.status_code == 201, made.text
    created = made.json()
    new, key_id = created["key"], created["id"]
    assert created["prefix"] == f"slk_{key_id}" and "hash" not in created
    listed = (await client.get(admin + "/keys", headers=bearer(ADMIN))).json()["data"]
    assert [k["name"] for k in listed] == ["static", "team-b"]
    assert new not in orjson.dumps(listed).decode()
    assert all("hash" not in k for k in listed)

    url = admin_sluice.base_url + URL
    assert (await client.post(url, json=chat_body(), headers=bearer(new))).status_code == 200
    changed = await client.patch(f"{admin}/keys/{key_id}", headers=bearer(ADMIN),
                                 json={"models": ["other"]})
    assert changed.json()["models"] == ["other"] and changed.json()["rpm"] == 100
    assert (await client.post(url, json=chat_body(), headers=bearer(new))).status_code == 403

    usage = await client.get(f"{admin}/usage/{key_id}", headers=bearer(ADMIN))
    assert usage.json()["total"]["requests"] == 1
    assert usage.json()["total"]["completion_tokens"] == 5

    revoked = await client.post(f"{admin}/keys/{key_id}/revoke", headers=bearer(ADMIN))
    assert revoked.json()["revoked_at"] is not None
    refused = await client.post(url, json=chat_body(model="other"), headers=bearer(new))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    assert admin_sluice.sample("sluice_unauthorized_total", reason="revoked") == 1


async def test_admin_api_errors(admin_sluice: RunningSluice, client: httpx.AsyncClient,
                                key: NewKey) -> None:
    admin = admin_sluice.base_url + "/admin"
    bad = await client.post(admin + "/keys", headers=bearer(ADMIN), json={"name": "x",
                                                                          "rpm": -1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"
    unnamed = await client.post(admin + "/keys", headers=bearer(ADMIN), json={})
    assert unnamed.status_code == 400 and unnamed.json()["error"]["param"] == "name"
    taken = await client.post(admin + "/keys", headers=bearer(ADMIN), json={"name": "static"})
    assert taken.status_code == 409
    assert (await client.get(admin + "/keys/0123456789ab",
                             headers=bearer(ADMIN))).status_code == 404
    static = await client.patch(f"{admin}/keys/{key.id}", headers=bearer(ADMIN),
                                json={"rpm": 1})
    assert static.status_code == 409 and static.json()["error"]["code"] == "static_key"
    period = await client.get(f"{admin}/usage/{key.id}?period=2026-13",
                              headers=bearer(ADMIN))
    assert period.status_code == 400


async def test_without_an_admin_key_there_is_no_admin_api(
        keyed: RunningSluice, client: httpx.AsyncClient) -> None:
    assert (await client.get(keyed.base_url + "/admin/keys")).status_code == 404


async def test_embeddings_need_a_key_that_may_use_the_model(
        upstream: FakeUpstream, client: httpx.AsyncClient) -> None:
    """/v1/embeddings is not a stream, but the same keys guard it: 401, 403, served, and
    429 beyond the key's requests per minute."""
    key = new_key()
    settings = parse_settings({
        "backends": [{"name": "fake", "kind": "openai", "base_url": upstream.base_url,
                      "models": ["*"], "embeddings": True}],
        "auth": {"keys": [{"id": key.id, "hash": key.hash, "name": "a",
                           "models": ["embed-m"], "rpm": 2, "burst": 2}]}})
    async with running_sluice(settings) as sluice:
        url = sluice.base_url + "/v1/embeddings"
        body = {"model": "embed-m", "input": "hello"}
        missing = await client.post(url, json=body)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        other = await client.post(url, json={**body, "model": "other-m"}, headers=bearer(key))
        assert other.status_code == 403
        served = await client.post(url, json=body, headers=bearer(key))
        assert served.status_code == 200, served.text
        assert served.json()["data"][0]["object"] == "embedding"
        assert (await client.post(url, json=body, headers=bearer(key))).status_code == 200
        refused = await client.post(url, json=body, headers=bearer(key))  # the key's rpm
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" in refused.headers


async def test_the_access_log_names_the_key_never_shows_it(
        keyed: RunningSluice, client: httpx.AsyncClient, key: NewKey,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sluice.access")
    response = await client.post(keyed.base_url + URL, json=chat_body(), headers=bearer(key))
    assert response.status_code == 200
    await keyed.settle()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sluice.access"]
    assert " key=team-a " in line
    assert key.text not in line and key.hash not in line
