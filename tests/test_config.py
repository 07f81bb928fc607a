"""server/config.py: strict TOML settings; every bad key is a ConfigError naming its path."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from server.config import (
    DEFAULT_CONFIG,
    BackendSettings,
    ConfigError,
    ResumeSettings,
    ServerSettings,
    Settings,
    SimulatedModel,
    Timeouts,
    load_settings,
    parse_settings,
)

OPENAI = {"name": "vllm", "kind": "openai", "base_url": "http://10.0.0.5:8000/v1",
          "models": ["llama"]}
SIMULATED = {"name": "sim", "kind": "simulated", "models": ["sluice-sim"]}
VLLM = 'backends["vllm"]'  # errors name a backend by its name


def with_backend(**keys: Any) -> dict[str, Any]:
    """A document whose one backend is the openai one with ``keys`` changed."""
    return {"backends": [{**OPENAI, **keys}]}


def with_simulated(**keys: Any) -> dict[str, Any]:
    return {"backends": [{**SIMULATED, **keys}]}


def config_error(document: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(document)
    return str(info.value)


# ------------------------------------------------------------------ valid


def test_a_full_toml_document() -> None:
    settings = parse_settings(tomllib.loads("""
        [server]
        max_body_bytes = 1_048_576
        keepalive_interval = 5
        stream_buffer = 8
        upstream_max_connections = 10

        [timeouts]
        connect = 2
        first_chunk = 30.5
        idle = 20

        [[backends]]
        name = "gpu-a"
        kind = "openai"
        base_url = "https://gpu-a.internal/v1/"
        api_key_env = "GPU_A_KEY"
        priority = -1
        models = ["llama-3", "qwen"]

        [backends.timeouts]
        idle = 120

        [[backends]]
        name = "sim"
        kind = "simulated"
        models = ["*"]
        tokens_per_second = 1000
        first_token_delay = 0
        reply_tokens = 3
    """))
    assert settings.server == ServerSettings(max_body_bytes=1_048_576, keepalive_interval=5.0,
                                             stream_buffer=8, upstream_max_connections=10)
    assert settings.timeouts == Timeouts(connect=2.0, first_chunk=30.5, idle=20.0)
    gpu, sim = settings.backends
    assert gpu == BackendSettings(
        name="gpu-a", kind="openai", models=("llama-3", "qwen"),
        base_url="https://gpu-a.internal/v1",  # trailing slash removed
        api_key_env="GPU_A_KEY", priority=-1,
        # Only idle is overridden; the rest comes from the global [timeouts].
        timeouts=Timeouts(connect=2.0, first_chunk=30.5, idle=120.0),
    )
    assert sim.kind == "simulated"
    assert sim.timeouts == settings.timeouts
    assert sim.simulated == SimulatedModel(tokens_per_second=1000.0, first_token_delay=0.0,
                                           reply_tokens=3)
    assert sim.serves("anything")
    assert gpu.serves("qwen")
    assert not gpu.serves("gpt-4o")
    assert settings.model_names == ("llama-3", "qwen")


def test_defaults_for_omitted_sections() -> None:
    settings = parse_settings({"backends": [OPENAI]})
    assert settings.server == ServerSettings()
    assert settings.timeouts == Timeouts()
    (backend,) = settings.backends
    assert backend.timeouts == Timeouts()
    assert backend.api_key_env is None
    assert backend.priority == 0
    assert backend.simulated == SimulatedModel()


def test_numbers_are_floats_even_when_written_as_integers() -> None:
    settings = parse_settings({"timeouts": {"idle": 3}, "backends": [OPENAI]})
    assert settings.timeouts.idle == 3.0
    assert isinstance(settings.timeouts.idle, float)


def test_per_backend_timeouts_inherit_the_global_ones() -> None:
    settings = parse_settings({
        "timeouts": {"connect": 1, "first_chunk": 2, "idle": 3},
        "backends": [
            {**OPENAI, "timeouts": {"first_chunk": 20}},
            {**SIMULATED, "timeouts": {}},
            {**OPENAI, "name": "other"},
        ],
    })
    assert [b.timeouts for b in settings.backends] == [
        Timeouts(connect=1.0, first_chunk=20.0, idle=3.0),
        Timeouts(connect=1.0, first_chunk=2.0, idle=3.0),
        Timeouts(connect=1.0, first_chunk=2.0, idle=3.0),
    ]


def test_model_names_are_unique_in_order_and_skip_the_wildcard() -> None:
    settings = parse_settings({"backends": [
        {**OPENAI, "name": "a", "models": ["m2", "m1"]},
        {**OPENAI, "name": "b", "models": ["*", "m1", "m3"]},
    ]})
    assert settings.model_names == ("m2", "m1", "m3")


def test_settings_are_frozen() -> None:
    settings = parse_settings({"backends": [OPENAI]})
    with pytest.raises(AttributeError):
        settings.timeouts = Timeouts()  # type: ignore[misc]


# ---------------------------------------------------------------- the default


def test_default_config() -> None:
    settings = load_settings({})
    assert settings == parse_settings(tomllib.loads(DEFAULT_CONFIG))
    assert settings == Settings(backends=(
        BackendSettings(name="simulated", kind="simulated", models=("sluice-sim",),
                        embeddings=True, completions=True),  # the simulated model can
    ))
    assert settings.model_names == ("sluice-sim",)


def test_empty_sluice_config_means_the_default() -> None:
    assert load_settings({"SLUICE_CONFIG": ""}) == load_settings({})


# ------------------------------------------------------------------- files


def test_sluice_config_env_var_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text('[[backends]]\nname = "x"\nkind = "simulated"\nmodels = ["from-file"]\n')
    assert load_settings({"SLUICE_CONFIG": str(path)}).model_names == ("from-file",)


def test_an_explicit_path_wins_over_the_env_var(tmp_path: Path) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('[[backends]]\nname = "x"\nkind = "simulated"\nmodels = ["chosen"]\n')
    settings = load_settings({"SLUICE_CONFIG": str(tmp_path / "missing.toml")}, str(chosen))
    assert settings.model_names == ("chosen",)


def test_a_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_settings({"SLUICE_CONFIG": path})
    assert path in str(info.value)


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings({}, str(tmp_path))


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[[backends]\nname = ")
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        load_settings({"SLUICE_CONFIG": str(path)})
    assert str(path) in str(info.value)


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[backends]]\nname = "caf\xe9"\nkind = "simulated"\nmodels = ["m"]\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, str(path))


def test_a_valid_file_with_a_bad_key_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text('[[backends]]\nname = "x"\nkind = "simulated"\nmodels = ["m"]\n'
                    "[backends.timeouts]\nidel = 3\n")
    with pytest.raises(ConfigError, match=r'^backends\["x"\]\.timeouts\.idel: unknown setting$'):
        load_settings({"SLUICE_CONFIG": str(path)})


# ------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"backends": [OPENAI], "backend": []}, "backend"),
        ({"backends": [OPENAI], "server": {"max_body": 1}}, "server.max_body"),
        ({"backends": [OPENAI], "timeouts": {"read": 1}}, "timeouts.read"),
        (with_backend(url="http://x"), 'backends["vllm"].url'),
        (with_backend(timeouts={"idle": 1, "total": 5}), 'backends["vllm"].timeouts.total'),
        ({"backends": [OPENAI, {**SIMULATED, "tokens_per_sec": 3}]},
         'backends["sim"].tokens_per_sec'),
        ({"backends": [OPENAI], "zeta": 1, "alpha": 2}, "alpha"),  # first in sorted order
    ],
)
def test_unknown_keys(document: dict[str, Any], path: str) -> None:
    assert config_error(document) == f"{path}: unknown setting"


# ------------------------------------------------------------------ types


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"backends": [OPENAI], "server": {"max_body_bytes": "4MB"}}, "server.max_body_bytes"),
        ({"backends": [OPENAI], "server": {"max_body_bytes": 1.5}}, "server.max_body_bytes"),
        ({"backends": [OPENAI], "server": {"stream_buffer": True}}, "server.stream_buffer"),
        ({"backends": [OPENAI], "server": {"upstream_max_connections": False}},
         "server.upstream_max_connections"),
        ({"backends": [OPENAI], "server": {"keepalive_interval": True}},
         "server.keepalive_interval"),
        ({"backends": [OPENAI], "server": {"keepalive_interval": "15"}},
         "server.keepalive_interval"),
        ({"backends": [OPENAI], "timeouts": {"idle": True}}, "timeouts.idle"),
        ({"backends": [OPENAI], "timeouts": {"connect": [1]}}, "timeouts.connect"),
        (with_backend(name=1), "backends[0].name"),
        (with_backend(kind=["openai"]), 'backends["vllm"].kind'),
        (with_backend(models="llama"), 'backends["vllm"].models'),
        (with_backend(base_url=None), 'backends["vllm"].base_url'),
        (with_backend(api_key_env=1), 'backends["vllm"].api_key_env'),
        (with_backend(priority=True), 'backends["vllm"].priority'),
        (with_backend(priority=1.0), 'backends["vllm"].priority'),
        (with_backend(timeouts={"first_chunk": "60"}), 'backends["vllm"].timeouts.first_chunk'),
        (with_simulated(tokens_per_second=False), 'backends["sim"].tokens_per_second'),
        (with_simulated(reply_tokens=True), 'backends["sim"].reply_tokens'),
        (with_simulated(reply_tokens=60.0), 'backends["sim"].reply_tokens'),
        ({"backends": {"name": "x"}}, "backends"),
    ],
)
def test_wrong_types(document: dict[str, Any], path: str) -> None:
    message = config_error(document)
    assert message.startswith(f"{path}: expected ")
    assert "got " in message


def test_bool_is_never_a_number_message() -> None:
    assert config_error(with_backend(priority=True)) == \
        'backends["vllm"].priority: expected an integer, got True'
    assert config_error({"backends": [OPENAI], "timeouts": {"idle": False}}) == \
        "timeouts.idle: expected a number, got False"


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"backends": [OPENAI], "server": 3}, "server"),
        ({"backends": [OPENAI], "timeouts": "fast"}, "timeouts"),
        (with_backend(timeouts=5), 'backends["vllm"].timeouts'),
        ({"backends": [OPENAI, "sim"]}, "backends[1]"),
    ],
)
def test_tables_must_be_tables(document: dict[str, Any], path: str) -> None:
    assert config_error(document).startswith(f"{path}: expected a table, got ")


# ------------------------------------------------------------------ values


@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan, -math.inf])
@pytest.mark.parametrize(
    "where",
    ["timeouts.connect", "timeouts.first_chunk", "timeouts.idle", "server.keepalive_interval",
     'backends["sim"].timeouts.idle', 'backends["sim"].tokens_per_second'],
)
def test_durations_and_rates_must_be_positive(where: str, value: float) -> None:
    if where.startswith('backends["sim"].'):
        key = where.removeprefix('backends["sim"].')
        if key.startswith("timeouts."):
            document = with_simulated(timeouts={key.removeprefix("timeouts."): value})
        else:
            document = with_simulated(**{key: value})
    else:
        section, key = where.split(".")
        document = {**with_simulated(), section: {key: value}}
    assert config_error(document).startswith(f"{where}: must be > 0, got ")


def test_first_token_delay_may_be_zero_but_not_negative_or_nan() -> None:
    assert parse_settings(with_simulated(first_token_delay=0)).backends[0] \
        .simulated.first_token_delay == 0.0
    assert config_error(with_simulated(first_token_delay=-0.1)) == \
        'backends["sim"].first_token_delay: must be ≥ 0, got -0.1'
    assert config_error(with_simulated(first_token_delay=math.nan)).startswith(
        'backends["sim"].first_token_delay: must be ≥ 0')


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize(
    "key", ["max_body_bytes", "stream_buffer", "upstream_max_connections"]
)
def test_server_counts_must_be_positive(key: str, value: int) -> None:
    assert config_error({"backends": [OPENAI], "server": {key: value}}) == \
        f"server.{key}: must be > 0, got {value}"


@pytest.mark.parametrize("value", [0, -5])
def test_reply_tokens_must_be_positive(value: int) -> None:
    assert config_error(with_simulated(reply_tokens=value)) == \
        f'backends["sim"].reply_tokens: must be > 0, got {value}'


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"name": ""}, "backends[0].name: must not be empty"),
        ({"api_key_env": ""}, 'backends["vllm"].api_key_env: must not be empty'),
        ({"kind": "vllm"},
         "backends[\"vllm\"].kind: must be one of openai, simulated, ollama; got 'vllm'"),
        ({"models": []}, f"{VLLM}.models: expected a non-empty list of model names"),
        ({"models": ["a", ""]}, f"{VLLM}.models: expected a non-empty list of model names"),
        ({"models": ["a", 1]}, f"{VLLM}.models: expected a non-empty list of model names"),
        ({"base_url": "10.0.0.5:8000/v1"},
         "backends[\"vllm\"].base_url: an http:// or https:// URL is required for kind 'openai'"),
        ({"base_url": "ftp://host/v1"},
         "backends[\"vllm\"].base_url: an http:// or https:// URL is required for kind 'openai'"),
    ],
)
def test_impossible_backend_values(keys: dict[str, Any], message: str) -> None:
    assert config_error(with_backend(**keys)) == message


def test_an_openai_backend_needs_a_base_url() -> None:
    document = {"backends": [{k: v for k, v in OPENAI.items() if k != "base_url"}]}
    assert config_error(document).startswith('backends["vllm"].base_url: an http:// or https://')


def test_a_simulated_backend_needs_no_base_url() -> None:
    assert parse_settings(with_simulated()).backends[0].base_url == ""


# ---------------------------------------------------------- required keys


@pytest.mark.parametrize("key", ["name", "kind", "models"])
def test_required_backend_keys(key: str) -> None:
    backend = {k: v for k, v in SIMULATED.items() if k != key}
    where = "backends[1]" if key == "name" else 'backends["sim"]'  # by name once it has one
    assert config_error({"backends": [SIMULATED, backend]}) == f"{where}.{key}: required"


@pytest.mark.parametrize("document", [{}, {"backends": []}, {"server": {}}])
def test_at_least_one_backend(document: dict[str, Any]) -> None:
    assert config_error(document) == "backends: at least one [[backends]] table is required"


def test_duplicate_backend_names() -> None:
    document = {"backends": [OPENAI, {**SIMULATED, "name": "sim"}, {**SIMULATED, "name": "vllm"}]}
    assert config_error(document) == 'backends["vllm"]: two backends have this name'


@pytest.mark.parametrize(
    ("key", "value"),
    [("tokens_per_second", 10.0), ("first_token_delay", 0.1), ("reply_tokens", 5)],
)
def test_simulated_only_keys_on_an_openai_backend(key: str, value: float) -> None:
    assert config_error({"backends": [SIMULATED, {**OPENAI, key: value}]}) == \
        f"backends[\"vllm\"].{key}: only valid for kind 'simulated'"


def test_stream_options_can_be_switched_off_for_an_openai_backend() -> None:
    settings = parse_settings({"backends": [{**OPENAI, "stream_options": False}]})
    assert settings.backends[0].stream_options is False
    assert parse_settings({"backends": [OPENAI]}).backends[0].stream_options is True
    assert config_error({"backends": [{**OPENAI, "stream_options": "no"}]}) == \
        "backends[\"vllm\"].stream_options: expected bool, got 'no'"
    assert config_error({"backends": [{**SIMULATED, "stream_options": False}]}) == \
        "backends[\"sim\"].stream_options: only valid for kind 'openai'"


def test_the_document_is_not_modified() -> None:
    backend = {**OPENAI, "timeouts": {"idle": 4}}
    document = {"backends": [backend], "server": {"stream_buffer": 2}}
    parse_settings(document)
    assert document == {"backends": [backend], "server": {"stream_buffer": 2}}
    assert backend["timeouts"] == {"idle": 4}


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_logging_section() -> None:
    from server.config import LoggingSettings

    assert parse_settings(with_simulated()).logging == LoggingSettings("text", access_log=True)
    settings = parse_settings({**with_simulated(),
                               "logging": {"format": "json", "access_log": False}})
    assert settings.logging == LoggingSettings("json", access_log=False)
    assert config_error({**with_simulated(), "logging": {"format": "xml"}}) == (
        "logging.format: must be one of text, json; got 'xml'")
    assert config_error({**with_simulated(), "logging": {"access_log": "yes"}}) == (
        "logging.access_log: expected bool, got 'yes'")
    assert config_error({**with_simulated(), "logging": {"level": "info"}}) == (
        "logging.level: unknown setting")


def test_resume_settings() -> None:
    settings = parse_settings({"backends": [OPENAI], "resume": {
        "retention": 0, "grace": 5, "max_events": 7, "max_bytes": 1000,
        "max_retained_bytes": 5000}})
    assert settings.resume == ResumeSettings(retention=0.0, grace=5.0, max_events=7,
                                             max_bytes=1000, max_retained_bytes=5000)
    assert parse_settings({"backends": [OPENAI]}).resume == ResumeSettings()


@pytest.mark.parametrize(("resume", "message"), [
    ({"grace": -1}, "resume.grace: must be ≥ 0, got -1"),
    ({"max_events": 0}, "resume.max_events: must be > 0, got 0"),
    ({"max_bytes": "1MB"}, "resume.max_bytes: expected an integer, got '1MB'"),
    ({"retain": 1}, "resume.retain: unknown setting"),
])
def test_bad_resume_settings(resume: dict[str, Any], message: str) -> None:
    assert config_error({"backends": [OPENAI], "resume": resume}) == message
def test_a_models_table_names_fallbacks_hedging_and_strategy() -> None:
    from server.config import ModelSettings

    backends = [{"name": "a", "kind": "simulated", "models": ["small", "long", "longer"]}]
    settings = parse_settings({"backends": backends, "models": {
        "small": {"context_fallback": ["long", "longer"], "hedge_after": 2,
                  "strategy": "latency"},
        "long": {"context_fallback": "longer", "hedge_after": "auto"}}})
    assert settings.model("small") == ModelSettings(
        context_fallback=("long", "longer"), hedge_after=2.0, strategy="latency")
    assert settings.model("long").hedge_after == "auto"
    assert settings.model("other") == ModelSettings()
    for bad, path in [({"context_fallback": "nowhere"}, "context_fallback"),
                      ({"context_fallback": "small"}, "context_fallback"),
                      ({"hedge_after": 0}, "hedge_after"), ({"hedge_after": "soon"}, "hedge_after"),
                      ({"strategy": "fastest"}, "strategy"), ({"hedge": 1}, "hedge")]:
        with pytest.raises(ConfigError, match=rf'models\.small\.{path}'):
            parse_settings({"backends": backends, "models": {"small": bad}})


def test_redis_url_must_be_a_redis_url() -> None:
    assert parse_settings({"backends": [OPENAI], "resume": {
        "redis_url": "redis://10.0.0.9:6379/2"}}).resume.redis_url == "redis://10.0.0.9:6379/2"
    assert config_error({"backends": [OPENAI], "resume": {"redis_url": "10.0.0.9:6379"}}) == \
        "resume.redis_url: expected a redis://, rediss:// or unix:// URL, got '10.0.0.9:6379'"


# ------------------------------------------------------------------ [overload]


def test_overload_keys_say_their_units() -> None:
    settings = parse_settings({**with_simulated(), "overload": {
        "enabled": False, "lag_threshold_ms": 80, "lag_clear_ms": 0, "hold_s": 0,
        "retry_after_s": 2.5, "sample_interval_ms": 20}})
    overload = settings.overload
    assert not overload.enabled
    assert overload.lag_threshold == pytest.approx(0.08)
    assert (overload.lag_clear, overload.hold, overload.retry_after) == (0.0, 0.0, 2.5)
    assert overload.interval == pytest.approx(0.02)
    assert parse_settings(with_simulated()).overload.enabled  # on unless told


@pytest.mark.parametrize(("table", "message"), [
    ({"lag_threshold_ms": 20, "lag_clear_ms": 20},
     "overload.lag_clear_ms: must be below lag_threshold_ms (20), or shedding could never end"),
    ({"lag_clear_ms": 25}, "overload.lag_clear_ms: must be below lag_threshold_ms (20), "
                            "or shedding could never end"),
    ({"lag_threshold_ms": 0}, "overload.lag_threshold_ms: must be > 0, got 0"),
    ({"sample_interval_ms": -1}, "overload.sample_interval_ms: must be > 0, got -1"),
    ({"hold_s": math.nan}, "overload.hold_s: must be ≥ 0, got nan"),
    ({"enabled": 1}, "overload.enabled: expected bool, got 1"),
    ({"lag_threshold": 50}, "overload.lag_threshold: unknown setting"),
])
def test_bad_overload_settings(table: dict[str, Any], message: str) -> None:
    assert config_error({**with_simulated(), "overload": table}) == message
