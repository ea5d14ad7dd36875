"""Parsers on outputs captured from real runs (tests/data/perf/, see its README)."""
from __future__ import annotations

import pytest

from perf import analyzer, metrics
from perf.errors import RunFailed, UsageError
from perf.units import parse_bytes, parse_int_list, parse_range
from tests.conftest import REPO_ROOT

DATA = REPO_ROOT / "tests" / "data" / "perf"


def test_verbose_csv_with_stdout_gives_records_with_counts():
    recs = analyzer.parse_csv((DATA / "toy_b2_c1-4_verbose.csv").read_text(), model="toy", batch=2,
                              stdout=(DATA / "toy_b2_c1-4_stdout.txt").read_text())
    assert [r.concurrency for r in recs] == [1, 4]
    r1, r4 = recs
    assert r1.tool == "perf_analyzer" and r1.target == "toy" and r1.batch == 2
    # values from the captured CSV row "1,341.4,..." in usec, converted to ms
    assert r1.throughput == pytest.approx(341.4, abs=0.5)
    assert r1.p50_ms == pytest.approx(5.64, abs=0.01) and r1.p99_ms > r1.p95_ms >= r1.p50_ms
    assert r1.queue_us > 0 and r1.compute_infer_us > 0
    # Triton's inference/execution counts from stdout: batch 2 at concurrency 1 executes exactly 2
    assert r1.avg_batch == pytest.approx(2.0)
    assert r4.avg_batch > 2.0 and r4.requests > 0


def test_plain_csv_without_stdout():
    recs = analyzer.parse_csv((DATA / "toy_b1_c2_plain.csv").read_text(), model="toy", batch=1)
    assert len(recs) == 1 and recs[0].concurrency == 2
    assert recs[0].throughput == pytest.approx(323.366)
    assert recs[0].avg_ms is None and recs[0].avg_batch is None and recs[0].p90_ms == pytest.approx(6.626)


def test_not_a_perf_analyzer_csv():
    with pytest.raises(RunFailed):
        analyzer.parse_csv("a,b\n1,2\n", model="x", batch=1)


def test_stdout_blocks():
    counts = analyzer.parse_stdout((DATA / "toy_b2_c1-4_stdout.txt").read_text())
    assert set(counts) == {1.0, 4.0}
    assert counts[1.0]["inference_count"] == 2 * counts[1.0]["execution_count"]


def test_metrics_delta_on_captured_scrapes():
    before = metrics.parse((DATA / "toy_metrics.txt").read_text())
    after = metrics.parse((DATA / "toy_metrics_after.txt").read_text())
    assert metrics.models_in(before) == ["toy"]
    d = metrics.delta(before, after, "toy")
    assert d.requests > 0 and d.executions > 0
    assert d.avg_batch == pytest.approx(d.inferences / d.executions) and d.avg_batch >= 1
    assert d.queue_us > 0 and d.compute_infer_us > 0
    # failures are summed over reasons; all zero in the capture
    assert before[("nv_inference_request_failure", "toy")] == 0


@pytest.mark.parametrize("url", ["127.0.0.1:8002", "http://127.0.0.1:8002", "http://127.0.0.1:8002/metrics"])
def test_metrics_url_forms(url):
    assert metrics.metrics_url(url) == "http://127.0.0.1:8002/metrics"


def test_units():
    assert parse_bytes("4G") == 4 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("100") == 100
    assert parse_range("1:16:4") == (1, 16, 4) and parse_range("8") == (8, 8, 1)
    assert parse_int_list("1,4,16") == [1, 4, 16] and parse_int_list("1:9:4") == [1, 5, 9]
    for bad in ("4Q", ""):
        with pytest.raises(UsageError):
            parse_bytes(bad)
    with pytest.raises(UsageError):
        parse_range("8:2")


@pytest.mark.parametrize("protocol, header", [("grpc", "triton-grpc-protocol-admin-key:s3cret"),
                                              ("http", "admin-key:s3cret")])
def test_perf_analyzer_sends_the_admin_key_the_way_each_protocol_needs(protocol, header, monkeypatch, tmp_path):
    monkeypatch.setattr(analyzer, "binary", lambda: "perf_analyzer")
    cmd = analyzer.command(analyzer.Options(model="yolo", protocol=protocol, admin_key="s3cret"), tmp_path / "x.csv")
    assert cmd[cmd.index("-H") + 1] == header
    assert "s3cret" not in analyzer.redacted(cmd) and header.split(":")[0] + ":***" in analyzer.redacted(cmd)
    assert "-H" not in analyzer.command(analyzer.Options(model="yolo", protocol=protocol), tmp_path / "x.csv")


@pytest.mark.parametrize("model, shape", [("ppocr_rec", "crops:48,2048,3"), ("face_align", "landmarks:64,5,2")])
def test_perf_analyzer_gets_variable_dims_at_the_range_max_in_flags_and_scene_data(model, shape, monkeypatch,
                                                                                   tmp_path):
    """A variable dim (ppocr_rec's width, face_align's faces) needs --shape; the scene's JSON
    data carries the same shape (perf_analyzer reads shapes from it), the estimate the max."""
    import json

    import contract

    c = contract.load(model)
    assert analyzer.variable_shapes(c) == (f"--shape={shape}",)
    assert analyzer.variable_shapes(contract.load("yolo")) == ()
    seen = {}

    def fake_run(opts, load, cap, out, timeout_s):
        seen["opts"], seen["load"] = opts, load
        raise analyzer.RunFailed("stop here")

    monkeypatch.setattr(analyzer, "run", fake_run)
    analyzer.main(["--model", model, "--reports", str(tmp_path), "--mem", "8G"])
    assert f"--shape={shape}" in seen["opts"].extra
    data = json.loads(next(tmp_path.rglob("input_data.json")).read_text())["data"][0]
    name, dims = shape.split(":")
    assert data[name]["shape"] == [int(d) for d in dims.split(",")]
    assert seen["load"] == analyzer.est.TensorLoad.from_contract(c.with_variable_dims("max"))
