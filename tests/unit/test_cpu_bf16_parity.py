"""OpenVINO (bf16 and f32) against ONNX Runtime f32 on real images, held to the per-family
bf16 tolerances of export/registry.py (applied by export/bf16_parity.py): detections matched at IoU >= 0.9 within a score bound,
embeddings at cosine >= 0.99, OCR strings identical on rendered text.

bf16 runs wherever OpenVINO compiles it (emulated on CPUs without native bf16, so the
numbers are the same bf16 arithmetic); a CPU where it does not compile skips saying so."""
from __future__ import annotations

import numpy as np
import pytest

import contract
from contract.facts import facts
from export import bf16_parity as bp
from export import registry
from export.tolerances import BF16_DETECTIONS, Bf16
from pipelines.cpu_runner import RunnerError, open_runner
from tests.conftest import MODEL_REPOSITORY

pytest.importorskip("openvino", reason="the OpenVINO runtime is a project dependency: make setup")
PRECISIONS = ("f32", "bf16")
_RUNNERS: dict = {}


def runner(model: str, runtime: str, precision: str = "f32"):
    path = MODEL_REPOSITORY / model / "1" / "model.onnx"
    if not path.is_file():
        pytest.skip(f"{model} is not exported (make export-onnx MODELS={model})")
    key = (model, runtime, precision)
    if key not in _RUNNERS:
        c = contract.load(model)
        try:
            r = open_runner(path, [o.name for o in c.outputs], runtime, precision, threads=2,
                            inputs=[i.name for i in c.inputs])
        except RunnerError as exc:
            pytest.skip(f"{model}: {exc}")
        if r.runtime != runtime:
            pytest.skip(f"{model}: OpenVINO did not load it here ({r.fallback_reason})")
        _RUNNERS[key] = r
    return _RUNNERS[key]


def outputs(model: str, runtime: str, precision: str, feed: dict) -> dict:
    r = runner(model, runtime, precision)
    return dict(zip(r.outputs, r.run(feed)))


def real_frames(h: int, w: int) -> np.ndarray:
    """Three photographs (skimage): a face, a cat, a cup of coffee."""
    import cv2
    from skimage import data

    return np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_AREA)
                     for im in (data.astronaut(), data.chelsea(), data.coffee())])


KINDS = {m: bp.tolerance(m).kind for m in registry.MODELS}
DETECTORS = sorted(m for m, k in KINDS.items() if k == "detections")
EMBEDDERS = sorted(m for m, k in KINDS.items() if k == "embeddings" and not facts(contract.load(m)).cpu_f32_only)


def f32_only(model: str) -> str:
    """Why the CPU profile never runs `model` in bf16 (its config's cpu_f32_only), "" when it may."""
    return facts(contract.load(model)).cpu_f32_only


def test_every_bf16_model_is_checked_here():
    """Each model the CPU profile may run in bf16 has a bf16 kind a test below checks; the
    rest say why they stay f32."""
    eligible = [m for m in registry.MODELS if not f32_only(m)]
    assert {KINDS[m] for m in eligible} <= {"detections", "embeddings", "ocr"}
    assert [m for m in eligible if KINDS[m] == "ocr"] == ["ppocr_det", "ppocr_rec"]   # checked on the pipeline
    assert set(eligible) <= set(DETECTORS) | set(EMBEDDERS) | {"ppocr_det", "ppocr_rec"}
    assert all(f32_only(m) for m in registry.MODELS if m not in eligible)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", DETECTORS)
def test_detections_match(model, precision):
    if precision == "bf16" and f32_only(model):
        pytest.skip(f"{model} is never served in bf16 (the CPU profile keeps f32): {f32_only(model)}")
    prov = _provenance(model)
    if "synthetic" in prov:
        # random weights give ~100 near-tied boxes per image: which of them survive NMS and
        # top-K under any rounding is arbitrary, so there is no detection to hold to a tolerance
        pytest.skip(f"{model} has synthetic weights ({prov}): detection parity needs real weights")
    c = contract.load(model)
    h, w, _ = c.input("images").dims
    frames = real_frames(h, w)
    ref = outputs(model, "onnxruntime", "f32", {"images": frames})
    got = outputs(model, "openvino", precision, {"images": frames})
    tol = bp.tolerance(model)
    for i in range(len(frames)):
        v = bp.compare_detections({k: a[i] for k, a in ref.items()}, {k: a[i] for k, a in got.items()}, tol,
                                  threshold=c.float_parameter("score_threshold", 0.0))
        assert v.passed, f"{model} {precision} image {i}: {v.why} ({v.figures})"


def _provenance(model: str) -> str:
    import json

    record = MODEL_REPOSITORY / model / "1" / "export.json"
    return json.loads(record.read_text()).get("provenance", "") if record.is_file() else ""


def _face_crops() -> np.ndarray:
    """Aligned 112x112 crops of the astronaut's face, mirrored and slightly shifted (ORT f32)."""
    frames = real_frames(640, 640)[:1]
    det = outputs("scrfd", "onnxruntime", "f32", {"images": frames})
    n = int(det["num_detections"][0, 0])
    if n == 0:
        pytest.skip("scrfd finds no face in the astronaut (synthetic weights?): no real face crops")
    lmk = det["landmarks"][:, :1]
    moved = np.concatenate([lmk, lmk + 3.0, lmk - 2.0], 1).astype(np.float32)
    return outputs("face_align", "onnxruntime", "f32", {"images": frames, "landmarks": moved})["crops"][0]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", EMBEDDERS)
def test_embeddings_match(model, precision):
    if model == "arcface":
        feed = {"faces": _face_crops()}
    elif model == "mobileclip_image":
        feed = {"images": real_frames(*contract.load(model).input("images").dims[:2])}
    else:
        from pipelines.clip_tokenizer import ClipTokenizer

        feed = {"tokens": ClipTokenizer()(["a photo of an astronaut", "a cat on a sofa", "a cup of coffee"])}
    ref = outputs(model, "onnxruntime", "f32", feed)["embeddings"]
    got = outputs(model, "openvino", precision, feed)["embeddings"]
    v = bp.compare_embeddings(ref, got, bp.tolerance(model))
    assert v.passed, f"{model} {precision}: {v.why}"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_ocr_strings_identical_on_rendered_text(precision):
    from pipelines import ocr_postprocess as op
    from tests.unit.test_ocr_pipeline_local import PAGES, _render

    images = np.stack([_render(p) for p in PAGES])
    charset = op.load_charset(MODEL_REPOSITORY / "ocr/1/charset.txt")
    det_c, rec_c = contract.load("ppocr_det"), contract.load("ppocr_rec")

    def read(runtime, prec):
        det, rec = runner("ppocr_det", runtime, prec), runner("ppocr_rec", runtime, prec)
        # the recogniser at the pipeline's width buckets: both runtimes take its variable width
        res = op.run_ocr(images, lambda x: det.run({"images": x})[0], lambda x: tuple(rec.run({"crops": x})),
                         charset, det_max_batch=det_c.max_batch_size, rec_max_batch=rec_c.max_batch_size,
                         s=op.OcrSettings.for_recogniser(rec_c))
        return [[t.decode() for t in row[:n]] for row, n in zip(res.texts, res.num_lines.reshape(-1))]

    ref, got = read("onnxruntime", "f32"), read("openvino", precision)
    assert any(any(t) for t in ref), "the f32 reference read nothing: the check would be empty"
    v = bp.compare_texts(ref, got)
    assert v.passed, v.why


def test_detection_matching_rule():
    """The matcher itself, on constructed cases (no model)."""
    def dets(boxes, scores, classes=None, k=4):
        n = len(scores)
        b, s, c = np.zeros((k, 4), np.float32), np.zeros(k, np.float32), np.zeros(k, np.int32)
        b[:n], s[:n] = boxes, scores
        if classes is not None:
            c[:n] = classes
        return {"boxes": b, "scores": s, "classes": c, "num_detections": np.array([n])}

    ref = dets([[0, 0, 100, 100], [200, 200, 300, 300]], [0.9, 0.6], [1, 2])
    cmp = lambda a, b, tol=BF16_DETECTIONS: bp.compare_detections(a, b, tol, threshold=0.5)  # noqa: E731
    assert cmp(ref, dets([[1, 1, 101, 100], [200, 201, 300, 300]], [0.89, 0.61], [1, 2])).passed
    moved = cmp(ref, dets([[30, 0, 130, 100], [200, 200, 300, 300]], [0.9, 0.6], [1, 2]))
    assert not moved.passed and "IoU" in moved.why
    assert not cmp(ref, dets([[0, 0, 100, 100], [200, 200, 300, 300]], [0.7, 0.6], [1, 2])).passed
    assert not cmp(ref, dets([[0, 0, 100, 100], [200, 200, 300, 300]], [0.9, 0.6], [3, 2])).passed
    # a box near the threshold may appear or vanish; a confident one may not
    assert cmp(ref, dets([[0, 0, 100, 100]], [0.9], [1]), Bf16("detections", score_atol=0.4)).passed
    assert not cmp(ref, dets([[0, 0, 100, 100]], [0.9], [1])).passed
    assert bp.compare_embeddings(np.eye(2), np.eye(2) * 3).passed
    assert not bp.compare_embeddings(np.eye(2), np.array([[1.0, 0.2], [0.0, 1.0]])).passed
