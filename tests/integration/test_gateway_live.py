"""The gateway as a real process against the real embedded Triton (the `served` fixture):
every endpoint on real images, a concurrent burst, and Triton killed and restarted
under it (503 + Retry-After, /readyz false, recovery without restarting the gateway)."""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from contract.routes import route_table
from serving.tritonserver import TritonServer, free_port
from tests.support.gateway import GatewayFactory, input_paths
from tests.support.images import jpeg, png, text_page
from tests.support.polling import wait_for

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.integration
# SCRFD-2.5G on the astronaut, in original 512x512 pixels (../shared/weights/README.md):
# 640x640 [226, 69, 339, 223] x 512/640
ASTRONAUT_FACE = np.array([180.8, 55.2, 271.2, 178.4], np.float32)


@pytest.fixture(scope="module")
def gateway(served_gateway):
    return served_gateway


@pytest.fixture(scope="module")
def astronaut640(astronaut):
    import cv2

    return cv2.resize(astronaut, (640, 640), interpolation=cv2.INTER_LINEAR)


def post(gw, path, data, ctype="image/jpeg", **params):
    return gw.client.post(path, content=data, headers={"content-type": ctype}, params=params)


def test_models_lists_what_triton_serves(served, gateway):
    body = gateway.client.get("/v1/models").json()
    names = {m["name"] for m in body["models"]}
    table = route_table()
    for m in table.models:
        assert (m in names) == (m in served.contracts), (m, body["not_served"])
    for m in body["models"]:
        assert m["endpoint"] == table.endpoint(m["name"]), m
        if served.contracts[m["name"]].kind == "network":
            assert m["weights_provenance"], m
        if m["input_size"]:
            c = served.contracts[m["name"]].inputs[0]
            assert [m["input_size"]["height"], m["input_size"]["width"]] == list(c.dims[:2])


def test_detect_answers_tritons_boxes_in_original_pixels(served, gateway, astronaut640):
    """The astronaut at 640x640, sent as a 1280x1280 PNG (each pixel doubled, so the
    gateway's 2x downscale gives back the 640 frame exactly): the gateway's objects are
    Triton's own yolo detections on that frame (same classes, same order), boxes in the
    1280-pixel image. (The person check needs real yolo weights: test_served_references'
    known answer.)"""
    served.need("yolo")
    out = served.infer("grpc", "yolo", {"images": astronaut640[None]})
    n = int(out["num_detections"][0, 0])
    r = post(gateway, "/v1/detect", png(astronaut640.repeat(2, 0).repeat(2, 1)), "image/png")
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert (res["width"], res["height"]) == (1280, 1280)
    objects = res["objects"]
    assert objects, "the gateway kept no object: nothing to compare"
    # the gateway keeps Triton's best-scored detections above its threshold, in score order
    k = len(objects)
    assert k <= n
    np.testing.assert_allclose([o["score"] for o in objects], out["scores"][0, :k], atol=1e-4)
    assert [o["class_id"] for o in objects] == out["classes"][0, :k].astype(int).tolist()
    np.testing.assert_allclose([o["box"] for o in objects], out["boxes"][0, :k] * 2, atol=0.05)


def test_faces_on_the_astronaut_in_original_pixels(served, gateway, astronaut):
    served.need("faces")
    r = post(gateway, "/v1/faces", jpeg(astronaut))
    assert r.status_code == 200, r.text
    found = r.json()["results"][0]["faces"]
    prov = served.provenance("scrfd")
    if "synthetic" in prov or "2.5g" not in prov.lower():
        pytest.skip(f"scrfd is not the real SCRFD-2.5G (provenance: {prov})")
    assert len(found) == 1
    # export's known answer holds 3 px at 640 (tests/unit/test_export_scrfd.py): the same
    # 3 px here, in 512-pixel coordinates after the gateway's decode and letterbox
    np.testing.assert_allclose(found[0]["box"], ASTRONAUT_FACE, atol=3)
    assert abs(np.linalg.norm(found[0]["embedding"]) - 1) < 1e-3


def test_embeddings_image_and_text_are_tritons_in_request_order(served, gateway):
    """Image and text embeddings through the gateway are MobileCLIP's own (Triton over
    gRPC on the same frames and captions), one per item, in the order sent."""
    served.need("mobileclip_image", "text_embed")
    size = served.contracts["mobileclip_image"].inputs[0].dims[:2]
    from tests.support.real_images import distinct_photos

    import cv2

    frames = [cv2.resize(p, (size[1], size[0]), interpolation=cv2.INTER_AREA) for p in distinct_photos(3)]
    r = gateway.client.post("/v1/embed/image", files=[
        ("images", (f"{i}.png", png(f), "image/png")) for i, f in enumerate(frames)])   # scale 1
    assert r.status_code == 200, r.text
    got = np.array([x["embedding"] for x in r.json()["results"]])
    want = served.infer("grpc", "mobileclip_image", {"images": np.stack(frames)})["embeddings"]
    assert got.shape == want.shape == (3, 512)
    assert (np.sum(got * want, 1) >= 0.9999).all(), np.sum(got * want, 1)
    assert float(got[0] @ got[1]) < 0.999                   # different photos, different vectors
    captions = ["an astronaut", "a cat on a sofa", "an astronaut"]
    r = gateway.client.post("/v1/embed/text", json={"texts": captions})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["text"] for x in res] == captions
    t = np.array([x["embedding"] for x in res])
    direct = served.infer("grpc", "text_embed", {"text": np.array([[c.encode()] for c in captions], object)})
    assert (np.sum(t * direct["embeddings"], 1) >= 0.9999).all()
    np.testing.assert_allclose(t[0], t[2], atol=1e-5)       # the same caption twice
    assert float(t[0] @ t[1]) < 0.999, "two different captions gave the same embedding"


def test_ocr_reads_rendered_text_back(served, gateway):
    served.need("ocr")
    lines = ["SERVING 2026", "HELLO WORLD"]
    r = post(gateway, "/v1/ocr", jpeg(text_page(lines, 900, 500, font_px=80, margin=60)))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    got = " ".join(x["text"] for x in res["lines"]).upper().replace(" ", "")
    if "synthetic" in served.provenance("ppocr_rec"):
        pytest.skip("ppocr_rec has synthetic weights: cannot read text back")
    for line in lines:
        assert line.replace(" ", "") in got, res["lines"]
    polys = np.array([x["polygon"] for x in res["lines"]])
    # original 900x500 pixels: the lines sit in the left part of their own rows
    assert ((polys[..., 0] >= 0) & (polys[..., 0] <= 900)).all()
    assert ((polys[..., 1] >= 0) & (polys[..., 1] <= 500)).all()


def test_analyze_equals_each_route_on_the_same_image(served, gateway, astronaut):
    """One /v1/analyze call answers what /v1/detect, /v1/faces, /v1/ocr and
    /v1/embed/image answer separately (same thresholds) on the same JPEG: the astronaut
    with two printed lines, so faces and text are found, not only empty lists."""
    served.need("analyze", "yolo", "faces", "ocr", "mobileclip_image")
    img = astronaut.copy()
    img[400:] = text_page(["ANALYZE 2026", "HELLO"], 512, 112, font_px=36, line_gap=1.4, margin=8)
    data = jpeg(img)
    r = post(gateway, "/v1/analyze", data, object_threshold=0.25, face_threshold=0.5, text_threshold=0.5)
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    parts = {key: post(gateway, path, data, **params).json()["results"][0]
             for key, path, params in (("objects", "/v1/detect", {"score_threshold": 0.25}),
                                       ("faces", "/v1/faces", {"score_threshold": 0.5}),
                                       ("lines", "/v1/ocr", {"score_threshold": 0.5}),
                                       ("embedding", "/v1/embed/image", {}))}
    assert res["lines"] and (res["faces"] or "synthetic" in served.provenance("scrfd")), res
    for key in ("objects", "faces", "lines"):
        assert _rounded(res[key]) == _rounded(parts[key][key]), key
    # analyze embeds its 640 frame resized to 256 (clip_resize), /v1/embed/image letterboxes
    # the photo to 256 itself: the same picture through two resizes (measured cosine 0.9989)
    cos = float(np.dot(res["embedding"], parts["embedding"]["embedding"]))
    assert cos >= 0.99, cos


def _rounded(items, places=2):
    """Route answers compared up to float rounding of a different batch composition."""
    def r(v):
        if isinstance(v, float):
            return round(v, places)
        if isinstance(v, list):
            return [r(x) for x in v]
        if isinstance(v, dict):
            return {k: r(x) for k, x in v.items() if k != "embedding"}
        return v
    return r(items)


def test_concurrent_burst_has_no_error(served, gateway, astronaut):
    served.need("yolo")
    data = jpeg(astronaut)
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: post(gateway, "/v1/detect", data).status_code, range(32)))
    assert codes == [200] * 32
    metrics = gateway.metrics()
    assert 'visionserve_gateway_requests_total{route="/v1/detect",status="200"}' in metrics


def test_bad_input_against_the_real_stack(served, gateway, astronaut):
    served.need("yolo")
    data = jpeg(astronaut)
    r = post(gateway, "/v1/detect", data[: len(data) // 2])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = post(gateway, "/v1/detect", b"not an image", "text/plain")
    assert r.status_code == 415


def test_triton_killed_and_restarted(served, gateways, tmp_path, astronaut):
    """A private Triton (one model, so it restarts fast) killed under a live gateway that
    sends through shared memory: the new Triton knows none of its regions."""
    served.need("yolo")
    repo = tmp_path / "repo"
    shutil.copytree(served.derived.path / "yolo", repo / "yolo", symlinks=True)
    ports = free_port(), free_port(), free_port()
    server = TritonServer(repo, *ports, log_path=tmp_path / "triton.log")
    server.start(300)
    key = server.admin_key
    gw = gateways.spawn(server.grpc_url, retry_after_s=2, triton_timeout_s=30,
                        shared_memory="on", triton_admin_key=key)
    data = jpeg(astronaut)
    try:
        gw.wait_ready()
        assert post(gw, "/v1/detect", data).status_code == 200
        server.kill()     # a crash (SIGKILL), not a clean stop
        r = post(gw, "/v1/detect", data)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "triton_unavailable"
        assert r.headers["retry-after"] == "2"
        assert gw.client.get("/readyz").status_code == 503
        assert gw.client.get("/healthz").status_code == 200
        server = TritonServer(repo, *ports, log_path=tmp_path / "triton2.log", admin_key=key)
        server.start(300)
        wait_for(lambda: post(gw, "/v1/detect", data).status_code == 200, 30,
                 "the gateway recovering after Triton's return", every_s=0.2)
        assert gw.client.get("/readyz").status_code == 200
        # the regions were registered again: shared memory, not the wire, after the restart
        before = input_paths(gw)
        assert post(gw, "/v1/detect", data).status_code == 200
        after = input_paths(gw)
        assert after[("yolo", "shm")] == before[("yolo", "shm")] + 1, after
        assert after.get(("yolo", "wire"), 0) == before.get(("yolo", "wire"), 0), after
    finally:
        server.stop()


def test_deadline_is_a_504(served, gateways, astronaut):
    """A deadline far below the model's time on this CPU: the real gRPC deadline fires."""
    served.need("yolo")
    gw = gateways.start(served.server.grpc_url, triton_timeout_s=0.02)
    # an image no other test sends: Triton's response cache (on the encoded entries) would
    # answer a photo it has seen within the deadline (CI: 200 instead of 504)
    unseen = astronaut.copy()
    unseen[:8, :8] = np.frombuffer(os.urandom(8 * 8 * 3), np.uint8).reshape(8, 8, 3)
    r = post(gw, "/v1/detect", jpeg(unseen))
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "triton_timeout"


# -- system shared memory (gateway beside Triton) ---------------------------------------

def _gateway_with(served, tmp_path_factory, shared_memory: str):
    factory = GatewayFactory(tmp_path_factory.mktemp(f"gw_{shared_memory}"))
    try:
        # forward=pixels: frames through shared memory vs over the wire (auto would send the
        # off gateway's images encoded)
        yield factory.start(served.server.grpc_url, shared_memory=shared_memory,
                            triton_admin_key=served.server.admin_key, forward="pixels")
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def shm_gateway(served, tmp_path_factory):
    """shared_memory=on: start-up fails unless the slots register with Triton's key."""
    yield from _gateway_with(served, tmp_path_factory, "on")


@pytest.fixture(scope="module")
def wire_gateway(served, tmp_path_factory):
    yield from _gateway_with(served, tmp_path_factory, "off")


@pytest.mark.parametrize("path,model", [("/v1/faces", "faces"), ("/v1/detect", "yolo")])
def test_shared_memory_gives_the_wire_results_exactly(served, shm_gateway, wire_gateway,
                                                      astronaut, path, model):
    served.need(model)
    one = jpeg(astronaut)
    batch = [("images", (f"{i}.jpg", jpeg(img), "image/jpeg"))
             for i, img in enumerate((astronaut, astronaut[::-1].copy(), astronaut[:, ::-1].copy()))]
    before = input_paths(shm_gateway)
    for kw in ({"content": one, "headers": {"content-type": "image/jpeg"}}, {"files": batch}):
        results = []
        for gw in (wire_gateway, shm_gateway):
            r = gw.client.post(path, **kw)
            assert r.status_code == 200, r.text
            results.append(r.json())
        assert results[0] == results[1]
        assert results[0]["results"], results[0]
    after = input_paths(shm_gateway)
    assert after.get((model, "shm"), 0) - before.get((model, "shm"), 0) >= 2, after
    assert after.get((model, "wire"), 0) == before.get((model, "wire"), 0), after
    assert not any(p == "shm" for _, p in input_paths(wire_gateway)), input_paths(wire_gateway)


def test_shared_memory_gateway_probes_and_concurrency(served, shm_gateway, astronaut):
    served.need("yolo")
    c = shm_gateway.client
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    assert c.get("/v1/models").status_code == 200
    data = [jpeg(astronaut), jpeg(astronaut[::-1].copy())]
    want = [post(shm_gateway, "/v1/detect", d).json() for d in data]
    # concurrent requests share the pool: no slot may be handed to two requests at once
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda i: post(shm_gateway, "/v1/detect", data[i % 2]), range(36)))
    assert [r.status_code for r in got] == [200] * 36
    assert all(r.json() == want[i % 2] for i, r in enumerate(got))


def test_shared_memory_survives_lost_registrations(served, shm_gateway, astronaut):
    """What a Triton restart does to the regions (unregistered behind the gateway's
    back): the next call re-registers and still goes through shared memory."""
    import tritonclient.grpc as grpcclient

    served.need("yolo")
    data = jpeg(astronaut)
    want = post(shm_gateway, "/v1/detect", data).json()
    client = grpcclient.InferenceServerClient(served.server.grpc_url)
    try:
        from gateway.backend import ADMIN_METADATA

        headers = {ADMIN_METADATA: served.server.admin_key}
        assert client.get_system_shared_memory_status(headers=headers, as_json=True).get("regions")
        client.unregister_system_shared_memory(headers=headers)
        before = input_paths(shm_gateway)
        r = post(shm_gateway, "/v1/detect", data)
        assert r.status_code == 200, r.text
        assert r.json() == want
        after = input_paths(shm_gateway)
        assert after[("yolo", "shm")] == before.get(("yolo", "shm"), 0) + 1, after
        assert client.get_system_shared_memory_status(headers=headers, as_json=True).get("regions")
    finally:
        client.close()


def test_shared_memory_on_with_a_wrong_key_refuses_the_endpoint(served, gateways):
    """shared_memory=on is required: an endpoint that refuses the registration is never
    used; the gateway stays up and /readyz says why (no crash loop). Polled until the
    endpoint's state is known, not waited out."""
    gw = gateways.spawn(served.server.grpc_url, shared_memory="on", triton_admin_key="not-the-key")

    def endpoint_state():
        try:
            body = gw.readiness()
        except (httpx.TransportError, ValueError):
            return None
        return body.get("endpoints", [{}])[0].get("state")

    wait_for(lambda: endpoint_state() not in (None, "connecting"), 60, "the endpoint judged")
    assert gw.client.get("/readyz").status_code == 503
    (endpoint,) = gw.readiness()["endpoints"]   # the admin view, on the metrics port
    assert endpoint["state"] == "refused" and "shared_memory=on" in endpoint["reason"], endpoint
    assert gw.client.get("/healthz").status_code == 200 and gw.alive()
