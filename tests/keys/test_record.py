"""A key's record: its fields read and checked from any source, models and aliases, JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from server.keys.record import KeyFieldError, KeyRecord, key_fields
from server.limits.quota import Quota


def _record(**fields: Any) -> KeyRecord:
    return KeyRecord(id="0123456789ab", hash="f" * 64, created_at=1.0,
                     **key_fields({"name": "a", **fields}))


def test_fields_become_a_quota_and_the_rest() -> None:
    fields = key_fields({"name": "team-a", "rpm": 60, "tpm": 1000, "max_streams": 2,
                         "daily_tokens": 5, "monthly_tokens": 50, "monthly_spend": 2.5,
                         "models": ["m"], "aliases": {"x": "m"}, "metadata": {"o": 1},
                         "expires_at": "2030-01-01T00:00:00Z"})
    assert fields["quota"] == Quota(rpm=60, tpm=1000, max_streams=2, daily_tokens=5,
                                    monthly_tokens=50, monthly_spend=2.5)
    assert fields["expires_at"] == datetime(2030, 1, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("document", "field"), [
    ({}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "a", "rpm": -1}, "rpm"),
    ({"name": "a", "tpm": 1.5}, "tpm"),
    ({"name": "a", "max_streams": True}, "max_streams"),
    ({"name": "a", "models": "m"}, "models"),
    ({"name": "a", "aliases": {"x": 1}}, "aliases"),
    ({"name": "a", "expires_at": "soon"}, "expires_at"),
    ({"name": "a", "metadata": []}, "metadata"),
    ({"name": "a", "hash": "x"}, "hash"),  # not settable
])
def test_bad_fields_are_named(document: dict[str, Any], field: str) -> None:
    with pytest.raises(KeyFieldError) as error:
        key_fields(document)
    assert error.value.field == field


def test_an_update_keeps_what_it_does_not_name() -> None:
    base = _record(rpm=60, models=["m"], metadata={"team": "a"})
    fields = key_fields({"tpm": 10}, base=base)
    assert fields["quota"] == Quota(rpm=60, tpm=10)
    assert fields["models"] == ("m",) and fields["metadata"] == {"team": "a"}
    assert fields["name"] == "a"


def test_models_and_aliases() -> None:
    anything = _record()
    assert anything.resolve("whatever") == "whatever"
    limited = _record(models=["llama3"], aliases={"gpt-4o": "llama3", "big": "mixtral"})
    assert limited.resolve("gpt-4o") == "llama3"
    assert limited.resolve("llama3") == "llama3"
    assert limited.resolve("big") is None  # the alias points at a model the key may not use
    assert limited.resolve("qwen") is None


def test_a_key_sees_the_models_it_may_use() -> None:
    served = ("llama3", "qwen", "mixtral")
    assert _record().visible(served) == served
    limited = _record(models=["llama3", "qwen"], aliases={"gpt-4o": "llama3", "big": "mixtral"})
    assert limited.visible(served) == ("llama3", "qwen", "gpt-4o")


def test_active_until_revoked_or_expired() -> None:
    assert _record().active(now=1e12)
    assert not _record(expires_at=100).active(now=100)
    assert _record(expires_at=100).active(now=99)


def test_json_round_trip_and_the_public_view() -> None:
    record = _record(rpm=1, models=["m"], aliases={"a": "m"}, metadata={"k": [1]},
                     expires_at=5)
    assert KeyRecord.from_json(record.to_json()) == record
    public = record.public()
    assert "hash" not in public and public["prefix"] == "slk_0123456789ab"
    assert public["rpm"] == 1 and public["static"] is False
