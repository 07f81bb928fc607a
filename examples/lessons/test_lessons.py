"""Each lesson's test: what a correct gateway does, run against both versions of the lesson.

``nox -s lessons`` runs them; see `conftest` for the verdict table and
`harness` for the staging. Each test names its lesson's symptom with
`symptom` — the one failure its broken gateway must show.
"""

from __future__ import annotations

import socket

import openai
import pytest
import trio
from harness import (
    CLOSE_BOUND,
    PROMPTLY,
    Gateway,
    lesson,
    linter_sees_nothing,
    load_module,
    raw_chat_request,
    read_reply,
    seconds_until_closed,
    stage,
    symptom,
)

from server.testing.fake_upstream import Scenario

THINKING = 3.0
"""Lesson 2: seconds a reasoning model thinks before its first token."""
LEDGER_BOUND = 1.0
"""Lesson 3: seconds a usage record may take (its round trip is 1 ms)."""
CROWD = 100
"""Lesson 4: clients that arrive at once at a gateway with a limit of 10 streams."""
MINUTE_IN_A_SECOND = {"RESPONSE_TIMEOUT": 1.0, "ANSWER_TIMEOUT": 1.0, "IDLE_TIMEOUT": 0.5}
"""Lesson 8: Quart's 60 s, the gateway's total and its idle timeout, compressed 60 times."""
SLOW_FIRST_TOKEN = 6.0
"""Lesson 9: seconds a model thinks, more than httpx's default 5 s."""
LEAVERS = 3
"""Lesson 11: clients that leave mid-answer."""
STALL = 1.0
SLACK = 3.0
"""Lesson 12: the stall bound, and how long after it the upstream may still be held."""


@lesson("01_closed_before_read")
async def test_01_the_answer_reaches_the_client(gateway: Gateway) -> None:
    async with stage(gateway, Scenario(tokens=5)) as gw, gw.stream() as response:
        reply = await read_reply(response)
    symptom(len(reply.tokens) == 5 and reply.done,
            f"the client got status {reply.status} and {len(reply.tokens)} of 5 tokens"
            + (f" (the body was cut: {reply.cut})" if reply.cut else ""))


@lesson("02_client_left_model_kept_generating")
async def test_02_a_client_leaving_closes_the_upstream(gateway: Gateway) -> None:
    async with stage(gateway, Scenario(tokens=5, first_delay=THINKING)) as gw:
        async with gw.stream() as response:
            await gw.upstream.wait_for_request(1)
            assert response.status_code == 200
        # Leaving the block closed the response mid-thought: the client is gone.
        took = await seconds_until_closed(gw.upstream, CLOSE_BOUND)
    symptom(took <= CLOSE_BOUND, f"the upstream saw no close within {CLOSE_BOUND * 1000:.0f} ms "
            f"of the client leaving (the model was thinking for {THINKING:g} s)")


@lesson("03_finally_aclose_everywhere")
@pytest.mark.parametrize("leaves", [True, False], ids=["client leaves", "upstream error"])
async def test_03_every_path_cleans_up(gateway: Gateway, leaves: bool) -> None:
    scenario = Scenario(tokens=50, tps=20) if leaves else Scenario(status=503)
    async with stage(gateway, scenario) as gw:
        async with gw.stream() as response:
            await read_reply(response, tokens=3 if leaves else None)
        closed_in = await seconds_until_closed(gw.upstream, CLOSE_BOUND)
        ledger = gw.app.extensions["ledger"].entries
        with trio.move_on_after(LEDGER_BOUND):
            while not ledger:  # noqa: ASYNC110 (a list has no event to wait on)
                await trio.sleep(0.005)
    if leaves:
        symptom(bool(ledger), "the ledger has no entry for the answer the client left: "
                "the usage record in `finally` was skipped")
        assert ledger[0] >= 3
        assert closed_in <= CLOSE_BOUND
        return
    symptom(closed_in <= CLOSE_BOUND, f"the upstream saw no close within "
            f"{CLOSE_BOUND * 1000:.0f} ms of answering 503")


@lesson("03_finally_aclose_everywhere")
async def test_03_the_linter_sees_it(gateway: Gateway) -> None:
    await linter_sees_nothing(gateway, "ASYNC102", "the await in `finally`")


@lesson("04_slots_released_early")
async def test_04_the_limit_holds_for_whole_streams(gateway: Gateway) -> None:
    limit = gateway.module.MAX_STREAMS
    async with stage(gateway, Scenario(tokens=100, tps=1)) as gw:  # 100 s each
        answers: list[str] = []
        everyone_answered = trio.Event()

        async def client() -> None:
            async with gw.stream() as response:
                if response.status_code != 200:
                    answers.append(str(response.status_code))
                else:
                    reply = await read_reply(response, tokens=1)
                    answers.append("streaming" if reply.tokens else "busy")
                if len(answers) == CROWD:
                    everyone_answered.set()
                await everyone_answered.wait()  # stay connected: hold what we were given

        with trio.fail_after(PROMPTLY * 4):
            async with trio.open_nursery() as nursery:
                for _ in range(CROWD):
                    nursery.start_soon(client)
        reached = len(gw.upstream.requests)
        symptom(reached <= limit, f"{reached} of {CROWD} streams reached the upstream at once "
                f"through a limit of {limit}")
        assert answers.count("streaming") == limit
        # Everyone has left: every slot must be free again.
        async with gw.stream() as response:
            assert (await read_reply(response, tokens=1)).tokens


@lesson("05_streaming_that_buffers")
async def test_05_tokens_arrive_one_by_one(gateway: Gateway) -> None:
    async with stage(gateway, Scenario(tokens=15, tps=10)) as gw, gw.stream() as response:
        reply = await read_reply(response)
    assert len(reply.tokens) == 15
    table = load_module("05_streaming_that_buffers", "gaps").gaps(reply.arrivals)
    symptom(table.zero_share <= 0.5, f"the tokens arrived in bursts: {table.zero_share:.0%} of "
            f"the gaps between them were zero, the largest burst was {table.largest_burst} "
            "tokens")


@lesson("06_cut_stream_looks_complete")
async def test_06_a_cut_answer_is_an_error(gateway: Gateway) -> None:
    tokens: list[str] = []
    error: openai.APIError | None = None
    async with (
        stage(gateway, Scenario(tokens=10, tps=50, cut_after=3)) as gw,
        openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as sdk,
    ):
        stream = await sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    tokens.append(chunk.choices[0].delta.content)
        except openai.APIError as exc:
            error = exc
    assert len(tokens) == 3
    symptom(error is not None, f"the openai SDK reported success with {len(tokens)} of 10 "
            "tokens: the gateway ended the cut answer with [DONE]")


@lesson("07_yield_inside_nursery")
async def test_07_an_upstream_failure_surfaces_as_itself(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        stage(gateway, Scenario(tokens=10, tps=20, cut_after=3)) as gw,
        gw.stream() as response,
    ):
        reply = await read_reply(response)
    assert reply.cut is not None  # the gateway passed the upstream's cut on
    symptom("Cancel scope stack corrupted" not in caplog.text,
            "the upstream's cut surfaced as trio.Cancelled in the moderation step's await, "
            "and trio logged 'Cancel scope stack corrupted'")
    assert "RemoteProtocolError" in caplog.text


@lesson("07_yield_inside_nursery")
async def test_07_the_linter_sees_it(gateway: Gateway) -> None:
    await linter_sees_nothing(gateway, "ASYNC101,ASYNC119", "the yield")


@lesson("08_timeout_cuts_long_answers")
async def test_08_a_long_answer_runs_to_its_end(gateway: Gateway) -> None:
    async with (
        stage(gateway, Scenario(tokens=30, tps=20), **MINUTE_IN_A_SECOND) as gw,
        gw.stream() as response,
    ):
        started = trio.current_time()
        reply = await read_reply(response)
    took = trio.current_time() - started
    symptom(len(reply.tokens) == 30 and reply.done, f"the answer of a healthy model stopped "
            f"after {took:.1f} s, at {len(reply.tokens)} of 30 tokens, with no error")


@lesson("08_timeout_cuts_long_answers")
async def test_08_a_stalled_answer_ends_with_an_error(gateway: Gateway) -> None:
    async with (
        stage(gateway, Scenario(tokens=30, tps=20, stall_after=3), **MINUTE_IN_A_SECOND) as gw,
        gw.stream() as response,
    ):
        reply = await read_reply(response)
    assert reply.tokens == ["t0 ", "t1 ", "t2 "] and not reply.done
    symptom(reply.error is not None, "the stalled answer just ended: no error event")


@lesson("09_httpx_default_timeout")
async def test_09_a_slow_first_token_is_waited_for(gateway: Gateway) -> None:
    async with (
        stage(gateway, Scenario(tokens=3, first_delay=SLOW_FIRST_TOKEN)) as gw,
        gw.stream() as response,
    ):
        reply = await read_reply(response)
    symptom(len(reply.tokens) == 3 and reply.done,
            f"a model that thought for {SLOW_FIRST_TOKEN:g} s got {len(reply.tokens)} of 3 "
            f"tokens out; the client's body was cut ({reply.cut})")


@lesson("10_status_before_the_upstream_answered")
async def test_10_an_upstream_refusal_keeps_its_status(gateway: Gateway) -> None:
    async with stage(gateway, Scenario(status=429, retry_after=1)) as gw:
        async with gw.stream() as response:
            await response.aread()
        symptom(response.status_code == 429 and response.headers.get("retry-after") == "1",
                f"the upstream answered 429 (Retry-After: 1); the client got "
                f"{response.status_code}, so it cannot back off")
        assert response.json()["error"]["type"]  # the upstream's OpenAI error body
        gw.upstream.scenario = Scenario(tokens=3)  # and an answer still streams
        async with gw.stream() as response:
            reply = await read_reply(response)
        assert reply.status == 200 and len(reply.tokens) == 3 and reply.done


@lesson("11_except_cancelled_misses_the_group")
async def test_11_clients_that_leave_are_counted(gateway: Gateway) -> None:
    async with stage(gateway, Scenario(tokens=50, tps=20)) as gw:
        for _ in range(LEAVERS):
            async with gw.stream() as response:
                await read_reply(response, tokens=2)
        gw.upstream.scenario = Scenario(tokens=3)
        async with gw.stream() as response:
            assert len((await read_reply(response)).tokens) == 3
        with trio.fail_after(PROMPTLY):
            await gw.upstream.wait_for_request(LEAVERS + 1)
            # The last stream's count lands just after its body ends: poll the endpoint.
            while (await gw.client.get(f"{gw.url}/stats")).json().get("completed") != 1:  # noqa: ASYNC110
                await trio.sleep(0.01)
        counted = (await gw.client.get(f"{gw.url}/stats")).json()
    symptom(counted.get("client left", 0) == LEAVERS,
            f"{LEAVERS} clients left mid-answer; the gateway counted "
            f"{counted.get('client left', 0)}: {counted}")


@lesson("12_client_stopped_reading")
async def test_12_a_client_that_stops_reading_is_let_go(gateway: Gateway) -> None:
    async with stage(gateway, Scenario(tokens=1_000_000), SEND_STALL_TIMEOUT=STALL) as gw:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        with sock:
            await sock.connect((host, int(port)))
            await sock.send(raw_chat_request())
            assert (await sock.recv(64)).startswith(b"HTTP/1.1 200")
            # ...and now it reads nothing more, but stays connected.
            held = await seconds_until_closed(gw.upstream, STALL + SLACK)
    symptom(held <= STALL + SLACK, f"the upstream was still held {STALL + SLACK:g} s after the "
            "client stopped reading")
