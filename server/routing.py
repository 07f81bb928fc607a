"""Which backends may serve a model, in the order to try them.

Pure: a model name and the configured backends in, an ordered tuple out.
Lower ``priority`` first; configuration order breaks ties. (Fail-over
across them, load balancing within a tier and circuit breaking build on
this order.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from .backends.base import Backend

B = TypeVar("B", bound=Backend)


def candidates(backends: Sequence[B], model: str) -> tuple[B, ...]:
    serving = [b for b in backends if b.settings.serves(model)]
    return tuple(sorted(serving, key=lambda b: b.settings.priority))
