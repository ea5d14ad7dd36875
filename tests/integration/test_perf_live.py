"""perf/ against the real embedded Triton: perf_analyzer under a cap, a tiny bench_models sweep."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from perf import analyzer, bench_models
from perf import estimate as est
from perf.units import human_bytes

MODEL = "clip_resize"          # the cheapest served network model: a resize graph
CAP = 1 << 30


def _perf_analyzer_ready() -> None:
    """Install libb64-0d the way `make perf-setup` does when we can; else skip saying what is missing."""
    problems = analyzer.missing()
    if any("libb64" in p for p in problems) and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "libb64-0d"],
                       capture_output=True, timeout=300)
        problems = analyzer.missing()
    if problems:
        pytest.skip("perf_analyzer cannot run: " + "; ".join(problems))


@pytest.mark.integration
def test_perf_analyzer_runs_under_a_cap_and_is_parsed(served, tmp_path):
    served.need(MODEL)
    _perf_analyzer_ready()
    load = est.TensorLoad.from_contract(served.contracts[MODEL])
    # Stability 1000%: CI shares 2 noisy cores; this checks it runs capped and parses, not the numbers.
    opts = analyzer.Options(model=MODEL, url=served.server.grpc_url, batch=2, concurrency=(1, 2, 1),
                            measurement_request_count=20, max_trials=6, stability_percentage=1000,
                            metrics_url=served.server.metrics_url, admin_key=served.server.admin_key)
    run = analyzer.run(opts, load, CAP, tmp_path, timeout_s=300)
    assert run.capped.returncode == 0 and run.capped.cap.bytes == CAP
    assert human_bytes(CAP) in run.capped.cap.describe()
    assert 0 < run.capped.peak_rss_bytes < CAP
    assert run.estimate.total <= CAP
    assert [r.concurrency for r in run.records] == [1, 2]
    for r in run.records:
        assert r.target == MODEL and r.batch == 2 and r.throughput > 0
        assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
        assert r.avg_batch >= 2.0                  # batch-2 requests: at least 2 items per execution
        assert r.compute_infer_us > 0 and r.extra["cap"].startswith("memory cap 1.0 GiB")
    assert (tmp_path / "perf_analyzer.csv").is_file()


@pytest.mark.integration
def test_perf_analyzer_refuses_before_starting(served, tmp_path):
    served.need(MODEL)
    load = est.TensorLoad.from_contract(served.contracts[MODEL])
    opts = analyzer.Options(model=MODEL, url=served.server.grpc_url, batch=32, concurrency=(1, 512, 1))
    with pytest.raises(est.OverCapError, match="Flags that would fit"):
        analyzer.run(opts, load, 256 << 20, tmp_path)
    assert not (tmp_path / "perf_analyzer.csv").exists()


@pytest.mark.integration
def test_bench_models_tiny_sweep_writes_a_report(served, tmp_path):
    served.need(MODEL)
    sweep = bench_models.Sweep(url=served.server.grpc_url, metrics_url=served.server.metrics_url,
                               batches=(1, 2), concurrencies=(1, 4), requests=16, seconds=20, warmup=1,
                               progress=False)
    out, records = bench_models.run([MODEL], sweep, name="test-tiny", reports_root=tmp_path)
    assert [(r.batch, r.concurrency) for r in records] == [(1, 1), (1, 4), (2, 1), (2, 4)]
    for r in records:
        assert r.errors == 0 and r.requests == 16 and r.throughput > 0
        assert r.extra["triton"]["requests"] == 16          # Triton saw exactly our requests
        assert r.avg_batch >= r.batch
    for name in ("results.json", "results.csv", "summary.md", "throughput.png", "latency.png", "avg_batch.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.integration
def test_perf_analyzer_feeds_the_real_scene_through_grpc_shared_memory(served, tmp_path):
    """The default input (export.scene's frame as real-input JSON) reaches every step of the faces
    pipeline (arcface runs, as it never does on black frames), over gRPC with system shared
    memory against the hardened server: the admin key goes as gRPC metadata with -H
    (analyzer.admin_headers)."""
    from export import scene

    served.need("faces")
    _perf_analyzer_ready()
    c = served.contracts["faces"]
    data = scene.perf_analyzer_json(c.inputs, tmp_path / "scene.json")
    before = served.metrics().get(("nv_inference_count", "arcface"), 0.0)
    opts = analyzer.Options(model="faces", url=served.server.grpc_url, batch=1, concurrency=(1, 1, 1),
                            shared_memory="system", input_data=str(data), measurement_request_count=4,
                            max_trials=10, stability_percentage=1000,
                            admin_key=served.server.admin_key)
    run = analyzer.run(opts, est.TensorLoad.from_contract(c), CAP, tmp_path, timeout_s=300)
    assert run.records and run.records[0].throughput > 0
    assert "--shared-memory" in run.command and str(data) in run.command
    assert served.metrics().get(("nv_inference_count", "arcface"), 0.0) > before   # a face was embedded


@pytest.mark.integration
def test_perf_analyzer_sends_real_jpegs_to_an_encoded_entry(served, tmp_path, capsys):
    """`python -m perf.analyzer --model yolo_encoded`: perf_analyzer's input JSON holds
    distinct JPEG files of the scene (base64 BYTES), Triton decodes every one of them (no
    failed request) and yolo runs on the frames."""
    import json

    from tests.support import triton as triton_support
    from tests.support.polling import settled

    served.need("yolo_encoded")
    _perf_analyzer_ready()
    before = triton_support.stats(served.server, "yolo_encoded")
    rc = analyzer.main(["--model", "yolo_encoded", "--url", served.server.grpc_url,
                        "--metrics-url", served.server.metrics_url, "--admin-key", served.server.admin_key,
                        "--concurrency", "1:1:1", "--request-count", "4", "--stability", "1000",
                        "--images", "4",      # the committed repository: the entry derived from yolo's
                        "--reports", str(tmp_path), "--mem", "1G", "--timeout", "300"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    # Triton counts a request just after answering it: read once the counts hold still
    after = settled(lambda: triton_support.stats(served.server, "yolo_encoded"), quiet_s=0.3)
    assert after["fail"] == before["fail"], "perf_analyzer's JPEGs failed to decode in Triton"
    assert after["success"] - before["success"] >= 4
    (data,) = tmp_path.glob("*-perf-yolo_encoded-b1/input_data.json")
    items = [d["image"]["content"]["b64"] for d in json.loads(data.read_text())["data"]]
    assert len(set(items)) == 4
