"""Smoke-run every example against a live Sluice: what ``nox -s examples`` does.

    python examples/run_all.py          # from the repository root, package installed

It starts ``sluice serve`` (the built-in simulated model) on a free loopback
port, waits for ``/healthz``, runs each example against it — and
``abort_mid_stream.py``, which starts its own servers — then checks each exit
code and that the output holds what the example is there to show. One line
per example; the exit code is non-zero if any failed. The server it started
is stopped in a ``finally``, and every wait is bounded, so the run ends by
itself even when something hangs. ``$SLUICE_CONFIG`` is left out of every
child's environment: the smoke run always uses the default simulated model.

It is plain blocking code on purpose: it only starts processes and waits for them.
The lessons (``examples/lessons/``) are not examples of Sluice but gateways
that are broken on purpose, with tests of their own: ``nox -s lessons``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STARTUP_BOUND = 20.0  # seconds for `sluice serve` to answer /healthz
EXAMPLE_BOUND = 60.0  # seconds for one example to finish
STOP_BOUND = 10.0  # seconds for the server to exit after SIGTERM

Check = Callable[[str], str | None]  # the example's output → what is wrong, or None


@dataclass(frozen=True)
class Example:
    name: str
    argv: Sequence[str]
    check: Check
    env: Mapping[str, str] | None = None
    should_fail: bool = False


def main() -> int:
    env = {name: value for name, value in os.environ.items() if name != "SLUICE_CONFIG"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile("w+") as server_log:
        server = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=server_log, stderr=subprocess.STDOUT,
        )
        try:
            problem = wait_healthy(url, server)
            if problem is not None:
                print(f"FAIL sluice serve: {problem}")
                print(tail(server_log))
                return 1
            print(f"ok   sluice serve at {url} (pid {server.pid})")
            failures = sum(not run(example, env) for example in examples(url))
        finally:
            stop(server)
        if failures:
            print(f"{failures} example(s) failed; the server's log ends:")
            print(tail(server_log))
            return 1
    print("all examples passed")
    return 0


def examples(url: str) -> list[Example]:
    python = sys.executable
    return [
        Example("openai_stream.py",
                [python, str(EXAMPLES / "openai_stream.py"), "--base-url", f"{url}/v1"],
                check=openai_output),
        Example("curl_stream.sh",
                ["bash", str(EXAMPLES / "curl_stream.sh")],
                env={"SLUICE_URL": url}, check=curl_output),
        Example("curl_stream.sh (unknown model: must fail)",
                ["bash", str(EXAMPLES / "curl_stream.sh")],
                env={"SLUICE_URL": url, "SLUICE_MODEL": "no-such-model"},
                check=contains("model_not_found"), should_fail=True),
        Example("abort_mid_stream.py",
                [python, str(EXAMPLES / "abort_mid_stream.py")],
                check=contains("upstream saw its connection close",
                               "sluice_active_streams = 0",
                               'outcome="client_disconnect"} = 1')),
    ]


# ------------------------------------------------------------------- checks


def contains(*needles: str) -> Check:
    def check(output: str) -> str | None:
        missing = [n for n in needles if n not in output]
        return f"output lacks {missing}" if missing else None

    return check


def openai_output(output: str) -> str | None:
    # The streamed and the whole reply each end with a usage line.
    if output.count("usage: prompt_tokens=") != 2:
        return "expected two usage lines (streamed and whole)"
    streamed = output.partition("streamed:\n")[2].partition("\n")[0]
    if not streamed.strip():
        return "no streamed text"
    if streamed not in output.partition("whole:\n")[2]:
        return "the whole reply differs from the streamed one (the simulated model is seeded)"
    return None


def curl_output(output: str) -> str | None:
    return (contains("data: [DONE]", '"usage"', '"object":"list"', '"id":"sluice-sim"')(output)
            or (None if "data: {" in output else "no stream events"))


# ---------------------------------------------------------------- processes


def run(example: Example, base_env: Mapping[str, str]) -> bool:
    """Run one example, bounded by `EXAMPLE_BOUND`, and print its one-line verdict."""
    started = time.monotonic()
    env = {**base_env, **(example.env or {})}
    # Its own session, so that a timeout can kill the example *and* its children (curl).
    process = subprocess.Popen(example.argv, cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=EXAMPLE_BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        problem: str | None = f"still running after {EXAMPLE_BOUND:g} s; killed"
    else:
        failed = process.returncode != 0
        if failed != example.should_fail:
            problem = f"exit code {process.returncode}"
        else:
            problem = example.check(output)
    took = time.monotonic() - started
    if problem is None:
        print(f"ok   {example.name} ({took:.1f} s, exit code {process.returncode})")
        return True
    print(f"FAIL {example.name} ({took:.1f} s): {problem}; its output:")
    print("    " + output.rstrip().replace("\n", "\n    "))
    return False


def wait_healthy(url: str, server: subprocess.Popen[bytes]) -> str | None:
    """Poll /healthz until it answers 200 (a process has no readiness event to wait on)."""
    deadline = time.monotonic() + STARTUP_BOUND
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return f"exited with code {server.returncode} before answering"
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return None
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    return f"/healthz did not answer within {STARTUP_BOUND:g} s"


def stop(server: subprocess.Popen[bytes]) -> None:
    """Terminate the server we started, by its PID; kill it if it will not go."""
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        print(f"sluice serve (pid {server.pid}) ignored SIGTERM for {STOP_BOUND:g} s; killing it")
        server.kill()
        server.wait()


def free_port() -> int:
    """A port that was free a moment ago (the server binds it again right away)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tail(log: IO[str], lines: int = 20) -> str:
    log.seek(0)
    return "".join(log.readlines()[-lines:]).rstrip()


if __name__ == "__main__":
    sys.exit(main())
