"""The page at ``/`` in headless Chromium: a live Sluice, a slow fake upstream behind it.

What a person would do: open the page, pick the model, send a message, watch
the reply stream in, press Stop — and, what a person cannot see, the upstream
connection closes. Reload the page mid-answer: the answer goes on where it
was. Errors (an HTTP status, an in-band error event) must show as errors, not
as a quiet end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from server.config import Settings, parse_settings
from server.testing.fake_upstream import FakeUpstream, Scenario
from tests.browser.webdriver import Browser
from tests.conftest import PROMPTLY, RunningSluice, running_sluice

MODEL = "fake-model"
# The fake upstream's pace: slow enough that the reply is mid-stream when Stop is pressed.
SLOW_TPS = 20
# Upper bound for something the page should show soon (the browser is part of the loop).
SHOWN = 10.0

LAST_REPLY = "document.querySelector('.msg.assistant:last-of-type')"
REPLY_TEXT = f"({LAST_REPLY}?.querySelector('.text')?.textContent ?? '')"


def _settings(upstream: FakeUpstream, **server: float) -> Settings:
    """One named model, so the page's model list has something to pick."""
    return parse_settings({"server": server, "backends": [{
        "name": "fake", "kind": "openai", "base_url": upstream.base_url, "models": [MODEL]}]})


@pytest.fixture
async def sluice(upstream: FakeUpstream) -> AsyncIterator[RunningSluice]:
    async with running_sluice(_settings(upstream)) as running:
        yield running


async def _open_page(browser: Browser, sluice: RunningSluice) -> None:
    await browser.get(sluice.base_url + "/")
    with trio.fail_after(SHOWN):
        await browser.wait_for(f"document.querySelector('#model').value === '{MODEL}'"
                               " && !document.querySelector('#send').disabled")


async def _send(browser: Browser, message: str) -> None:
    await browser.type(await browser.find("#message"), message)
    await browser.click(await browser.find("#send"))


async def _shown(browser: Browser, selector: str) -> str:
    text: str = await browser.execute(f"return document.querySelector('{selector}').textContent")
    return text


async def test_reply_streams_in_and_stop_closes_the_upstream(
    browser: Browser, sluice: RunningSluice, upstream: FakeUpstream
) -> None:
    upstream.scenario = Scenario(tokens=1000, tps=SLOW_TPS)
    await _open_page(browser, sluice)
    await _send(browser, "hello")

    # The text arrives piece by piece while the stream is still running.
    with trio.fail_after(SHOWN):
        await browser.wait_for(f"{REPLY_TEXT}.startsWith('t0 t1 t2 ')")
    assert await browser.execute(f"return {LAST_REPLY}.dataset.state") == "streaming"
    assert int(await _shown(browser, "#chunks")) >= 3
    assert (await _shown(browser, "#ttfb")).endswith(" ms")
    assert (await _shown(browser, "#request-id")).startswith("req_")
    sent = upstream.requests[-1].json
    assert sent is not None
    assert sent["model"] == MODEL and sent["stream"] is True
    assert sent["messages"] == [{"role": "user", "content": "hello"}]
    assert sluice.sample("sluice_active_streams") == 1
    assert upstream.open_connections == 1

    # Stop aborts the fetch and cancels the stream (a resumable one would outlive its reader).
    await browser.click(await browser.find("#stop"))
    with trio.fail_after(PROMPTLY):
        await upstream.wait_all_closed()
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="cancelled") == 1
    with trio.fail_after(SHOWN):
        await browser.wait_for(f"{LAST_REPLY}.dataset.state === 'stopped'")
    assert await _shown(browser, "#status") == "Stopped."
    assert await browser.execute("return document.querySelector('#error').hidden") is True
    stopped_at = await browser.execute(f"return {REPLY_TEXT}")
    assert stopped_at.startswith("t0 t1 t2 ") and len(stopped_at) < len("t0 ") * 1000


async def test_http_and_in_band_errors_are_shown_as_errors(
    browser: Browser, sluice: RunningSluice, upstream: FakeUpstream
) -> None:
    await _open_page(browser, sluice)

    upstream.scenario = Scenario(status=400, error_code="context_length_exceeded",
                                 error_message="The prompt is too long.")
    await _send(browser, "one")
    with trio.fail_after(SHOWN):
        await browser.wait_for("!document.querySelector('#error').hidden")
    error = await _shown(browser, "#error")
    assert error.startswith("HTTP 400: The prompt is too long. (context_length_exceeded) [err_")
    assert await browser.execute(f"return {LAST_REPLY}.dataset.state") == "error"

    # After the first tokens, a failure arrives in-band; the page must not call it done.
    upstream.scenario = Scenario(tokens=6, cut_after=3)
    with trio.fail_after(SHOWN):
        await browser.wait_for("!document.querySelector('#send').disabled")
    await _send(browser, "two")
    with trio.fail_after(SHOWN):
        await browser.wait_for(f"{LAST_REPLY}.dataset.state === 'error'")
    assert await browser.execute(f"return {REPLY_TEXT}") == "t0 t1 t2 "
    error = await _shown(browser, "#error")
    assert "before it was complete" in error
    assert "(stream_truncated)" in error and "[err_" in error
    # The first exchange failed before anything was said: it is not part of the history.
    assert upstream.requests[-1].json is not None
    assert upstream.requests[-1].json["messages"] == [{"role": "user", "content": "two"}]


async def test_keepalives_are_skipped_and_a_complete_reply_is_done(
    browser: Browser, upstream: FakeUpstream
) -> None:
    """``: keepalive`` lines (no blank line after them) during a slow start are not events."""
    upstream.scenario = Scenario(tokens=5, first_delay=0.3)
    async with running_sluice(_settings(upstream, keepalive_interval=0.05)) as sluice:
        await _open_page(browser, sluice)
        await _send(browser, "slow start")
        with trio.fail_after(SHOWN):
            await browser.wait_for(f"{LAST_REPLY}.dataset.state === 'done'")
        assert await browser.execute(f"return {REPLY_TEXT}") == "t0 t1 t2 t3 t4 "
        assert await _shown(browser, "#status") == "Done: 5 chunks."
        assert await browser.execute("return document.querySelector('#error').hidden") is True
        # The next message carries the finished exchange.
        await _send(browser, "and then?")
        with trio.fail_after(SHOWN):
            await browser.wait_for(f"{LAST_REPLY}.dataset.state === 'done'")
    sent = upstream.requests[-1].json
    assert sent is not None
    assert sent["messages"] == [
        {"role": "user", "content": "slow start"},
        {"role": "assistant", "content": "t0 t1 t2 t3 t4 "},
        {"role": "user", "content": "and then?"},
    ]


async def test_a_reload_mid_answer_resumes_it_where_it_was(
    browser: Browser, sluice: RunningSluice, upstream: FakeUpstream
) -> None:
    """The page streams from a resumable ``/chat`` stream; after a reload it shows the
    conversation and the reply so far and resumes with an EventSource, on the same upstream
    stream (one request upstream, never a second)."""
    upstream.scenario = Scenario(tokens=40, tps=SLOW_TPS)
    await _open_page(browser, sluice)
    await _send(browser, "hello")
    with trio.fail_after(SHOWN):
        await browser.wait_for(f"{REPLY_TEXT}.startsWith('t0 t1 t2 ')")

    await browser.get(sluice.base_url + "/")  # a reload, mid-answer
    with trio.fail_after(SHOWN):
        await browser.wait_for(f"{REPLY_TEXT}.startsWith('t0 t1 t2 ')")
    assert await browser.execute(
        "return [...document.querySelectorAll('.msg')].map(m => m.className)") == [
        "msg user", "msg assistant"]
    with trio.fail_after(SHOWN + 40 / SLOW_TPS):
        await browser.wait_for(f"{LAST_REPLY}.dataset.state === 'done'")
    assert await browser.execute(f"return {REPLY_TEXT}") == "".join(
        f"t{i} " for i in range(40))
    assert await browser.execute("return document.querySelector('#error').hidden") is True
    assert len(upstream.requests) == 1  # resumed, not asked again
    await sluice.settle()
    assert sluice.sample("sluice_stream_outcomes_total", outcome="completed") == 1
    # Done: nothing is left to resume, and the next message carries the whole exchange.
    assert await browser.execute("return sessionStorage.getItem('sluice.pending')") is None
    upstream.scenario = Scenario(tokens=2)
    await _send(browser, "more")
    with trio.fail_after(SHOWN):
        await browser.wait_for(f"{LAST_REPLY}.dataset.state === 'done'")
    sent = upstream.requests[-1].json
    assert sent is not None
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"] == "".join(f"t{i} " for i in range(40))
