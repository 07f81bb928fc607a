"""What one fake-upstream response does: the `Scenario`.

A scenario is a frozen bag of behaviours (pace, HTTP errors, transport faults,
SSE quirks seen in real servers). Tests build them directly; the CLI and the
benchmark parse them from a compact ``key=value`` string so a whole fault can
travel in one command-line argument::

    scenario = Scenario.parse("tokens=20,tps=50,cut_after=3,no_done")
    assert scenario == Scenario(tokens=20, tps=50, cut_after=3, no_done=True)
    assert Scenario.parse(scenario.format()) == scenario

Parsing is driven by the dataclass fields themselves, so a new behaviour is a
new field with a default and nothing else. Faults counted "after N content
chunks" only fire if the response actually reaches N chunks (N <= tokens).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Self

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"none", "null", ""})


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """Behaviour of one response from the fake upstream; every field is optional."""

    tokens: int = 5
    """Content chunks to stream (capped by the request's ``max_tokens``)."""
    tps: float = 0
    """Tokens per second; 0 sends as fast as the socket takes them."""
    first_delay: float = 0
    """Seconds between the role chunk and the first content chunk."""
    status: int | None = None
    """Answer with this HTTP error status and an OpenAI error body instead."""
    retry_after: float | None = None
    """With ``status``: add a ``Retry-After`` header."""
    error_code: str | None = None
    """With ``status``: the error body's ``code`` (e.g. ``context_length_exceeded``)."""
    error_message: str | None = None
    """With ``status``: the error body's ``message``."""
    cut_after: int | None = None
    """Close the connection after N content chunks, leaving the chunked body unfinished."""
    stall_after: int | None = None
    """After N content chunks send nothing more, but hold the connection until the peer leaves."""
    malformed_after: int | None = None
    """After N content chunks send one ``data: {not json`` event, then carry on."""
    error_event_after: int | None = None
    """After N content chunks send an in-stream ``{"error": ...}`` event and end the body."""
    no_done: bool = False
    """Omit ``data: [DONE]`` but end the body properly."""
    omit_finish: bool = False
    """Omit the chunk carrying ``finish_reason``."""
    keepalive_comments: bool = False
    """Send ``:`` first and a ``: ping - <time>`` comment between chunks."""
    reset_before_headers: bool = False
    """Read the request, then reset the connection (RST) without answering."""
    no_response: bool = False
    """Read the request and never answer; hold the connection until the peer leaves."""
    crlf: bool = False
    """End SSE lines with CRLF instead of LF."""
    split_writes: bool = False
    """Write each event in two TCP writes, split mid-line."""
    timestamps: bool = False
    """Add a top-level ``sent_at`` (``time.time()``) to every content chunk."""
    reject_prefill: bool = False
    """Answer 400 to a request that asks to continue a final assistant message."""
    empty_ok: bool = False
    """Answer 200 with an empty body (how llama.cpp's server reports some failures)."""
    buffered: bool = False
    """Send the headers at once, then hold every event until the last token is due and
    send them all in one write: what a buffering proxy in front of a real server does."""
    burst: int | None = None
    """Send content chunks N at a time, each group in one write when its last token is due."""

    def __post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise ValueError("invalid scenario: " + "; ".join(problems))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Build a scenario from ``"key=value,key=value"``; a bare ``key`` means ``key=true``.

        Keys are field names (``-`` may stand for ``_``). Raises `ValueError`
        naming the offending item.
        """
        return cls(**parse_fields(text))

    def format(self) -> str:
        """The compact string of the fields that differ from the defaults; parse() inverts it."""
        default = _DEFAULT_VALUES
        parts = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != default[field.name]:
                parts.append(f"{field.name}={_format_value(value)}")
        return ",".join(parts)


def parse_fields(text: str) -> dict[str, Any]:
    """Parse ``"key=value,..."`` into converted keyword arguments for `Scenario`."""
    converters = _converters()
    fields: dict[str, Any] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        name = key.strip().replace("-", "_")
        if name not in converters:
            known = ", ".join(sorted(converters))
            raise ValueError(f"unknown scenario field {key.strip()!r} (known: {known})")
        if name in fields:
            raise ValueError(f"scenario field {name!r} given twice")
        raw = raw.strip() if sep else "true"
        try:
            fields[name] = converters[name](raw)
        except ValueError as exc:
            raise ValueError(f"bad value for scenario field {name!r}: {raw!r} ({exc})") from None
    return fields


def _validate(s: Scenario) -> list[str]:
    problems = []
    if s.tokens < 0:
        problems.append("tokens must be >= 0")
    if not (math.isfinite(s.tps) and s.tps >= 0):
        problems.append("tps must be a finite number >= 0")
    if not (math.isfinite(s.first_delay) and s.first_delay >= 0):
        problems.append("first_delay must be a finite number >= 0")
    if s.status is not None and not 400 <= s.status <= 599:
        problems.append("status must be an HTTP error status (400-599)")
    if s.retry_after is not None and not (math.isfinite(s.retry_after) and s.retry_after >= 0):
        problems.append("retry_after must be a finite number >= 0")
    if s.burst is not None and s.burst < 1:
        problems.append("burst must be >= 1")
    for name in ("cut_after", "stall_after", "malformed_after", "error_event_after"):
        value = getattr(s, name)
        if value is not None and value < 0:
            problems.append(f"{name} must be >= 0")
    return problems


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true/false")


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(raw: str) -> Any:
        return None if raw.lower() in _NONE else convert(raw)

    return parse


def _converter_for(annotation: str) -> Callable[[str], Any]:
    # With `from __future__ import annotations` the field types are these strings.
    base, _, optional = annotation.partition(" | ")
    converters: dict[str, Callable[[str], Any]] = {
        "int": int,
        "float": float,
        "bool": _parse_bool,
        "str": str,
    }
    convert = converters[base]
    return _optional(convert) if optional == "None" else convert


def _converters() -> dict[str, Callable[[str], Any]]:
    return {f.name: _converter_for(str(f.type)) for f in dataclasses.fields(Scenario)}


def _format_value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


_DEFAULT_VALUES: Mapping[str, object] = MappingProxyType(
    {f.name: f.default for f in dataclasses.fields(Scenario)}
)
