"""Starting, pinning and stopping what the benchmark measures: upstream, Sluice, nginx.

Every process is started here as a child in its own session (a Ctrl-C on
the terminal reaches only the orchestrator, which then stops them), pinned
to its core by PID, and stopped by PID — SIGTERM, a bounded wait, then
SIGKILL — from an `ExitStack` callback, so a failing run still cleans up::

    with contextlib.ExitStack() as stack:
        upstream = start_upstream(stack, workdir, kind="fake", scenario="tokens=5,tps=50")
        sluice = start_sluice(stack, workdir, upstream.port)
        ...  # sluice.worker is the PID to measure

`sluice serve` forks a hypercorn master and one worker (multiprocessing
*spawn*); the worker is the process that serves, so it is the one pinned to
the relay core and measured. nginx likewise runs one master and one worker.
nginx is installed with apt-get when it is missing and we are root (with a
temporary ``policy-rc.d`` so the package does not start a system nginx);
otherwise the nginx column is skipped with a message.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.keys.secret import NewKey
from server.testing.redis_server import RedisServer, find_redis_server
from tests.bench import procfs

REPO = Path(__file__).resolve().parents[2]
RELAY_CORE = {0}
LOAD_CORE = {1}
STOP_GRACE = 5.0
_PR_SET_PDEATHSIG = 1


@dataclass
class Proc:
    """A process we started; `pid` is the one we signal, `worker` the one we measure."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    worker: int = 0
    extra: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pin(pid: int, cores: set[int]) -> None:
    """Pin `pid` to `cores`; on a machine without them, leave it where it is."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, cores)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the orchestrator dies without cleaning up."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def spawn(stack: contextlib.ExitStack, name: str, argv: list[str], log: Path,
          cores: set[int], env: dict[str, str] | None = None) -> Proc:
    """Start `argv` with output to `log`, pinned to `cores`, stopped when `stack` closes."""
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                 start_new_session=True, preexec_fn=_die_with_parent)
    proc = Proc(name, popen, log)
    stack.callback(stop, proc)
    pin(popen.pid, cores)
    return proc


def stop(proc: Proc) -> None:
    """SIGTERM the process we started, wait, then SIGKILL it and any worker left behind."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.popen.wait(STOP_GRACE)
    for pid in (proc.worker, *proc.extra):
        if pid and procfs.alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_for_port(proc: Proc, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n"
                               f"{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout} s:\n"
                       f"{proc.log_tail()}")


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A tiny blocking GET for readiness checks (reads by Content-Length: hypercorn
    keeps the connection open despite ``Connection: close``)."""
    with socket.create_connection(("127.0.0.1", port), timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                     .encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(head[9:12]), body


def wait_quiet(pids: list[int], *, idle_below: float = 0.03, timeout: float = 15.0) -> float:
    """Wait until `pids` together use < `idle_below` of a core over 0.25 s; return the wait."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        before = sum(procfs.cpu_seconds(pid) for pid in pids)
        time.sleep(0.25)
        if sum(procfs.cpu_seconds(pid) for pid in pids) - before < idle_below * 0.25:
            break
    return time.monotonic() - start


# -------------------------------------------------------------------- upstream


def start_upstream(stack: contextlib.ExitStack, workdir: Path, *, kind: str,
                   scenario: str) -> Proc:
    """The fake upstream (``sluice fake-upstream``) or the bench's `pacer`, on core 1."""
    port = free_port()
    if kind == "fake":
        argv = [sys.executable, "-m", "server.cli", "fake-upstream", "--port", str(port),
                "--scenario", scenario]
    elif kind == "pacer":
        argv = [sys.executable, "-m", "tests.bench.pacer", "--port", str(port),
                "--scenario", scenario]
    else:
        raise ValueError(f"unknown upstream kind {kind!r}")
    proc = spawn(stack, f"upstream ({kind})", argv, workdir / f"upstream-{kind}.log", LOAD_CORE)
    proc.port = port
    wait_for_port(proc, port)
    return proc


# ---------------------------------------------------------------------- Sluice


SLUICE_CONFIG = """\
# Generated by tests/bench: one openai backend at the upstream, generous timeouts.
[server]
upstream_max_connections = {max_connections}
{server_extra}
{admission}
[timeouts]
connect = 10
first_chunk = 120
idle = 120

[[backends]]
name = "bench"
kind = "openai"
models = ["*"]
base_url = "http://127.0.0.1:{upstream_port}/v1"
"""


def write_sluice_config(workdir: Path, upstream_port: int, max_connections: int = 20000,
                        extra: str = "", name: str = "sluice.toml") -> Path:
    """The settings file; limits that exist in this version of Sluice are set out of the way
    (the admission cap would otherwise be what the 10,000-stream scenario measures).
    `extra` is appended (the sluice-keys target's keys and Redis)."""
    server_fields, admission_fields = _settings_fields()
    server_extra = "drain_seconds = 1  # the bench stops Sluice only when it is idle" \
        if "drain_seconds" in server_fields else ""
    admission = f"[admission]\nmax_streams = {max_connections}\n" \
        if "max_streams" in admission_fields else ""
    path = workdir / name
    path.write_text(SLUICE_CONFIG.format(upstream_port=upstream_port,
                                         max_connections=max_connections,
                                         server_extra=server_extra, admission=admission) + extra)
    return path


def _settings_fields() -> tuple[set[str], set[str]]:
    import dataclasses

    from server import config

    server = {f.name for f in dataclasses.fields(config.ServerSettings)}
    admission_class = getattr(config, "AdmissionSettings", None)
    admission = {f.name for f in dataclasses.fields(admission_class)} \
        if admission_class is not None else set()
    return server, admission


def start_sluice(stack: contextlib.ExitStack, workdir: Path, upstream_port: int,
                 variant: str = "", *, keys: str = "", extra: str = "",
                 label: str = "") -> Proc:
    """``sluice serve`` (or a `variants` launcher) on core 0; returns once /healthz answers.

    `keys`: config tables for API keys and their store (`keys_config`): the
    ``sluice-keys`` target. `extra`: more config tables, for a column named `label`."""
    config = write_sluice_config(workdir, upstream_port, extra=keys + extra,
                                 name=f"{label or ('sluice-keys' if keys else 'sluice')}.toml")
    port = free_port()
    bind = f"127.0.0.1:{port}"
    if keys:
        argv = [sys.executable, "-m", "server.cli", "serve", "--bind", bind,
                "--config", str(config)]
        label = "sluice-keys"
    elif variant:
        argv = [sys.executable, "-m", "tests.bench.variants", "--variant", variant,
                "--bind", bind, "--config", str(config)]
        label = f"sluice+{variant}"
    else:
        argv = [sys.executable, "-m", "server.cli", "serve", "--bind", bind,
                "--config", str(config)]
        label = label or "sluice"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("BENCH_GC_STATS", str(workdir / f"gc-{variant or 'stock'}.jsonl"))
    proc = spawn(stack, label, argv, workdir / f"{label}.log", RELAY_CORE, env=env)
    proc.port = port
    deadline = time.monotonic() + 30
    while True:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{label} exited with {proc.popen.returncode}:\n"
                               f"{proc.log_tail()}")
        with contextlib.suppress(OSError, ValueError):
            if http_get(port, "/healthz", 1.0)[0] == 200:
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label} did not answer /healthz in 30 s:\n{proc.log_tail()}")
        time.sleep(0.1)
    proc.worker = sluice_worker(proc.pid)
    if variant and proc.worker != proc.pid:
        raise RuntimeError("sluice serve forked its worker: a variant's tweaks would not reach it")
    proc.extra = [pid for pid in procfs.children(proc.pid) if pid != proc.worker]
    pin(proc.worker, RELAY_CORE)
    return proc


def sluice_worker(pid: int) -> int:
    """The PID that serves: a spawned worker if `sluice serve` forked one, else `pid` itself.

    (hypercorn's own runner forks a master and a worker even for one worker;
    ``sluice serve`` now serves a single worker in-process.)
    """
    spawned = [child for child in procfs.children(pid) if "spawn_main" in procfs.cmdline(child)]
    if len(spawned) > 1:
        raise RuntimeError(f"expected at most one worker under {pid}, found {spawned}")
    return spawned[0] if spawned else pid


# -------------------------------------------------------- API keys and Redis


def start_redis(stack: contextlib.ExitStack) -> RedisServer | None:
    """A redis-server for the ``sluice-keys`` target, on the load core; None without one."""
    if find_redis_server() is None:
        return None
    redis = stack.enter_context(RedisServer.running())
    assert redis.process is not None
    pin(redis.process.pid, LOAD_CORE)
    return redis


def keys_config(redis_url: str, key: NewKey) -> str:
    """One API key with every limit on (rpm, tpm, streams, budgets, spend), none reached,
    its usage priced, all kept in Redis: each request pays for all of it."""
    return f"""
[state]
backend = "redis"
url = "{redis_url}"

[[auth.keys]]
id = "{key.id}"
hash = "{key.hash}"
name = "bench"
rpm = 1e9
tpm = 1_000_000_000_000
max_streams = 1_000_000
daily_tokens = 1_000_000_000_000
monthly_tokens = 1_000_000_000_000
monthly_spend = 1e12

[auth.prices.bench]
prompt = 1.0
completion = 2.0
"""


# ----------------------------------------------------------------------- nginx


def find_or_install_nginx(allow_install: bool = True) -> tuple[str | None, str]:
    """The nginx binary, installing it with apt-get if missing and root; else (None, why)."""
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)
    if found:
        return found, _nginx_version(found)
    if not allow_install:
        return None, "nginx is not installed (--no-install): the nginx column is skipped"
    if os.geteuid() != 0:
        return None, "nginx is not installed and we are not root: the nginx column is skipped"
    if not shutil.which("apt-get"):
        return None, "nginx is not installed and apt-get is absent: the nginx column is skipped"
    print("nginx not found: installing it with apt-get (nginx-light, else nginx) ...",
          flush=True)
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    if not policy.exists():
        # Debian's convention: exit 101 tells maintainer scripts not to start services,
        # so the package does not launch a system nginx on port 80 behind our back.
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        created = True
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update"], env=env, check=False, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for package in ("nginx-light", "nginx"):
            done = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends",
                                   package], env=env, check=False, timeout=600,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode == 0:
                break
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"installing nginx failed ({error}): the nginx column is skipped"
    finally:
        if created:
            policy.unlink(missing_ok=True)
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if not found:
        return None, "apt-get could not install nginx: the nginx column is skipped"
    return found, _nginx_version(found) + " (installed by the bench)"


def _nginx_version(binary: str) -> str:
    try:
        done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "nginx (version unknown)"
    return done.stderr.strip() or done.stdout.strip()


NGINX_CONFIG = """\
# Generated by tests/bench: a streaming reverse proxy, as a reference relay.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 200000;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;

events {{
    worker_connections 60000;
    multi_accept on;
}}

http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    keepalive_requests 10000000;
    keepalive_timeout 300s;

    upstream fake {{
        server 127.0.0.1:{upstream_port};
        keepalive 16384;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=8192;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
        }}
    }}
}}
"""


def start_nginx(stack: contextlib.ExitStack, workdir: Path, binary: str,
                upstream_port: int) -> Proc:
    work = workdir / "nginx"
    work.mkdir(exist_ok=True)
    work.chmod(0o755)  # workers may run as an unprivileged user
    workdir.chmod(0o755)
    port = free_port()
    config = work / "nginx.conf"
    config.write_text(NGINX_CONFIG.format(work=work, upstream_port=upstream_port, port=port))
    argv = [binary, "-p", f"{work}/", "-c", str(config), "-e", str(work / "nginx-error.log")]
    proc = spawn(stack, "nginx", argv, workdir / "nginx.log", RELAY_CORE)
    proc.port = port
    wait_for_port(proc, port)
    deadline = time.monotonic() + 10
    workers: list[int] = []
    while not workers and time.monotonic() < deadline:
        workers = procfs.children(proc.pid)
        time.sleep(0.05)
    if len(workers) != 1:
        raise RuntimeError(f"expected one nginx worker under {proc.pid}, found {workers}")
    proc.worker = workers[0]
    pin(proc.worker, RELAY_CORE)
    return proc
