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
    """Shapes and dtypes from the contract, and the data itself: the scene's pixels at the
    model's size, the captions (as text, or as the tokens that decode back to them), the
    ArcFace template on the astronaut's face."""
    import cv2

    specs = COMMITTED[name].with_variable_dims("opt").inputs    # face_align: faces per image at the range's opt
    feed = scene.inputs_for(specs, 3)
    for s in specs:
        x = feed[s.name]
        assert x.shape == (3, *s.dims) and x.dtype == s.dtype, s.name
        if s.dtype == np.object_:
            assert [v.decode() for v in x.reshape(-1)] == list(scene.CAPTIONS[:3]), s.name
        elif s.dtype == np.uint8:
            h, w = s.dims[:2]
            want = cv2.resize(scene.scene(), (w, h), interpolation=cv2.INTER_AREA) if (h, w) != (640, 640) \
                else scene.scene()
            assert np.array_equal(x[0], want) and (x == x[:1]).all() and x.std() > 40, s.name
        elif s.name == "tokens":                            # start, the caption's words, end
            from open_clip.tokenizer import SimpleTokenizer

            words = SimpleTokenizer().decode([t for t in x[1].tolist() if t not in (0, 49406, 49407)])
            assert words.strip() == scene.CAPTIONS[1].lower(), words
            assert (x[:, 0] == 49406).all() and (x == 49407).sum() == 3
        elif s.name == "landmarks":
            face = x[0, 0]                                  # slot 0: on the astronaut's face
            assert np.abs(face.mean(0) - (141.0, 80.0)).max() < 1, face   # the template's centre there
            assert (face[1, 0] > face[0, 0]) and (face[3:, 1] > face[2, 1]).all()   # eyes, nose, mouth
            assert ((x >= 0) & (x <= 640)).all()


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
    """On the exported models: the real SCRFD finds the astronaut's face (and nothing on a
    blank frame, so a detector that fires on anything fails here) and the OCR pipeline
    reads the printed lines, so face_align, arcface and ppocr_rec get work."""
    import onnxruntime as ort

    from export.ppocr import charset_path
    from tests.support.exports import exported_model, require_real

    frame = scene.scene()[None]
    require_real("scrfd", "only trained SCRFD weights tell a face from the rest of the scene")
    scrfd = ort.InferenceSession(str(exported_model("scrfd", tmp_path_factory)[0]))
    found = scrfd.run(["num_detections", "boxes"], {"images": np.concatenate([frame, np.full_like(frame, 255)])})
    assert found[0][:, 0].tolist() == [1, 0], found[0]
    x1, y1, x2, y2 = found[1][0, 0]
    assert 60 < (x1 + x2) / 2 < 230 and 20 < (y1 + y2) / 2 < 160, found[1][0, 0]   # the top-left tile
    det = ort.InferenceSession(str(exported_model("ppocr_det", tmp_path_factory)[0]))
    rec_path = exported_model("ppocr_rec", tmp_path_factory)[0]
    rec = ort.InferenceSession(str(rec_path))
    charset = ocr.load_charset(charset_path(rec_path.parents[2]))     # written beside that export
    out = ocr.run_ocr(frame, lambda x: det.run(None, {"images": x})[0], lambda c: tuple(rec.run(None, {"crops": c})),
                      charset, det_max_batch=8, rec_max_batch=64,
                      s=ocr.OcrSettings.for_recogniser(contract.load("ppocr_rec")))
    texts = [t.decode() for t in out.texts[0, :out.num_lines[0, 0]]]
    assert texts == list(scene.SCENE_LINES)


def test_an_encoded_entry_gets_distinct_jpegs_of_the_scene(tmp_path):
    """`<model>_encoded`'s `image`: real JPEG files of the 1280x720 scene, each one's bytes
    different (perf_analyzer cycles through them; Triton's response cache would answer a
    repeat), in perf_analyzer's BYTES wire format (length-prefixed)."""
    import cv2

    from contract import encoded

    specs = encoded.entry_contract(COMMITTED["yolo"]).inputs
    feed = scene.inputs_for(specs, 3)["image"]
    assert feed.shape == (3, 1) and feed.dtype == np.object_
    files = [bytes(v) for v in feed.reshape(-1)]
    assert len(set(files)) == 3 and all(f[:3] == b"\xff\xd8\xff" for f in files)
    want = scene.scene(720, 1280).astype(np.int16)
    for f in files:
        got = cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(np.int16)
        assert got.shape == want.shape
        assert np.abs(got[16:] - want[16:]).mean() < 3       # the scene, JPEG q90 apart
    path = scene.perf_analyzer_json(specs, tmp_path / "data.json", steps=2)
    data = json.loads(path.read_text())["data"]
    raw = base64.b64decode(data[1]["image"]["content"]["b64"])
    (n,) = struct.unpack("<I", raw[:4])
    assert raw[4:] == files[1] and n == len(files[1]) and data[1]["image"]["shape"] == [1]
