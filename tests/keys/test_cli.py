"""``sluice keys``: a key for the config file, and run-time keys in a real Redis."""

from __future__ import annotations

import tomllib
from pathlib import Path

import orjson
import pytest

from server.cli import main
from server.config import parse_settings
from server.keys.secret import verify


def test_new_prints_the_key_once_and_a_table_the_config_accepts(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "--name", "team-a", "--rpm", "60", "--models", "m1,m2",
                 "--alias", "gpt-4o=m1", "--meta", "team=a", "--expires", "2030-01-01"]) == 0
    out = capsys.readouterr().out
    key = next(line[2:] for line in out.splitlines() if line.startswith("# slk_"))
    table = tomllib.loads(out)["auth"]["keys"][0]
    assert verify(key, table["hash"]) and key not in out.split("[[auth.keys]]")[1]
    settings = parse_settings({"backends": [{"name": "s", "kind": "simulated",
                                             "models": ["m1"]}], "auth": {"keys": [table]}})
    (record,) = settings.auth.keys
    assert record.name == "team-a" and record.quota.rpm == 60
    assert record.aliases == {"gpt-4o": "m1"} and record.metadata == {"team": "a"}


def test_new_rejects_a_bad_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "--name", "bad name"]) == 2
    assert "name:" in capsys.readouterr().err


def test_run_time_keys_need_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text('[[backends]]\nname = "s"\nkind = "simulated"\nmodels = ["m"]\n')
    assert main(["keys", "--config", str(config), "list"]) == 2
    assert 'backend = "redis"' in capsys.readouterr().err


def test_run_time_keys_in_redis(tmp_path: Path, redis_url: str,
                                capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_CONFIG", "")  # `--config` sets it: restore after
    config = tmp_path / "sluice.toml"
    config.write_text('[[backends]]\nname = "s"\nkind = "simulated"\nmodels = ["m"]\n'
                      f'[state]\nbackend = "redis"\nurl = "{redis_url}"\n')

    def run(*args: str) -> object:
        assert main(["keys", "--config", str(config), *args]) == 0
        return orjson.loads(capsys.readouterr().out)

    made = run("create", "--name", "team-b", "--tpm", "1000")
    assert isinstance(made, dict) and made["key"].startswith(f"slk_{made['id']}_")
    assert "hash" not in made
    listed = run("list")
    assert isinstance(listed, list) and [k["name"] for k in listed] == ["team-b"]
    updated = run("update", made["id"], "--rpm", "5")
    assert isinstance(updated, dict) and updated["rpm"] == 5 and updated["tpm"] == 1000
    revoked = run("revoke", made["id"])
    assert isinstance(revoked, dict) and revoked["revoked_at"] is not None
    usage = run("usage", made["id"], "--period", "2026-01")
    assert isinstance(usage, dict) and usage["total"]["requests"] == 0
    assert main(["keys", "--config", str(config), "show", "0123456789ab"]) == 1
    assert "no key" in capsys.readouterr().err
