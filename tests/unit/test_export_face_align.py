"""face_align: the exported graph vs insightface's norm_crop math (skimage + cv2.warpAffine)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.support.exports import exported_model

MODEL = "face_align"
pytest.importorskip("torch", reason="face_align export needs torch (the export extra)")
cv2 = pytest.importorskip("cv2", reason="the reference warp needs opencv")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return exported_model(MODEL, tmp_path_factory)


@pytest.fixture(scope="session")
def session(exported):
    import onnxruntime as ort

    return ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])


def run(session, images, landmarks):
    return session.run(["crops"], {"images": images, "landmarks": landmarks})[0]


def known_faces(size: int, frame: int):
    """Landmarks made by KNOWN similarities of the template (crop -> frame), and those maps:
    slot 0 the astronaut's face (scale 1.6, 8 deg), slot 1 another one, slot 2 half outside."""
    from export.face_align import template

    specs = [(1.6, 8.0, 282.0, 150.0), (1.0, -20.0, 300.0, 400.0), (3.0, 45.0, 10.0, 10.0)]
    lmks, maps = [], []
    for s, deg, tx, ty in specs:
        a = np.deg2rad(deg)
        rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        t = np.array([tx, ty]) - rot @ np.array([size / 2, size / 2])   # crop centre -> (tx, ty)
        lmks.append(template(size) @ rot.T + t)
        maps.append(np.hstack([rot, t[:, None]]))                      # crop -> frame
    return np.array(lmks, np.float32), maps


def test_onnx_matches_contract(exported):
    import onnx

    from export.base import OPSET

    m = onnx.load(str(exported[0]))
    c = exported[1].contract
    io = {vi.name: vi for vi in (*m.graph.input, *m.graph.output)}
    for spec in (*c.inputs, *c.outputs):
        t = io[spec.name].type.tensor_type
        assert onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) == spec.dtype
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        assert dims == ["batch", *("variable1" if d < 0 else d for d in spec.dims)], spec.name
    assert [i.name for i in m.graph.input] == [s.name for s in c.inputs]
    assert [o.name for o in m.graph.output] == [s.name for s in c.outputs]
    assert any(n.op_type == "GridSample" for n in m.graph.node)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == OPSET


def test_astronaut_matches_norm_crop_and_known_transform(exported, session, astronaut):
    """Tolerances (levels of 0..255): faces inside the frame mean < 0.1, 99.9% of values <= 1,
    max <= 3 (OpenCV rounds sample coordinates to 1/32 px: up to ~2 levels on the sharpest
    edges); a face half outside the frame max <= 8 at the padding edge (same rounding across
    a jump to zero), mean < 0.2."""
    from export import face_align

    job = exported[1]
    g = face_align.geometry(job)
    frame = cv2.resize(astronaut, (g["in_w"], g["in_h"]), interpolation=cv2.INTER_LINEAR)
    lmks, maps = known_faces(g["size"], g["in_w"])
    landmarks = np.zeros((1, g["faces"], 5, 2), np.float32)
    landmarks[0, :3] = lmks
    got = run(session, frame[None], landmarks)[0]
    ref = face_align.reference(job)({"images": frame[None], "landmarks": landmarks})["crops"][0]
    diff = np.abs(got.astype(int) - ref.astype(int))
    inside = diff[:2]
    assert inside.max() <= 3 and np.percentile(inside, 99.9) <= 1 and inside.mean() < 0.1, \
        (inside.max(), np.percentile(inside, 99.9), inside.mean())
    assert diff[2].max() <= 8 and diff[2].mean() < 0.2, (diff[2].max(), diff[2].mean())
    # the estimated similarity is the one that made the landmarks (exact data)
    for j, crop_to_frame in enumerate(maps[:2]):
        known = cv2.warpAffine(frame.astype(np.float32), crop_to_frame, (g["size"], g["size"]),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        d = np.abs(got[j].astype(int) - np.rint(known).astype(int))
        assert d.max() <= 3 and d.mean() < 0.1, (j, d.max(), d.mean())
    # and slot 0 is the astronaut's face: brighter (skin) than the dark suit/background mean
    assert got[0].mean() > frame.mean()


def test_batch_1_and_8_vs_reference(exported, session):
    from export import face_align

    job = exported[1]
    inputs = face_align.sample_inputs(job.contract, 8, np.random.default_rng(7))
    ref = face_align.reference(job)(inputs)["crops"]
    for b in (1, 8):
        got = run(session, inputs["images"][:b], inputs["landmarks"][:b])
        diff = np.abs(got.astype(int) - ref[:b].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.1, (b, diff.max(), diff.mean())


def test_batch_invariance(exported, session):
    from export import face_align

    inputs = face_align.sample_inputs(exported[1].contract, 8, np.random.default_rng(3))
    batched = run(session, inputs["images"], inputs["landmarks"])
    for i in range(8):
        single = run(session, inputs["images"][i:i + 1], inputs["landmarks"][i:i + 1])
        np.testing.assert_array_equal(batched[i], single[0])


def test_empty_slots_are_finite_and_defined(exported, session):
    import torch

    from export import face_align

    g = face_align.geometry(exported[1])
    module = face_align.build_module(g["in_h"], g["in_w"], g["size"])
    degenerate = torch.zeros(2, g["faces"], 5, 2)
    degenerate[1] = 123.0                      # all five points on one spot
    grid = module.sampling_grid(degenerate)
    assert torch.isfinite(grid).all()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1, g["in_h"], g["in_w"], 3), dtype=np.uint8)
    crops = run(session, images, np.zeros((1, g["faces"], 5, 2), np.float32))
    assert (crops[0] == images[0, 0, 0]).all()  # all-zero landmarks sample pixel (0, 0)


def test_variable_face_axis_gives_the_same_crops_for_any_face_count(exported, session):
    """The graph takes any number of faces per image in the config's range: the first F
    slots of a 64-slot call equal a call with only those F slots (no copy of unused slots)."""
    from export import face_align

    c = exported[1].contract
    lo, _, hi = c.variable_dim_range
    assert hi == contract_k("scrfd")           # the range's max is the detector's K, not restated by hand
    inputs = face_align.sample_inputs(c, 2, np.random.default_rng(11))
    full = run(session, inputs["images"], inputs["landmarks"])
    assert full.shape[1] == hi
    for f in (lo, 3):
        part = run(session, inputs["images"], np.ascontiguousarray(inputs["landmarks"][:, :f]))
        assert part.shape == (2, f, *full.shape[2:])
        np.testing.assert_array_equal(part, full[:, :f])


def contract_k(model: str) -> int:
    import contract

    return contract.load(model).output("landmarks").dims[0]
