"""hypercorn, configured for long-lived streams.

hypercorn's defaults suit short requests: ``graceful_timeout`` of 3 s would
cut every live stream at shutdown, and a listen backlog of 100 drops bursts
of new streams. `hypercorn_config` sets each on purpose; the ``sluice serve``
command and the tests both use it, so what is tested is what is served.
(Plain ``hypercorn --worker-class trio server.app:app`` works too, with
hypercorn's defaults: pass ``--graceful-timeout`` and ``--backlog`` there.)

**Slow and dead clients.** hypercorn writes a response with a *shielded*
``send_all``: no cancel scope of ours can interrupt a write to a client that
stopped reading, and a client that vanished without FIN/RST is invisible until
TCP gives up (~15 minutes). Both are bounded in the kernel instead: the
listening sockets get ``TCP_USER_TIMEOUT`` — unacknowledged data, or data
that cannot be sent into a zero window, for longer than ``send_stall_timeout``
aborts the connection — and TCP keepalive probes for idle connections. The
write then fails, hypercorn reports ``http.disconnect`` and the stream's
disconnect watcher cancels it, closing the upstream. Keepalive comments mean
a silent stream still has bytes in flight, so a dead client is noticed within
``keepalive_interval + send_stall_timeout``. Accepted sockets inherit the
options from the listening socket (Linux).
"""

from __future__ import annotations

import socket

from hypercorn.config import Config, Sockets

APP_PATH = "server.app:app"


class StreamingConfig(Config):
    """hypercorn's Config whose listening sockets bound how long a send may stall."""

    send_stall_timeout: float = 60.0

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            bound_stalls(sock, self.send_stall_timeout)
        return sockets


def bound_stalls(sock: socket.socket, seconds: float) -> None:
    """Abort a TCP connection whose sent data stays unacknowledged for ``seconds``."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # unix sockets: no TCP
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
    if hasattr(socket, "TCP_KEEPIDLE"):
        idle = max(1, int(seconds / 2))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def hypercorn_config(
    bind: str = "127.0.0.1:8000", workers: int = 1, *, send_stall_timeout: float = 60.0
) -> StreamingConfig:
    config = StreamingConfig()
    config.send_stall_timeout = send_stall_timeout
    config.bind = [bind]
    config.workers = workers
    config.worker_class = "trio"
    config.application_path = APP_PATH
    config.graceful_timeout = 30.0  # live streams get this long to finish at shutdown
    config.backlog = 2048
    config.keep_alive_timeout = 75.0  # longer than common load balancers' idle timeouts
    config.accesslog = None
    config.errorlog = "-"
    return config
