"""The gateway app through TestClient with a fake Triton passed to the factory (a seam,
no monkeypatching): every endpoint, batching, coordinates, and the full error matrix."""
from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from gateway.backend import translate
from gateway.errors import (TritonOverloaded, TritonTimeout,
                            TritonUnavailable)
from gateway.routes.system import admin_view
from gateway.testing import FakeBackend, metrics_text
from tests.support.fakes import JPEG, app_client, multipart
from tests.support.images import noise_jpeg


def jpeg_bytes(w=1280, h=720, seed=0) -> bytes:
    return noise_jpeg(w, h, seed)


client = app_client


def wait_ready(c, timeout_s=5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if c.get("/readyz").status_code == 200:
            return True
        time.sleep(0.05)
    return False


def post(c, path, data=JPEG, ctype="image/jpeg", **kw):
    return c.post(path, content=data, headers={"content-type": ctype}, **kw)


def assert_error(r, status, code):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]


# -- endpoints -----------------------------------------------------------------------
def test_detect_maps_coordinates_to_original_pixels():
    fake = FakeBackend()
    with client(fake) as c:
        r = post(c, "/v1/detect")
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert (res["width"], res["height"]) == (1280, 720)
    # 1280x720 -> 640x360 at the top-left: scale 0.5 on both axes
    assert res["objects"] == [{"label": "person", "class_id": 0, "score": 0.9,
                               "box": [20.0, 40.0, 220.0, 440.0]}]
    assert fake.calls == [("yolo", 1)]


def test_detect_centernet_uses_its_own_frame():
    fake = FakeBackend()
    with client(fake) as c:
        r = post(c, "/v1/detect", params={"model": "centernet"})
    assert r.status_code == 200, r.text
    # 1280 -> 512 wide: scale 0.4
    assert r.json()["results"][0]["objects"][0]["box"] == [25.0, 50.0, 275.0, 550.0]
    assert fake.calls == [("centernet", 1)]


def test_thresholds_and_limits_are_query_parameters():
    fake = FakeBackend()
    fake.detections = np.array([[0, 0, 10, 10]] * 5, np.float32)   # scores 0.9 .. 0.6
    with client(fake) as c:
        assert len(post(c, "/v1/detect").json()["results"][0]["objects"]) == 5
        r = post(c, "/v1/detect", params={"score_threshold": 0.8})
        assert [o["score"] for o in r.json()["results"][0]["objects"]] == [0.9, 0.825]
        r = post(c, "/v1/detect", params={"max_results": 2, "score_threshold": 0.25})
        assert len(r.json()["results"][0]["objects"]) == 2
        assert_error(post(c, "/v1/detect", params={"score_threshold": 2}), 422, "invalid_parameter")
        assert_error(post(c, "/v1/detect", params={"model": "nope"}), 422, "invalid_parameter")


@pytest.mark.parametrize("path,key", [("/v1/faces", "faces"), ("/v1/ocr", "lines"),
                                      ("/v1/analyze", "objects"), ("/v1/embed/image", "embedding")])
def test_image_endpoints(path, key):
    fake = FakeBackend()
    with client(fake) as c:
        r = post(c, path)
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert key in res
    if path == "/v1/faces":
        f = res["faces"][0]
        assert f["box"] == [20.0, 40.0, 220.0, 440.0] and len(f["embedding"]) == 512
        assert f["landmarks"][0] == [20.0, 40.0] and len(f["landmarks"]) == 5
    if path == "/v1/ocr":
        assert res["lines"][0]["text"] == "héllo" and len(res["lines"][0]["polygon"]) == 4
    if path == "/v1/analyze":
        assert res["faces"] and res["lines"] and len(res["embedding"]) == 512


def test_embed_text_batches_all_texts_in_one_call():
    fake = FakeBackend()
    with client(fake) as c:
        r = c.post("/v1/embed/text", json={"texts": ["a dog", "ein Hund"]})
    assert r.status_code == 200, r.text
    assert [x["text"] for x in r.json()["results"]] == ["a dog", "ein Hund"]
    assert len(r.json()["results"][0]["embedding"]) == 512
    assert fake.calls == [("text_embed", 2)]


def test_models_lists_sizes_and_provenance():
    fake = FakeBackend(models=("yolo", "faces", "scrfd"))
    with client(fake) as c:
        r = c.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    by = {m["name"]: m for m in body["models"]}
    assert by["yolo"]["input_size"] == {"height": 640, "width": 640}
    assert by["faces"]["components"] == {"scrfd": None, "face_align": None, "arcface": None}
    assert "weights_provenance" in by["yolo"]
    assert "centernet" in body["not_served"]


# -- batching ------------------------------------------------------------------------
def test_n_images_one_batched_call_split_at_max_batch_size():
    fake = FakeBackend()
    with client(fake, max_images=20) as c:
        r = c.post("/v1/detect", files=multipart(3))
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert fake.calls == [("yolo", 3)]
        fake.calls.clear()
        r = c.post("/v1/detect", files=multipart(20))   # yolo max_batch_size is 16
        assert r.status_code == 200 and len(r.json()["results"]) == 20
        assert sorted(fake.calls) == [("yolo", 4), ("yolo", 16)]


def test_json_base64_and_png_inputs():
    buf = io.BytesIO()
    Image.new("RGB", (100, 50), (255, 0, 0)).save(buf, "PNG")
    with client() as c:
        r = c.post("/v1/detect", json={"images": [base64.b64encode(JPEG).decode(),
                                                  base64.b64encode(buf.getvalue()).decode()]})
        assert r.status_code == 200, r.text
        assert [(x["width"], x["height"]) for x in r.json()["results"]] == [(1280, 720), (100, 50)]
        assert post(c, "/v1/detect", buf.getvalue(), "image/png").status_code == 200


# -- the error matrix ------------------------------------------------------------------
def test_client_mistakes_are_4xx_with_stable_codes():
    with client(max_body_bytes=200_000, max_images=2, max_image_pixels=1280 * 720) as c:
        assert_error(post(c, "/v1/detect", b""), 400, "empty_body")
        assert_error(post(c, "/v1/detect", JPEG[: len(JPEG) // 2]), 400, "invalid_image")
        corrupt = JPEG[:2000] + bytes(len(JPEG) - 2000)
        assert_error(post(c, "/v1/detect", corrupt), 400, "invalid_image")
        assert_error(post(c, "/v1/detect", b"\xff\xd8\xff" + b"junk" * 10), 400, "invalid_image")
        assert_error(post(c, "/v1/detect", b"hello", "text/plain"), 415, "unsupported_media_type")
        assert_error(post(c, "/v1/detect", b"GIF89a" + b"0" * 100), 415, "unsupported_media_type")
        assert_error(post(c, "/v1/detect", b"GIF89a", "application/octet-stream"), 415,
                     "unsupported_media_type")
        assert_error(post(c, "/v1/detect", b"x" * 200_001), 413, "payload_too_large")
        assert_error(post(c, "/v1/detect", jpeg_bytes(1288, 720)), 413, "image_too_large")
        assert_error(c.post("/v1/detect", files=multipart(3, jpeg_bytes(64, 64))), 413,
                     "too_many_images")
        assert_error(c.post("/v1/detect", json={"images": ["%%%"]}), 400, "invalid_payload")
        assert_error(post(c, "/v1/detect", b"{nope", "application/json"), 400, "invalid_payload")
        assert_error(c.post("/v1/embed/text", json={"text": ""}), 422, "invalid_text")
        assert_error(c.post("/v1/embed/text", json={"text": "x" * 1001}), 422, "invalid_text")
        assert_error(c.post("/v1/embed/text", json={"texts": []}), 422, "invalid_text")
        assert_error(c.post("/v1/embed/text", json={"text": 3}), 422, "invalid_text")
        assert_error(c.get("/v1/nothing"), 404, "not_found")
        assert_error(c.get("/v1/detect"), 405, "method_not_allowed")


def test_body_limit_enforced_while_streaming_without_content_length():
    def chunks():
        for _ in range(10):
            yield b"\xff" * 50_000

    with client(max_body_bytes=200_000) as c:
        r = c.post("/v1/detect", content=chunks(), headers={"content-type": "image/jpeg"})
    assert_error(r, 413, "payload_too_large")


def test_pixel_limit_is_judged_before_decoding():
    fake = FakeBackend()
    with client(fake, max_image_pixels=1000) as c:
        assert_error(post(c, "/v1/detect"), 413, "image_too_large")
        metrics = metrics_text(c)
    assert 'visionserve_gateway_images_total{format="jpeg"}' not in metrics   # nothing decoded
    assert fake.calls == []


def test_triton_down_is_503_with_retry_after_then_recovers():
    fake = FakeBackend()
    with client(fake, retry_after_s=2) as c:
        assert c.get("/readyz").status_code == 200
        fake.fail = TritonUnavailable("connection refused", retry_after=2)
        r = post(c, "/v1/detect")
        assert_error(r, 503, "triton_unavailable")
        assert r.headers["retry-after"] == "2"
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["ready"] is False
        assert c.get("/healthz").status_code == 200
        fake.fail = None          # Triton is back: probed back in, no restart needed
        assert wait_ready(c)
        assert post(c, "/v1/detect").status_code == 200


def test_triton_slow_is_504_and_queue_full_is_429():
    fake = FakeBackend()
    with client(fake) as c:
        fake.fail = TritonTimeout("deadline")
        assert_error(post(c, "/v1/detect"), 504, "triton_timeout")
        fake.fail = TritonOverloaded("queue full", retry_after=1)
        r = post(c, "/v1/faces")
        assert_error(r, 429, "triton_overloaded")
        assert r.headers["retry-after"] == "1"
        assert 'code="triton_overloaded"' in metrics_text(c)


def test_grpc_errors_are_translated_in_one_place():
    from tritonclient.utils import InferenceServerException as E

    def code(exc):
        return translate(exc, "yolo", 1).code

    assert code(E("Exceeds maximum queue size", "StatusCode.UNAVAILABLE")) == "triton_overloaded"
    assert code(E("in ensemble 'analyze', Request timeout expired",
                  "StatusCode.UNAVAILABLE")) == "triton_overloaded"
    assert code(E("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")) == "triton_timeout"
    assert code(E("failed to connect to all addresses",
                  "StatusCode.UNAVAILABLE")) == "triton_unavailable"
    assert code(E("Request for unknown model: 'x' is not found",
                  "StatusCode.NOT_FOUND")) == "model_unavailable"
    assert code(E("onnxruntime exploded", "StatusCode.INTERNAL")) == "triton_error"


def test_in_flight_limit_sheds_with_503_and_loses_nothing():
    fake = FakeBackend()
    fake.hold.clear()
    results = {}
    with client(fake, max_in_flight=1) as c:
        t = threading.Thread(target=lambda: results.setdefault("a", post(c, "/v1/detect")))
        t.start()
        assert fake.entered.wait(10)
        r = post(c, "/v1/detect")
        assert_error(r, 503, "gateway_overloaded")
        assert "retry-after" in r.headers
        assert c.get("/healthz").status_code == 200   # probes are never shed
        fake.hold.set()
        t.join(10)
        assert results["a"].status_code == 200
        assert post(c, "/v1/detect").status_code == 200   # capacity is back
        m = metrics_text(c)
    assert 'visionserve_gateway_requests_total{route="/v1/detect",status="503"} 1.0' in m
    assert "visionserve_gateway_in_flight_requests 0.0" in m


def test_missing_model_is_503_and_a_contract_mismatch_is_refused_loudly():
    with client(FakeBackend(models=("yolo",))) as c:
        assert_error(post(c, "/v1/detect", params={"model": "centernet"}), 503, "model_unavailable")
    bad = FakeBackend(overrides={"yolo": {"name": "yolo", "platform": "x", "inputs": [
        {"name": "images", "datatype": "FP32", "shape": ["-1", "3", "640", "640"]}],
        "outputs": []}})
    with client(bad) as c:   # the gateway stays up, never routes to it, and says why
        assert c.get("/readyz").status_code == 503
        ready, detail = admin_view(c.app)()   # (to the operator: the metrics port's /readyz)
        (endpoint,) = detail["endpoints"]
        assert endpoint["state"] == "refused" and "FP32" in endpoint["reason"], endpoint
        assert not ready and "contract mismatch" in detail["reason"]
        assert_error(post(c, "/v1/detect"), 503, "triton_unavailable")
        assert 'visionserve_gateway_triton_endpoints{state="refused"} 1.0' in metrics_text(c)
    assert bad.calls == []


def test_metrics_expose_the_issue_list():
    with client() as c:
        post(c, "/v1/detect")
        m = metrics_text(c)
    for name in ("requests_total", "request_duration_seconds", "in_flight_requests",
                 "decode_duration_seconds", "triton_duration_seconds", "request_body_bytes",
                 "triton_sent_bytes_total"):
        assert f"visionserve_gateway_{name}" in m
    assert 'visionserve_gateway_triton_sent_bytes_total{model="yolo"} 1.2288e+06' in m


def test_docs_are_off_unless_enabled():
    with client() as c:
        for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
            assert_error(c.get(path), 404, "not_found")
    with client(docs=True) as c:
        assert c.get("/docs").status_code == 200 and c.get("/redoc").status_code == 200
        assert c.get("/openapi.json").json()["paths"]["/v1/detect"]


def test_openapi_documents_bodies_and_errors():
    with client(docs=True) as c:
        spec = c.get("/openapi.json").json()
    op = spec["paths"]["/v1/detect"]["post"]
    assert {"image/jpeg", "multipart/form-data", "application/json"} <= set(op["requestBody"]["content"])
    assert {"413", "415", "503", "504"} <= set(op["responses"])


def test_mangled_images_are_never_a_500():
    """Bit flips, cut-offs and spliced headers: 200 (decodable) or a 4xx, never 500."""
    rng = np.random.default_rng(7)
    small = jpeg_bytes(320, 240)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (1, 2, 3)).save(buf, "PNG")
    samples = []
    for src in (small, buf.getvalue()):
        for _ in range(30):
            b = bytearray(src)
            for i in rng.integers(2, len(b), 8):
                b[i] = int(rng.integers(0, 256))
            samples.append(bytes(b))
            samples.append(src[: int(rng.integers(3, len(src)))])
    with client() as c:
        codes = {post(c, "/v1/detect", s).status_code for s in samples}
    assert codes <= {200, 400, 413, 415}, codes
