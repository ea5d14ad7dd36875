"""Pipelines on real inputs: faces on the astronaut, OCR read-back, text embeddings."""
from __future__ import annotations

import numpy as np
import pytest


from tests.support.images import text_page

pytestmark = pytest.mark.integration
ASTRONAUT_FACE = np.array([226, 69, 339, 223], np.float32)   # ../shared/weights/README.md, 640x640 coords


def _real_scrfd(served):
    served.need("faces")
    prov = served.provenance("scrfd")
    if "synthetic" in prov or "2.5g" not in prov.lower():
        pytest.skip(f"scrfd is not the real SCRFD-2.5G (provenance: {prov}); export it with "
                    "VISIONSERVE_WEIGHTS_DIR including ../shared/weights: make export-onnx MODELS=scrfd")


@pytest.fixture(scope="module")
def astronaut640(astronaut):
    import cv2

    return cv2.resize(astronaut, (640, 640), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_faces_finds_the_astronaut(served, astronaut640, protocol):
    _real_scrfd(served)
    blank = np.full_like(astronaut640, 127)
    out = served.infer(protocol, "faces", {"images": np.stack([astronaut640, blank, astronaut640])})
    n = out["num_faces"].reshape(-1)
    assert n.tolist() == [1, 0, 1]
    for i in (0, 2):
        # the same frame as export's known answer (tests/unit/test_export_scrfd.py): the same 3 px
        np.testing.assert_allclose(out["boxes"][i, 0], ASTRONAUT_FACE, atol=3)
        assert out["scores"][i, 0] > 0.5
        lm = out["landmarks"][i, 0]                                 # 5 points inside the box
        x1, y1, x2, y2 = out["boxes"][i, 0]
        assert ((lm[:, 0] > x1) & (lm[:, 0] < x2) & (lm[:, 1] > y1) & (lm[:, 1] < y2)).all(), lm
        emb = out["embeddings"][i]
        assert emb.shape == (64, 512)
        assert abs(np.linalg.norm(emb[0]) - 1.0) < 1e-3
        assert not emb[1:].any()                                    # zero rows beyond num_faces
    assert not out["embeddings"][1].any()
    # the same face in two images of one batch gets the same embedding (batch invariance)
    assert float(out["embeddings"][0, 0] @ out["embeddings"][2, 0]) > 0.999


def test_faces_matches_its_steps(served, astronaut640):
    """The BLS output equals scrfd -> face_align -> arcface called by hand."""
    served.need("faces")
    x = astronaut640[None]
    out = served.infer("grpc", "faces", {"images": x})
    det = served.infer("grpc", "scrfd", {"images": x})
    n = int(det["num_detections"][0, 0])
    assert n == int(out["num_faces"][0, 0])
    np.testing.assert_allclose(out["boxes"], det["boxes"], atol=1e-4)
    if n == 0:
        pytest.skip("scrfd finds no face with these weights; the embedding path is covered by the astronaut test")
    crops = served.infer("grpc", "face_align", {"images": x, "landmarks": det["landmarks"]})["crops"]
    emb = served.infer("grpc", "arcface", {"faces": crops[0, :n]})["embeddings"]
    np.testing.assert_allclose(out["embeddings"][0, :n], emb, atol=1e-4)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ocr_reads_rendered_text(served, protocol):
    served.need("ocr")
    lines = ["SERVING 2026", "HELLO WORLD"]
    out = served.infer(protocol, "ocr", {"images": text_page(lines, 640, 640, font_px=64)[None]})
    n = int(out["num_lines"][0, 0])
    texts = [t.decode() if isinstance(t, bytes) else str(t) for t in out["texts"][0, :n]]
    got = " ".join(texts).upper().replace(" ", "")
    for line in lines:
        assert line.replace(" ", "") in got, texts
    assert (out["scores"][0, :n] > 0.5).all()
    ys = out["polygons"][0, :n, :, 1].mean(axis=1)
    assert (np.diff(ys) >= 0).all()                                 # reading order: top to bottom


def test_text_embed_is_the_tokenizer_then_the_encoder(served):
    served.need("text_embed")
    texts = np.array([[b"a photo of a dog"], [b"a photo of a dog"], [b"an invoice with a table"]], dtype=object)
    emb = served.infer("grpc", "text_embed", {"text": texts})["embeddings"]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)
    assert not np.allclose(emb[0], emb[2], atol=1e-3)
    tokens = served.infer("grpc", "clip_tokenizer", {"text": texts[:1]})["tokens"]
    direct = served.infer("grpc", "mobileclip_text", {"tokens": tokens})["embeddings"]
    np.testing.assert_allclose(direct[0], emb[0], atol=1e-4)


def test_detect_embed_equals_its_steps(served):
    served.need("detect_embed")
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, 640, 640, 3), dtype=np.uint8)
    out = served.infer("grpc", "detect_embed", {"images": x})
    yolo = served.infer("grpc", "yolo", {"images": x})
    clip = served.infer("grpc", "clip_resize", {"images": x})["clip_images"]
    img = served.infer("grpc", "mobileclip_image", {"images": clip})["embeddings"]
    np.testing.assert_array_equal(out["num_detections"], yolo["num_detections"])
    np.testing.assert_allclose(out["boxes"], yolo["boxes"], atol=1e-4)
    np.testing.assert_allclose(out["image_embedding"], img, atol=1e-4)


def test_analyze_combines_every_pipeline(served, astronaut640):
    served.need("analyze")
    x = astronaut640[None]
    out = served.infer("grpc", "analyze", {"images": x})
    faces = served.infer("grpc", "faces", {"images": x})
    ocr = served.infer("grpc", "ocr", {"images": x})
    np.testing.assert_array_equal(out["num_faces"], faces["num_faces"])
    np.testing.assert_allclose(out["face_embeddings"], faces["embeddings"], atol=1e-4)
    np.testing.assert_array_equal(out["num_lines"], ocr["num_lines"])
    np.testing.assert_allclose(np.linalg.norm(out["image_embedding"], axis=1), 1.0, atol=1e-3)
