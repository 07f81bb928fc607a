"""The ``sluice`` command's own decisions (serving itself is covered end to end)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from server.cli import main
from server.serving.launch import exit_code, hypercorn_config, workers_from


def test_serve_with_a_bad_config_stops_with_the_key_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_CONFIG", "")  # `serve` sets it for its workers: restore after
    config = tmp_path / "sluice.toml"
    config.write_text('[timeouts]\nidel = 5\n[[backends]]\nname = "s"\nkind = "simulated"\n'
                      'models = ["m"]\n')
    assert main(["serve", "--config", str(config)]) == 2
    assert "timeouts.idel: unknown setting" in capsys.readouterr().err


def test_serve_without_a_backend_key_in_the_environment_says_which_and_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_CONFIG", "")
    monkeypatch.delenv("SLUICE_TEST_UNSET_KEY", raising=False)
    config = tmp_path / "sluice.toml"
    config.write_text('[[backends]]\nname = "local-vllm"\nkind = "openai"\n'
                      'base_url = "http://127.0.0.1:9/v1"\nmodels = ["m"]\n'
                      'api_key_env = "SLUICE_TEST_UNSET_KEY"\n')
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert 'backends["local-vllm"].api_key_env: environment variable SLUICE_TEST_UNSET_KEY ' \
           "is not set" in err
    assert "export it" in err


# hypercorn's `Config.create_sockets` drops, unclosed, the socket it could not bind.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_serve_on_an_address_in_use_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_CONFIG", "")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        assert main(["serve", "--bind", address]) == 1
    err = capsys.readouterr().err
    assert err == f"sluice: cannot listen on {address}: Address already in use\n"


def test_workers_auto_is_one_per_usable_core() -> None:
    assert workers_from("auto") == len(os.sched_getaffinity(0))
    assert workers_from("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match=r"at least 1|invalid literal"):
            workers_from(bad)


def test_a_bad_workers_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--workers", "0"])
    assert stopped.value.code == 2
    assert "expected a count ≥ 1 or 'auto', got '0'" in capsys.readouterr().err


def test_the_exit_code_is_the_first_failing_workers() -> None:
    assert exit_code([0, 0]) == 0
    assert exit_code([0, 2, 1]) == 2
    assert exit_code([None, -9]) == 128 + 9  # killed by SIGKILL, as a shell reports it


def test_hypercorn_settings_suit_long_streams() -> None:
    config = hypercorn_config("127.0.0.1:9999", workers=3)
    assert config.bind == ["127.0.0.1:9999"]
    assert config.workers == 3
    assert config.worker_class == "trio"
    assert config.graceful_timeout >= 5  # after the drain: time for the streams' last writes
    assert config.backlog > 100
    assert config.errorlog is not None and not isinstance(config.errorlog, str)  # one handler
