"""Many probe runs against one or two endpoints, interleaved, with a bounded concurrency.

    runs = await probe_endpoints([sluice, direct], runs=10, concurrency=2)

Runs of the endpoints alternate (A, B, A, B, ...), so both see the same
moment of a shared machine and a comparison is fair. ``concurrency``
workers take the next run as they free up, all in one nursery, over one
httpx client. ``on_run`` is called after each run (the CLI's progress line).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import httpx
import trio

from server.probe.measure import ProbeRequest, measure, probe_timeout
from server.probe.timeline import RunStats, Timeline, run_stats
from server.probe.verdict import Verdict, judge


@dataclass(frozen=True, slots=True)
class Run:
    """One run: which endpoint, its number there, what was seen and what it means."""

    endpoint: str
    number: int  # 1-based, per endpoint
    timeline: Timeline
    stats: RunStats
    verdict: Verdict


def judge_run(endpoint: str, number: int, timeline: Timeline) -> Run:
    return Run(endpoint, number, timeline, run_stats(timeline), judge(timeline))


OnRun = Callable[[Run, int, int], None]  # (the run, runs finished, runs in all)


async def probe_endpoints(
    requests: Sequence[ProbeRequest],
    *,
    runs: int = 5,
    concurrency: int = 1,
    idle: float = 60.0,
    on_run: OnRun | None = None,
) -> list[Run]:
    """Run each request ``runs`` times; return the runs in the order they finished."""
    jobs = _interleaved(requests, runs)
    total = len(requests) * runs
    results: list[Run] = []
    limits = httpx.Limits(max_connections=concurrency * len(requests),
                          max_keepalive_connections=concurrency * len(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for request, number in jobs:  # one shared iterator: each job is taken once
            timeline = await measure(client, request)
            run = judge_run(request.endpoint or request.base_url, number, timeline)
            results.append(run)
            if on_run is not None:
                on_run(run, len(results), total)

    async with (httpx.AsyncClient(timeout=probe_timeout(idle), limits=limits) as client,
                trio.open_nursery() as nursery):
        for _ in range(max(1, min(concurrency, total))):
            nursery.start_soon(worker, client)
    return results


def _interleaved(requests: Sequence[ProbeRequest],
                 runs: int) -> Iterator[tuple[ProbeRequest, int]]:
    for number in range(1, runs + 1):
        for request in requests:
            yield request, number


async def first_model(base_url: str, headers: dict[str, str]) -> str:
    """The first model an endpoint lists at ``GET {base_url}/models``."""
    url = httpx.URL(base_url)
    models_url = url.copy_with(path=(url.path.rstrip("/") or "/v1") + "/models")
    async with httpx.AsyncClient(timeout=probe_timeout(10.0)) as client:
        response = await client.get(models_url, headers=headers)
        response.raise_for_status()
        data = response.json().get("data") or []
    if not data or not isinstance(data[0], dict) or "id" not in data[0]:
        raise ValueError(f"{models_url} lists no models")
    return str(data[0]["id"])
