"""``[telemetry]``: its settings, and that traces off need no OpenTelemetry at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from server.config import ConfigError, TelemetrySettings, parse_settings
from server.telemetry import open_tracer
from server.telemetry.otel import OtelTracer
from server.telemetry.tracer import NULL_ATTEMPT, NULL_STREAM, NULL_TRACER

BACKENDS = [{"name": "sim", "kind": "simulated", "models": ["m"]}]
# A subprocess that imports Sluice with no OpenTelemetry importable; bounded.
SUBPROCESS_SECONDS = 30


def telemetry(**table: Any) -> TelemetrySettings:
    return parse_settings({"backends": BACKENDS, "telemetry": table}).telemetry


def test_traces_are_off_by_default() -> None:
    assert telemetry() == TelemetrySettings(traces=False, service_name="sluice",
                                            exporter="otlp", endpoint="", sample_ratio=1.0)
    assert open_tracer(telemetry()) is NULL_TRACER


@pytest.mark.parametrize("exporter", ["console", "otlp"])
async def test_every_setting_is_read(exporter: str) -> None:
    settings = telemetry(traces=True, service_name="gw-eu", exporter=exporter,
                         endpoint="https://collector:4318/v1/traces", sample_ratio=0.25)
    assert settings == TelemetrySettings(True, "gw-eu", exporter,  # type: ignore[arg-type]
                                         "https://collector:4318/v1/traces", 0.25)
    tracer = open_tracer(settings)
    assert isinstance(tracer, OtelTracer)
    await tracer.aclose()  # nothing to export: its thread stops at once


@pytest.mark.parametrize(("table", "message"), [
    ({"traces": "yes"}, r"telemetry\.traces: expected bool"),
    ({"exporter": "jaeger"}, r"telemetry\.exporter: must be one of otlp, console"),
    ({"endpoint": "collector:4318"}, r"telemetry\.endpoint: expected an http:// or https://"),
    ({"sample_ratio": 1.5}, r"telemetry\.sample_ratio: must be ≤ 1"),
    ({"sample_ratio": -0.1}, r"telemetry\.sample_ratio: must be ≥ 0"),
    ({"service_name": ""}, r"telemetry\.service_name: must not be empty"),
    ({"tracing": True}, r"telemetry\.tracing: unknown setting"),
])
def test_a_bad_setting_names_itself(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        telemetry(**table)


@pytest.mark.parametrize(("missing", "exporter"), [
    ("opentelemetry.sdk.trace", "console"),
    ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "otlp"),
])
def test_traces_without_the_extra_say_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, missing: str, exporter: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: import fails
    with pytest.raises(ConfigError, match=r"telemetry\.traces: .*pip install 'sluice\[otel\]'"):
        telemetry(traces=True, exporter=exporter)
    telemetry(traces=False, exporter=exporter)  # off: not needed


def test_the_null_tracer_does_nothing() -> None:
    assert NULL_TRACER.parent_headers({"traceparent": "00-x"}) == ()
    assert NULL_STREAM.attempt(None, None) is NULL_ATTEMPT  # type: ignore[arg-type]
    assert NULL_ATTEMPT.upstream_headers() == {}
    assert not NULL_TRACER.enabled


# Block every `opentelemetry` import, serve one request with traces off, list what loaded;
# then ask for traces, which must fail with the install hint.
NO_OPENTELEMETRY = textwrap.dedent("""
    import sys, tomllib
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "opentelemetry":
                raise ImportError("not installed: " + name)
    sys.meta_path.insert(0, Block())
    import trio
    from server.config import DEFAULT_CONFIG, ConfigError, parse_settings
    from server.gateway import create_app
    config = DEFAULT_CONFIG + "first_token_delay = 0\\ntokens_per_second = 1000\\n"
    app = create_app(parse_settings(tomllib.loads(config)), environ={})
    async def main():
        async with app.test_app() as test_app:
            response = await test_app.test_client().post("/v1/chat/completions", json={
                "model": "sluice-sim", "messages": [{"role": "user", "content": "hi"}]})
            print(response.status_code)
    trio.run(main)
    print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
    try:
        parse_settings(tomllib.loads(config + "[telemetry]\\ntraces = true\\n"))
    except ConfigError as error:
        print(error)
""")


def test_traces_off_serve_without_opentelemetry_installed() -> None:
    done = subprocess.run([sys.executable, "-c", NO_OPENTELEMETRY], capture_output=True,
                          text=True, timeout=SUBPROCESS_SECONDS, check=True)
    status, loaded, error = done.stdout.splitlines()
    assert status == "200"
    assert loaded == "[]"
    assert "pip install 'sluice[otel]'" in error
