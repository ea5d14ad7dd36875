"""The gateway's edge on a fake Triton: a pipeline passes through the capacity of every
model it runs (derived from the catalog), error bodies and /readyz say nothing internal,
and the admin readiness view says everything."""
from __future__ import annotations

import re
import time
import types

import grpc
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.backend import translate
from gateway.errors import TritonUnavailable
from gateway.routes.system import admin_view
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend
from tests.support.fakes import JPEG, app_client, multipart

SECRET_ADDRESS = "10.9.8.7:8001"
TRITON_WORDS = "Exceeds maximum queue size"


def post(c, path, **kw):
    return c.post(path, content=JPEG, headers={"content-type": "image/jpeg"}, **kw)


def test_analyze_passes_through_the_gates_of_the_models_it_runs():
    """A model analyze runs (from the catalog's pipeline steps, not a list) at capacity:
    /v1/analyze is refused up front, nothing reaches Triton; with room, it is served."""
    fake = FakeBackend()
    with app_client(fake) as c:
        svc = c.app.state.service
        components = svc.catalog.components("analyze")
        assert "yolo" in components and "mobileclip_image" in components
        assert post(c, "/v1/detect").status_code == 200      # yolo's own call timed
        yolo = svc.capacity["yolo"]
        assert yolo.measured
        held = yolo.enter(yolo.limit)                        # yolo full (e.g. /v1/detect traffic)
        calls = len(fake.calls)
        r = post(c, "/v1/analyze")
        assert r.status_code == 503 and r.json()["error"]["code"] == "gateway_overloaded"
        assert r.headers["retry-after"]
        assert len(fake.calls) == calls                      # refused before any Triton call
        yolo.leave(held)
        assert post(c, "/v1/analyze").status_code == 200
        # the analyze request held one place in every gate it passed, and gave it back
        assert all(svc.capacity[m].in_flight == 0 for m in ("analyze", *components)
                   if m in svc.capacity)
        # its frames counted toward the component's completion rate
        assert svc.capacity["mobileclip_image"]._window_done >= 1


def test_a_model_never_called_directly_does_not_refuse_a_pipeline():
    """arcface runs only inside faces here: its gate counts frames but its floor never
    binds a pipeline whose own gate is measured."""
    with app_client(FakeBackend()) as c:
        svc = c.app.state.service
        r = c.post("/v1/faces", files=multipart(16))
        assert r.status_code == 200, r.text
        arcface = svc.capacity["arcface"]
        assert not arcface.measured and arcface.in_flight == 0


def test_multi_image_requests_take_one_place_per_image():
    fake = FakeBackend()
    with app_client(fake) as c:
        svc = c.app.state.service
        assert post(c, "/v1/embed/image").status_code == 200
        gate = svc.capacity["mobileclip_image"]
        held = gate.enter(gate.limit - 2)
        assert c.post("/v1/embed/image", files=multipart(3)).status_code == 503   # 3 > 2 left
        assert c.post("/v1/embed/image", files=multipart(2)).status_code == 200
        gate.leave(held)


def _rpc_error(code: grpc.StatusCode, details: str):
    return types.SimpleNamespace(code=lambda: code, details=lambda: details)


@pytest.mark.parametrize("code,details,status", [
    (grpc.StatusCode.UNAVAILABLE, f"[request id: 7] {TRITON_WORDS} 256 at {SECRET_ADDRESS}", 429),
    (grpc.StatusCode.INTERNAL, f"python backend stub at {SECRET_ADDRESS} died: Traceback", 502),
    (grpc.StatusCode.UNAVAILABLE, f"failed to connect to all addresses; ipv4:{SECRET_ADDRESS}", 503),
    (grpc.StatusCode.DEADLINE_EXCEEDED, f"Deadline Exceeded at {SECRET_ADDRESS}", 504),
])
def test_error_bodies_carry_no_triton_text_or_address(code, details, status, caplog):
    fake = FakeBackend()
    with app_client(fake) as c:
        fake.fail = translate(_rpc_error(code, details), "yolo", 1)
        with caplog.at_level("WARNING", logger="visionserve.gateway"):
            r = post(c, "/v1/detect")
        assert r.status_code == status
        text = r.text
        for leak in (SECRET_ADDRESS, "10.9.8.7", "8001", TRITON_WORDS, "Traceback", "ipv4",
                     "Deadline Exceeded", "failed to connect"):
            assert leak not in text, (leak, text)
        assert set(r.json()["error"]) == {"code", "message"}
    # the detail went to the log (the operator's view), not to the client
    logged = [rec.getMessage() for rec in caplog.records if f" {status}: " in rec.getMessage()]
    assert logged, caplog.text
    if status != 504:   # (a deadline's detail is the gateway's own words)
        assert any(SECRET_ADDRESS in m for m in logged), logged


def test_readyz_says_ready_or_not_and_the_admin_view_says_why():
    fake = FakeBackend()
    with app_client(fake, health_interval_s=0.05) as c:
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json() == {"ready": True}
        fake.fail = TritonUnavailable(f"failed to connect to {SECRET_ADDRESS}", retry_after=1)
        for _ in range(200):
            r = c.get("/readyz")
            if r.status_code == 503:
                break
            time.sleep(0.02)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert set(r.json()) == {"ready", "reason"} and r.json()["ready"] is False
        assert not re.search(r"\d+\.\d+\.\d+\.\d+|:\d{2,5}\b|ejected|connecting", r.text), r.text
        ready, detail = admin_view(c.app)()
        assert ready is False
        (endpoint,) = detail["endpoints"]
        assert endpoint["state"] == "ejected" and SECRET_ADDRESS in endpoint["reason"]
        assert "capacity_frames" in detail


def test_an_unexpected_error_names_nothing():
    fake = FakeBackend()
    fake.fail = KeyError("/srv/secret/path")
    with TestClient(create_app(GatewaySettings(), backend=fake), raise_server_exceptions=False) as c:
        r = post(c, "/v1/detect")
    assert r.status_code == 500 and r.json()["error"] == {"code": "internal_error",
                                                         "message": "internal error"}
