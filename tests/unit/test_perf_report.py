"""Report files, the tuning knee and config rewrite, the SLA verdict, loopback-only."""
from __future__ import annotations

import json
import math

import pytest

import contract
from perf import bench_pipelines, report, tune
from perf.errors import UsageError
from perf.net import require_loopback
from perf.record import ResultRecord, read_json


def _rec(conc, tput, p95, errors=0, batch=1, target="m", scenario=""):
    return ResultRecord(tool="bench_models", target=target, batch=batch, concurrency=conc, throughput=tput,
                        p50_ms=p95 / 2, p95_ms=p95, p99_ms=p95 * 1.2, requests=100, errors=errors,
                        avg_batch=1 + conc / 4, scenario=scenario)


def test_report_writes_raw_summary_and_plots(tmp_path):
    recs = [_rec(c, 10.0 * c, 5.0 + c) for c in (1, 4, 16)]
    out = report.new_dir("unit test/../x", tmp_path)
    assert out.parent == tmp_path and "/" not in out.name[16:]
    paths = report.write(out, "t", recs, {"memory cap": "1 GiB"}, {"Extra": "text"})
    for kind in ("json", "csv", "summary", "throughput", "latency", "avg_batch"):
        assert paths[kind].is_file() and paths[kind].stat().st_size > 0
    assert paths["throughput"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta, back = read_json(paths["json"])
    assert meta["memory cap"] == "1 GiB" and [r.throughput for r in back] == [10.0, 40.0, 160.0]
    summary = paths["summary"].read_text()
    assert "| m | - | 1 | 16 | 160.0 |" in summary and "![latency](latency.png)" in summary
    assert json.loads(paths["json"].read_text())["results"][0]["error_rate"] == 0.0


def test_knee_is_highest_throughput_within_sla_and_without_errors():
    a, b, c = tune.Point(0, (), 1), tune.Point(2000, (4, 8), 1), tune.Point(8000, (4, 8), 2)
    evidence = [(a, _rec(1, 50, 20)), (b, _rec(8, 300, 90)), (c, _rec(16, 500, 180)),
                (c, _rec(8, 400, 95, errors=1))]
    p, r = tune.knee(evidence, sla_p95_ms=100)
    assert p == b and r.throughput == 300
    assert tune.knee(evidence, sla_p95_ms=10) is None


def test_apply_rewrites_only_batching_and_instances():
    yolo = contract.load("yolo").config
    cfg = tune.apply(yolo, tune.Point(500, (4, 8, 64), 3))
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]     # 64 > max_batch_size 16 dropped
    assert [g.count for g in cfg.instance_group] == [3] and not cfg.model_warmup
    assert cfg.input == yolo.input and cfg.output == yolo.output
    assert yolo.dynamic_batching.max_queue_delay_microseconds == 2000     # the original is untouched
    block = tune.recommended_block(yolo, tune.Point(500, (4, 8), 3))
    assert "max_queue_delay_microseconds: 500" in block and "count: 3" in block and "input" not in block


def test_sla_verdicts():
    rows = bench_pipelines.verdicts([_rec(1, 10, 50), _rec(16, 90, 700), _rec(0, 5, 40, errors=2),
                                     _rec(1, 0, math.nan, errors=5)], sla_p95_ms=500)
    assert [ok for _, ok, _ in rows] == [True, False, False, False]
    assert "p95 700.0 ms > 500 ms" in rows[1][2] and "2 errors" in rows[2][2]


@pytest.mark.parametrize("url", ["127.0.0.1:8001", "http://localhost:8080", "grpc://[::1]:8001"])
def test_loopback_accepted(url):
    assert require_loopback(url) == url


def test_non_loopback_refused():
    with pytest.raises(UsageError, match="non-loopback"):
        require_loopback("http://10.1.2.3:8080")


def test_grafana_dashboard_has_the_panels_and_real_metric_names():
    from tests.conftest import REPO_ROOT

    dash = json.loads((REPO_ROOT / "perf" / "grafana" / "visionserve.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("throughput", "p95", "queue", "average batch", "gpu utilisation", "gpu memory"):
        assert word in titles
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    from perf.metrics import COUNTERS
    assert all(name in exprs for name in ("nv_inference_count", "nv_inference_exec_count",
                                          "nv_inference_queue_duration_us"))
    assert set(COUNTERS) >= {"nv_inference_count", "nv_inference_exec_count"}
    # the gateway's own metric names (gateway/metrics.py), not guesses
    src = (REPO_ROOT / "gateway" / "metrics.py").read_text()
    assert '"request_duration_seconds"' in src and "visionserve_gateway_request_duration_seconds_bucket" in exprs


def test_cli_refuses_over_cap_without_a_server(capsys):
    from perf import analyzer

    rc = analyzer.main(["--model", "yolo", "--batch", "16", "--concurrency", "1:512:1", "--mem", "256M",
                        "--estimate-only"])
    assert rc == 3 and "Flags that would fit" in capsys.readouterr().err
    assert analyzer.main(["--model", "yolo", "--concurrency", "1:2", "--mem", "1G", "--estimate-only"]) == 0


def test_tune_writes_a_cpu_override_the_cpu_profile_applies_and_the_gpu_config_ignores(tmp_path):
    """A CPU measurement never becomes a GPU block: tune's recommendation is a cpu_override.pbtxt,
    applied by the derived CPU profile only."""
    import contract
    from serving import profiles

    repo = tmp_path / "repo"
    (repo / "clip_resize" / "1").mkdir(parents=True)
    committed = contract.MODEL_REPOSITORY / "clip_resize" / "config.pbtxt"
    (repo / "clip_resize" / "config.pbtxt").write_text(committed.read_text())
    (repo / "clip_resize" / "1" / "model.onnx").write_bytes(b"")
    (repo / "clip_resize" / "1" / "export.json").write_text('{"provenance": "x"}')
    c = contract.load("clip_resize", repo)
    block = tune.recommended_block(profiles.transform(c.config, "cpu"), tune.Point(8000, (2,), 3))
    (repo / "clip_resize" / profiles.CPU_OVERRIDE).write_text(block)
    cpu = profiles.derive("cpu", dest=tmp_path / "cpu", source=repo)
    got = contract.load("clip_resize", cpu.path).config
    assert got.dynamic_batching.max_queue_delay_microseconds == 8000
    assert list(got.dynamic_batching.preferred_batch_size) == [2] and got.instance_group[0].count == 3
    assert got.instance_group[0].kind == got.instance_group[0].KIND_CPU
    gpu = profiles.derive("onnx-gpu", dest=tmp_path / "gpu", source=repo)
    assert contract.load("clip_resize", gpu.path).config.dynamic_batching == c.config.dynamic_batching
    (repo / "clip_resize" / profiles.CPU_OVERRIDE).write_text('max_batch_size: 4')
    with pytest.raises(profiles.ProfileError, match="only dynamic_batching and instance_group"):
        profiles.derive("cpu", dest=tmp_path / "cpu2", source=repo)
