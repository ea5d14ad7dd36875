"""Triton's OpenTelemetry trace mode as `python -m serving` and the Triton image configure it
(serving/tritonserver.trace_args): off unless a collector is named."""
from __future__ import annotations

from pathlib import Path

import pytest

from deploy import entrypoint
from serving import run
from serving.tritonserver import TritonInstall, TritonServer, trace_args

FAKE = TritonInstall(Path("/x/tritonserver"), Path("/x/libs"), Path("/x/py"), Path("/x/stub"))


def _trace_flags(cmd: list[str]) -> list[str]:
    return [c for c in cmd if c.startswith("--trace")]


def test_off_by_default(tmp_path):
    assert _trace_flags(TritonServer(tmp_path).command(FAKE)) == []
    assert _trace_flags(entrypoint.triton_command(tmp_path, "k", [], "", 5)) == []


def test_the_flags_turn_triton_s_opentelemetry_mode_on(tmp_path):
    s = TritonServer(tmp_path, trace_otlp="http://127.0.0.1:4318", trace_rate=100)
    flags = _trace_flags(s.command(FAKE))
    # the level must be set: Triton's default level OFF traces nothing in either mode
    assert flags[:5] == ["--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS",
                         "--trace-config=rate=100", "--trace-config=count=-1",
                         "--trace-config=opentelemetry,url=http://127.0.0.1:4318/v1/traces"]
    assert flags[5] == f"--trace-config=opentelemetry,resource=service.instance.id={s.server_id}"
    assert _trace_flags(entrypoint.triton_command(tmp_path, "k", [], "http://otel:4318/custom", 0))[:5] == [
        "--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS", "--trace-config=rate=0",
        "--trace-config=count=-1", "--trace-config=opentelemetry,url=http://otel:4318/custom"]


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="http"):
        trace_args("otel:4318")
    with pytest.raises(ValueError, match="count"):
        trace_args("http://otel:4318", -1)
    for argv in (["serve", "--trace-otlp", "otel:4318"], ["serve", "--trace-rate", "-2"]):
        with pytest.raises(SystemExit):
            run._parser().parse_args(argv)


def test_the_serving_flags_and_their_environment(monkeypatch):
    a = run._parser().parse_args(["run", "--trace-otlp", "http://c:4318", "--trace-rate", "7"])
    assert (a.trace_otlp, a.trace_rate) == ("http://c:4318", 7)
    monkeypatch.setenv("VISIONSERVE_TRACE_OTLP", "http://env:4318")
    monkeypatch.setenv("VISIONSERVE_TRACE_RATE", "3")
    a = run._parser().parse_args(["serve"])
    assert (a.trace_otlp, a.trace_rate) == ("http://env:4318", 3)
    monkeypatch.setenv("VISIONSERVE_TRACE_OTLP", "")
    monkeypatch.setenv("VISIONSERVE_TRACE_RATE", "")
    a = run._parser().parse_args(["serve"])
    assert (a.trace_otlp, a.trace_rate) == (None, 0)
