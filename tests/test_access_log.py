"""server/access_log.py: the stream line's fields, its two formats, and what it never holds."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace

import pytest

from server.access_log import (
    AccessLog,
    JsonLines,
    StreamRecord,
    format_json,
    format_text,
    use_log_format,
)

RECORD = StreamRecord(
    request_id="req_0f", key=None, model="llama3", backend="local", attempts=2,
    outcome="completed", error_id=None, error=None, status=200, stream=True, ttfb=0.21234,
    duration=4.01291, chunks=131, prompt_tokens=24, completion_tokens=128)


def test_text_line() -> None:
    assert format_text(RECORD) == (
        "stream request_id=req_0f key=- model=llama3 backend=local attempts=2 "
        "outcome=completed error_id=- error=- status=200 stream=true ttfb_ms=212.3 "
        "duration_ms=4012.9 chunks=131 prompt_tokens=24 completion_tokens=128")


def test_json_line() -> None:
    assert json.loads(format_json(RECORD)) == {
        "event": "stream", "request_id": "req_0f", "key": None, "model": "llama3",
        "backend": "local", "attempts": 2, "outcome": "completed", "error_id": None,
        "error": None, "status": 200, "stream": True, "ttfb_ms": 212.3,
        "duration_ms": 4012.9, "chunks": 131, "prompt_tokens": 24, "completion_tokens": 128}


def test_a_failed_stream_without_usage() -> None:
    failed = replace(RECORD, backend=None, outcome="upstream_timeout", error_id="err_9",
                     error="first_chunk_timeout", status=504, ttfb=None, prompt_tokens=None,
                     completion_tokens=None)
    text = format_text(failed)
    assert "backend=- " in text and "ttfb_ms=- " in text
    assert "error_id=err_9 error=first_chunk_timeout status=504" in text
    assert text.endswith("prompt_tokens=- completion_tokens=-")


@pytest.mark.parametrize("model", ['gpt x" status=200', "m\nstream request_id=forged", "m=1"])
def test_a_client_chosen_model_cannot_forge_fields_or_lines(model: str) -> None:
    text = format_text(replace(RECORD, model=model))
    assert "\n" not in text
    # Read back the way logfmt parsers do: key=value, or key="JSON string".
    pairs = re.findall(r' (\w+)=("(?:[^"\\]|\\.)*"|\S+)', text)
    fields = {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}
    assert list(fields) == list(RECORD.fields())
    assert (fields["model"], fields["status"]) == (model, "200")


def test_a_long_model_name_is_cut() -> None:
    assert len(json.loads(format_json(replace(RECORD, model="m" * 5000)))["model"]) == 200


def logger_with(formatter: logging.Formatter | None) -> tuple[logging.Logger, list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.Logger("test.access", logging.INFO)
    handler = Collect()
    handler.setFormatter(formatter or logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger, lines


def test_access_log_writes_one_info_line_per_record_unless_off() -> None:
    logger, lines = logger_with(None)
    AccessLog(True, "text", logger).write(RECORD)
    AccessLog(False, "text", logger).write(RECORD)
    assert lines == ["INFO " + format_text(RECORD)]


def test_json_lines_formatter_puts_the_fields_at_the_top() -> None:
    logger, lines = logger_with(JsonLines())
    AccessLog(True, "json", logger).write(RECORD)
    logger.warning("attempt via %s failed", "local")
    access, warning = (json.loads(line) for line in lines)
    assert access["logger"] == "test.access" and access["level"] == "INFO"
    assert access["event"] == "stream" and access["chunks"] == 131
    assert access["ts"].endswith("Z") and "message" not in access
    assert warning["message"] == "attempt via local failed"
    assert warning["level"] == "WARNING"


def test_use_log_format_json_formats_what_prints_sluice_records() -> None:
    sluice = logging.getLogger("sluice")
    own = logging.StreamHandler()
    sluice.addHandler(own)
    handlers = [*logging.getLogger().handlers, own]
    before = [h.formatter for h in handlers]
    try:
        use_log_format("text")
        assert own.formatter is None
        use_log_format("json")
        assert all(isinstance(h.formatter, JsonLines) for h in handlers)
    finally:
        for handler, formatter in zip(handlers, before, strict=True):
            handler.setFormatter(formatter)
        sluice.removeHandler(own)
