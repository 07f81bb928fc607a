"""`UsageMeter`: the upstream's usage noted as it passes, and hidden from who did not ask."""

from __future__ import annotations

import orjson

from server.stream.usage import UsageMeter

CONTENT = b'{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}'
USAGE_ONLY = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}'
BOTH = (b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage": {"prompt_tokens": 2, "completion_tokens": 4}}')


def test_usage_is_noted_and_kept_for_a_client_that_asked() -> None:
    meter = UsageMeter(strip=False)
    payloads = [CONTENT, USAGE_ONLY]
    assert meter.take(payloads) is payloads
    assert (meter.prompt_tokens, meter.completion_tokens) == (3, 7)


def test_usage_is_stripped_for_a_client_that_did_not_ask() -> None:
    meter = UsageMeter(strip=True)
    assert meter.take([CONTENT, USAGE_ONLY]) == [CONTENT]
    assert meter.completion_tokens == 7
    (kept,) = meter.take([BOTH])  # a chunk that also finishes a choice keeps the choice
    assert "usage" not in orjson.loads(kept)
    assert orjson.loads(kept)["choices"][0]["finish_reason"] == "stop"
    assert (meter.prompt_tokens, meter.completion_tokens) == (2, 4)


def test_chunks_without_usage_are_not_parsed_or_copied() -> None:
    meter = UsageMeter(strip=True)
    payloads = [CONTENT, b'{"content":"the word \\"usage\\" in text"}']
    assert meter.take(payloads) is payloads
    assert meter.usage is None


def test_watch_notes_usage_of_parsed_chunks() -> None:
    seen: list[object] = []
    meter = UsageMeter(strip=False)
    add = meter.watch(seen.append)
    add(orjson.loads(CONTENT))
    add(orjson.loads(USAGE_ONLY))
    assert len(seen) == 2 and meter.prompt_tokens == 3
