"""``sluice fake-upstream``: run the fake upstream as its own process.

For the benchmark and for load-testing a deployment. The lead's CLI owns the
parser; this module only adds its arguments and runs them::

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run_from_args(parser.parse_args(["--port", "9000", "--scenario", "tokens=200,tps=50"]))

``--tokens``, ``--tps`` and ``--first-delay`` override the same fields of
``--scenario``. ``python -m server.testing.fake_upstream`` runs the same thing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools

import trio

from server.testing.fake_upstream.scenario import Scenario
from server.testing.fake_upstream.server import FakeUpstream


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=9000, help="port to bind, 0 for any")
    parser.add_argument(
        "--scenario",
        default="",
        help='default behaviour as "key=value,..." e.g. "tokens=200,tps=50,cut_after=3"',
    )
    parser.add_argument("--tokens", type=int, help="content chunks per response")
    parser.add_argument("--tps", type=float, help="tokens per second, 0 = unpaced")
    parser.add_argument("--first-delay", type=float, help="seconds before the first token")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario described by ``--scenario`` and the per-field flags. Raises ValueError."""
    scenario = Scenario.parse(args.scenario)
    overrides = {
        name: value
        for name, value in (
            ("tokens", args.tokens),
            ("tps", args.tps),
            ("first_delay", args.first_delay),
        )
        if value is not None
    }
    return dataclasses.replace(scenario, **overrides)


def run_from_args(args: argparse.Namespace) -> None:
    """Serve until interrupted, after printing ``fake upstream listening on http://HOST:PORT``."""
    upstream = FakeUpstream(scenario_from_args(args))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is meant to stop
        trio.run(functools.partial(_serve, upstream, args.port, args.host))


async def _serve(upstream: FakeUpstream, port: int, host: str) -> None:
    async with trio.open_nursery() as nursery:
        actual_port = await nursery.start(upstream.serve, port, host)
        shown = f"[{host}]" if ":" in host else host
        print(f"fake upstream listening on http://{shown}:{actual_port}", flush=True)
