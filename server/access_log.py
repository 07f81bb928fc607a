"""The access log: one line per stream, as text or JSON, and never a secret.

Every stream — completed, cut, refused, abandoned by its client — ends in
one `StreamRecord`, written at the stream's scope exit (`server.stream.nursery`)
to the logger ``sluice.access`` at INFO::

    stream request_id=req_1f… key=- model=llama3 backend=local attempts=1 outcome=completed
    status=200 ttfb_ms=212.4 duration_ms=4012.9 chunks=131 prompt_tokens=24 completion_tokens=128

    {"ts":"2026-01-02T03:04:05.678Z","level":"INFO","logger":"sluice.access",
     "event":"stream","request_id":"req_1f…","key":null,"model":"llama3",...}

(one line each). What it never holds: an API key (``key`` is the key's
configured *name*), a prompt or any content, an upstream URL. The upstream's
error detail stays in the ``sluice.stream`` warning line that shares the
``error_id``. Strings that come from clients (the model, the request id)
are quoted when they hold anything but plain characters, so a crafted
model name cannot forge a line.

``[logging] format = "json"`` makes `sluice serve` render *every* log line
as one JSON object (`JsonLines`), so a log shipper needs no parsing rules;
the access lines then carry their fields at the top level.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from server.config import LogFormat

_PLAIN = re.compile(r"[A-Za-z0-9._:/@+\-]{1,200}")
_MAX_STRING = 200  # a client's model name is cut to this many characters


@dataclass(slots=True)
class StreamRecord:
    """How one stream went: identifiers, where it went, how it ended, how long it took.

    Not frozen: one is built per stream, and a frozen dataclass of this size
    costs three times as much to build (6 µs against 2 µs, measured here).
    """

    request_id: str
    key: str | None  # the client key's configured name; None: no keys (or none sent)
    model: str  # as the client asked for it
    backend: str | None  # the backend of the first content chunk; None: none served
    attempts: int  # upstream requests, retries, fail-overs and continuations included
    outcome: str  # as `sluice_stream_outcomes_total`
    error_id: str | None  # also in the warning line with the error's detail
    error: str | None  # the error's code or type, as the client saw it
    status: int | None  # the HTTP status sent; None: nothing was sent (the client left)
    stream: bool  # SSE, or one aggregated reply
    ttfb: float | None  # seconds from the request to the first content chunk (the first byte)
    duration: float  # seconds from the request to the stream's end
    chunks: int  # upstream chunks relayed
    prompt_tokens: int | None = None  # as the upstream's usage reported them; None: unknown
    completion_tokens: int | None = None

    def fields(self) -> dict[str, Any]:
        """The record as flat, JSON-ready fields (times in milliseconds)."""
        return {
            "request_id": self.request_id, "key": self.key, "model": self.model[:_MAX_STRING],
            "backend": self.backend, "attempts": self.attempts, "outcome": self.outcome,
            "error_id": self.error_id, "error": self.error, "status": self.status,
            "stream": self.stream,
            "ttfb_ms": None if self.ttfb is None else round(self.ttfb * 1000, 1),
            "duration_ms": round(self.duration * 1000, 1), "chunks": self.chunks,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
        }


def format_text(record: StreamRecord) -> str:
    """``stream key=value ...``; a missing value is ``-``, an unusual string is JSON-quoted."""
    return "stream " + " ".join(f"{k}={_text_value(v)}" for k, v in record.fields().items())


def format_json(record: StreamRecord) -> str:
    return orjson.dumps({"event": "stream", **record.fields()}).decode()


def _text_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and not _PLAIN.fullmatch(value):
        return orjson.dumps(value).decode()
    return str(value)


class _Rendered:
    """The record's message, rendered only if a handler formats it."""

    __slots__ = ("_format", "_record")

    def __init__(self, record: StreamRecord, fmt: LogFormat) -> None:
        self._record = record
        self._format = fmt

    def __str__(self) -> str:
        return (format_json if self._format == "json" else format_text)(self._record)


class AccessLog:
    """Writes `StreamRecord` lines to the ``sluice.access`` logger, if enabled."""

    def __init__(self, enabled: bool = True, fmt: LogFormat = "text",
                 logger: logging.Logger | None = None) -> None:
        self.enabled = enabled
        self.format = fmt
        self._logger = logger or logging.getLogger("sluice.access")

    def write(self, record: StreamRecord) -> None:
        if self.enabled and self._logger.isEnabledFor(logging.INFO):
            self._logger.info("%s", _Rendered(record, self.format),
                              extra={"sluice_stream": record})


class JsonLines(logging.Formatter):
    """Every log record as one JSON object; an access record with its fields at the top."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        stream = getattr(record, "sluice_stream", None)
        if isinstance(stream, StreamRecord):
            line.update(event="stream", **stream.fields())
        else:
            line["message"] = record.getMessage()
            if record.exc_info:
                line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def use_log_format(fmt: LogFormat) -> None:
    """Give the handlers that print Sluice's records the chosen format (at serving start).

    Those are the root logger's (``sluice serve`` configures it) and the
    ``sluice`` logger's own (set when nothing else would show its records).
    """
    if fmt != "json":
        return
    for logger in (logging.getLogger(), logging.getLogger("sluice")):
        for handler in logger.handlers:
            handler.setFormatter(JsonLines())
