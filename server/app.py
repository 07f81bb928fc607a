"""The ASGI app that hypercorn serves: ``hypercorn --worker-class trio server.app:app``.

Built at import from ``$SLUICE_CONFIG`` (or the embedded default). A bad
configuration stops the process here with one line naming the key, and a
non-zero exit under every launcher (`server.serving.worker.stop_for_bad_config`).
Code that only wants the factory imports `server.gateway.create_app`, which
reads no environment and installs nothing.

This is where serving starts: plain hypercorn imports this module in its
worker before it serves anything, and ``sluice serve`` runs the same worker.
So the serving set-up is installed here, explicitly, before the app is
built: `server.serving.worker.install` makes hypercorn's trio worker drain
on shutdown, tune gc, bound stalled sends on every accepted connection and
write through `server.serving.tcp_server` — whichever command started it.
"""

from __future__ import annotations

import os

from server.config import ConfigError, load_settings
from server.gateway import SluiceApp, create_app
from server.serving import worker

__all__ = ["app", "create_app"]


def _app_from_environment() -> SluiceApp:
    try:
        return create_app(load_settings(os.environ))
    except ConfigError as error:
        worker.stop_for_bad_config(f"sluice: configuration error: {error}")


worker.install()
app = _app_from_environment()
