"""POST /v1/faces/compare through the real gateway process and the real embedded Triton,
with REAL SCRFD detections (../shared/weights' SCRFD-2.5G exported as `scrfd`). The ArcFace
weights here are synthetic (export/arcface.py, a seeded random network): these tests show the
plumbing (one Triton call per pair, the chosen faces, boxes in original pixels, the cosine of
the embeddings Triton computed, the contract's threshold and the errors), never that the
threshold separates people: docs/gateway.md, Face compare, says how to check that with real
weights (`make face-pairs`)."""
from __future__ import annotations

import base64
import struct

import numpy as np
import pytest

from tests.support.polling import settled

from contract.routes import route_table
from tests.support.exports import require_real
from tests.support.images import flat, jpeg

pytestmark = pytest.mark.integration

ROUTE = route_table().route("faces/compare")


@pytest.fixture(scope="module")
def faces_served(served):
    served.need(ROUTE.default.model)
    require_real("scrfd", "real face detections")
    return served


def _post(gw, **kw):
    return gw.client.post(ROUTE.path, **kw)


def _files(a: bytes, b: bytes):
    return [("a", ("a.jpg", a, "image/jpeg")), ("b", ("b.jpg", b, "image/jpeg"))]


def _requests(served) -> float:
    """Triton's success count of the faces pipeline once it has settled: Triton may answer a
    request before its statistics count it."""
    return settled(lambda: served.metrics().get(("nv_inference_request_success", ROUTE.default.model), 0.0),
                   quiet_s=0.3)


def test_a_photo_matches_itself_mirrored_and_reencoded_in_one_triton_call(faces_served, served_gateway, astronaut):
    a = jpeg(astronaut, 92)
    b = jpeg(np.ascontiguousarray(astronaut[:, ::-1]), 85)
    before = _requests(faces_served)
    r = _post(served_gateway, files=_files(a, b))
    assert r.status_code == 200, r.text
    assert _requests(faces_served) - before == 1          # both images in one request
    body = r.json()
    threshold = route_table().match_threshold(ROUTE.default.model)
    assert body["threshold"]["value"] == threshold[0] and body["threshold"]["stated_by"] == threshold[1]
    assert body["threshold"]["weights_provenance"] == faces_served.provenance(threshold[1])
    assert body["match"] is True and body["similarity"] >= threshold[0], body
    # the same face: its box in b is a's box mirrored (original 512-px pixels; SCRFD is not
    # exactly mirror-symmetric, a few pixels apart)
    ax1, ay1, ax2, ay2 = body["a"]["box"]
    bx1, by1, bx2, by2 = body["b"]["box"]
    w = body["a"]["width"]
    assert (body["a"]["faces"], body["b"]["faces"]) == (1, 1) and w == 512
    np.testing.assert_allclose([bx1, by1, bx2, by2], [w - ax2, ay1, w - ax1, ay2], atol=6)
    # the similarity is the cosine of the embeddings /v1/faces answers for the two images
    embs = []
    for img in (a, b):
        f = served_gateway.client.post("/v1/faces", content=img, headers={"content-type": "image/jpeg"})
        embs.append(np.array(f.json()["results"][0]["faces"][0]["embedding"], np.float64))
    ref = embs[0] @ embs[1] / np.linalg.norm(embs[0]) / np.linalg.norm(embs[1])
    assert body["similarity"] == pytest.approx(ref, abs=1e-4)
    print(f"\nastronaut vs mirrored q85: {body}")


def test_a_photo_against_its_own_embedding_is_cosine_1(faces_served, served_gateway, astronaut):
    img = jpeg(astronaut, 90)
    f = served_gateway.client.post("/v1/faces", content=img, headers={"content-type": "image/jpeg"},
                                   params={"embedding_format": "base64"})
    (face,) = f.json()["results"][0]["faces"]
    before = _requests(faces_served)
    r = _post(served_gateway, json={"a": base64.b64encode(img).decode(), "embedding": face["embedding"]})
    assert r.status_code == 200, r.text
    assert _requests(faces_served) - before == 1
    body = r.json()
    assert body["similarity"] == pytest.approx(1.0, abs=1e-4) and body["match"] is True
    assert body["a"]["box"] == face["box"] and body["b"] == {"source": "embedding"}


def test_the_three_errors(faces_served, served_gateway, astronaut):
    face = jpeg(astronaut, 90)
    empty = jpeg(flat(320, 240), 90)
    r = _post(served_gateway, files=_files(face, empty))
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_face", r.text
    assert "'b'" in r.json()["error"]["message"]
    r = _post(served_gateway, files=_files(face, face), params={"face_a": 1})
    assert r.status_code == 422 and r.json()["error"]["code"] == "face_index_out_of_range", r.text
    short = base64.b64encode(struct.pack("<511f", *([0.05] * 511))).decode()
    r = _post(served_gateway, json={"a": base64.b64encode(face).decode(), "embedding": short})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_embedding", r.text
    assert "511" in r.json()["error"]["message"]


def test_the_pair_list_check_agrees_with_the_compare_route(faces_served, served_gateway, astronaut, tmp_path):
    """perf/face_pairs.py (`make face-pairs`) on a tiny LFW-format list of photos made here:
    its similarities and its accuracy at the served threshold are those the compare route
    answers for the same files (the check a user runs on LFW with real weights)."""
    from export.samples import ultralytics_photo
    from perf import face_pairs
    from skimage import data

    photos = {("astronaut", 1): jpeg(astronaut, 92),
              ("astronaut", 2): jpeg(np.ascontiguousarray(astronaut[:, ::-1]), 85),
              ("zidane", 1): jpeg(ultralytics_photo("zidane.jpg"), 90),     # two men: the larger face
              ("coffee", 1): jpeg(data.coffee(), 90)}
    for (name, idx), body in photos.items():
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / f"{name}_{idx:04d}.jpg").write_bytes(body)
    listing = "3\t1\nastronaut\t1\t2\nastronaut\t1\tzidane\t1\nzidane\t1\tcoffee\t1\n"
    pairs = face_pairs.read_pairs(listing)
    report = face_pairs.run(pairs, tmp_path, served_gateway.url, batch=3)
    assert (report["pairs"], report["same"], report["photos"]) == (3, 1, 4)
    correct = 0
    for p, got in zip(pairs, report["similarities"]):
        r = _post(served_gateway, files=_files(photos[p.a], photos[p.b]))
        if got is None:
            assert r.status_code == 422 and r.json()["error"]["code"] == "no_face", r.text
            match = False
        else:
            assert r.status_code == 200, r.text
            assert got == pytest.approx(r.json()["similarity"], abs=1e-4)
            match = r.json()["match"]
        correct += match == p.same
    assert report["at_served_threshold"]["accuracy"] == pytest.approx(correct / 3)
    assert report["served"]["value"] == route_table().match_threshold(ROUTE.default.model)[0]
    print(f"\npair list on synthetic ArcFace: {report['similarities']}, "
          f"best threshold {report['best']['threshold']}")
