"""`UsageMeter`: the upstream's usage hidden from a client that did not ask for it.

(The usage itself is recorded on the stream's progress: `tests/stream/test_attempt.py`.)
"""

from __future__ import annotations

import orjson

from server.stream.usage import UsageMeter

CONTENT = b'{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}'
USAGE_ONLY = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}'
BOTH = (b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage": {"prompt_tokens": 2, "completion_tokens": 4}}')


def test_usage_is_stripped_for_a_client_that_did_not_ask() -> None:
    meter = UsageMeter()
    assert meter.take([CONTENT, USAGE_ONLY]) == [CONTENT]
    (kept,) = meter.take([BOTH])  # a chunk that also finishes a choice keeps the choice
    assert "usage" not in orjson.loads(kept)
    assert orjson.loads(kept)["choices"][0]["finish_reason"] == "stop"


def test_chunks_without_usage_are_not_parsed_or_copied() -> None:
    meter = UsageMeter()
    payloads = [CONTENT, b'{"content":"the word \\"usage\\" in text"}']
    assert meter.take(payloads) is payloads
