"""OpenTelemetry spans of a request, from HTTP into Triton: off unless `otlp_endpoint` is set.

Off (the default), nothing of OpenTelemetry is imported and `span()` returns one shared
null context: the hot path pays a function call per span site. On (`configure`, called by
create_app), a request gets a SERVER span (`TracingMiddleware`, outermost: the incoming
W3C `traceparent` is honoured) with children `read_body`, `admission`, `decode`,
`triton <model>` (one per Triton call, a CLIENT span) and `render`; each Triton call
carries the `traceparent` of its span as gRPC metadata (`grpc_metadata`), so Triton's
OpenTelemetry mode (serving/tritonserver.py's `--trace-otlp`) makes its request span a
child of it. Spans leave in a batch from the SDK's own thread (gateway/otlp.py).

Sampling: a request with a `traceparent` follows its sampled flag; others are sampled at
`trace_sample_rate`. Only sampled spans send a `traceparent` to Triton, because Triton
traces every request that carries one, whatever its own rate.
"""
from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("visionserve.gateway.tracing")

_NULL = contextlib.nullcontext()
_tracer = None          # an SDK Tracer while tracing is on
_provider = None
_kinds: dict = {}       # "client" -> SpanKind.CLIENT, filled when on


def enabled() -> bool:
    return _tracer is not None


def span(name: str, kind: str | None = None, **attributes):
    """A context manager: a child span of the current one while tracing is on, else a
    shared null context (no allocation)."""
    if _tracer is None:
        return _NULL
    if kind is None:
        return _tracer.start_as_current_span(name, attributes=attributes)
    return _tracer.start_as_current_span(name, kind=_kinds[kind], attributes=attributes)


def annotate(**attributes) -> None:
    """Attributes on the current span (nothing when off or not sampled)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(attributes)


def grpc_metadata() -> tuple | None:
    """(("traceparent", ...),) of the current span when it is sampled, for a gRPC call."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    meta = (("traceparent", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"),)
    if ctx.trace_state:
        meta += (("tracestate", ctx.trace_state.to_header()),)
    return meta


def configure(endpoint: str | None, sample_rate: float = 1.0, *, exporter=None,
              service_name: str = "visionserve-gateway") -> None:
    """Turn tracing on: spans to `endpoint` (OTLP/HTTP protobuf, batched), or to
    `exporter` (tests: an in-memory exporter, each span exported as it ends).
    OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES and the OTEL_BSP_* batch settings of
    the environment apply as the SDK reads them."""
    global _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import SpanKind

    shutdown()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                              sampler=ParentBased(TraceIdRatioBased(sample_rate)))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from contract.defaults import otlp_traces_url

        from .otlp import OtlpHttpExporter

        url = otlp_traces_url(endpoint)
        provider.add_span_processor(BatchSpanProcessor(OtlpHttpExporter(url)))
        log.info("tracing on: spans to %s, %g of requests without a traceparent sampled",
                 url, sample_rate)
    _kinds.update(server=SpanKind.SERVER, client=SpanKind.CLIENT, internal=SpanKind.INTERNAL)
    _provider, _tracer = provider, provider.get_tracer("visionserve.gateway")


def shutdown() -> None:
    """Export what is left and turn tracing off."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


class TracingMiddleware:
    """The request's SERVER span (ASGI, outermost): the parent of every other span.
    Named `<METHOD> <route template>` once routed (`<METHOD>` alone for an unknown path:
    a bounded set of names); probes (`exempt`) are not traced."""

    def __init__(self, app, exempt: frozenset = frozenset()):
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app, self.exempt = app, exempt
        self._propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope, receive, send):
        if _tracer is None or scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        from opentelemetry.trace import Status, StatusCode

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")}
        parent = self._propagator.extract(carrier) if carrier else None
        method = scope["method"]
        status = 0

        async def watch(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with _tracer.start_as_current_span(
                method, context=parent, kind=_kinds["server"],
                attributes={"http.request.method": method, "url.path": scope["path"]}) as sp:
            try:
                await self.app(scope, receive, watch)
            finally:
                template = getattr(scope.get("route"), "path", None)
                if template:
                    sp.update_name(f"{method} {template}")
                    sp.set_attribute("http.route", template)
                if status:
                    sp.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        sp.set_status(Status(StatusCode.ERROR))
