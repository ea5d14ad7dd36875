"""The seventh model, SCRFD-500M (../shared/weights/scrfd_500m_kps.onnx), through every path:
its derived GPU and CPU configs, gRPC (the detector and its faces pipeline), the gateway
(/v1/faces?model=scrfd_500m, /v1/models), and the perf tools. Nothing outside its record,
its config folders and this file names it: every list it appears in is derived."""
from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

import contract
from contract.routes import route_table
from export.boxes import iou_matrix
from serving import profiles
from serving.cpu_machine import CpuSettings


pytestmark = pytest.mark.integration
DETECTOR, PIPELINE, CHOICE = "scrfd_500m", "faces_scrfd_500m", "scrfd_500m"
# SCRFD-2.5G's published box on the astronaut (../shared/weights/README.md): 640x640 input
# pixels, and the original 512x512 image's
KNOWN_640 = np.array([[226, 69, 339, 223]], np.float32)
KNOWN_512 = np.array([[181, 55, 271, 178]], np.float32)


def test_contract_routes_and_derived_profiles():
    """Its facts reach the route table, and both derived profiles keep its interface."""
    table = route_table()
    assert table.route("faces").model_for(CHOICE) == PIPELINE
    assert table.endpoint(PIPELINE) == "/v1/faces?model=scrfd_500m"
    assert contract.load(PIPELINE).steps == (DETECTOR, "face_align", "arcface")
    c = contract.load(DETECTOR)
    gpu = profiles.transform(c.config, "onnx-gpu")
    (trt,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert gpu.platform == "onnxruntime_onnx" and trt.name == "tensorrt"
    assert trt.parameters["trt_profile_max_shapes"] == f"images:{c.max_batch_size}x640x640x3"
    cpu = profiles.transform(c.config, "cpu", cpu=CpuSettings().resolve(cores=2, bf16=False))
    assert cpu.backend == "python" and profiles.summary(cpu) == profiles.summary(c.config)


def _real(served):
    served.need(PIPELINE)
    prov = json.loads((served.derived.path / DETECTOR / "1" / "export.json").read_text())["provenance"]
    if "500m" not in prov:
        pytest.skip(f"{DETECTOR} is not the real SCRFD-500M (provenance: {prov}); export it with "
                    "../shared/weights in VISIONSERVE_WEIGHTS_DIR: make export-onnx MODELS=scrfd_500m")


@pytest.fixture(scope="module")
def astronaut640(astronaut):
    import cv2

    return cv2.resize(astronaut, (640, 640), interpolation=cv2.INTER_LINEAR)


def test_grpc_detector_and_pipeline_find_the_astronaut(served, astronaut640):
    _real(served)
    frames = np.stack([astronaut640, np.full_like(astronaut640, 127)])
    det = served.infer("grpc", DETECTOR, {"images": frames})
    assert det["num_detections"].reshape(-1).tolist() == [1, 0]
    assert iou_matrix(det["boxes"][0, :1], KNOWN_640)[0, 0] > 0.5 and det["scores"][0, 0] > 0.5
    out = served.infer("grpc", PIPELINE, {"images": frames})
    assert out["num_faces"].reshape(-1).tolist() == [1, 0]
    np.testing.assert_allclose(out["boxes"][0, 0], det["boxes"][0, 0], atol=1e-4)   # its detector's faces
    assert abs(np.linalg.norm(out["embeddings"][0, 0]) - 1.0) < 1e-3 and not out["embeddings"][1].any()


@pytest.fixture(scope="module")
def gateway(served, tmp_path_factory):
    from perf.gatewayproc import Gateway

    gw = Gateway(served.server.grpc_url, tmp_path_factory.mktemp("gw500m") / "gateway.log")
    try:
        yield gw.wait_ready()
    finally:
        gw.stop()


def test_gateway_route_and_model_listing(served, gateway, astronaut):
    _real(served)
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "JPEG", quality=92)
    r = gateway.client.post("/v1/faces", params={"model": CHOICE}, content=buf.getvalue(),
                            headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == PIPELINE
    (face,) = body["results"][0]["faces"]
    assert iou_matrix(np.array([face["box"]], np.float32), KNOWN_512)[0, 0] > 0.5
    bad = gateway.client.post("/v1/faces", params={"model": "nope"}, content=buf.getvalue(),
                              headers={"content-type": "image/jpeg"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"
    listed = {m["name"]: m for m in gateway.client.get("/v1/models").json()["models"]}
    assert listed[PIPELINE]["endpoint"] == "/v1/faces?model=scrfd_500m"
    assert DETECTOR in listed[PIPELINE]["components"]


def test_perf_tools_reach_it(served, gateway):
    """bench_models (gRPC) and bench_pipelines (HTTP) take it from the contract, briefly."""
    from perf import bench_pipelines
    from perf.bench_models import Sweep, bench_model

    _real(served)
    sweep = Sweep(url=served.server.grpc_url, metrics_url=served.server.metrics_url, batches=(1,),
                  concurrencies=(2,), requests=6, seconds=10, warmup=1, progress=False)
    (rec,) = asyncio.run(bench_model(PIPELINE, sweep))
    assert rec.errors == 0 and rec.requests >= 6
    target = f"faces:{CHOICE}"
    assert target in bench_pipelines.targets()
    sc = bench_pipelines.Scenarios(single=3, seconds=20)
    from export import scene

    (rec,) = asyncio.run(bench_pipelines.bench(gateway.url, [target], ["single"], sc, scene.scene_jpeg(720, 1280),
                                               progress=False))
    assert rec.errors == 0 and rec.requests == 3 and rec.extra["route"] == "/v1/faces?model=scrfd_500m"
