"""One trace from HTTP into Triton: a real gateway and a real tritonserver (its
OpenTelemetry mode on, serving/tritonserver.trace_args) both exporting to the OTLP/HTTP
receiver of tests/support/otlp.py on loopback. One /v1/faces request must give ONE trace:
the gateway's spans under the caller's traceparent, Triton's request span a child of the
gateway's Triton-call span, and the faces pipeline's BLS steps children of its model span.

Its own Triton (trace flags are start-up flags) on the faces pipeline alone: ~3 s to start.
"""
from __future__ import annotations

import pytest

import contract
from serving import profiles
from tests.support import triton as triton_support
from tests.support.images import jpeg
from tests.support.otlp import Receiver
from tests.support.polling import wait_for

CALLER_TRACE = "5a1f0c3e9b7d4e2f8a6c1b3d5e7f9a0b"
CALLER_SPAN = "1b2c3d4e5f607182"
GATEWAY_SPANS = {"POST /v1/faces", "read_body", "admission", "decode", "triton faces", "render"}
PIPELINE = "faces"


def test_one_request_is_one_trace_from_http_into_triton(tmp_path):
    triton_support.require_triton()
    derived = profiles.derive("cpu", dest=tmp_path / "repo", models=[PIPELINE], skip_missing=True)
    if PIPELINE not in derived.models:
        pytest.skip(f"{PIPELINE} is not served: {derived.skipped} (make export-onnx)")
    from skimage import data

    from tests.support.gateway import GatewayFactory

    steps = contract.load(PIPELINE, derived.path).steps
    assert steps, "the faces pipeline names its steps in its config"
    factory = GatewayFactory(tmp_path)
    with Receiver() as receiver, triton_support.running(
            derived.path, tmp_path / "triton.log", 180, trace_otlp=receiver.url, trace_rate=0,
            # export every 200 ms (Triton's batch span processor waits 5 s by default)
            extra_args=("--trace-config=opentelemetry,bsp_schedule_delay=200",)) as server:
        try:
            gw = factory.start(server.grpc_url, otlp_endpoint=receiver.url,
                               env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
            untraced = gw.client.post("/v1/faces", content=jpeg(data.astronaut()),
                                      headers={"content-type": "image/jpeg",
                                               "traceparent": f"00-{'0' * 31}1-{CALLER_SPAN}-00"})
            r = gw.client.post("/v1/faces", content=jpeg(data.astronaut()),
                               headers={"content-type": "image/jpeg",
                                        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
            assert untraced.status_code == 200 and r.status_code == 200, r.text
            assert r.json()["results"][0]["faces"], "no face found: the BLS steps after the detector never ran"
            want = 1 + 1 + 1 + 2 * len(steps)   # InferRequest, the pipeline and its compute, each step's
            wait_for(lambda: len([s for s in receiver.trace(CALLER_TRACE) if s.service != "visionserve-gateway"])
                     >= want and GATEWAY_SPANS <= {s.name for s in receiver.trace(CALLER_TRACE)}, 20,
                     "the gateway's and Triton's spans at the receiver")
        finally:
            factory.stop_all()
    assert not receiver.errors, receiver.errors
    spans = receiver.trace(CALLER_TRACE)
    by_id = {s.span_id: s for s in spans}
    gateway = {s.name: s for s in spans if s.service == "visionserve-gateway"}
    triton = [s for s in spans if s.service != "visionserve-gateway"]
    assert set(gateway) == GATEWAY_SPANS
    root = gateway["POST /v1/faces"]
    assert root.parent_id == CALLER_SPAN and root.kind == "server"
    for name in GATEWAY_SPANS - {"POST /v1/faces"}:
        assert gateway[name].parent_id == root.span_id, name
    call = gateway["triton faces"]
    assert call.kind == "client" and call.attributes["model"] == PIPELINE
    assert call.attributes["server.address"] == server.grpc_url
    # Triton's request span is a child of the gateway's Triton-call span...
    (request,) = [s for s in triton if s.parent_id == call.span_id]
    assert request.name == "InferRequest"
    # ...its model span of the pipeline, and each BLS step a child of the pipeline's span
    (pipeline,) = [s for s in triton if s.parent_id == request.span_id]
    assert pipeline.attributes.get("triton.model_name") == PIPELINE
    children = {s.attributes.get("triton.model_name") for s in triton if s.parent_id == pipeline.span_id}
    assert set(steps) <= children, f"BLS steps reported: {sorted(filter(None, children))}"
    for s in triton:   # every Triton span hangs off the gateway's call and starts within it
        assert s.parent_id in by_id, s
        # (not "ends within": Triton ends a compute span after the response is sent: 2 ms
        # after the gateway had the answer, measured)
        assert call.start_ns <= s.start_ns <= call.end_ns, s
    # the unsampled request left nothing at Triton either (no traceparent sent, rate 0)
    assert {s.trace_id for s in receiver.spans} == {CALLER_TRACE}
