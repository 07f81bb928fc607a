"""``[auth]`` and ``[state]`` in the config: strict, with the offending key named."""

from __future__ import annotations

from typing import Any

import pytest

from server.config import ConfigError, Settings, parse_settings
from server.keys.secret import new_key
from server.keys.settings import Price

BACKENDS = [{"name": "s", "kind": "simulated", "models": ["m"]}]


def _parse(**tables: Any) -> Settings:
    return parse_settings({"backends": BACKENDS, **tables})


def test_defaults_need_no_keys() -> None:
    settings = _parse()
    assert not settings.auth.required
    assert settings.state.backend == "memory" and settings.state.on_error == "open"


def test_keys_in_the_file_and_prices() -> None:
    key = new_key()
    settings = _parse(auth={"keys": [{"id": key.id, "hash": key.hash, "name": "a",
                                      "rpm": 5, "models": ["m"]}],
                            "prices": {"m": {"prompt": 1.0, "completion": 2.0}}})
    assert settings.auth.required
    (record,) = settings.auth.keys
    assert record.static and record.quota.rpm == 5 and record.models == ("m",)
    assert settings.auth.prices["m"] == Price(1.0, 2.0)
    assert Price(1.0, 2.0).cost(1_000_000, 500_000) == 2.0
    assert _parse(auth={"admin_key_env": "X"}).auth.required


@pytest.mark.parametrize(("tables", "message"), [
    ({"auth": {"keys": [{"hash": "0" * 64, "name": "a"}]}}, "auth.keys[0].id"),
    ({"auth": {"keys": [{"id": "0" * 12, "hash": "x", "name": "a"}]}}, "auth.keys[0].hash"),
    ({"auth": {"keys": [{"id": "0" * 12, "hash": "0" * 64, "name": "a", "rpn": 1}]}},
     "auth.keys[0].rpn: unknown field"),
    ({"auth": {"keys": [{"id": "0" * 12, "hash": "0" * 64, "name": "a"},
                        {"id": "1" * 12, "hash": "0" * 64, "name": "a"}]}}, "auth.keys[1]"),
    ({"auth": {"prices": {"m": {"prompt": -1}}}}, "auth.prices.m.prompt"),
    ({"auth": {"prices": {"m": {"input": 1}}}}, "auth.prices.m.input: unknown"),
    ({"auth": {"cache_secs": 1}}, "auth.cache_secs: unknown"),
    ({"state": {"backend": "etcd"}}, "state.backend"),
    ({"state": {"url": "http://x"}}, "state.url"),
    ({"state": {"on_error": "maybe"}}, "state.on_error"),
    ({"state": {"prefix": "a{b}"}}, "state.prefix"),
    ({"state": {"timeout": 0}}, "state.timeout"),
])
def test_mistakes_name_their_key(tables: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _parse(**tables)
