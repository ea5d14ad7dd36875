"""Real TensorRT builds: run where `import tensorrt` works AND a CUDA GPU is visible.

Builds the small test network through the TensorRT Python API (and trtexec when present),
checks the plan is raw, runs the parity check with Polygraphy's TrtRunner against ONNX
Runtime at batch 1 and max batch, and checks the sidecar against this GPU. With the
exported clip_resize / face_align ONNX present, builds those real models too.
"""
from __future__ import annotations

import pytest

from export.engines import parity, trt_api, trtexec
from export.engines.build import Options, build_model
from export.engines.check import check_model
from export.engines.errors import NoGpu
from export.engines.gpu import current_gpu, tensorrt_version
from export.engines.metadata import read_sidecar
from tests.conftest import MODEL_REPOSITORY
from tests.unit.test_engines_fixtures import make_repository


def _requirements():
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return None, f"TensorRT Python API not importable ({exc}); real engine builds need an NGC TensorRT/Triton container or a TensorRT install"
    try:
        gpu = current_gpu()
    except NoGpu as exc:
        return None, f"no CUDA GPU visible: {exc}"
    return gpu, ""


GPU, WHY = _requirements()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPU is None, reason=WHY or "unreachable")]


def _build(repo, tmp_path, model, builder=trt_api.build, candidate=parity.trt_runner, **kw):
    return build_model(model, GPU, tensorrt_version(), Options(repository=repo, timing_cache_dir=tmp_path / "tc", **kw),
                       builder=builder, candidate=candidate, log=print)


def test_python_api_build_parity_and_sidecar(tmp_path):
    repo = make_repository(tmp_path)
    out = _build(repo, tmp_path, "tinyface")
    assert out.status == "built" and out.plan.name == f"model.{GPU.sm}.plan"
    sc = read_sidecar(out.plan)
    assert sc.tensorrt_version == tensorrt_version() and sc.compute_capability == GPU.compute_capability
    assert sc.parity["passed"] is True and sc.build_flags["fp16"] is True
    assert check_model("tinyface", repo, GPU).ok
    assert (tmp_path / "tc" / f"{GPU.sm}-trt{tensorrt_version()}.cache").stat().st_size > 0
    t0 = _build(repo, tmp_path, "tinyface", force=True)       # second build hits the timing cache
    assert t0.status == "built"
    assert _build(repo, tmp_path, "tinydet").status == "built"   # TopK + int32 output


@pytest.mark.skipif(trtexec.find_trtexec() is None, reason="no trtexec binary ($TRTEXEC, PATH, /usr/src/tensorrt/bin)")
def test_trtexec_build_passes_the_same_parity(tmp_path):
    repo = make_repository(tmp_path)
    out = _build(repo, tmp_path, "tinyface", builder=trtexec.build)
    assert read_sidecar(out.plan).builder == "trtexec" and check_model("tinyface", repo, GPU).ok


@pytest.mark.parametrize("model", ["clip_resize", "face_align"])
def test_real_geometry_models(model, tmp_path):
    import shutil

    src = MODEL_REPOSITORY / model
    if not (src / "1" / "model.onnx").is_file():
        pytest.skip(f"{src / '1' / 'model.onnx'} not exported (make export-onnx MODELS={model})")
    repo = tmp_path / "model_repository"
    shutil.copytree(src, repo / model, ignore=shutil.ignore_patterns("*.plan", "*.plan.json", ".*"))
    out = _build(repo, tmp_path, model)
    assert read_sidecar(out.plan).parity["passed"] is True
