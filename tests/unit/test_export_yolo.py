"""yolo: YOLO11s graph vs ultralytics (DetectionModel forward and its predictor), batching, contract."""
from __future__ import annotations

import os

import numpy as np
import pytest

from export import registry
from tests.support.exports import exported_model

MODEL = "yolo"
torch = pytest.importorskip("torch", reason="yolo export needs torch (the export extra)")
pytest.importorskip("ultralytics", reason="yolo export needs ultralytics (the export extra)")
ort = pytest.importorskip("onnxruntime", reason="parity checks need onnxruntime")
os.environ.setdefault("YOLO_OFFLINE", "1")
NAMES = ("boxes", "scores", "classes", "num_detections")
# ORT vs torch after NMS: box corners in pixels, sigmoid scores (float32 through ~250 layers;
# measured ~9e-3 px and ~5e-5 on the raw head output).
BOX_TOL, SCORE_TOL = 0.05, 2e-4


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    return exported_model(MODEL, tmp_path_factory)


@pytest.fixture(scope="session")
def session(exported):
    return ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def images(exported):
    from export import yolo

    return yolo.sample_inputs(exported[1].contract, 8, np.random.default_rng(0))["images"]


@pytest.fixture(scope="session")
def batch8(session, images):
    return run(session, images)


def run(session, images) -> dict[str, np.ndarray]:
    return dict(zip(NAMES, session.run(list(NAMES), {"images": images})))


def assert_same_detections(a: dict, b: dict, box_tol=BOX_TOL, score_tol=SCORE_TOL):
    """Row order among near-equal scores is decided by float rounding, so match rows: every
    valid detection of `a` has one in `b` with the same class and close box and score."""
    np.testing.assert_array_equal(a["num_detections"], b["num_detections"])
    for i, n in enumerate(a["num_detections"][:, 0]):
        if n == 0:
            continue
        box_d = np.abs(a["boxes"][i, :n, None] - b["boxes"][i, None, :n]).max(-1)
        ok = ((box_d <= box_tol) & (a["classes"][i, :n, None] == b["classes"][i, None, :n])
              & (np.abs(a["scores"][i, :n, None] - b["scores"][i, None, :n]) <= score_tol))
        assert ok.any(1).all(), f"image {i}: rows {np.where(~ok.any(1))[0]} unmatched"




def test_outputs_follow_the_contract_parameters(exported, batch8):
    c = exported[1].contract
    out = batch8
    k = c.output("boxes").dims[0]
    assert out["num_detections"].max() > 0, "the sample images must produce detections"
    for i, n in enumerate(out["num_detections"][:, 0]):
        assert (out["scores"][i, :n] > c.float_parameter("score_threshold")).all()
        assert (np.diff(out["scores"][i, :n]) <= 0).all()                    # sorted by score
        assert not out["scores"][i, n:].any() and not out["boxes"][i, n:].any()  # zero padding
        assert 0 <= n <= k
    assert out["classes"].min() >= 0 and out["classes"].max() < 80
    assert out["boxes"].min() >= 0 and out["boxes"].max() <= 640


def test_pre_nms_tensor_matches_ultralytics_forward(exported, images, tmp_path):
    """The graph's [B,84,8400] head output (exposed as an extra output) vs ultralytics'
    DetectionModel forward on x/255: the peer's own numbers, before our decode/NMS."""
    import onnx
    from onnx import helper

    from export import yolo

    m = onnx.load(str(exported[0]))
    head = [n.input[0] for n in m.graph.node if n.op_type == "Transpose"
            and [list(a.ints) for a in n.attribute if a.name == "perm"] == [[0, 2, 1]]]
    assert len(head) == 1, f"expected one [B,84,N] -> [B,N,84] transpose, found {head}"
    m.graph.output.append(helper.make_tensor_value_info(head[0], onnx.TensorProto.FLOAT, None))
    onnx.save(m, str(tmp_path / "raw.onnx"))
    images = images[:2]
    raw = ort.InferenceSession(str(tmp_path / "raw.onnx"), providers=["CPUExecutionProvider"]).run(
        [head[0]], {"images": images})[0]
    det = yolo.load_yolo(exported[1].weights, exported[1].architecture).model
    with torch.no_grad():
        want = det(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)[0].numpy()
    assert raw.shape == want.shape == (2, 84, 8400)
    assert np.abs(raw[:, :4] - want[:, :4]).max() <= BOX_TOL
    assert np.abs(raw[:, 4:] - want[:, 4:]).max() <= SCORE_TOL






def test_matches_ultralytics_predictor(exported, session):
    """ultralytics' predictor (greedy class-aware NMS) on the same weights and settings, on
    its own bus.jpg and zidane.jpg. The graph's NMS converges to greedy NMS's result, so
    every detection of ours must be one of ultralytics' (same class, IoU > 0.99, score within
    1e-3) but one scoring within 1e-3 of the threshold (the predictor fuses BatchNorm: its
    scores differ in the 4th decimal), and we may miss a few of theirs (at most 20%)."""
    from export import yolo
    from export.graph_ops import box_iou

    photos = (yolo._calibration_images()[::2].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    ours = run(session, photos)
    theirs = yolo.ultralytics_predict(exported[1], photos)
    assert ours["num_detections"][0, 0] >= 5, "bus.jpg must give the synthetic model detections"
    for i, peer in enumerate(theirs):
        n = int(ours["num_detections"][i, 0])
        assert len(peer) - max(1, int(np.ceil(0.2 * len(peer)))) <= n <= len(peer) + 1, (n, len(peer))
        if n == 0:
            continue
        iou = box_iou(torch.from_numpy(ours["boxes"][i:i + 1, :n]), torch.from_numpy(peer[None, :, :4]))[0].numpy()
        same = (ours["classes"][i, :n, None] == peer[None, :, 5]) & \
               (np.abs(ours["scores"][i, :n, None] - peer[None, :, 4]) <= 1e-3)
        alone = ~((iou > 0.99) & same).any(1)
        at_threshold = ours["scores"][i, :n] < exported[1].contract.float_parameter("score_threshold") + 1e-3
        assert (alone & ~at_threshold).sum() == 0 and alone.sum() <= 1, f"photo {i}: detections ultralytics lacks"


def test_user_checkpoint_is_found_and_loaded_offline(exported, tmp_path):
    """A user's yolo11s.pt in a weights dir wins over synthetic and loads without network.
    ultralytics saves checkpoints in fp16, so it equals the half-rounded model exactly."""
    import copy

    from export import yolo
    from export.base import WeightsSearch

    source = yolo.load_yolo(exported[1].weights, exported[1].architecture)
    source.save(str(tmp_path / "yolo11s.pt"))
    weights = registry.resolve_weights(MODEL, WeightsSearch(dirs=(tmp_path,)))
    assert not weights.synthetic and weights.path == tmp_path / "yolo11s.pt"
    loaded = yolo.load_yolo(weights, exported[1].architecture).model
    want = copy.deepcopy(source.model).half().float().eval()
    x = torch.rand(1, 3, 640, 640, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], want(x)[0])
