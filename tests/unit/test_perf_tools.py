"""Smoke runs of the perf tools `make` exposes that run in-process (no server): each tool's
own entry point at the smallest configuration it accepts; it must finish, exit 0 and print
its table with the columns the docs describe and values that measured something."""
from __future__ import annotations

import re

import pytest

from tests.support.dali import require_dali
from tests.support.exports import smallest_exported_network


def test_bench_lean_times_both_handlers(capsys):
    """`make bench-lean` (python -m perf.bench_lean) with a few requests per round."""
    from perf import bench_lean

    assert bench_lean.main(["--requests", "5", "--rounds", "1"]) == 0
    line = re.compile(r"^(\d+x\d+)\s+JPEG: LeanRoute\s+([\d.]+) us/request, FastAPI's handler\s+([\d.]+) "
                      r"us/request: LeanRoute saves\s+(-?[\d.]+) us \((-?[\d.]+)% of the gateway's CPU per request\)$")
    rows = [line.match(x) for x in capsys.readouterr().out.splitlines()]
    assert [m[1] for m in rows if m] == ["1280x720", "64x48"], rows
    for m in rows:
        lean, full, saved = float(m[2]), float(m[3]), float(m[4])
        assert lean > 0 and full > 0
        assert saved == pytest.approx(full - lean, abs=0.11)      # printed at one decimal


def test_bench_lean_fails_loudly_on_a_request_it_cannot_answer(monkeypatch):
    """Its timing loop asserts every answer is a 200: a broken route is not timed as fast."""
    from perf import bench_lean

    async def refused(app, body, query):
        return 503

    monkeypatch.setattr(bench_lean, "_one", refused)
    with pytest.raises(AssertionError):
        bench_lean.main(["--requests", "2", "--rounds", "1"])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_cpu_bare_measures_each_batch_the_model_takes(runtime):
    """perf/cpu_bare.py (bench-cpu's bare column) on the smallest exported graph: one point per
    batch within the model's max_batch_size, items/s above zero, the runtime that ran named."""
    from perf import cpu_bare

    c = smallest_exported_network()
    too_big = c.max_batch_size + 1
    points = cpu_bare.measure(c.name, runtime, "f32", 1, [1, 2, too_big], 0.05)
    assert [p.batch for p in points] == [1, 2]
    for p in points:
        assert (p.model, p.precision, p.threads) == (c.name, "f32", 1)
        assert p.items_per_s > 0
        assert p.runtime == runtime or p.note, p        # a fallback says why
        assert p.label == f"{p.runtime} f32 1t b{p.batch}"


def test_bench_decode_cpu_runs_the_codec_beside_dali(capsys):
    """`make bench-decode` (python -m perf.bench_decode --device cpu --stages) at batch 1 on the
    smaller photo, a fraction of a second per point."""
    from perf import bench_decode, decode_images

    require_dali()
    size = min(decode_images.BENCH_SIZES, key=lambda s: decode_images.BENCH_SIZES[s][0] * decode_images.BENCH_SIZES[s][1])
    assert bench_decode.main(["--batch", "1", "--sizes", size, "--seconds", "0.05", "--stages"]) == 0
    out = capsys.readouterr().out.splitlines()
    head = next(i for i, x in enumerate(out) if x.split()[:2] == ["size", "batch"])
    columns = ["codec img/s", "codec img/CPU-s", "dali-cpu img/s", "dali-cpu img/CPU-s", "dali-cpu/codec per CPU-s"]
    at = [out[head].find(c) for c in columns]
    assert -1 not in at and at == sorted(at), out[head]
    row = out[head + 1].split()
    assert row[:2] == [size, "1"]
    assert all(float(v) > 0 for v in row[2:]), row
    stages = out[out.index("stages, ms of CPU per image (batch 8):") + 1:]
    assert len(stages) == 3 and all(float(x.split()[-1]) > 0 for x in stages), stages


def test_bench_fleet_report_survives_a_balancer_that_served_nothing(tmp_path, capsys):
    """A run where a balancer served nothing reports n/a instead of dividing by zero."""
    from perf import bench_fleet

    def point(b, r, img_s):
        return {"balancer": b, "replicas": r, "img_s": img_s, "errors": 0, "p50_ms": 0.0,
                "p95_ms": 0.0, "p99_ms": 0.0, "share": [1.0] * r}
    points = [point("pick_first", 1, 0.0), point("pick_first", 2, 0.0),
              point("least_outstanding", 1, 10.0), point("least_outstanding", 2, 19.0)]
    out = bench_fleet.report(points, 2, tmp_path)
    text = capsys.readouterr().out
    assert "pick_first" in text and "n/a" in text and out["efficiency"] == {"least_outstanding": 0.95}
