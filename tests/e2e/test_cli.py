"""The ``sluice`` command's own decisions (serving itself is covered end to end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import main
from server.serving.launch import hypercorn_config


def test_serve_with_a_bad_config_stops_with_the_key_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_CONFIG", "")  # `serve` sets it for its workers: restore after
    config = tmp_path / "sluice.toml"
    config.write_text('[timeouts]\nidel = 5\n[[backends]]\nname = "s"\nkind = "simulated"\n'
                      'models = ["m"]\n')
    assert main(["serve", "--config", str(config)]) == 2
    assert "timeouts.idel: unknown setting" in capsys.readouterr().err


def test_hypercorn_settings_suit_long_streams() -> None:
    config = hypercorn_config("127.0.0.1:9999", workers=3)
    assert config.bind == ["127.0.0.1:9999"]
    assert config.workers == 3
    assert config.worker_class == "trio"
    assert config.graceful_timeout >= 30  # hypercorn's 3 s would cut live streams
    assert config.backlog > 100
