"""`sluice probe` against real endpoints: the fake upstream driven to stream, buffer and burst,
and Sluice in front of it, compared with the fake directly in one run."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
import trio

from server.probe.cli import add_arguments, probe_command
from server.probe.measure import ProbeRequest
from server.probe.runs import probe_endpoints
from server.testing.fake_upstream import FakeUpstream, Scenario
from server.testing.fake_upstream.request import DEFAULT_MODEL
from tests.conftest import running_sluice, settings_for

# 20 tokens at 50/s: 0.4 s a run, gaps of 20 ms, silences of 100 ms before bursts of 5.
PACED = Scenario(tokens=20, tps=50)


async def verdicts(upstream: FakeUpstream, scenario: Scenario, runs: int = 2) -> list[str]:
    upstream.scenario = scenario
    results = await probe_endpoints([ProbeRequest(upstream.base_url, "m")], runs=runs, idle=5)
    return [run.verdict.kind for run in results]


@pytest.mark.parametrize(
    ("scenario", "verdict"),
    [(PACED, "streaming"),
     (Scenario(tokens=20, tps=50, buffered=True), "buffered"),
     (Scenario(tokens=20, tps=50, burst=5), "buffered"),
     (Scenario(tokens=20, tps=50, cut_after=5), "cut"),
     (Scenario(tokens=20, tps=50, error_event_after=5), "cut"),
     (Scenario(status=500), "error"),
     (Scenario(no_response=True), "error")],
    ids=["stream", "buffer-everything", "burst", "cut", "in-band-error", "http-500",
         "silent"],
)
async def test_the_fake_upstream_driven_to_each_verdict(
    upstream: FakeUpstream, scenario: Scenario, verdict: str
) -> None:
    with trio.fail_after(15):
        if scenario.no_response:  # the probe's idle bound ends the run
            upstream.scenario = scenario
            (run,) = await probe_endpoints([ProbeRequest(upstream.base_url, "m")], runs=1,
                                           idle=0.3)
            assert (run.verdict.kind, run.verdict.reason) == (
                "error", "no response: gave up waiting: ReadTimeout")
            return
        assert await verdicts(upstream, scenario) == [verdict] * 2


async def test_what_the_probe_measures_matches_what_the_fake_sent(upstream: FakeUpstream) -> None:
    upstream.scenario = Scenario(tokens=20, tps=50, burst=5)
    with trio.fail_after(10):
        (run,) = await probe_endpoints([ProbeRequest(upstream.base_url, "m")], runs=1)
    assert run.timeline.done and run.timeline.finished
    assert run.stats.content_chunks == 20
    assert run.timeline.usage is not None
    assert run.timeline.usage["completion_tokens"] == 20
    assert run.stats.largest_burst == 5
    sent = upstream.requests[-1].json
    assert sent is not None and sent["stream_options"] == {"include_usage": True}


async def test_a_refused_connection_is_an_error() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (run,) = await probe_endpoints([ProbeRequest(f"http://127.0.0.1:{port}/v1", "m")], runs=1)
    assert run.verdict.kind == "error"
    assert run.verdict.reason.startswith("no response: ConnectError")


def probe_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_sluice_in_front_of_a_streaming_upstream_streams_and_shows_its_overhead(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.scenario = PACED
    out, err = io.StringIO(), Terminal()
    async with running_sluice(settings_for(upstream.base_url)) as sluice:
        args = probe_args(sluice.base_url, "--compare", upstream.base_url, "--runs", "4",
                          "--concurrency", "2", "--model", "fake-model",
                          "--plot", str(tmp_path / "probe.png"))
        with trio.fail_after(30):
            status = await probe_command(args, out, err)
    text = out.getvalue()
    assert status == 0, text
    assert f"A: {sluice.base_url}\nB: {upstream.base_url}\n" in text
    assert "A: STREAMING (streaming 4 of 4 runs)" in text, text
    assert "B: STREAMING (streaming 4 of 4 runs)" in text, text
    # Sluice holds its response head until the first content chunk (the commit point):
    # beside the direct run, the overhead is in both TTFB and the first content.
    for row in ("TTFB (response head)", "time to first content", "total time"):
        line = next(line for line in text.splitlines() if line.startswith(row))
        assert line.split()[-2].startswith(("+", "−")), line  # a Δ column with a number
    assert "[DONE] in 4 of 4" in text
    assert (tmp_path / "probe.png").read_bytes().startswith(b"\x89PNG")
    progress = err.getvalue()
    assert "\rprobe 1/8" in progress.replace("\x1b[2K", "")
    assert "probe 8/8 · A: streaming 4 · B: streaming 4" in progress
    assert len(upstream.requests) == 8  # every run reached the upstream once


async def test_json_output_and_an_exit_status_for_a_buffered_endpoint(
    upstream: FakeUpstream,
) -> None:
    upstream.scenario = Scenario(tokens=10, tps=50, buffered=True)
    out = io.StringIO()
    with trio.fail_after(15):
        status = await probe_command(probe_args(upstream.base_url, "--runs", "2", "--json"),
                                     out, io.StringIO())
    assert status == 1  # not streaming: a CI job fails
    (endpoint,) = json.loads(out.getvalue())["endpoints"]
    assert endpoint["summary"]["verdict"] == "buffered"
    assert endpoint["summary"]["numbers"]["zero_share"]["p50"] > 0.5
    assert [run["verdict"] for run in endpoint["runs"]] == ["buffered", "buffered"]
    # No --model: the probe asked the endpoint's model list.
    sent = upstream.requests[-1].json
    assert sent is not None and sent["model"] == DEFAULT_MODEL

