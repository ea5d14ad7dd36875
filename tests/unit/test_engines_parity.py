"""Parity plumbing, run for real as ONNX Runtime vs ONNX Runtime through Polygraphy runners."""
from __future__ import annotations

import numpy as np
import pytest

import contract
from contract import TensorSpec
from export import registry
from export.engines import parity
from export.engines.build import engine_models
from export.engines.errors import ParityError
from tests.support.engines import tinydet_onnx, tinyface_onnx

FACES = (TensorSpec("faces", np.dtype(np.uint8), "UINT8", (16, 16, 3)),)
IMAGES = (TensorSpec("images", np.dtype(np.uint8), "UINT8", (16, 16, 3)),)


def test_engine_tolerances_come_from_the_family_records():
    plans = set(engine_models())
    for model in plans:
        spec = parity.spec_for(model)
        assert spec is registry.record(model).tolerances.engine
        assert {o.name for o in contract.load(model).outputs} <= set(spec.outputs), model
    assert parity.spec_for("tinyface") is parity.DEFAULT


def test_compare_rules():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    assert parity.compare("e", 2, ref, ref + 1e-4, parity.Tolerance(atol=1e-3)).passed
    bad = parity.compare("e", 2, ref, ref + 0.1, parity.Tolerance(atol=1e-3))
    assert not bad.passed and bad.mismatch == 1.0 and "100.00% of values" in bad.why
    # a fraction of outliers is allowed where stated (NMS/top-K row swaps)
    got = ref.copy()
    got[0, 0] = 5.0
    assert parity.compare("b", 2, ref, got, parity.Tolerance(atol=0.1, max_mismatch=0.25)).passed
    assert not parity.compare("b", 2, ref, got, parity.Tolerance(atol=0.1, max_mismatch=0.2)).passed
    # cosine floor catches a rotated embedding that is within atol elementwise
    rot = np.array([[0.99, 0.141], [0.0, 1.0]], np.float32)
    r = parity.compare("e", 2, ref, rot, parity.Tolerance(atol=0.2, min_cosine=0.999))
    assert not r.passed and "cosine" in r.why and r.min_cosine < 0.999
    assert not parity.compare("e", 2, ref, ref[:1], parity.Tolerance()).passed
    nan = ref.copy()
    nan[1, 1] = np.nan
    assert "non-finite" in parity.compare("e", 2, ref, nan, parity.Tolerance(atol=10)).why


def test_generated_inputs_are_deterministic_and_in_range():
    spec = parity.ParitySpec({"*": parity.Tolerance()}, input_ranges={"tokens": (0, 49408)})
    specs = (*IMAGES, TensorSpec("tokens", np.dtype(np.int32), "INT32", (77,)),
             TensorSpec("landmarks", np.dtype(np.float32), "FP32", (64, 5, 2)))
    a = parity.make_inputs(specs, 4, spec, seed=3)
    b = parity.make_inputs(specs, 4, spec, seed=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["images"].dtype == np.uint8 and a["images"].shape == (4, 16, 16, 3) and a["images"].std() > 10
    assert a["tokens"].dtype == np.int32 and a["tokens"].max() < 49408 and a["tokens"].max() > 1000
    assert a["landmarks"].shape == (4, 64, 5, 2) and 0 <= a["landmarks"].min() and a["landmarks"].max() <= 1


def test_ort_vs_ort_passes_at_batch_1_and_max():
    model = tinyface_onnx().SerializeToString()
    report = parity.check("tinyface", parity.onnxrt_runner(model), parity.onnxrt_runner(model),
                          FACES, ("embeddings",), (1, 8))
    assert report.passed and {r.batch for r in report.results} == {1, 8}
    assert report.figures() == "b1 max|d| 0, b8 max|d| 0"
    assert parity.require(report) is report


def test_ort_vs_perturbed_ort_fails_the_check():
    ref = tinyface_onnx().SerializeToString()
    off = tinyface_onnx(seed=5).SerializeToString()       # other weights: a broken plan
    report = parity.check("arcface", parity.onnxrt_runner(ref), parity.onnxrt_runner(off), FACES,
                          ("embeddings",), (1, 4))
    assert not report.passed
    with pytest.raises(ParityError, match=r"arcface: plan differs from ONNX Runtime: embeddings at batch 1: cosine"):
        parity.require(report)


def test_int_outputs_and_missing_outputs(tmp_path):
    det = tinydet_onnx().SerializeToString()
    ok = parity.check("tinydet", parity.onnxrt_runner(det), parity.onnxrt_runner(det), IMAGES,
                      ("scores", "classes"), (1, 4))
    assert ok.passed and len(ok.results) == 4
    miss = parity.check("tinydet", parity.onnxrt_runner(det), parity.onnxrt_runner(det), IMAGES,
                        ("scores", "nope"), (1,))
    assert not miss.passed and "nope at batch 1: missing from the plan" in miss.failure()


class _Runner:
    """A runner whose infer is a plain function (the seam Polygraphy's runners fill)."""

    def __init__(self, fn):
        self.fn = fn

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def infer(self, feed):
        return self.fn(feed)


def test_detectors_are_compared_on_matched_real_detections(tmp_path_factory):
    """The production SCRFD on real photos (the scene's astronaut first): faces are found, rows
    are matched by box before comparing; a plan that loses a face or shifts a box fails, one
    that finds nothing on these inputs cannot pass by comparing zero padding."""
    import onnxruntime as ort

    from export.base import WeightsSearch
    from tests.conftest import shared_weight
    from tests.support.exports import exported_model

    weights = shared_weight("scrfd_2.5g_kps.onnx").parent
    path, job = exported_model("scrfd", tmp_path_factory, WeightsSearch(dirs=(weights,)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in job.contract.outputs]
    real = lambda feed: dict(zip(names, sess.run(names, feed)))  # noqa: E731
    ins, outs = job.contract.inputs, tuple(names)
    ok = parity.check("scrfd", _Runner(real), _Runner(real), ins, outs, (1, 4))
    assert ok.passed and real(parity.make_inputs(ins, 1, parity.spec_for("scrfd")))["num_detections"][0, 0] >= 1

    def reordered(feed):                       # same faces, other row order: still equal
        out = real(feed)
        n = int(out["num_detections"][0, 0])
        for k in ("boxes", "scores", "landmarks"):
            out[k][0, :n] = out[k][0, :n][::-1]
        return out
    assert parity.check("scrfd", _Runner(real), _Runner(reordered), ins, outs, (1,)).passed

    def shifted(feed):
        out = real(feed)
        out["boxes"] = out["boxes"] + 5.0 * (out["boxes"] != 0)
        return out
    bad = parity.check("scrfd", _Runner(real), _Runner(shifted), ins, outs, (1,))
    assert not bad.passed and "boxes at batch 1" in bad.failure()

    def blind(feed):
        out = real(feed)
        return {k: np.zeros_like(v) for k, v in out.items()}
    assert not parity.check("scrfd", _Runner(blind), _Runner(blind), ins, outs, (1,)).passed
