"""forward=pixels and forward=encoded (gateway/forward.py), two real gateways in front of the
session Triton: the same answers on the same real photos for every route model the
contract's rule gives an encoded entry point (boxes, landmarks and polygons within 1 px,
the same classes and texts, embeddings cosine >= 0.999), one request of three images each
(one BYTES item per image in one call); bad images answered alike, a JPEG whose header is
fine but whose data is cut refused by Triton's decode step as 400 `invalid_image`."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import contract
from contract import encoded
from contract.routes import route_table
from tests.support import images as test_images
from tests.support.gateway import GatewayFactory

pytestmark = pytest.mark.integration

TABLE = route_table()
# (route path, ?model= choice, model) of every route model with an entry point: from the contract.
# Batch routes only: a compare route (Route.pair) runs the same models on a pair of images
# (tests/integration/test_face_compare_live.py)
CASES = [(r.path, m.choice, m.model) for r in TABLE.routes if not r.pair for m in r.models
         if encoded.has_entry(contract.load(m.model))]
GEOMETRY = ("box", "landmarks", "polygon")


def _photos() -> list[tuple[str, bytes]]:
    """zidane.jpg as a client sends it, bus.jpg stored sideways with EXIF orientation 6 (so
    `original_size` and the mapping follow the orientation), and a page of text for OCR."""
    from PIL import Image
    from ultralytics.utils import ASSETS

    from export.samples import ultralytics_photo

    exif = Image.Exif()
    exif[0x0112] = 6
    bus = np.ascontiguousarray(np.rot90(ultralytics_photo("bus.jpg"), 1))
    page = test_images.text_page(["VISIONSERVE 2026", "encoded bytes", "original pixels"],
                                 width=960, height=540)
    return [("zidane.jpg", (Path(ASSETS) / "zidane.jpg").read_bytes()),
            ("bus.jpg", test_images.jpeg(bus, quality=90, exif=exif.tobytes())),
            ("page.jpg", test_images.jpeg(page, quality=90))]


@pytest.fixture(scope="module")
def photos():
    return _photos()


@pytest.fixture(scope="module")
def pair(served, tmp_path_factory):
    """{mode: gateway}: the same Triton, the images decoded by the gateway or by Triton."""
    factory = GatewayFactory(tmp_path_factory.mktemp("forward"))
    try:
        yield {mode: factory.start(served.server.grpc_url, forward=mode)
               for mode in ("pixels", "encoded")}
    finally:
        factory.stop_all()


def forward_calls(gw) -> dict[tuple[str, str], float]:
    """{(model, forward): Triton calls} from the gateway's own metrics."""
    out = {}
    for labels, value in re.findall(r'^visionserve_gateway_triton_forward_total\{([^}]*)\} (\S+)$',
                                    gw.metrics(), re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(got["model"], got["forward"])] = float(value)
    return out


def same(a, b, where: str = "") -> int:
    """Assert two answers agree within the tolerances; the number of values compared."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a.keys(), b)
        return sum(same(a[k], b[k], f"{where}.{k}") for k in a)
    key = where.rsplit(".", 1)[-1]
    if key == "embedding":
        va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
        cos = float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))
        assert cos >= 0.999, (where, cos)
        return 1
    if key in GEOMETRY:
        diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()
        assert diff <= 1.0, (where, a, b)
        return 1
    if key == "score":
        assert abs(a - b) <= 0.01, (where, a, b)
        return 1
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        return sum(same(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, (where, a, b)    # labels, class ids, texts, widths and heights: exactly
    return 0


@pytest.mark.parametrize("path,choice,model", CASES, ids=[c[2] for c in CASES])
def test_pixels_and_encoded_give_the_same_answers(served, pair, photos, path, choice, model):
    served.need(model, encoded.entry_name(model))
    files = [("images", (name, data, "image/jpeg")) for name, data in photos]
    answers = {}
    for mode, gw in pair.items():
        r = gw.client.post(path, params={"model": choice}, files=files, timeout=300)
        assert r.status_code == 200, (mode, r.text)
        answers[mode] = r.json()
    compared = same(answers["pixels"], answers["encoded"])
    assert compared > 0, answers["pixels"]     # something was found to compare
    sizes = [(x["width"], x["height"]) for x in answers["encoded"]["results"] if "width" in x]
    assert not sizes or sizes[1] == (810, 1080), sizes   # bus.jpg upright: Triton's original_size
    paths = {mode: forward_calls(gw) for mode, gw in pair.items()}
    assert paths["encoded"].get((model, "encoded"), 0) >= 1, paths
    assert paths["pixels"].get((model, "pixels"), 0) >= 1 and (model, "encoded") not in paths["pixels"]


def test_bad_images_are_refused_alike_and_a_cut_jpeg_is_400_from_tritons_decode(served, pair, photos):
    served.need("yolo", "yolo_encoded")
    good = photos[0][1]
    cut = good[:len(good) // 2]          # header fine, entropy data cut off
    for body, want in ((b"GIF89a" + b"\0" * 64, (415, "unsupported_media_type")),
                       (cut, (400, "invalid_image"))):
        for mode, gw in pair.items():
            calls = forward_calls(gw).get(("yolo", mode), 0)
            r = gw.client.post("/v1/detect", content=body, headers={"content-type": "image/jpeg"})
            assert (r.status_code, r.json()["error"]["code"]) == want, (mode, r.text)
            sent = forward_calls(gw).get(("yolo", mode), 0) - calls
            # the GIF never leaves the gateway; the cut JPEG's header passes, so the encoded
            # gateway sends it and Triton's decode step refuses it
            assert sent == (1 if mode == "encoded" and body is cut else 0), (mode, sent)
            if mode == "encoded" and body is cut:
                assert "encoded_" not in r.text and "ensemble" not in r.text, r.text
    ok = pair["encoded"].client.post("/v1/detect", content=good, headers={"content-type": "image/jpeg"})
    assert ok.status_code == 200, ok.text


def test_auto_is_encoded_against_a_loopback_triton_without_shared_memory(served, served_gateway):
    served.need("yolo", "yolo_encoded")
    (ep,) = served_gateway.readiness()["endpoints"]
    assert ep["forward"]["yolo"] == "encoded", ep
    assert ep["forward_reason"].startswith("auto:"), ep
