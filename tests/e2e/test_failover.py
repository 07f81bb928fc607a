"""End-to-end: streams that survive bad upstreams — retries, fail-over, continuation, breaker.

Two fake upstreams stand behind Sluice: a primary (priority 0) and a fallback
(priority 1). Every test asserts what the client saw *and* what each upstream
saw (requests received, connections closed).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import trio

from server.config import Settings, parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.conftest import PROMPTLY, RunningSluice, chat_body, running_sluice
from tests.sse_client import Received, receive_stream

URL = "/v1/chat/completions"
TEN = "".join(f"t{i} " for i in range(10))
# Short timers so the suite stays fast; each is far above loopback latencies.
FIRST_CHUNK = 0.3
COOLDOWN = 0.5
# The flapping-primary test runs four streams while the circuit is open: they must fit in
# its cooldown also on a loaded machine (at a load of 9 on 2 cores a stream took ~150 ms).
FLAPPING_COOLDOWN = 3.0


def two_tier(primary: FakeUpstream, fallback: FakeUpstream, *,
             fallback_extra: dict[str, Any] | None = None,
             primary_extra: dict[str, Any] | None = None, **sections: Any) -> Settings:
    document: dict[str, Any] = {
        "backends": [
            {"name": "primary", "kind": "openai", "base_url": primary.base_url,
             "models": ["*"], "priority": 0, **(primary_extra or {})},
            {"name": "fallback", "kind": "openai", "base_url": fallback.base_url,
             "models": ["*"], "priority": 1, **(fallback_extra or {})},
        ],
        "timeouts": {"first_chunk": FIRST_CHUNK, "idle": FIRST_CHUNK},
        "retry": {"backoff_base": 0.01, "backoff_max": 0.05, **sections.pop("retry", {})},
        "breaker": {"cooldown": COOLDOWN, **sections.pop("breaker", {})},
        **sections,
    }
    return parse_settings(document)


@pytest.fixture
async def primary(nursery: trio.Nursery) -> FakeUpstream:
    fake = FakeUpstream(Scenario(tokens=10))
    await nursery.start(fake.serve, 0)
    return fake


@pytest.fixture
async def fallback(nursery: trio.Nursery) -> FakeUpstream:
    fake = FakeUpstream(Scenario(tokens=10))
    await nursery.start(fake.serve, 0)
    return fake


@pytest.fixture
async def sluice(primary: FakeUpstream, fallback: FakeUpstream) -> AsyncIterator[RunningSluice]:
    async with running_sluice(two_tier(primary, fallback)) as running:
        yield running


async def stream(sluice: RunningSluice, **extra: Any) -> Received:
    async with httpx.AsyncClient(timeout=10) as client, client.stream(
        "POST", sluice.base_url + URL, json=chat_body(**extra)
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return Received(response.status_code, response.headers,
                            raw=response.content)
        return await receive_stream(response)


# ------------------------------------------------------------ before the commit point


async def test_429_with_retry_after_is_honoured_then_retried(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.script.append(Scenario(status=429, retry_after=0.3))
    started = trio.current_time()
    got = await stream(sluice)
    assert got.content == TEN and got.done
    assert trio.current_time() - started >= 0.3  # waited as the upstream asked
    assert len(primary.requests) == 2
    assert fallback.requests == []


async def test_persistent_429_fails_over(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(status=429, retry_after=0.05)
    got = await stream(sluice)
    assert got.content == TEN and got.done
    assert len(primary.requests) == 2  # one retry on the same backend, then fail-over
    assert len(fallback.requests) == 1


async def test_500_once_is_retried_on_the_same_backend(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.script.append(Scenario(status=500))
    got = await stream(sluice)
    assert got.content == TEN and got.done
    assert len(primary.requests) == 2
    assert fallback.requests == []


@pytest.mark.parametrize("fault", [Scenario(status=503), Scenario(reset_before_headers=True),
                                   Scenario(tokens=10, malformed_after=0),
                                   Scenario(tokens=10, cut_after=0)])
async def test_persistent_failure_before_content_fails_over(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream, fault: Scenario
) -> None:
    primary.scenario = fault
    got = await stream(sluice)
    assert got.status == 200
    assert got.content == TEN and got.done and not got.errors
    assert len(primary.requests) == 2
    assert len(fallback.requests) == 1


@pytest.mark.parametrize("silence", [Scenario(no_response=True),
                                     Scenario(tokens=10, first_delay=30)])
async def test_a_silent_primary_fails_over_at_once(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream, silence: Scenario
) -> None:
    primary.scenario = silence
    started = trio.current_time()
    got = await stream(sluice)
    assert got.content == TEN and got.done
    assert len(primary.requests) == 1  # no retry: a silent provider stays silent
    assert trio.current_time() - started < FIRST_CHUNK * 2
    with trio.fail_after(PROMPTLY):
        await primary.wait_all_closed()  # and its connection was hung up on


@pytest.mark.parametrize(("code", "message"), [
    ("context_length_exceeded", "This model's maximum context length is 8192 tokens."),
    ("content_filter", "The response was filtered by the content policy."),
])
async def test_request_errors_propagate_without_retry(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream,
    code: str, message: str,
) -> None:
    primary.scenario = Scenario(status=400, error_code=code, error_message=message)
    got = await stream(sluice)
    assert got.status == 400
    error = httpx.Response(400, content=got.raw).json()["error"]
    assert (error["code"], error["message"]) == (code, message)
    assert len(primary.requests) == 1
    assert fallback.requests == []


async def test_everything_failing_is_a_clear_502(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = fallback.scenario = Scenario(status=500)
    got = await stream(sluice)
    assert got.status == 502
    assert "error" in httpx.Response(502, content=got.raw).json()
    assert len(primary.requests) + len(fallback.requests) <= 4  # max_attempts


async def test_fail_over_accounting_names_the_fallback_and_keeps_usage(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(status=503)
    settings = two_tier(primary, fallback, fallback_extra={"upstream_model": "fallback-model"})
    async with running_sluice(settings) as sluice:
        got = await stream(sluice, stream_options={"include_usage": True})
        assert got.content == TEN
        assert {c["model"] for c in got.chunks} == {"fallback-model"}
        usage = [c["usage"] for c in got.chunks if c.get("usage")]
        assert usage and usage[0]["completion_tokens"] == 10
        assert fallback.requests[0].json is not None
        assert fallback.requests[0].json["model"] == "fallback-model"
        await sluice.settle()
        assert sluice.sample("sluice_upstream_requests_total", backend="primary",
                             outcome="upstream_error") == 2
        assert sluice.sample("sluice_upstream_requests_total", backend="fallback",
                             outcome="completed") == 1


# ------------------------------------------------------------- after the commit point


@pytest.mark.parametrize("fault", [Scenario(tokens=10, cut_after=3),
                                   Scenario(tokens=10, stall_after=3),
                                   Scenario(tokens=10, malformed_after=3)])
async def test_a_cut_without_continuation_is_a_clean_in_band_error(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream, fault: Scenario
) -> None:
    primary.scenario = fault
    got = await stream(sluice)
    assert got.content == "t0 t1 t2 "
    assert len(got.errors) == 1 and not got.done
    assert fallback.requests == []  # restarting would show a different answer
    # A broken upstream connection is never pooled: it is closed, and nothing is held.
    with trio.fail_after(PROMPTLY):
        await primary.wait_all_closed()
    await sluice.settle()
    assert sluice.sample("sluice_admission_slots_used") == 0
    assert sluice.sample("sluice_backend_in_flight", backend="primary") == 0


async def test_a_missing_done_is_completed(
    sluice: RunningSluice, primary: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, no_done=True)
    got = await stream(sluice)
    assert got.content == TEN and got.done and not got.errors


async def test_a_cut_is_continued_seamlessly_by_a_prefill_backend(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, cut_after=4)
    settings = two_tier(primary, fallback, fallback_extra={"continuation": "prefill"})
    async with running_sluice(settings) as sluice:
        got = await stream(sluice, stream_options={"include_usage": True})
    assert got.content == TEN  # one answer, no repeats, no gap
    assert got.done and not got.errors
    assert got.raw.count(b"[DONE]") == 1
    assert sum(1 for c in got.chunks if c.get("choices") and
               c["choices"][0]["delta"].get("role")) == 1  # one preamble only
    usage = [c["usage"] for c in got.chunks if c.get("usage")]
    assert usage[0]["completion_tokens"] == 10
    sent = fallback.requests[0].json
    assert sent is not None
    assert sent["messages"][-1] == {"role": "assistant", "content": "t0 t1 t2 t3 "}
    assert sent["continue_final_message"] is True


async def test_a_backend_rejecting_prefill_never_shows_its_400(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, cut_after=4)
    fallback.scenario = Scenario(tokens=10, reject_prefill=True)
    settings = two_tier(primary, fallback, fallback_extra={"continuation": "prefill"})
    async with running_sluice(settings) as sluice:
        got = await stream(sluice)
    assert got.content == "t0 t1 t2 t3 "
    assert [e["code"] for e in got.errors] == ["stream_truncated"]  # the cut, not the 400
    assert len(fallback.requests) == 1


async def test_no_prefill_is_sent_to_a_backend_that_does_not_declare_it(
    sluice: RunningSluice, primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, cut_after=4)
    got = await stream(sluice)
    assert got.errors and not got.done
    assert all(r.json is None or r.json["messages"][-1]["role"] != "assistant"
               for r in [*primary.requests, *fallback.requests])


# ------------------------------------------------------------------ circuit breaking


async def test_a_flapping_primary_is_taken_out_and_probed_back(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(status=503)
    settings = two_tier(primary, fallback,
                        breaker={"consecutive_failures": 2, "cooldown": FLAPPING_COOLDOWN})
    async with running_sluice(settings) as sluice:
        got = await stream(sluice)  # 2 failures on the primary: its circuit opens
        assert got.done
        assert sluice.sample("sluice_backend_circuit_state", backend="primary") == 2
        assert sluice.sample("sluice_breaker_transitions_total", backend="primary",
                             state="open") == 1
        for _ in range(3):  # while open, the primary is not even tried
            assert (await stream(sluice)).done
        assert len(primary.requests) == 2
        primary.scenario = Scenario(tokens=10)  # it recovers
        await trio.sleep(FLAPPING_COOLDOWN)
        got = await stream(sluice)  # the probe goes to the primary and succeeds
        assert got.done
        assert len(primary.requests) == 3
        assert sluice.sample("sluice_backend_circuit_state", backend="primary") == 0
        assert len(fallback.requests) == 4


# ------------------------------------------------------------------ admission control


async def test_slot_is_released_when_the_client_leaves_before_the_first_chunk(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=10, first_delay=30)
    settings = two_tier(primary, fallback, primary_extra={"max_concurrency": 1},
                        timeouts={"first_chunk": 60}, admission={"max_streams": 1})
    async with running_sluice(settings) as sluice:
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            nursery.start_soon(stream, sluice)
            with trio.fail_after(PROMPTLY):
                await primary.wait_for_request(1)
            assert sluice.sample("sluice_admission_slots_used") == 1
            assert sluice.sample("sluice_backend_in_flight", backend="primary") == 1
            nursery.cancel_scope.cancel()
            del client
        with trio.fail_after(PROMPTLY):
            await primary.wait_all_closed()
        await sluice.settle()
        assert sluice.sample("sluice_admission_slots_used") == 0
        assert sluice.sample("sluice_backend_in_flight", backend="primary") == 0
        primary.scenario = Scenario(tokens=10)
        assert (await stream(sluice)).done  # the slot is free again


async def test_a_full_gateway_answers_429_with_retry_after(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    primary.scenario = Scenario(tokens=100, tps=20)
    settings = two_tier(primary, fallback,
                        admission={"max_streams": 1, "queue_timeout": 0.2})
    async with running_sluice(settings) as sluice, trio.open_nursery() as nursery:
        nursery.start_soon(stream, sluice)
        with trio.fail_after(PROMPTLY):
            await primary.wait_for_request(1)
        got = await stream(sluice)
        assert got.status == 429
        assert got.headers["retry-after"] == "1"
        assert httpx.Response(429, content=got.raw).json()["error"]["code"] == "gateway_busy"
        nursery.cancel_scope.cancel()


async def test_per_client_rate_limit(primary: FakeUpstream, fallback: FakeUpstream) -> None:
    settings = two_tier(primary, fallback,
                        admission={"requests_per_minute": 60, "burst": 2})
    async with running_sluice(settings) as sluice:
        assert (await stream(sluice)).done
        assert (await stream(sluice)).done
        third = await stream(sluice)
        assert third.status == 429
        assert int(third.headers["retry-after"]) >= 1
        error = httpx.Response(429, content=third.raw).json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert len(primary.requests) == 2  # the refused request never went upstream


# ------------------------------------------------------------------ nothing leaks

CUTS = 1000
CONCURRENCY = 100


async def test_a_thousand_random_client_cuts_leave_nothing_behind(
    primary: FakeUpstream, fallback: FakeUpstream
) -> None:
    """Clients leave at random moments — before the first token, mid-stream, at the end."""
    rng = random.Random(20261121)
    primary.scenario = Scenario(tokens=30, tps=300)
    primary.script.extend(Scenario(tokens=30, tps=300, first_delay=rng.choice([0, 0.02, 0.05]))
                          for _ in range(CUTS))
    settings = two_tier(primary, fallback, primary_extra={"max_concurrency": CONCURRENCY},
                        admission={"max_streams": CONCURRENCY})
    limiter = trio.CapacityLimiter(CONCURRENCY)
    read_counts: list[int] = []

    async def one(address: tuple[str, int], stop_after: int, leave_after: float) -> None:
        # Raw sockets: a thousand httpx clients would spend seconds of CPU on set-up
        # alone, in the very process whose timers are under test.
        body = orjson.dumps(chat_body())
        async with limiter:
            with trio.move_on_after(leave_after):  # some leave before anything arrives
                stream = await trio.open_tcp_stream(*address)
                async with stream:
                    await stream.send_all(
                        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(body), body))
                    received = b""
                    while received.count(b"data: ") < stop_after and \
                            not received.endswith(b"0\r\n\r\n"):
                        data = await stream.receive_some()
                        if not data:
                            break
                        received += data
                    read_counts.append(received.count(b"data: "))

    async with running_sluice(settings) as sluice:
        host, port = sluice.base_url.removeprefix("http://").split(":")
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(CUTS):
                    nursery.start_soon(one, (host, int(port)), rng.randint(0, 32),
                                       rng.choice([0.02, 0.1, 0.3, 5.0]))
        await sluice.settle()
        assert sluice.sample("sluice_admission_slots_used") == 0
        assert sluice.sample("sluice_backend_in_flight", backend="primary") == 0
        assert sluice.sample("sluice_active_streams") == 0
        # Every kind of ending happened: cut before the upstream answered, cut
        # mid-stream, completed.
        assert sluice.sample("sluice_upstream_requests_total", backend="primary",
                             outcome="cancelled") > CUTS / 10
        assert sluice.sample("sluice_upstream_requests_total", backend="primary",
                             outcome="completed") >= 5
        assert sluice.sample("sluice_client_disconnects_total") > CUTS / 4
    # Completed streams left their connections in Sluice's pool for reuse; once the
    # pool is closed (serving ended), not one upstream connection may remain open.
    with trio.fail_after(PROMPTLY):
        await primary.wait_all_closed()
    assert primary.open_connections == 0
    assert len(primary.requests) > CUTS / 5  # the rest left before reaching it
    assert any(0 < n < 30 for n in read_counts)  # some were cut mid-stream
