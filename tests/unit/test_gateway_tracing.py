"""Tracing in the gateway (gateway/tracing.py, gateway/otlp.py): the span tree of a request
on the fake Triton (in-memory exporter), the traceparent a Triton call carries, sampling,
the OTLP protobuf encoding read back by the loopback receiver, and "off costs nothing"."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import ValidationError

from contract.defaults import otlp_traces_url
from gateway import otlp, tracing
from gateway.backend import _AgainAfterGoaway
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend
from tests.support.fakes import JPEG, app_client
from tests.support.otlp import Receiver, parse

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def spans():
    memory = InMemorySpanExporter()
    tracing.configure(None, 1.0, exporter=memory)
    try:
        yield memory
    finally:
        tracing.shutdown()


def _detect(headers=None, fake=None):
    with app_client(fake or FakeBackend()) as c:
        r = c.post("/v1/detect", content=JPEG, headers={"content-type": "image/jpeg", **(headers or {})})
    assert r.status_code == 200, r.text
    return r


def test_a_request_is_one_trace_under_the_callers_traceparent(spans):
    _detect({"traceparent": f"00-{TRACE}-{PARENT}-01"})
    got = {s.name: s for s in spans.get_finished_spans()}
    assert set(got) == {"POST /v1/detect", "read_body", "admission", "decode", "triton yolo", "render"}
    root = got["POST /v1/detect"]
    assert {f"{s.context.trace_id:032x}" for s in got.values()} == {TRACE}
    assert f"{root.parent.span_id:016x}" == PARENT and root.parent.is_remote
    assert root.kind.name == "SERVER"
    assert root.attributes["http.route"] == "/v1/detect"
    assert root.attributes["http.response.status_code"] == 200
    for name in ("read_body", "admission", "decode", "triton yolo", "render"):
        assert got[name].parent.span_id == root.context.span_id, name
    call = got["triton yolo"]
    assert call.kind.name == "CLIENT"
    assert dict(call.attributes) == {"model": "yolo", "batch": 1}
    assert got["decode"].attributes["images"] == 1
    # in order: the body before admission before decoding before the call before the answer
    order = sorted(got.values(), key=lambda s: s.start_time)
    assert [s.name for s in order][1:] == ["read_body", "admission", "decode", "triton yolo", "render"]


def test_without_traceparent_a_new_trace_and_probes_are_not_traced(spans):
    with app_client(FakeBackend()) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/detect", content=JPEG, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200
    finished = spans.get_finished_spans()
    roots = [s for s in finished if s.parent is None]
    assert [s.name for s in roots] == ["POST /v1/detect"]
    assert len({s.context.trace_id for s in finished}) == 1


def test_an_unsampled_caller_and_rate_zero_trace_nothing():
    memory = InMemorySpanExporter()
    tracing.configure(None, 0.0, exporter=memory)
    try:
        _detect({"traceparent": f"00-{TRACE}-{PARENT}-00"})   # the caller decided: not sampled
        _detect()                                             # no caller, rate 0
        assert memory.get_finished_spans() == ()
        _detect({"traceparent": f"00-{TRACE}-{PARENT}-01"})   # a sampled caller wins over the rate
        assert len(memory.get_finished_spans()) == 6
    finally:
        tracing.shutdown()


def test_a_failed_triton_call_marks_its_span_and_the_request_error(spans):
    from gateway.errors import TritonError

    fake = FakeBackend()
    fake.fail = TritonError("boom")
    with app_client(fake) as c:
        r = c.post("/v1/detect", content=JPEG, headers={"content-type": "image/jpeg"})
    assert r.status_code >= 500
    got = {s.name: s for s in spans.get_finished_spans()}
    assert got["triton yolo"].status.status_code.name == "ERROR"
    assert got["POST /v1/detect"].status.status_code.name == "ERROR"
    assert got["POST /v1/detect"].attributes["http.response.status_code"] == r.status_code


class _Method:
    def __init__(self):
        self.kw = []

    async def __call__(self, request, **kw):
        self.kw.append(kw)
        return "ok"


def test_each_triton_call_carries_the_traceparent_of_its_span(spans):
    method = _Method()
    call = _AgainAfterGoaway(method, traced=True)

    async def run():
        with tracing.span("triton yolo", "client") as sp:
            await call(b"request", timeout=1.0)
            return sp.get_span_context()

    ctx = asyncio.run(run())
    # the flags as the SDK set them: sampled (01), and the random bit (02) of trace-context 2
    flags = f"{int(ctx.trace_flags):02x}"
    assert int(flags, 16) & 1
    assert method.kw[0]["metadata"] == (("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags}"),)
    asyncio.run(call(b"request", timeout=1.0))          # outside any span: nothing to send
    assert method.kw[1]["metadata"] is None


def test_off_no_metadata_no_middleware_and_one_shared_null_span():
    assert not tracing.enabled()
    assert tracing.span("decode") is tracing.span("render")
    assert tracing.grpc_metadata() is None
    method = _Method()
    asyncio.run(_AgainAfterGoaway(method, traced=True)(b"r", timeout=1.0))
    assert method.kw == [{"timeout": 1.0, "metadata": None}]
    with app_client(FakeBackend()) as c:
        names = [m.cls.__name__ for m in c.app.user_middleware]
    assert "TracingMiddleware" not in names


def test_off_by_default_imports_no_opentelemetry_sdk():
    code = ("import sys\nfrom gateway.app import create_app\nfrom gateway.testing import FakeBackend\n"
            "from fastapi.testclient import TestClient\n"
            "with TestClient(create_app(backend=FakeBackend())) as c:\n"
            "    c.post('/v1/embed/text', json={'text': 'a'})\n"
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'gateway.otlp'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_setting_turns_it_on_and_validates_the_url(monkeypatch):
    with pytest.raises(ValidationError, match="http"):
        GatewaySettings(otlp_endpoint="collector:4318")
    assert GatewaySettings(otlp_endpoint="").otlp_endpoint is None
    monkeypatch.setenv("VISIONSERVE_GATEWAY_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("VISIONSERVE_GATEWAY_TRACE_SAMPLE_RATE", "0.25")
    s = GatewaySettings()
    assert (s.otlp_endpoint, s.trace_sample_rate) == ("http://127.0.0.1:9", 0.25)
    try:
        with app_client(FakeBackend(), otlp_endpoint=s.otlp_endpoint) as c:
            assert tracing.enabled()
            assert "TracingMiddleware" in [m.cls.__name__ for m in c.app.user_middleware]
        assert not tracing.enabled()       # the app's shutdown turned it off
    finally:
        tracing.shutdown()


@pytest.mark.parametrize("url, full", [
    ("http://c:4318", "http://c:4318/v1/traces"),
    ("http://c:4318/", "http://c:4318/v1/traces"),
    ("https://c/otlp/v1/traces", "https://c/otlp/v1/traces"),
])
def test_otlp_traces_url(url, full):
    assert otlp_traces_url(url) == full


def test_the_protobuf_encoding_reads_back_span_for_span(spans):
    _detect({"traceparent": f"00-{TRACE}-{PARENT}-01"})
    finished = spans.get_finished_spans()
    back = {s.span_id: s for s in parse(otlp.encode(finished))}
    assert len(back) == len(finished) == 6
    for s in finished:
        b = back[f"{s.context.span_id:016x}"]
        assert b.trace_id == TRACE and b.name == s.name
        assert b.parent_id == f"{s.parent.span_id:016x}"
        assert b.kind == s.kind.name.lower()
        assert (b.start_ns, b.end_ns) == (s.start_time, s.end_time) and b.end_ns > b.start_ns
        assert b.attributes == dict(s.attributes)
        assert b.service == "visionserve-gateway"


def test_the_exporter_posts_to_a_receiver_and_survives_a_dead_one(spans):
    from opentelemetry.sdk.trace.export import SpanExportResult

    _detect()
    finished = spans.get_finished_spans()
    with Receiver() as r:
        assert otlp.OtlpHttpExporter(r.url + "/v1/traces").export(finished) == SpanExportResult.SUCCESS
        assert otlp.OtlpHttpExporter(r.url + "/v2/nothing").export(finished) == SpanExportResult.FAILURE
    assert r.errors == ["/v2/nothing: %d bytes" % len(otlp.encode(finished))]
    assert {s.name for s in r.spans} == {s.name for s in finished}
    dead = otlp.OtlpHttpExporter(r.url + "/v1/traces", timeout_s=2)   # the receiver is gone
    assert dead.export(finished) == SpanExportResult.FAILURE
