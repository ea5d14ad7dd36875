"""What the routes learn from the catalog instead of restating it: the outputs they ask
for, how many results a model can return (K), and the score floors baked into models
(a threshold under a floor is refused with 422 naming it, never silently raised)."""
from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

import contract
from gateway.app import create_app
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend

JPEG_HEADERS = {"content-type": "image/jpeg"}


def _jpeg() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 96, 3), 80, np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


def client(repo=contract.MODEL_REPOSITORY, **kw) -> TestClient:
    s = GatewaySettings(startup_wait_s=0, metrics_port=0, contract_repository=repo, **kw)
    return TestClient(create_app(s, backend=FakeBackend(repo)))


def floor(model: str, key: str = "score_threshold") -> float:
    return float(contract.load(model).config.parameters[key].string_value)


def error(r) -> tuple[int, str, str]:
    body = r.json()["error"]
    return r.status_code, body["code"], body["message"]


@pytest.mark.parametrize("path,params,model,key", [
    ("/v1/detect", {"model": "centernet"}, "centernet", "score_threshold"),
    ("/v1/detect", {}, "yolo", "score_threshold"),
    ("/v1/faces", {}, "scrfd", "score_threshold"),
    ("/v1/ocr", {}, "ocr", "text_score"),
])
def test_a_threshold_under_the_models_floor_is_refused_naming_it(path, params, model, key):
    low = round(floor(model, key) - 0.05, 2)
    with client() as c:
        r = c.post(path, content=JPEG, headers=JPEG_HEADERS,
                   params={**params, "score_threshold": low})
        status, code, message = error(r)
        assert (status, code) == (422, "invalid_parameter"), r.text
        assert str(floor(model, key)) in message and model in message
        # at the floor: accepted
        r = c.post(path, content=JPEG, headers=JPEG_HEADERS,
                   params={**params, "score_threshold": floor(model, key)})
        assert r.status_code == 200, r.text


def test_default_thresholds_are_never_under_the_floor():
    """centernet's default used to be yolo's 0.25 under its own baked 0.3."""
    with client() as c:
        spec = c.app.openapi()
    with client() as c:
        models = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
    assert models["centernet"]["score_floor"] == floor("centernet")
    assert models["yolo"]["score_floor"] == floor("yolo")
    assert models["faces"]["score_floor"] == floor("scrfd")
    assert models["ocr"]["score_floor"] == floor("ocr", "text_score")
    assert spec["paths"]["/v1/detect"]["post"]


def test_analyze_floors_follow_the_ensemble_to_its_steps():
    with client() as c:
        for param, model, key in (("object_threshold", "yolo", "score_threshold"),
                                  ("face_threshold", "scrfd", "score_threshold"),
                                  ("text_threshold", "ocr", "text_score")):
            r = c.post("/v1/analyze", content=JPEG, headers=JPEG_HEADERS,
                       params={param: round(floor(model, key) - 0.05, 2)})
            status, code, message = error(r)
            assert (status, code) == (422, "invalid_parameter"), (param, r.text)
            assert param in message and str(floor(model, key)) in message


def _repo_with_k(tmp_path, model: str, k: int):
    """A contract repository where `model` returns K=k rows per image."""
    repo = tmp_path / "repo"
    shutil.copytree(contract.MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("*.onnx", "*.plan"))
    cfg = contract.load(model, repo).config
    for out in cfg.output:
        if out.dims and out.dims[0] > 1:
            out.dims[0] = k
    (repo / model / "config.pbtxt").write_text(contract.to_text(cfg))
    return repo


def test_result_limit_is_the_models_k(tmp_path):
    repo = _repo_with_k(tmp_path, "yolo", 40)
    with client(repo) as c:
        r = c.post("/v1/detect", content=JPEG, headers=JPEG_HEADERS, params={"max_results": 41})
        status, code, message = error(r)
        assert (status, code) == (422, "invalid_parameter") and "40" in message
        assert c.post("/v1/detect", content=JPEG, headers=JPEG_HEADERS,
                      params={"max_results": 40}).status_code == 200
        # centernet keeps its own K (100)
        assert c.post("/v1/detect", content=JPEG, headers=JPEG_HEADERS,
                      params={"model": "centernet", "max_results": 100}).status_code == 200


def test_routes_ask_for_the_outputs_the_config_declares():
    fake = FakeBackend()
    asked = []
    real = fake.infer

    async def infer(model, inputs, outputs, **kw):
        asked.append((model, tuple(outputs)))
        return await real(model, inputs, outputs, **kw)

    fake.infer = infer
    s = GatewaySettings(startup_wait_s=0, metrics_port=0)
    with TestClient(create_app(s, backend=fake)) as c:
        for path in ("/v1/faces", "/v1/detect", "/v1/ocr", "/v1/analyze", "/v1/embed/image"):
            assert c.post(path, content=JPEG, headers=JPEG_HEADERS).status_code == 200
    for model, outputs in asked:
        assert outputs == tuple(t.name for t in contract.load(model).outputs), model


def test_readiness_and_the_catalog_ask_triton_about_every_model_at_once():
    """A probe costs one round trip, not one per model: every model's question is in
    flight at the same time (counted by the stubs, not timed)."""
    import asyncio
    from types import SimpleNamespace

    from gateway.backend import TritonBackend
    from gateway.catalog import Catalog, route_models

    ROUTE_MODELS = route_models(contract.MODEL_REPOSITORY)

    class Concurrency:
        def __init__(self):
            self.now = self.most = 0

        async def hold(self):
            self.now += 1
            self.most = max(self.most, self.now)
            await asyncio.sleep(0.05)      # long beside the event loop's own steps
            self.now -= 1

    ready_calls, metadata_calls = Concurrency(), Concurrency()

    class SlowStub:
        async def ServerLive(self, request, timeout=None):
            return SimpleNamespace(live=True)

        async def ModelReady(self, request, timeout=None):
            await ready_calls.hold()
            return SimpleNamespace(ready=True)

    class SlowFake(FakeBackend):
        async def metadata(self, model):
            await metadata_calls.hold()
            return await super().metadata(model)

    async def go():
        backend = TritonBackend("127.0.0.1:1")
        backend._stub = SlowStub()
        states = await backend.ready(list(ROUTE_MODELS))
        await backend.close()
        catalog = await Catalog.learn(SlowFake(), contract.MODEL_REPOSITORY)
        return states, catalog

    states, catalog = asyncio.run(go())
    assert all(states.values()) and len(states) == len(ROUTE_MODELS)
    assert ready_calls.most == len(ROUTE_MODELS), ready_calls.most
    assert set(catalog.models) == set(ROUTE_MODELS)
    assert metadata_calls.most == len(ROUTE_MODELS), metadata_calls.most
