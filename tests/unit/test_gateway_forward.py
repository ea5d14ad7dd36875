"""The `forward` setting (gateway/forward.py) with fakes: the per-endpoint decision (auto:
encoded over the wire, pixels on a shared-memory loopback), the entry points learned from
Triton's metadata and held to the contract's rule, what an encoded request sends (the
client's bytes, one BYTES item per image, chunked at the entry's batch limit), the same
4xx as the pixels path before anything is forwarded, and Triton's decode refusal as 400.
Equal answers on real models: tests/integration/test_gateway_forward_live.py."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

import contract
from contract import encoded
from contract.routes import route_table
from gateway.errors import TritonError
from gateway.fleet import Fleet
from gateway.metrics import Metrics
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend, metrics_text
from serving import encoded as generator
from tests.support.fakes import JPEG, ShmFake, app_client, multipart
from tests.support.images import noise_jpeg
from tests.unit import crafted_images as crafted

MODELS = ("yolo", "faces", "scrfd", "face_align", "arcface", "mobileclip_image")
JPEG_HDR = {"content-type": "image/jpeg"}


def entry_models() -> tuple[str, ...]:
    """The route models the contract's rule gives an entry point (never a hand list)."""
    routed = route_table(contract.MODEL_REPOSITORY).models
    return tuple(m for m in routed if encoded.has_entry(contract.load(m)))


def test_the_gateways_expected_entry_tensors_are_what_the_generator_writes():
    """contract.encoded.entry_contract (what the gateway holds Triton to) equals the
    ensemble serving/encoded.py generates, for every entry point of every profile."""
    contracts = contract.load_all()
    es = generator.entries(contracts)
    assert es
    for e in es:   # the entry is the same in every profile: its cached chain differs
        want = encoded.entry_contract(contracts[e.model])
        got = generator.ensemble_config(e, contracts[e.model])
        assert got.name == want.name == e.name
        assert got.max_batch_size == want.max_batch_size
        assert [(t.name, t.data_type, list(t.dims)) for t in got.input] == \
            [(t.name, t.data_type, list(t.dims)) for t in want.config.input]
        assert [(t.name, t.data_type, list(t.dims)) for t in got.output] == \
            [(t.name, t.data_type, list(t.dims)) for t in want.config.output]


# -- the decision, per endpoint -------------------------------------------------------------
def fleet_of(fakes: dict, **settings):
    s = GatewaySettings(triton_grpc="ipv4:" + ",".join(fakes), health_interval_s=0.05,
                        probe_backoff_max_s=0.1, **settings)
    return Fleet(s, Metrics(), connect=fakes.__getitem__)


def probed(fakes: dict, **settings):
    async def go():
        fleet = fleet_of(fakes, **settings)
        await fleet.start()
        try:
            return fleet.readiness()[1], {m: fleet.encoded(m) for m in MODELS}
        finally:
            await fleet.close()
    return asyncio.run(go())


def endpoints(body) -> dict:
    return {e["address"]: e for e in body["endpoints"]}


def test_auto_sends_encoded_over_the_wire_and_pixels_on_a_shared_memory_loopback():
    local, remote = "127.0.0.2:8001", "10.9.8.7:8001"
    fakes = {local: ShmFake(models=MODELS, encoded=True), remote: FakeBackend(models=MODELS, encoded=True)}

    async def go():
        fleet = fleet_of(fakes, triton_admin_key="k")   # shared memory with the local one
        await fleet.start()
        try:
            eps = endpoints(fleet.readiness()[1])
            assert eps[local]["shared_memory"] is True
            assert set(eps[local]["forward"].values()) == {"pixels"}, eps[local]
            assert "shared memory" in eps[local]["forward_reason"]
            assert eps[remote]["forward"] == {m: "encoded" for m in entry_models() if m in MODELS}
            assert {"yolo", "faces", "mobileclip_image"} <= set(eps[remote]["forward"])
            # an entry point goes only to the endpoint that sends it encoded
            batch = np.empty((1, 1), np.object_)
            batch[0, 0] = JPEG
            await asyncio.gather(*(fleet.infer("yolo_encoded", {"image": batch}, ("boxes", "original_size"))
                                   for _ in range(8)))
            assert [m for m, _ in fakes[remote].calls] == ["yolo_encoded"] * 8
            assert fakes[local].calls == []
        finally:
            await fleet.close()
    asyncio.run(go())


def test_auto_on_loopback_without_shared_memory_is_encoded():
    body, enc = probed({"127.0.0.2:8001": FakeBackend(models=MODELS, encoded=True)})   # no admin key
    (ep,) = body["endpoints"]
    assert ep["forward_reason"].startswith("auto: it serves the encoded entry points")
    assert enc == {m: m in entry_models() for m in MODELS}
    assert enc["yolo"] and not enc["scrfd"]


def test_auto_without_entry_points_is_pixels_and_pixels_never_asks_for_them():
    body, enc = probed({"10.9.8.7:8001": FakeBackend(models=MODELS)})
    assert not any(enc.values()) and body["ready"]
    assert body["endpoints"][0]["forward_reason"] == "auto: it serves no encoded entry point"
    fake = FakeBackend(models=MODELS, encoded=True)
    asked = []
    real = fake.metadata

    async def metadata(model):
        asked.append(model)
        return await real(model)
    fake.metadata = metadata
    body, enc = probed({"10.9.8.7:8001": fake}, forward="pixels")
    assert not any(enc.values()) and body["ready"]
    assert not any(m.endswith(encoded.SUFFIX) for m in asked), asked


def test_forward_encoded_refuses_an_endpoint_without_the_entry_points():
    body, enc = probed({"10.9.8.7:8001": FakeBackend(models=MODELS)}, forward="encoded")
    (ep,) = body["endpoints"]
    assert not body["ready"] and ep["state"] == "refused", ep
    assert "yolo_encoded" in ep["reason"] and "forward=encoded" in ep["reason"]


def test_an_entry_point_that_contradicts_the_rule_refuses_the_endpoint():
    fake = FakeBackend(models=MODELS, encoded=True)
    meta = asyncio.run(fake.metadata("yolo_encoded"))
    meta["outputs"] = [t for t in meta["outputs"] if t["name"] != encoded.ORIGINAL_SIZE]
    fake.overrides["yolo_encoded"] = meta
    body, _ = probed({"10.9.8.7:8001": fake})
    (ep,) = body["endpoints"]
    assert ep["state"] == "refused" and "original_size" in ep["reason"], ep


def test_a_mixed_fleet_sends_each_request_the_way_its_endpoint_takes_it():
    pixels, enc = "10.9.8.6:8001", "10.9.8.7:8001"
    fakes = {pixels: FakeBackend(models=MODELS), enc: FakeBackend(models=MODELS, encoded=True)}

    async def go():
        fleet = fleet_of(fakes)
        await fleet.start()
        try:
            assert {fleet.encoded("yolo") for _ in range(200)} == {True, False}   # ties: either
            fleet.endpoints[pixels].outstanding = 3          # busy: the balancer picks the other
            assert all(fleet.encoded("yolo") for _ in range(50))
            fleet.endpoints[pixels].outstanding, fleet.endpoints[enc].outstanding = 0, 3
            assert not any(fleet.encoded("yolo") for _ in range(50))
            fleet.endpoints[enc].outstanding = 0
            assert not fleet.encoded("scrfd")                # no entry point anywhere
        finally:
            await fleet.close()
    asyncio.run(go())


# -- requests through the app ---------------------------------------------------------------
def encoded_app(**settings):
    fake = FakeBackend(encoded=True)
    return fake, app_client(fake, **settings)


def test_an_encoded_request_sends_the_clients_bytes_unchanged():
    fake, c = encoded_app()
    sent = []
    real = fake.infer

    async def infer(model, inputs, outputs, **kw):
        sent.append((model, inputs, outputs))
        return await real(model, inputs, outputs, **kw)
    fake.infer = infer
    with c:
        r = c.post("/v1/detect", content=JPEG, headers=JPEG_HDR)
        assert r.status_code == 200, r.text
        (model, inputs, outputs), = sent
        assert model == "yolo_encoded" and list(inputs) == ["image"]
        assert inputs["image"].shape == (1, 1) and inputs["image"][0, 0] == JPEG
        assert encoded.ORIGINAL_SIZE in outputs
        res = r.json()["results"][0]
        assert (res["width"], res["height"]) == (1280, 720)    # original_size, from Triton
        # no mapping in the gateway: the fake's boxes come back as they left "Triton"
        assert res["objects"][0]["box"] == [10.0, 20.0, 110.0, 220.0]
        text = metrics_text(c)
        assert 'visionserve_gateway_triton_forward_total{forward="encoded",model="yolo"} 1.0' in text
        assert f'visionserve_gateway_triton_sent_bytes_total{{model="yolo_encoded"}} {float(len(JPEG))}' in text
        assert "visionserve_gateway_decode_duration_seconds_count 0.0" in text
        _, detail = c.app.state.service.backend.readiness()   # the admin view (metrics port)
        assert detail["endpoints"][0]["forward"]["yolo"] == "encoded"
        assert "endpoints" not in c.get("/readyz").json()      # never to anonymous clients


def test_pixels_setting_decodes_in_the_gateway():
    fake, c = encoded_app(forward="pixels")
    with c:
        assert c.post("/v1/detect", content=JPEG, headers=JPEG_HDR).status_code == 200
        assert fake.calls == [("yolo", 1)]
        assert 'triton_forward_total{forward="pixels",model="yolo"} 1.0' in metrics_text(c)


def test_a_multi_image_request_is_one_call_per_max_batch():
    fake, c = encoded_app(max_images=40)
    mbs = contract.load("mobileclip_image").max_batch_size
    n = mbs + 3
    imgs = [noise_jpeg(64 + i, 48, seed=i) for i in range(n)]
    with c:
        r = c.post("/v1/embed/image", files=[("images", (f"{i}.jpg", d, "image/jpeg"))
                                             for i, d in enumerate(imgs)])
        assert r.status_code == 200, r.text
        assert sorted(fake.calls) == sorted([("mobileclip_image_encoded", mbs), ("mobileclip_image_encoded", 3)])
        assert len(r.json()["results"]) == n
        r = c.post("/v1/detect", files=multipart(3))
        assert fake.calls[-1] == ("yolo_encoded", 3)
        assert [(x["width"], x["height"]) for x in r.json()["results"]] == [(1280, 720)] * 3


BAD = {
    "gif": b"GIF89a" + b"\x00" * 64,
    "jpeg 12-bit": crafted.jpeg_segments((0xC0, crafted.sof(64, 64, precision=12))),
    "jpeg over the side limit": crafted.jpeg_segments((0xC0, crafted.sof(60000, 16))),
    "jpeg over the pixel limit": crafted.jpeg_segments((0xC0, crafted.sof(9000, 9000))),
    "progressive, too many scans": crafted.jpeg(crafted.gradient(120, 160), progressive=True)
    + b"\xff\xda" * 70,
    "not a jpeg body": b"\xff\xd8\xff" + b"\x00" * 32,
    "png chunks broken": b"\x89PNG\r\n\x1a\n" + b"\x00" * 16,
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_image_gets_the_same_4xx_in_both_modes_before_anything_is_sent(name):
    answers = []
    for mode in ("pixels", "encoded"):
        fake, c = encoded_app(forward=mode)
        with c:
            r = c.post("/v1/detect", content=BAD[name], headers=JPEG_HDR)
            answers.append((r.status_code, r.json()["error"]["code"]))
            assert fake.calls == [], (mode, fake.calls)
    assert answers[0] == answers[1], answers
    assert 400 <= answers[0][0] < 500


def test_a_decode_failure_inside_triton_is_400_invalid_image():
    fake, c = encoded_app()
    with c:
        c.get("/readyz")
        fake.fail = TritonError(
            "Triton failed on 'yolo_encoded': INVALID_ARGUMENT in ensemble 'yolo_encoded', "
            "encoded_decode_640x640: item 1: corrupt JPEG data: premature end of data segment")
        r = c.post("/v1/detect", files=multipart(2))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_image"
        assert err["message"] == "image 2: corrupt JPEG data: premature end of data segment"
        fake.fail = TritonError("Triton failed on 'yolo_encoded': INTERNAL boom")
        r = c.post("/v1/detect", content=JPEG, headers=JPEG_HDR)
        assert r.status_code == 502 and r.json()["error"]["code"] == "triton_error"
