"""The ASGI app that hypercorn serves: ``hypercorn --worker-class trio server.app:app``.

Built at import from ``$SLUICE_CONFIG`` (or the embedded default). A bad
configuration stops the process here with one line naming the key. Code that
only wants the factory imports `server.gateway.create_app`, which reads no
environment.

Importing it also points hypercorn's trio server at `server.serving.tcp_server`,
so plain ``hypercorn --worker-class trio server.app:app`` writes the way
``sluice serve`` does (hypercorn imports the app before it starts serving).
"""

from __future__ import annotations

import os

from server.config import ConfigError, load_settings
from server.gateway import SluiceApp, create_app
from server.serving import tcp_server

__all__ = ["app", "create_app"]


def _app_from_environment() -> SluiceApp:
    try:
        return create_app(load_settings(os.environ))
    except ConfigError as error:
        raise SystemExit(f"sluice: configuration error: {error}") from None


tcp_server.install()
app = _app_from_environment()
