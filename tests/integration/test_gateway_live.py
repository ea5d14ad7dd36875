"""The gateway as a real process against the real embedded Triton (the `served` fixture):
every endpoint on real images, a concurrent burst, and Triton killed and restarted
under it (503 + Retry-After, /readyz false, recovery without restarting the gateway)."""
from __future__ import annotations

import io
import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from contract.routes import route_table
from serving.tritonserver import TritonServer, free_port

httpx = pytest.importorskip("httpx")
from perf.gatewayproc import Gateway  # noqa: E402  (needs httpx)

pytestmark = pytest.mark.integration
# SCRFD-2.5G on the astronaut, in original 512x512 pixels (../shared/weights/README.md)
ASTRONAUT_FACE = np.array([181, 55, 271, 178], np.float32)


def jpeg(img: np.ndarray, quality=92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def gateway(served, tmp_path_factory):
    gw = Gateway(served.server.grpc_url, tmp_path_factory.mktemp("gw") / "gateway.log")
    try:
        yield gw.wait_ready()
    finally:
        gw.stop()


def provenance(served, model) -> str:
    p = served.derived.path / model / "1" / "export.json"
    return json.loads(p.read_text())["provenance"] if p.is_file() else "unknown"


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


def test_detect_on_the_astronaut(served, gateway, astronaut):
    served.need("yolo")
    r = post(gateway, "/v1/detect", jpeg(astronaut))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert (res["width"], res["height"]) == (512, 512)
    boxes = np.array([o["box"] for o in res["objects"]]).reshape(-1, 4)
    assert ((boxes >= 0) & (boxes <= 512)).all()
    if "synthetic" not in provenance(served, "yolo"):
        assert "person" in {o["label"] for o in res["objects"]}


def test_faces_on_the_astronaut_in_original_pixels(served, gateway, astronaut):
    served.need("faces")
    r = post(gateway, "/v1/faces", jpeg(astronaut))
    assert r.status_code == 200, r.text
    found = r.json()["results"][0]["faces"]
    prov = provenance(served, "scrfd")
    if "synthetic" in prov or "2.5g" not in prov.lower():
        pytest.skip(f"scrfd is not the real SCRFD-2.5G (provenance: {prov})")
    assert len(found) == 1
    np.testing.assert_allclose(found[0]["box"], ASTRONAUT_FACE, atol=12)
    assert abs(np.linalg.norm(found[0]["embedding"]) - 1) < 1e-3


def test_embeddings_image_and_text(served, gateway, astronaut):
    served.need("mobileclip_image", "text_embed")
    r = gateway.client.post("/v1/embed/image", files=[
        ("images", ("a.jpg", jpeg(astronaut), "image/jpeg")),
        ("images", ("b.jpg", jpeg(astronaut[::-1].copy()), "image/jpeg"))])
    assert r.status_code == 200, r.text
    embs = np.array([x["embedding"] for x in r.json()["results"]])
    assert embs.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(embs, axis=1), 1.0, atol=1e-3)
    r = gateway.client.post("/v1/embed/text", json={"texts": ["an astronaut", "an astronaut"]})
    assert r.status_code == 200, r.text
    t = np.array([x["embedding"] for x in r.json()["results"]])
    np.testing.assert_allclose(t[0], t[1], atol=1e-5)
    assert r.json()["results"][0]["text"] == "an astronaut"


def text_image(lines, w=900, h=500):
    import cv2

    img = np.full((h, w, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(img, text, (40, 140 + 200 * i), cv2.FONT_HERSHEY_SIMPLEX, 3.0, (0, 0, 0), 7,
                    cv2.LINE_AA)
    return img


def test_ocr_reads_rendered_text_back(served, gateway):
    served.need("ocr")
    lines = ["SERVING 2026", "HELLO WORLD"]
    r = post(gateway, "/v1/ocr", jpeg(text_image(lines)))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    got = " ".join(x["text"] for x in res["lines"]).upper().replace(" ", "")
    if "synthetic" in provenance(served, "ppocr_rec"):
        pytest.skip("ppocr_rec has synthetic weights: cannot read text back")
    for line in lines:
        assert line.replace(" ", "") in got, res["lines"]
    polys = np.array([x["polygon"] for x in res["lines"]])
    # original 900x500 pixels: the lines sit in the left part of their own rows
    assert ((polys[..., 0] >= 0) & (polys[..., 0] <= 900)).all()
    assert ((polys[..., 1] >= 0) & (polys[..., 1] <= 500)).all()


def test_analyze_everything_in_one_call(served, gateway, astronaut):
    served.need("analyze")
    r = post(gateway, "/v1/analyze", jpeg(astronaut))
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert {"objects", "faces", "lines", "embedding"} <= set(res)
    assert len(res["embedding"]) == 512


def test_concurrent_burst_has_no_error(served, gateway, astronaut):
    served.need("yolo")
    data = jpeg(astronaut)
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: post(gateway, "/v1/detect", data).status_code, range(48)))
    assert codes == [200] * 48
    metrics = gateway.metrics()
    assert 'visionserve_gateway_requests_total{route="/v1/detect",status="200"}' in metrics


def test_bad_input_against_the_real_stack(served, gateway, astronaut):
    served.need("yolo")
    data = jpeg(astronaut)
    r = post(gateway, "/v1/detect", data[: len(data) // 2])
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    r = post(gateway, "/v1/detect", b"not an image", "text/plain")
    assert r.status_code == 415


def test_triton_killed_and_restarted(served, tmp_path, astronaut):
    """A private Triton (one model, so it restarts fast) killed under a live gateway that
    sends through shared memory: the new Triton knows none of its regions."""
    served.need("yolo")
    repo = tmp_path / "repo"
    shutil.copytree(served.derived.path / "yolo", repo / "yolo", symlinks=True)
    ports = free_port(), free_port(), free_port()
    server = TritonServer(repo, *ports, log_path=tmp_path / "triton.log")
    server.start(300)
    key = server.admin_key
    gw = Gateway(server.grpc_url, tmp_path / "gateway.log", retry_after_s=2, triton_timeout_s=30,
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
        deadline, code = time.monotonic() + 30, None
        while time.monotonic() < deadline and code != 200:
            code = post(gw, "/v1/detect", data).status_code
            time.sleep(0.2)
        assert code == 200, "the gateway did not recover within 30 s of Triton's return"
        assert gw.client.get("/readyz").status_code == 200
        # the regions were registered again: shared memory, not the wire, after the restart
        before = input_paths(gw)
        assert post(gw, "/v1/detect", data).status_code == 200
        after = input_paths(gw)
        assert after[("yolo", "shm")] == before[("yolo", "shm")] + 1, after
        assert after.get(("yolo", "wire"), 0) == before.get(("yolo", "wire"), 0), after
    finally:
        gw.stop()
        server.stop()


def test_deadline_is_a_504(served, tmp_path, astronaut):
    """A deadline far below the model's time on this CPU: the real gRPC deadline fires."""
    served.need("yolo")
    gw = Gateway(served.server.grpc_url, tmp_path / "gateway.log", triton_timeout_s=0.02)
    try:
        gw.wait_ready()
        r = post(gw, "/v1/detect", jpeg(astronaut))
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "triton_timeout"
    finally:
        gw.stop()


# -- system shared memory (gateway beside Triton) ---------------------------------------

def _gateway_with(served, tmp_path_factory, shared_memory: str):
    gw = Gateway(served.server.grpc_url,
                 tmp_path_factory.mktemp(f"gw_{shared_memory}") / "gateway.log",
                 shared_memory=shared_memory, triton_admin_key=served.server.admin_key)
    try:
        yield gw.wait_ready()
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def shm_gateway(served, tmp_path_factory):
    """shared_memory=on: start-up fails unless the slots register with Triton's key."""
    yield from _gateway_with(served, tmp_path_factory, "on")


@pytest.fixture(scope="module")
def wire_gateway(served, tmp_path_factory):
    yield from _gateway_with(served, tmp_path_factory, "off")


def input_paths(gw) -> dict[tuple[str, str], float]:
    """{(model, "shm" | "wire"): Triton calls} from the gateway's /metrics."""
    text = gw.metrics()
    return {(m, p): float(v) for m, p, v in re.findall(
        r'^visionserve_gateway_triton_input_path_total\{model="([^"]+)",path="([^"]+)"\} (\S+)$',
        text, re.M)}


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


def test_shared_memory_on_with_a_wrong_key_refuses_the_endpoint(served, tmp_path):
    """shared_memory=on is required: an endpoint that refuses the registration is never
    used; the gateway stays up and /readyz says why (no crash loop)."""
    gw = Gateway(served.server.grpc_url, tmp_path / "gateway.log", shared_memory="on",
                 triton_admin_key="not-the-key")
    try:
        with pytest.raises(TimeoutError):
            gw.wait_ready(8)
        r = gw.client.get("/readyz")
        assert r.status_code == 503
        (endpoint,) = r.json()["endpoints"]
        assert endpoint["state"] == "refused" and "shared_memory=on" in endpoint["reason"], endpoint
        assert gw.client.get("/healthz").status_code == 200 and gw.alive()
    finally:
        gw.stop()
