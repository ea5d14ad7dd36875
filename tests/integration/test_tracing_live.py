"""One trace from HTTP into Triton: a real gateway and a real tritonserver (its
OpenTelemetry mode on, serving/tritonserver.trace_args) both exporting to the OTLP/HTTP
receiver of tests/support/otlp.py on loopback. One /v1/faces request must give ONE trace:
the gateway's spans under the caller's traceparent, Triton's request span a child of the
gateway's Triton-call span, and the faces pipeline's BLS steps children of its model span;
whether the gateway forwards decoded frames or the client's bytes (faces_encoded).

One Triton for the module (trace flags are start-up flags) on the faces pipeline and its
encoded entry: ~3 s to start.
"""
from __future__ import annotations

import pytest

import contract
from serving import profiles
from tests.support import triton as triton_support
from tests.support.images import jpeg
from tests.support.otlp import Receiver
from tests.support.polling import wait_for

TRACE_IDS = {"pixels": "5a1f0c3e9b7d4e2f8a6c1b3d5e7f9a0", "encoded": "6c2e1d4fa08e5f3a9b7d2c4e6f8a0b1"}
# Triton 2.51 (pytriton wheel) now and then exports nothing of a sampled request (measured
# here: 1 of 12 traced /v1/faces calls, the gateway's spans all there, Triton's none after
# 15 s; cause not found: docs/serving.md, Tracing). The test takes the first of ATTEMPTS
# sampled requests whose whole trace arrives and checks it; a Triton or gateway that
# never joins the traces still fails.
ATTEMPTS, LOST_AFTER_S = 3, 8.0


def trace_ids(forward: str) -> list[str]:
    return [TRACE_IDS[forward] + str(k) for k in range(ATTEMPTS)]
CALLER_SPAN = "1b2c3d4e5f607182"
PIPELINE = "faces"
# the gateway's spans by what it forwards: decoded frames, or the client's bytes after a
# header check (Triton decodes in faces_encoded, which runs the faces pipeline)
GATEWAY_SPANS = {
    "pixels": {"POST /v1/faces", "read_body", "admission", "decode", "triton faces", "render"},
    "encoded": {"POST /v1/faces", "read_body", "admission", "check", "triton faces_encoded", "render"},
}


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A receiver and one Triton exporting to it (trace flags are start-up flags)."""
    triton_support.require_triton()
    tmp = tmp_path_factory.mktemp("tracing")
    derived = profiles.derive("cpu", dest=tmp / "repo", models=[PIPELINE], skip_missing=True)
    if PIPELINE not in derived.models:
        pytest.skip(f"{PIPELINE} is not served: {derived.skipped} (make export-onnx)")
    with Receiver() as receiver, triton_support.running(
            derived.path, tmp / "triton.log", 180, trace_otlp=receiver.url, trace_rate=0,
            # export every 200 ms (Triton's batch span processor waits 5 s by default)
            extra_args=("--trace-config=opentelemetry,bsp_schedule_delay=200",)) as server:
        yield receiver, server, contract.load(PIPELINE, derived.path).steps


@pytest.mark.parametrize("forward", sorted(GATEWAY_SPANS))
def test_one_request_is_one_trace_from_http_into_triton(traced, tmp_path, forward):
    from skimage import data

    from tests.support.gateway import GatewayFactory

    receiver, server, steps = traced
    assert steps, "the faces pipeline names its steps in its config"
    image = jpeg(data.astronaut())
    want = GATEWAY_SPANS[forward] | {"InferRequest", PIPELINE, *steps}
    factory = GatewayFactory(tmp_path)
    try:
        gw = factory.start(server.grpc_url, otlp_endpoint=receiver.url, forward=forward,
                           env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
        untraced = gw.client.post("/v1/faces", content=image,
                                  headers={"content-type": "image/jpeg",
                                           "traceparent": f"00-{'0' * 31}1-{CALLER_SPAN}-00"})
        assert untraced.status_code == 200, untraced.text
        lost = []
        for trace_id in trace_ids(forward):
            r = gw.client.post("/v1/faces", content=image,
                               headers={"content-type": "image/jpeg",
                                        "traceparent": f"00-{trace_id}-{CALLER_SPAN}-01"})
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["faces"], "no face found: the BLS steps after the detector never ran"
            try:     # a whole trace arrives in ~0.3 s here
                wait_for(lambda: want <= {s.name for s in receiver.trace(trace_id)}, LOST_AFTER_S,
                         "the gateway's and Triton's spans at the receiver")
                break
            except AssertionError as exc:
                lost.append(f"{exc}; arrived: {receiver.describe()}")
        else:
            raise AssertionError(f"no complete trace in {ATTEMPTS} sampled requests; wanted "
                                 f"{sorted(want)}: {lost}; Triton's log: {server.log_tail(15)}")
    finally:
        factory.stop_all()
    assert not receiver.errors, receiver.errors
    spans = receiver.trace(trace_id)
    by_id = {s.span_id: s for s in spans}
    gateway = {s.name: s for s in spans if s.service == "visionserve-gateway"}
    triton = [s for s in spans if s.service != "visionserve-gateway"]
    assert set(gateway) == GATEWAY_SPANS[forward]
    root = gateway["POST /v1/faces"]
    assert root.parent_id == CALLER_SPAN and root.kind == "server"
    for name in GATEWAY_SPANS[forward] - {"POST /v1/faces"}:
        assert gateway[name].parent_id == root.span_id, name
    (call,) = [s for s in gateway.values() if s.name.startswith("triton ")]
    entry = call.name.removeprefix("triton ")
    assert call.kind == "client" and call.attributes["model"] == entry
    assert call.attributes["server.address"] == server.grpc_url
    # Triton's request span is a child of the gateway's Triton-call span...
    (request,) = [s for s in triton if s.parent_id == call.span_id]
    assert request.name == "InferRequest"
    # ...its model span of the entry the gateway called (the pipeline, or the encoded entry
    # whose steps run it), and each BLS step a child of the pipeline's span
    (first,) = [s for s in triton if s.parent_id == request.span_id]
    assert first.attributes.get("triton.model_name") == entry
    (pipeline,) = [s for s in triton if s.attributes.get("triton.model_name") == PIPELINE
                   and s.name == PIPELINE]
    ancestor = pipeline
    while ancestor.span_id != request.span_id:      # the pipeline's span hangs off the request
        ancestor = by_id[ancestor.parent_id]
    children = {s.attributes.get("triton.model_name") for s in triton if s.parent_id == pipeline.span_id}
    assert set(steps) <= children, f"BLS steps reported: {sorted(filter(None, children))}"
    for s in triton:   # every Triton span hangs off the gateway's call and starts within it
        assert s.parent_id in by_id, s
        # (not "ends within": Triton ends a compute span after the response is sent: 2 ms
        # after the gateway had the answer, measured)
        assert call.start_ns <= s.start_ns <= call.end_ns, s
    # the unsampled requests left nothing at Triton either (flag 00, rate 0): only the
    # sampled traces of this module's tests arrived
    assert {s.trace_id for s in receiver.spans} <= {t for f in GATEWAY_SPANS for t in trace_ids(f)}
