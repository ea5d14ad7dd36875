"""The benchmark's pure parts: the baseline's adapter model config, the report maths,
and the gateway's settings/CLI surface."""
from __future__ import annotations

import pytest

import contract


def test_baseline_adapter_matches_the_target_outputs(tmp_path):
    from perf.baseline_naive import write_adapter

    name = write_adapter(tmp_path, "yolo", (640, 640))
    cfg = contract.parse_config((tmp_path / name / "config.pbtxt").read_text())
    yolo = contract.load("yolo")
    adapter = contract.ModelContract(name, tmp_path / name / "config.pbtxt", cfg)
    assert [(o.name, o.triton_dtype, o.dims) for o in adapter.outputs] == \
           [(o.name, o.triton_dtype, o.dims) for o in yolo.outputs]
    assert adapter.inputs[0].triton_dtype == "FP32" and adapter.inputs[0].dims == (3, 640, 640)
    assert (tmp_path / name / "1" / "model.py").read_text().count("InferenceRequest") == 1


def test_report_ratios_and_targets():
    from perf.bench_gateway import BenchError, Point, report

    pts = [Point("gateway", 32, 300, 0, 30.0, 10, 20, 30, 3.0, 1_228_800),
           Point("baseline", 32, 100, 0, 10.0, 30, 60, 90, 24.0, 4_915_200)]
    r = report(pts, decode_ms=2.5, jpeg_bytes=1000)
    assert r["ratios"][32]["throughput_x"] == pytest.approx(3.0)
    assert r["ratios"][32]["bytes_fraction"] == pytest.approx(0.25)
    assert r["ratios"][32]["cpu_x"] == pytest.approx(8.0)
    assert all(r["targets"].values())
    pts[0].cpu_ms_per_request = 3.5           # > 1.3 x 2.5 ms
    assert not report(pts, 2.5, 1000)["targets"]["gateway CPU/request <= 1.3x bare decode"]
    pts[1].errors = 3
    with pytest.raises(BenchError, match="baseline c=32: 3/100"):
        report(pts, 2.5, 1000)


def test_settings_from_environment_and_flags(monkeypatch):
    from gateway.settings import GatewaySettings

    monkeypatch.setenv("VISIONSERVE_GATEWAY_MAX_IMAGES", "4")
    monkeypatch.setenv("VISIONSERVE_GATEWAY_TRITON_GRPC", "10.0.0.1:9001")
    s = GatewaySettings(port=9999)
    assert (s.max_images, s.triton_grpc, s.port) == (4, "10.0.0.1:9001", 9999)
    monkeypatch.setenv("VISIONSERVE_GATEWAY_MAX_IMAGES", "0")
    with pytest.raises(ValueError):
        GatewaySettings()


def test_cli_help_names_the_flags_run_py_uses(capsys):
    from gateway.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--triton-grpc" in out and "--host" in out and "--port" in out
