"""The simulated model's reply text: whole sentences, deterministic per conversation."""

from __future__ import annotations

import pytest

from server.backends.simulated import reply_tokens

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize("count", [1, 5, 12, 60, 200])
def test_a_reply_is_whole_sentences_of_at_least_the_asked_length(count: int) -> None:
    tokens = reply_tokens(HELLO, count)
    assert len(tokens) >= count
    assert tokens[-1].endswith(".")
    # ...and not a sentence more than it takes: without its last sentence it is too short.
    text = "".join(tokens)
    shorter = text[: text.rstrip(".").rfind(".") + 1]
    assert len(shorter.split()) < count


def test_a_conversation_always_gets_the_same_reply_and_another_may_differ() -> None:
    assert reply_tokens(HELLO, 60) == reply_tokens(HELLO, 60)
    others = {"".join(reply_tokens([{"role": "user", "content": str(i)}], 60)) for i in range(8)}
    assert len(others) > 1
