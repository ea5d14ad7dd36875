"""Real TensorRT builds: run where `import tensorrt` works AND a CUDA GPU is visible.

Builds the small test network through the TensorRT Python API (and trtexec when present),
checks the plan is raw, runs the parity check with Polygraphy's TrtRunner against ONNX
Runtime at batch 1 and max batch, and checks the sidecar against this GPU. Then EVERY
production model (each tensorrt_plan config, with its exported ONNX) is built with the
production recipe (FP16 body, FP32 head/tail, TF32 off) and must pass its parity check;
and one is built through the content-keyed plan store the GPU image uses.
"""
from __future__ import annotations

import pytest

from export.engines import parity, trt_api, trtexec
from export.engines.build import Options, build_model, engine_models
from export.engines.check import check_model
from export.engines.errors import NoGpu
from export.engines.gpu import current_gpu, tensorrt_version
from export.engines.metadata import read_sidecar
from tests.conftest import MODEL_REPOSITORY
from tests.support.engines import make_repository


def _requirements():
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return None, (f"TensorRT Python API not importable ({exc}); real engine builds need an NGC "
                      "TensorRT/Triton container or a TensorRT install")
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


def _production_copy(model: str, tmp_path):
    """A one-model repository over the exported ONNX (linked, not copied: up to 250 MB)."""
    src = MODEL_REPOSITORY / model
    onnx_file = src / "1" / "model.onnx"
    if not onnx_file.is_file():
        pytest.skip(f"{onnx_file} not exported (make export-onnx MODELS={model})")
    repo = tmp_path / "model_repository"
    (repo / model / "1").mkdir(parents=True)
    (repo / model / "config.pbtxt").write_text((src / "config.pbtxt").read_text())
    for f in (src / "1").glob("model.onnx*"):
        (repo / model / "1" / f.name).symlink_to(f.resolve())
    return repo


@pytest.mark.slow
@pytest.mark.parametrize("model", engine_models(MODEL_REPOSITORY))
def test_every_production_model_builds_and_passes_parity(model, tmp_path):
    from export.engines.gpu import require_supported_tensorrt

    require_supported_tensorrt(tensorrt_version(), "this host")
    repo = _production_copy(model, tmp_path)
    out = _build(repo, tmp_path, model)
    sc = read_sidecar(out.plan)
    assert out.status == "built" and sc.parity["passed"] is True, sc.parity
    assert sc.build_flags["tf32"] is False and sc.tensorrt_version == tensorrt_version()
    assert check_model(model, repo, GPU).ok


def test_the_plan_store_builds_once_and_serves_read_only(tmp_path):
    from export.engines.store import PlanStore

    repo = _production_copy("clip_resize", tmp_path)
    store = PlanStore(tmp_path / "store")
    opts = Options(repository=repo, default_plan=False, timing_cache_dir=store.timing_cache_dir(GPU))

    def ensure(**kw):
        return store.ensure("clip_resize", GPU, tensorrt_version(), opts, builder=trt_api.build,
                            candidate=parity.trt_runner, log=print, **kw)

    built = ensure()
    assert built.status == "built" and read_sidecar(built.plan).parity["passed"] is True
    assert ensure().status == "reused" and ensure(build=False).plan == built.plan
