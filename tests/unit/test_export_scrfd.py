"""export/scrfd.py: one graph from uint8 images to decoded, NMS'd faces; real 2.5G weights when present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED_WEIGHTS, shared_weight

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import contract as contract_mod  # noqa: E402
from export import registry, runner, scrfd  # noqa: E402
from export.base import ExportJob, WeightsSearch  # noqa: E402

KNOWN_BOX = np.array([226, 69, 339, 223], np.float32)   # ../shared/weights/README.md, 640x640 input pixels


def _export(tmp: Path, search: WeightsSearch):
    c = contract_mod.load("scrfd")
    job = ExportJob(c, tmp / "model.onnx", registry.resolve_weights("scrfd", search), tmp)
    runner.build(job)
    return job, ort.InferenceSession(str(job.out_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    shared_weight("scrfd_2.5g_kps.onnx")
    return _export(tmp_path_factory.mktemp("scrfd_real"), WeightsSearch(dirs=(SHARED_WEIGHTS,)))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("scrfd_syn"), WeightsSearch(seed=7))


def _run(sess, images):
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": images})))


@pytest.fixture(scope="module")
def frames(astronaut):
    import cv2

    face = cv2.resize(astronaut, (640, 640), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(0).integers(0, 256, (3, 640, 640, 3), dtype=np.uint8)
    return np.stack([face, *noise, face[:, ::-1], np.zeros_like(face), face, face[::-1]]).copy()


def test_weights_search_prefers_files_and_falls_back_loudly(tmp_path):
    assert registry.resolve_weights("scrfd", WeightsSearch(dirs=(tmp_path,))).synthetic
    (tmp_path / "scrfd_500m_kps.onnx").write_bytes(b"x")
    (tmp_path / "det_10g.onnx").write_bytes(b"x")
    w = registry.resolve_weights("scrfd", WeightsSearch(dirs=(tmp_path,)))
    assert w.kind == "file" and w.path.name == "det_10g.onnx"


def test_graph_io_matches_the_contract(synthetic):
    job, sess = synthetic
    c = job.contract
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type, inp.shape) == ("images", "tensor(uint8)", ["batch", *c.input("images").dims])
    got = {o.name: o.shape for o in sess.get_outputs()}
    assert got == {t.name: ["batch", *t.dims] for t in c.outputs}


def test_real_weights_find_the_astronaut_face(real, frames):
    _, sess = real
    out = _run(sess, frames[:1])
    assert out["num_detections"][0, 0] == 1
    assert out["scores"][0, 0] == pytest.approx(0.82, abs=0.01)
    np.testing.assert_allclose(out["boxes"][0, 0], KNOWN_BOX, atol=3)
    x1, y1, x2, y2 = out["boxes"][0, 0]
    pts = out["landmarks"][0, 0]
    assert ((pts[:, 0] > x1) & (pts[:, 0] < x2) & (pts[:, 1] > y1) & (pts[:, 1] < y2)).all()
    assert not out["boxes"][0, 1:].any() and not out["scores"][0, 1:].any()   # padding rows are zero


@pytest.mark.parametrize("which", ["real", "synthetic"])
def test_batch8_rows_equal_single_runs_and_the_numpy_reference(which, request, frames):
    job, sess = request.getfixturevalue(which)
    batched = _run(sess, frames)
    ref = scrfd.reference(job)(frames)
    for i in range(len(frames)):
        single = _run(sess, frames[i:i + 1])
        for name, value in single.items():
            np.testing.assert_allclose(batched[name][i], value[0], atol=1e-4, rtol=0, err_msg=f"{name} row {i}")
    np.testing.assert_array_equal(batched["num_detections"], ref["num_detections"])
    for name, tol in (("scores", 1e-5), ("boxes", 1e-3), ("landmarks", 1e-3)):
        np.testing.assert_allclose(batched[name], ref[name], atol=tol, rtol=0, err_msg=name)
    if which == "synthetic":
        assert batched["num_detections"].min() > 0, "synthetic weights should exercise the NMS path"


def test_numpy_decode_places_one_anchor():
    """One stride-16 anchor at cell (row 3, col 5), 2nd anchor: centre (80, 48)."""
    rows = scrfd._rows_per_stride((640, 640))
    heads = [np.zeros((n, 1), np.float32) for n in rows] + [np.zeros((n, 4), np.float32) for n in rows] + \
            [np.zeros((n, 10), np.float32) for n in rows]
    r = (3 * 40 + 5) * 2 + 1
    heads[1][r] = 0.9
    heads[4][r] = [1, 2, 3, 4]                  # distances in stride units
    heads[7][r] = [0.5, -0.5] * 5
    boxes, scores, kps = scrfd.numpy_decode(heads, (640, 640))
    i = rows[0] + r
    assert scores.argmax() == i
    np.testing.assert_allclose(boxes[i], [80 - 16, 48 - 32, 80 + 48, 48 + 64])
    np.testing.assert_allclose(kps[i, 0], [88, 40])
    keep = scrfd.numpy_nms(boxes, scores, 0.4, 0.3)
    assert keep.tolist() == [i]
