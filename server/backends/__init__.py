"""Model servers behind Sluice, one class per kind, opened for the app's serving lifetime.

    async with open_backends(settings, os.environ) as backends:
        ...   # a tuple of `Backend`, in configuration order

Backends of kind ``openai`` and ``ollama`` each own an `HttpUpstream` (their
idle connections, `server.backends.http`); leaving the ``async with`` closes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

from server.backends.base import Backend
from server.backends.http import api_key_from_env
from server.backends.ollama import OllamaBackend
from server.backends.openai import OpenAIBackend
from server.backends.simulated import SimulatedBackend
from server.config import Settings

__all__ = ["Backend", "open_backends"]


@asynccontextmanager
async def open_backends(
    settings: Settings, environ: Mapping[str, str]
) -> AsyncIterator[tuple[Backend, ...]]:
    async with AsyncExitStack() as stack:
        backends: list[Backend] = []
        for backend in settings.backends:
            if backend.kind == "simulated":
                backends.append(SimulatedBackend(backend))
            else:
                key = api_key_from_env(backend, environ)
                kind = OllamaBackend if backend.kind == "ollama" else OpenAIBackend
                http = kind(backend, key, max_idle=settings.server.upstream_max_connections)
                stack.callback(http.close)
                backends.append(http)
        yield tuple(backends)
