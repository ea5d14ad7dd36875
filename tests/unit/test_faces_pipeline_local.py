"""The faces BLS pipeline's model.py without Triton (tests/unit/bls_harness.py): crops only for
faces present, images passed through to the steps instead of copied, and the same answer as
scrfd -> face_align (all 64 slots) -> arcface called by hand."""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import json_format

import contract
from tests.conftest import MODEL_REPOSITORY
from tests.unit.bls_harness import OnnxSteps, Tensor, loaded_pipeline

pytest.importorskip("onnxruntime")
STEPS = ("scrfd", "face_align", "arcface")
MISSING = [m for m in STEPS if not (MODEL_REPOSITORY / m / "1" / "model.onnx").is_file()]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"not exported: {MISSING} (make export-onnx "
                                                      f"MODELS={','.join(MISSING)})")


@pytest.fixture(scope="module")
def frames():
    import cv2
    from skimage import data

    astro = cv2.resize(data.astronaut(), (640, 640), interpolation=cv2.INTER_AREA)
    blank = np.full((640, 640, 3), 128, np.uint8)
    return np.stack([astro, blank, astro[:, ::-1].copy()])


@pytest.fixture(scope="module")
def steps():
    return OnnxSteps(MODEL_REPOSITORY, STEPS)


@pytest.fixture()
def faces(steps):
    steps.calls.clear()
    config = json_format.MessageToDict(contract.load("faces").config, preserving_proto_field_name=True)
    with loaded_pipeline(MODEL_REPOSITORY / "faces" / "1" / "model.py", MODEL_REPOSITORY, config, steps) as model:
        yield model


def by_hand(steps, frames):
    """The pre-change data flow: every one of scrfd's 64 slots aligned, valid crops embedded."""
    s = steps.sessions
    det = dict(zip(["boxes", "scores", "landmarks", "num_detections"],
                   s["scrfd"].run(["boxes", "scores", "landmarks", "num_detections"], {"images": frames})))
    num = det["num_detections"].reshape(-1)
    crops = s["face_align"].run(["crops"], {"images": frames, "landmarks": det["landmarks"]})[0]
    valid = np.arange(crops.shape[1])[None, :] < num[:, None]
    emb = np.zeros((len(frames), crops.shape[1], 512), np.float32)
    if valid.any():
        emb[valid] = s["arcface"].run(["embeddings"], {"faces": crops[valid]})[0]
    return det, num, emb


def test_crops_only_for_faces_present_and_same_answer(faces, steps, frames):
    det, num, emb = by_hand(steps, frames)
    steps.calls.clear()
    images = Tensor("images", frames)
    out = faces.run(images)
    np.testing.assert_array_equal(out["num_faces"].reshape(-1), num)
    np.testing.assert_allclose(out["boxes"], det["boxes"], atol=1e-5)
    np.testing.assert_allclose(out["embeddings"], emb, atol=1e-5)
    called = [m for m, _ in steps.calls]
    if num.max() == 0:
        assert called == ["scrfd"]
        pytest.skip("scrfd finds no face with these weights (synthetic?): the crop path needs the real SCRFD")
    assert called == ["scrfd", "face_align", "arcface"]
    (_, det_in), (_, align_in), (_, arc_in) = steps.calls
    assert det_in["images"] is images                       # passed through, not copied
    f = int(num.max())
    with_faces = int((num > 0).sum())
    # face_align gets only the images with faces and only F = max faces slots, not 64
    assert align_in["landmarks"].as_numpy().shape == (with_faces, f, 5, 2)
    assert arc_in["faces"].as_numpy().shape == (int(num.sum()), 112, 112, 3)


def test_several_requests_are_concatenated_once_and_shared_by_the_steps(faces, steps, frames):
    requests = [{"images": Tensor("images", frames[i:i + 1])} for i in (0, 2)]   # both have a face
    responses = faces.execute(requests)
    assert len(responses) == 2 and all(r.error is None for r in responses)
    det_in, align_in = steps.calls[0][1], (steps.calls[1][1] if len(steps.calls) > 1 else None)
    assert det_in["images"].as_numpy().shape[0] == 2
    if align_in is None:
        pytest.skip("scrfd finds no face with these weights (synthetic?)")
    assert align_in["images"] is det_in["images"]           # one batch tensor for both steps
    got = {t.name(): t.as_numpy() for t in responses[1].output_tensors}
    alone = faces.run(Tensor("images", frames[2:3]))
    np.testing.assert_allclose(got["embeddings"], alone["embeddings"], atol=1e-5)
