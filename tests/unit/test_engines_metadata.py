"""Plan names, cc_model_filenames, sidecars and the staleness decision (pure, no GPU)."""
from __future__ import annotations

import dataclasses

import pytest

from export.base import sha256_file
from export.engines.check import check_model
from export.engines.gpu import GpuInfo, cc_from_sm, parse_nvidia_smi, sm_tag, version_from_int
from export.engines.metadata import (
    Sidecar,
    Wanted,
    cc_model_filenames,
    cc_model_filenames_from_names,
    check_plan,
    plan_filename,
    read_sidecar,
    served_plan,
    staleness,
    write_sidecar,
)

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
H200 = GpuInfo("NVIDIA H200", "9.0")
A10 = GpuInfo("NVIDIA A10", "8.6")
FLAGS = {"recipe": 1, "profile": {"max_batch": 8}, "fp16": True}


def test_sm_tags_and_versions():
    assert [sm_tag(c) for c in ("9.0", "8.6", "12.0", "7.5")] == ["sm90", "sm86", "sm120", "sm75"]
    assert [cc_from_sm(t) for t in ("sm90", "sm86", "sm120")] == ["9.0", "8.6", "12.0"]
    assert plan_filename("8.9") == "model.sm89.plan"
    assert version_from_int(100300) == "10.3.0" and version_from_int(8601) == "8.6.1"
    with pytest.raises(ValueError):
        sm_tag("nine")


def test_nvidia_smi_parsing():
    text = "NVIDIA H100 80GB HBM3, 9.0\nNVIDIA A10, 8.6\n"
    assert parse_nvidia_smi(text, 1) == A10
    assert parse_nvidia_smi(text, 0).compute_capability == "9.0"
    assert parse_nvidia_smi(text, 2) is None and parse_nvidia_smi("garbage", 0) is None


def test_cc_model_filenames_from_names_sorted_and_filtered():
    names = ["model.onnx", "model.plan", "model.sm90.plan", "model.sm86.plan", "model.sm120.plan",
             "model.sm90.plan.json", "other.sm75.plan", ".model.sm90.plan.lock"]
    assert cc_model_filenames_from_names(names) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan",
                                                    "12.0": "model.sm120.plan"}


def test_cc_model_filenames_only_counts_plans_with_sidecars(tmp_path):
    (tmp_path / "model.sm90.plan").write_bytes(b"x")
    (tmp_path / "model.sm90.plan.json").write_text("{}")
    (tmp_path / "model.sm86.plan").write_bytes(b"x")            # no sidecar: unknown origin
    assert cc_model_filenames(tmp_path) == {"9.0": "model.sm90.plan"}
    assert cc_model_filenames(tmp_path / "missing") == {}
    assert served_plan(tmp_path, H100).name == "model.sm90.plan"
    assert served_plan(tmp_path, A10).name == "model.plan"


def _sidecar(**kw):
    base = dict(model="m", tensorrt_version="10.3.0", gpu_name=H100.name, compute_capability="9.0",
                onnx_sha256="a" * 64, plan_sha256="p" * 64, build_flags=FLAGS)
    return Sidecar(**{**base, **kw})


def test_staleness_decisions():
    want = Wanted("10.3.0", H100, "a" * 64, FLAGS)
    assert staleness(_sidecar(), "p" * 64, want) == ([], [])
    r, _ = staleness(None, "p" * 64, want)
    assert "no sidecar" in r[0]
    r, _ = staleness(_sidecar(), "q" * 64, want)
    assert "different plan file" in r[0]
    r, _ = staleness(_sidecar(compute_capability="8.6", gpu_name="NVIDIA A10"), "p" * 64, want)
    assert "compute capability 8.6" in r[0]
    r, _ = staleness(_sidecar(tensorrt_version="10.0.1"), "p" * 64, want)
    assert r == ["built with TensorRT 10.0.1, this host has 10.3.0"]
    r, _ = staleness(_sidecar(onnx_sha256="b" * 64), "p" * 64, want)
    assert "model.onnx changed" in r[0]
    r, _ = staleness(_sidecar(build_flags={**FLAGS, "profile": {"max_batch": 16}}), "p" * 64, want)
    assert "build flags changed (profile)" in r[0]
    r, w = staleness(_sidecar(), "p" * 64, dataclasses.replace(want, gpu=H200))
    assert r == [] and "same compute capability" in w[0]
    # unknown TensorRT / ONNX / flags are not compared (serving-side check without them)
    assert staleness(_sidecar(tensorrt_version="9.9.9"), None, Wanted(None, H100, None, None)) == ([], [])


def test_sidecar_roundtrip_and_check_plan(tmp_path):
    vdir = tmp_path / "arcface" / "1"
    vdir.mkdir(parents=True)
    (vdir / "model.onnx").write_bytes(b"onnx-v1")
    plan = vdir / "model.sm90.plan"
    plan.write_bytes(b"plan-bytes")
    sc = _sidecar(model="arcface", onnx_sha256=sha256_file(vdir / "model.onnx"), plan_sha256=sha256_file(plan),
                  build_flags={"profile": {"max_batch": 64}})
    write_sidecar(plan, sc)
    assert read_sidecar(plan) == sc
    ok = check_plan(plan, H100, "10.3.0", config_max_batch=64)
    assert ok.ok and "up to date" in ok.message

    (vdir / "model.onnx").write_bytes(b"onnx-v2")
    st = check_plan(plan, H100, "10.3.0")
    assert st.status == "stale" and str(plan) in st.message and "make export-engines MODELS=arcface" in st.message

    fo = check_plan(plan, A10, "10.3.0")
    assert fo.status == "foreign" and "compute capability 9.0" in fo.message
    fo = check_plan(plan, H100, "10.5.0")
    assert fo.status == "foreign" and "TensorRT 10.3.0" in fo.message

    small = check_plan(plan, H100, None, onnx=tmp_path / "none.onnx", config_max_batch=128)
    assert small.status == "stale" and "Triton refuses" in small.message

    plan.with_name("model.sm90.plan.json").unlink()
    assert check_plan(plan, H100, "10.3.0").status == "foreign"
    assert check_plan(vdir / "model.sm86.plan", A10, "10.3.0").status == "missing"


def test_check_model_reads_the_repository(tmp_path):
    from tests.support.engines import make_repository

    repo = make_repository(tmp_path)
    res = check_model("tinyface", repo, H100, trt_version="10.3.0")
    assert res.status == "missing" and res.plan.name == "model.plan"
    assert "make export-engines MODELS=tinyface" in res.message


def test_onnx_digest_covers_external_weights(tmp_path):
    from export.engines.metadata import onnx_sha256

    g = tmp_path / "model.onnx"
    g.write_bytes(b"graph")
    alone = onnx_sha256(g)
    assert alone == sha256_file(g)
    (tmp_path / "model.onnx.data").write_bytes(b"weights-v1")
    v1 = onnx_sha256(g)
    (tmp_path / "model.onnx.data").write_bytes(b"weights-v2")      # same graph file, new weights
    assert len({alone, v1, onnx_sha256(g)}) == 3
