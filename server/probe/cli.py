"""``sluice probe``: is this endpoint really streaming? The command's arguments and output.

    sluice probe http://127.0.0.1:8000/v1 --compare http://127.0.0.1:9000/v1 \\
        --runs 10 --concurrency 2 --plot probe.png

The table goes to stdout (or, with ``--json``, the JSON); the live progress
line goes to stderr while runs go, only when stderr is a terminal. The exit
status is 0 when every endpoint's verdict is *streaming*, 1 otherwise, 2 for
bad arguments — so a CI job can assert that a deployment streams.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson
import trio

if TYPE_CHECKING:
    from server.probe.runs import Run

# httpx (the probe's client) is the `probe` extra's: it is imported when the
# command runs, so that building the `sluice` parser never needs it.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--compare", metavar="URL2",
                        help="a second base URL, probed in the same run, side by side")
    parser.add_argument("--model", help="model name (default: the first at GET URL/models)")
    parser.add_argument("--prompt", help="the user message (default: a counting prompt)")
    parser.add_argument("--max-tokens", type=int, help="max_tokens (default: 128)")
    parser.add_argument("--runs", type=int, default=5, help="runs per endpoint (default: 5)")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="runs in flight at once (default: 1)")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="give a run up after this many silent seconds (default: 60)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                        help="environment variable holding a bearer key, if set "
                             "(default: OPENAI_API_KEY); keys never go on the command line")
    parser.add_argument("--no-stream-options", action="store_true",
                        help="don't ask for the usage chunk (for servers that reject it)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help="write the picture: .png, .svg, or .vl.json (the Vega-Lite spec)")


def run_from_args(args: argparse.Namespace) -> int:
    problem = check(args)
    if problem:
        print(f"sluice probe: {problem}", file=sys.stderr)
        return 2
    return trio.run(probe_command, args, sys.stdout, sys.stderr)


def check(args: argparse.Namespace) -> str | None:
    if args.runs < 1 or args.concurrency < 1 or (args.max_tokens or 1) < 1:
        return "--runs, --concurrency and --max-tokens must be at least 1"
    if args.idle <= 0:
        return "--idle must be > 0"
    for url in (args.url, args.compare):
        if url is not None and not url.startswith(("http://", "https://")):
            return f"not an http(s) URL: {url!r}"
    return None


async def probe_command(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The whole command, awaitable (the tests run it inside their own trio run)."""
    try:
        import httpx
    except ImportError:
        print("sluice probe: needs httpx: pip install 'sluice[probe]'", file=err)
        return 2
    from server.probe.measure import ProbeRequest
    from server.probe.report import as_json, progress_line, run_lines, summarise, table
    from server.probe.runs import first_model, probe_endpoints

    key = os.environ.get(args.api_key_env)
    headers = {"authorization": f"Bearer {key}"} if key else {}
    urls = [args.url] + ([args.compare] if args.compare else [])
    asked: dict[str, Any] = {name: value for name, value in
                             (("prompt", args.prompt), ("max_tokens", args.max_tokens))
                             if value is not None}
    requests = []
    for url in urls:
        try:
            model = args.model or await first_model(url, headers)
        except (httpx.HTTPError, ValueError) as error:
            print(f"sluice probe: no --model given and {url} lists none: {error}", file=err)
            return 2
        requests.append(ProbeRequest(url, model, stream_options=not args.no_stream_options,
                                     headers=headers, endpoint=url, **asked))
    finished: list[Run] = []
    live = err.isatty()

    def on_run(run: Run, done: int, total: int) -> None:
        finished.append(run)
        if live:
            err.write("\r\x1b[2K" + progress_line(done, total, finished, urls))
            err.flush()

    runs = await probe_endpoints(requests, runs=args.runs, concurrency=args.concurrency,
                                 idle=args.idle, on_run=on_run)
    if live:
        err.write("\n")
    summaries = summarise(runs, urls)
    if args.json:
        out.write(orjson.dumps(as_json(runs, summaries), option=orjson.OPT_INDENT_2).decode())
        out.write("\n")
    else:
        out.write(run_lines(runs, urls) + "\n\n" + table(summaries) + "\n")
    if args.plot is not None:
        from server.probe.plot import PlotUnavailable, figure, render

        try:
            render(figure(runs, summaries), args.plot)
        except (PlotUnavailable, ValueError, OSError) as error:
            print(f"sluice probe: {error}", file=err)
            return 2
        print(f"picture: {args.plot}", file=err)
    return 0 if all(s.verdict == "streaming" for s in summaries) else 1
