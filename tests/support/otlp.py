"""An OTLP/HTTP trace receiver on loopback: what a collector sees, for the tracing tests.

`POST /v1/traces` with an `ExportTraceServiceRequest` is kept as `Span`s: protobuf (what
the gateway's exporter sends; parsed with the message classes of gateway/otlp.py) or
OTLP/JSON (what Triton 2.51's opentelemetry-cpp exporter sends: ids in hex, field names
in either proto or JSON spelling); gzip bodies too. Anything else (another path or
content type, a body that does not parse) is answered 4xx and kept in `errors`, so a
test can say what a sender did wrong. `content_types` counts what each sender used.
`with Receiver() as r:` serves in a thread on a free port; stopped after.
"""
from __future__ import annotations

import gzip
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.otlp import KIND_NAMES, ExportTraceServiceRequest

MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Span:
    service: str             # the resource's service.name
    trace_id: str            # hex
    span_id: str
    parent_id: str           # "" for a root span
    name: str
    kind: str                # "server", "client", "internal", ...
    start_ns: int
    end_ns: int
    attributes: dict = field(default_factory=dict)
    status: int = 0          # 0 unset, 1 ok, 2 error


def _plain(v):
    """An AnyValue as a Python value."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_plain(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def parse(body: bytes) -> list[Span]:
    """The spans of one ExportTraceServiceRequest."""
    req = ExportTraceServiceRequest.FromString(body)
    out = []
    for rs in req.resource_spans:
        res = {kv.key: _plain(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(
                    service=str(res.get("service.name", "")), trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(), name=s.name,
                    kind=KIND_NAMES.get(s.kind, str(s.kind)), start_ns=s.start_time_unix_nano,
                    end_ns=s.end_time_unix_nano,
                    attributes={kv.key: _plain(kv.value) for kv in s.attributes},
                    status=s.status.code))
    return out


def _key(k: str) -> str:
    """One spelling of a field name: `parent_span_id`, `parentSpanId` -> `parentspanid`."""
    return k.replace("_", "").lower()


def _norm(obj):
    if isinstance(obj, dict):
        return {_key(k): _norm(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_norm(v) for v in obj]
    return obj


def _json_value(v: dict):
    for name, value in v.items():
        if name == "arrayvalue":
            return [_json_value(x) for x in value.get("values", [])]
        if name == "kvlistvalue":
            return {kv["key"]: _json_value(kv.get("value", {})) for kv in value.get("values", [])}
        if name == "intvalue":
            return int(value)        # int64 travels as a string in OTLP/JSON
        return value
    return None


def parse_json(body: bytes) -> list[Span]:
    """The spans of one ExportTraceServiceRequest in OTLP/JSON."""
    req = _norm(json.loads(body))
    out = []
    for rs in req.get("resourcespans", []):
        res = {kv["key"]: _json_value(kv.get("value", {})) for kv in rs.get("resource", {}).get("attributes", [])}
        for ss in rs.get("scopespans", []) + rs.get("instrumentationlibraryspans", []):
            for s in ss.get("spans", []):
                kind = s.get("kind", 0)
                kind = int(kind) if str(kind).isdigit() else {
                    f"SPAN_KIND_{n.upper()}": i for i, n in KIND_NAMES.items()}.get(kind, 0)
                out.append(Span(
                    service=str(res.get("service.name", "")), trace_id=s.get("traceid", "").lower(),
                    span_id=s.get("spanid", "").lower(), parent_id=s.get("parentspanid", "").lower(),
                    name=s.get("name", ""), kind=KIND_NAMES.get(kind, str(kind)),
                    start_ns=int(s.get("starttimeunixnano", 0)), end_ns=int(s.get("endtimeunixnano", 0)),
                    attributes={kv["key"]: _json_value(kv.get("value", {})) for kv in s.get("attributes", [])},
                    status=int((s.get("status") or {}).get("code", 0) or 0)))
    return out


class Receiver:
    def __init__(self, host: str = "127.0.0.1"):
        self.spans: list[Span] = []
        self.errors: list[str] = []
        self.posts = 0
        self.content_types: dict[str, int] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver._post(self)

            def log_message(self, *args):   # quiet: the test reports what matters
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.traces_url = self.url + "/v1/traces"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if h.path != "/v1/traces" or not 0 < length <= MAX_BODY:
            return self._refuse(h, 404 if h.path != "/v1/traces" else 400,
                                f"{h.path}: {length} bytes")
        body = h.rfile.read(length)
        if (h.headers.get("Content-Encoding") or "").lower() == "gzip":
            body = gzip.decompress(body)
        kind = (h.headers.get("Content-Type") or "").split(";")[0].strip()
        parser = {"application/x-protobuf": parse, "application/json": parse_json}.get(kind)
        if parser is None:
            return self._refuse(h, 415, f"content type {kind!r}")
        try:
            spans = parser(body)
        except Exception as exc:   # a body that is not the message: the sender's bug
            return self._refuse(h, 400, f"unparsable ExportTraceServiceRequest ({kind}): {exc}")
        with self._lock:
            self.spans.extend(spans)
            self.posts += 1
            self.content_types[kind] = self.content_types.get(kind, 0) + 1
        h.send_response(200)
        h.send_header("Content-Type", kind)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _refuse(self, h, status: int, why: str) -> None:
        with self._lock:
            self.errors.append(why)
        h.send_response(status)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def describe(self) -> str:
        """What arrived, for a failure message: posts, content types, errors, and the spans
        per trace as service:name."""
        with self._lock:
            by_trace: dict[str, list[str]] = {}
            for s in self.spans:
                by_trace.setdefault(s.trace_id, []).append(f"{s.service}:{s.name}")
            return (f"{self.posts} posts {self.content_types}, errors {self.errors}, spans "
                    + "; ".join(f"{t}: {sorted(n)}" for t, n in by_trace.items()))

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
