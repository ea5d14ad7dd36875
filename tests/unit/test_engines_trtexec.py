"""The trtexec fallback: command line (pure), version parsing, and a run against a stand-in binary."""
from __future__ import annotations

import stat
from pathlib import Path

import onnx
import pytest

from export.engines import trtexec
from export.engines.errors import BuildFailed
from export.engines.precision import fp32_nodes
from export.engines.shapes import derive_shapes
from export.engines.request import BuildRequest, assert_raw_plan
import contract
from tests.support.engines import tinyface_onnx


def _req(model, tmp_path, onnx_model=None):
    prec = fp32_nodes(onnx_model or tinyface_onnx(), model)
    return BuildRequest(model, tmp_path / "marked.onnx", derive_shapes(contract.load(model)), prec,
                        tmp_path / "cache" / "sm90-trt10.3.0.cache", log=lambda m: None)


def test_command_for_an_fp16_model(tmp_path):
    argv = trtexec.command("/opt/trtexec", _req("arcface", tmp_path), Path("/t/out.plan"), Path("/t/c.cache"))
    assert argv[0] == "/opt/trtexec"
    for flag in (f"--onnx={tmp_path / 'marked.onnx'}", "--saveEngine=/t/out.plan",
                 "--minShapes=faces:1x112x112x3", "--optShapes=faces:32x112x112x3", "--maxShapes=faces:64x112x112x3",
                 "--timingCacheFile=/t/c.cache", "--fp16", "--precisionConstraints=obey",
                 "--layerPrecisions=KEEPFP32__*:fp32", "--skipInference", "--memPoolSize=workspace:8192M",
                 "--builderOptimizationLevel=3", "--device=0", "--noTF32"):
        assert flag in argv, flag


def test_command_for_an_fp32_only_model_has_no_fp16(tmp_path):
    argv = trtexec.command("trtexec", _req("face_align", tmp_path), Path("o.plan"), Path("c"))
    assert "--fp16" not in argv and not any(a.startswith("--layerPrecisions") for a in argv)
    assert "--noTF32" in argv                       # FP32-only means FP32, not TF32
    assert "--minShapes=images:1x640x640x3,landmarks:1x1x5x2" in argv   # 1 face: variable_dim_range min


def test_command_for_the_variable_width_recogniser(tmp_path):
    argv = trtexec.command("trtexec", _req("ppocr_rec", tmp_path), Path("o.plan"), Path("c"))
    # crop widths 80..2048, opt 320 (the narrowest bucket the ocr pipeline sends)
    for flag in ("--minShapes=crops:1x48x80x3", "--optShapes=crops:32x48x320x3", "--maxShapes=crops:64x48x2048x3"):
        assert flag in argv, flag


def test_version_parsing():
    assert trtexec.parse_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100600] [b26] # trtexec") == "10.6.0"
    assert trtexec.parse_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec") == "8.6.1"
    assert trtexec.parse_version("no banner") is None


_FAKE = """#!/bin/sh
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v${TRTV:-100300}] # trtexec $*"
[ -n "$SLOW" ] && exec sleep 60
for a in "$@"; do
  case "$a" in
    --saveEngine=*) out="${a#--saveEngine=}" ;;
    --timingCacheFile=*) cache="${a#--timingCacheFile=}" ;;
  esac
done
[ -n "$FAIL" ] && { echo "[E] [TRT] could not find any implementation"; exit 1; }
head -c 4096 /dev/urandom > "$out"
printf 'timings' >> "$cache"
echo "&&&& PASSED"
"""


def _fake_trtexec(tmp_path) -> Path:
    exe = tmp_path / "bin" / "trtexec"
    exe.parent.mkdir()
    exe.write_text(_FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_build_runs_the_binary_and_keeps_the_timing_cache(tmp_path, monkeypatch):
    exe = _fake_trtexec(tmp_path)
    monkeypatch.setenv("TRTEXEC", str(exe))
    assert trtexec.find_trtexec() == exe
    req = _req("arcface", tmp_path)
    onnx.save(tinyface_onnx(), str(req.onnx))
    req.timing_cache.parent.mkdir()
    req.timing_cache.write_bytes(b"old-")
    out = trtexec.build(req)
    assert (out.tensorrt_version, out.builder, len(out.plan)) == ("10.3.0", "trtexec", 4096)
    assert req.timing_cache.read_bytes() == b"old-timings"    # trtexec's update replaced the shared cache
    assert_raw_plan(out.plan)


def test_build_failure_shows_trtexec_output(tmp_path, monkeypatch):
    exe = _fake_trtexec(tmp_path)
    monkeypatch.setenv("FAIL", "1")
    req = _req("arcface", tmp_path)
    with pytest.raises(BuildFailed, match="could not find any implementation"):
        trtexec.build(req, exe=exe)


def test_framework_headers_are_refused():
    import json

    meta = json.dumps({"author": "Ultralytics", "batch": 1}).encode()
    with pytest.raises(ValueError, match="raw TensorRT plans only"):
        assert_raw_plan(len(meta).to_bytes(4, "little") + meta + b"\0" * 100)
    with pytest.raises(ValueError, match="no engine"):
        assert_raw_plan(b"")
    assert_raw_plan(b"ftrt" + bytes(range(200)))


def test_a_tensorrt_11_trtexec_is_stopped_at_its_banner(tmp_path, monkeypatch):
    import time

    from export.engines.errors import UnsupportedTensorRT

    exe = _fake_trtexec(tmp_path)
    monkeypatch.setenv("TRTV", "110400")
    monkeypatch.setenv("SLOW", "1")                 # it would build for a minute: we do not wait
    req = _req("arcface", tmp_path)
    t0 = time.monotonic()
    with pytest.raises(UnsupportedTensorRT, match=r"TensorRT 11\.4\.0 \(trtexec at .*\) is not supported"):
        trtexec.build(req, exe=exe)
    assert time.monotonic() - t0 < 30 and not req.timing_cache.exists()
