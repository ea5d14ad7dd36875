"""An OTLP/HTTP trace receiver on loopback: what a collector sees, for the tracing tests.

`POST /v1/traces` with a protobuf `ExportTraceServiceRequest` (what the gateway's exporter
and Triton's opentelemetry-cpp exporter send; gzip bodies too) is parsed with the message
classes of gateway/otlp.py and kept as `Span`s. Anything else (another path, a JSON body,
bytes that do not parse) is answered 4xx and kept in `errors`, so a test can say what a
sender did wrong. `with Receiver() as r:` serves in a thread on a free port; stopped after.
"""
from __future__ import annotations

import gzip
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


class Receiver:
    def __init__(self, host: str = "127.0.0.1"):
        self.spans: list[Span] = []
        self.errors: list[str] = []
        self.posts = 0
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
        if kind != "application/x-protobuf":
            return self._refuse(h, 415, f"content type {kind!r} (only protobuf is parsed)")
        try:
            spans = parse(body)
        except Exception as exc:   # a body that is not the message: the sender's bug
            return self._refuse(h, 400, f"unparsable ExportTraceServiceRequest: {exc}")
        with self._lock:
            self.spans.extend(spans)
            self.posts += 1
        h.send_response(200)
        h.send_header("Content-Type", "application/x-protobuf")
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

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
