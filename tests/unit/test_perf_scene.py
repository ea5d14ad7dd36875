"""export/scene.py: the real scene the perf tools feed (a face, objects, printed lines) makes every
pipeline branch run; its perf_analyzer JSON carries exactly the same bytes."""
from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest

import contract
from export import scene
from pipelines import ocr_postprocess as ocr

COMMITTED = contract.load_all()


def test_scene_is_a_deterministic_photo_frame_at_any_size():
    a, b = scene.scene(), scene.scene()
    assert a.shape == (640, 640, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    a[0, 0] = 0                                            # callers get their own copy
    assert not np.array_equal(a, scene.scene())
    assert scene.scene(512, 512).shape == (512, 512, 3)
    jpeg = scene.scene_jpeg(720, 1280)
    assert jpeg[:3] == b"\xff\xd8\xff" and len(jpeg) > 50_000
    assert a.std() > 40                                    # a photo, not a flat frame


def test_rendered_lines_grow_with_their_text():
    panel, boxes = scene.render_lines(["short", "a much longer line of text"], 600, font_px=20)
    assert panel.shape[1] == 600 and len(boxes) == 2
    assert boxes[1, 2] - boxes[1, 0] > 3 * (boxes[0, 2] - boxes[0, 0])
    assert (panel < 128).any() and (panel == 255).mean() > 0.8   # black ink on white
    assert scene.font_path().name == "DejaVuSans.ttf"


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_every_model_input_gets_real_data(name):
    specs = COMMITTED[name].with_variable_dims("opt").inputs    # face_align: faces per image at the range's opt
    feed = scene.inputs_for(specs, 3)
    for s in specs:
        assert feed[s.name].shape == (3, *s.dims) and feed[s.name].dtype == s.dtype, s.name
    if "tokens" in feed:                                    # start token, real words, end token
        assert (feed["tokens"][:, 0] == 49406).all() and (feed["tokens"] == 49407).sum() == 3


def test_perf_analyzer_json_holds_the_same_bytes(tmp_path):
    specs = COMMITTED["faces"].inputs + COMMITTED["text_embed"].inputs
    path = scene.perf_analyzer_json(specs, tmp_path / "in" / "data.json", steps=2)
    data = json.loads(path.read_text())["data"]
    assert len(data) == 2
    img = np.frombuffer(base64.b64decode(data[0]["images"]["content"]["b64"]), np.uint8)
    assert np.array_equal(img.reshape(640, 640, 3), scene.scene())
    assert data[0]["images"]["shape"] == [640, 640, 3]
    raw = base64.b64decode(data[1]["text"]["content"]["b64"])
    (n,) = struct.unpack("<I", raw[:4])
    assert raw[4:] == scene.CAPTIONS[1].encode() and n == len(raw) - 4


def test_the_scene_reaches_face_and_text_recognition(tmp_path_factory):
    """On the exported models: SCRFD finds the astronaut's face and the OCR pipeline reads the
    printed lines, so face_align, arcface and ppocr_rec get work."""
    import onnxruntime as ort

    from export.ppocr import charset_path
    from tests.conftest import exported_model

    frame = scene.scene()[None]
    scrfd = ort.InferenceSession(str(exported_model("scrfd", tmp_path_factory)[0]))
    assert scrfd.run(["num_detections"], {"images": frame})[0][0, 0] >= 1
    det = ort.InferenceSession(str(exported_model("ppocr_det", tmp_path_factory)[0]))
    rec_path = exported_model("ppocr_rec", tmp_path_factory)[0]
    rec = ort.InferenceSession(str(rec_path))
    charset = ocr.load_charset(charset_path(rec_path.parents[2]))     # written beside that export
    out = ocr.run_ocr(frame, lambda x: det.run(None, {"images": x})[0], lambda c: tuple(rec.run(None, {"crops": c})),
                      charset, det_max_batch=8, rec_max_batch=64,
                      s=ocr.OcrSettings.for_recogniser(contract.load("ppocr_rec")))
    texts = [t.decode() for t in out.texts[0, :out.num_lines[0, 0]]]
    assert texts == list(scene.SCENE_LINES)
