"""hypercorn, configured for long-lived streams.

hypercorn's defaults suit short requests: ``graceful_timeout`` of 3 s would
cut every live stream at shutdown, and a listen backlog of 100 drops bursts
of new streams. `hypercorn_config` sets each on purpose; the ``sluice serve``
command and the tests both use it, so what is tested is what is served.
(Plain ``hypercorn --worker-class trio server.app:app`` works too, with
hypercorn's defaults: pass ``--graceful-timeout`` and ``--backlog`` there.)
"""

from __future__ import annotations

from hypercorn.config import Config

APP_PATH = "server.app:app"


def hypercorn_config(bind: str = "127.0.0.1:8000", workers: int = 1) -> Config:
    config = Config()
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
