"""OTLP/HTTP with protobuf bodies: the gateway's span exporter, and the message classes.

Why not opentelemetry-exporter-otlp-proto-http: its messages come from opentelemetry-proto,
which from 1.44 (the API fastapi requires is >= 1.44, and the SDK must match it) needs
protobuf >= 5, while tritonclient[grpc] 2.50 needs protobuf < 5. So the trace messages
of the OTLP schema (opentelemetry/proto/{collector/trace,trace,common,resource}/v1: the
field numbers and wire types are the protocol) are declared here as a protobuf descriptor
and built by the installed protobuf runtime, in a private descriptor pool (no clash with
a real opentelemetry-proto in the same process). The same classes parse what Triton's
OpenTelemetry exporter (opentelemetry-cpp) sends: tests/support/otlp.py's receiver reads
both, so a wrong field number here fails the cross-process test.

Imported only when tracing is on (gateway/tracing.py).
"""
from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

log = logging.getLogger("visionserve.gateway.tracing")

_F = descriptor_pb2.FieldDescriptorProto
_T = {"string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "bool": _F.TYPE_BOOL,
      "int64": _F.TYPE_INT64, "int32": _F.TYPE_INT32, "uint32": _F.TYPE_UINT32,
      "double": _F.TYPE_DOUBLE, "fixed32": _F.TYPE_FIXED32, "fixed64": _F.TYPE_FIXED64}
_PACKAGE = "visionserve.otlp"

# name -> [(field, number, type or message name, repeated?)]; enums travel as int32
# (the same varint on the wire): Span.kind (SpanKind), Status.code (StatusCode).
_MESSAGES: dict[str, list[tuple[str, int, str, bool]]] = {
    "AnyValue": [("string_value", 1, "string", False), ("bool_value", 2, "bool", False),
                 ("int_value", 3, "int64", False), ("double_value", 4, "double", False),
                 ("array_value", 5, "ArrayValue", False), ("kvlist_value", 6, "KeyValueList", False),
                 ("bytes_value", 7, "bytes", False)],
    "ArrayValue": [("values", 1, "AnyValue", True)],
    "KeyValueList": [("values", 1, "KeyValue", True)],
    "KeyValue": [("key", 1, "string", False), ("value", 2, "AnyValue", False)],
    "InstrumentationScope": [("name", 1, "string", False), ("version", 2, "string", False),
                             ("attributes", 3, "KeyValue", True),
                             ("dropped_attributes_count", 4, "uint32", False)],
    "Resource": [("attributes", 1, "KeyValue", True), ("dropped_attributes_count", 2, "uint32", False)],
    "Status": [("message", 2, "string", False), ("code", 3, "int32", False)],
    "Event": [("time_unix_nano", 1, "fixed64", False), ("name", 2, "string", False),
              ("attributes", 3, "KeyValue", True), ("dropped_attributes_count", 4, "uint32", False)],
    "Link": [("trace_id", 1, "bytes", False), ("span_id", 2, "bytes", False),
             ("trace_state", 3, "string", False), ("attributes", 4, "KeyValue", True),
             ("dropped_attributes_count", 5, "uint32", False), ("flags", 6, "fixed32", False)],
    "Span": [("trace_id", 1, "bytes", False), ("span_id", 2, "bytes", False),
             ("trace_state", 3, "string", False), ("parent_span_id", 4, "bytes", False),
             ("name", 5, "string", False), ("kind", 6, "int32", False),
             ("start_time_unix_nano", 7, "fixed64", False), ("end_time_unix_nano", 8, "fixed64", False),
             ("attributes", 9, "KeyValue", True), ("dropped_attributes_count", 10, "uint32", False),
             ("events", 11, "Event", True), ("dropped_events_count", 12, "uint32", False),
             ("links", 13, "Link", True), ("dropped_links_count", 14, "uint32", False),
             ("status", 15, "Status", False), ("flags", 16, "fixed32", False)],
    "ScopeSpans": [("scope", 1, "InstrumentationScope", False), ("spans", 2, "Span", True),
                   ("schema_url", 3, "string", False)],
    "ResourceSpans": [("resource", 1, "Resource", False), ("scope_spans", 2, "ScopeSpans", True),
                      ("schema_url", 3, "string", False)],
    "ExportTraceServiceRequest": [("resource_spans", 1, "ResourceSpans", True)],
    "ExportTraceServiceResponse": [],
}
# Span.kind values (OTLP's SpanKind: 0 is "unspecified", so the SDK's enum is one lower).
KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUS_ERROR = 2
CONTENT_TYPE = "application/x-protobuf"


def _build() -> dict[str, type]:
    fd = descriptor_pb2.FileDescriptorProto(name="visionserve_otlp_trace.proto",
                                            package=_PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        m = fd.message_type.add(name=name)
        if name == "AnyValue":
            m.oneof_decl.add(name="value")
        for field, number, kind, repeated in fields:
            f = m.field.add(name=field, number=number,
                            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if kind in _T:
                f.type = _T[kind]
            else:
                f.type, f.type_name = _F.TYPE_MESSAGE, f".{_PACKAGE}.{kind}"
            if name == "AnyValue":
                f.oneof_index = 0
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
            for name in _MESSAGES}


MESSAGES = _build()
ExportTraceServiceRequest = MESSAGES["ExportTraceServiceRequest"]


def _value(out, v) -> None:
    """An attribute value into AnyValue `out` (bool before int: bool is an int)."""
    if isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, int):
        out.int_value = v
    elif isinstance(v, float):
        out.double_value = v
    elif isinstance(v, (bytes, bytearray)):
        out.bytes_value = bytes(v)
    elif isinstance(v, (list, tuple)):
        arr = out.array_value
        arr.SetInParent()
        for item in v:
            _value(arr.values.add(), item)
    else:
        out.string_value = str(v)


def _attributes(field, attributes) -> None:
    for key, v in (attributes or {}).items():
        _value(field.add(key=key).value, v)


def encode(spans: Sequence) -> bytes:
    """ExportTraceServiceRequest bytes of SDK ReadableSpans, grouped by resource and by
    instrumentation scope as OTLP expects."""
    req = ExportTraceServiceRequest()
    by_resource: dict[int, tuple] = {}
    for sp in spans:
        rs, scopes = by_resource.get(id(sp.resource), (None, None))
        if rs is None:
            rs = req.resource_spans.add()
            _attributes(rs.resource.attributes, sp.resource.attributes)
            scopes = {}
            by_resource[id(sp.resource)] = (rs, scopes)
        scope = sp.instrumentation_scope
        key = (scope.name, scope.version) if scope is not None else ("", None)
        ss = scopes.get(key)
        if ss is None:
            ss = scopes[key] = rs.scope_spans.add()
            ss.scope.name, ss.scope.version = key[0], key[1] or ""
        _span(ss.spans.add(), sp)
    return req.SerializeToString()


def _span(out, sp) -> None:
    ctx = sp.context
    out.trace_id = ctx.trace_id.to_bytes(16, "big")
    out.span_id = ctx.span_id.to_bytes(8, "big")
    if ctx.trace_state:
        out.trace_state = ctx.trace_state.to_header()
    out.flags = int(ctx.trace_flags)
    if sp.parent is not None:
        out.parent_span_id = sp.parent.span_id.to_bytes(8, "big")
    out.name = sp.name
    out.kind = sp.kind.value + 1
    out.start_time_unix_nano = sp.start_time or 0
    out.end_time_unix_nano = sp.end_time or 0
    _attributes(out.attributes, sp.attributes)
    out.dropped_attributes_count = sp.dropped_attributes
    for ev in sp.events:
        e = out.events.add(time_unix_nano=ev.timestamp, name=ev.name)
        _attributes(e.attributes, ev.attributes)
    for link in sp.links:
        lk = out.links.add(trace_id=link.context.trace_id.to_bytes(16, "big"),
                           span_id=link.context.span_id.to_bytes(8, "big"))
        _attributes(lk.attributes, link.attributes)
    code = sp.status.status_code.value      # UNSET 0, OK 1, ERROR 2: OTLP's numbers
    if code or sp.status.description:
        out.status.code = code
        out.status.message = sp.status.description or ""


class OtlpHttpExporter(SpanExporter):
    """A span exporter POSTing protobuf to `url`, in the
    BatchSpanProcessor's own thread (never on the event loop). A collector that is down
    loses those spans (logged once until it answers again), never the requests."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url, self.timeout_s = url, timeout_s
        self._failing = False

    def export(self, spans) -> SpanExportResult:
        request = urllib.request.Request(self.url, data=encode(spans), method="POST",
                                         headers={"Content-Type": CONTENT_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                resp.read()
        except (OSError, ValueError) as exc:   # URLError/HTTPError are OSErrors
            if not self._failing:
                log.warning("exporting %d spans to %s failed: %s (spans are dropped until "
                            "it answers)", len(spans), self.url, exc)
            self._failing = True
            return SpanExportResult.FAILURE
        if self._failing:
            log.info("exporting spans to %s works again", self.url)
        self._failing = False
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
