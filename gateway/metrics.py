"""Prometheus metrics, one registry per app (no module-level globals), served on their
own port (`metrics_port`) by a small threaded server, never on the API port."""
from __future__ import annotations

import logging
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("visionserve.gateway")
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BYTES = tuple(2 ** k for k in range(10, 27, 2))  # 1 KiB .. 64 MiB
# The `route` label of requests that matched no route: one value, whatever the path.
UNMATCHED = "unmatched"


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        p = "visionserve_gateway_"
        self.requests = Counter(p + "requests_total", "HTTP requests answered, by route "
                                "template and status (client disconnects are counted apart)",
                                ("route", "status"), registry=r)
        # by status too: a refusal's latency (503/429) is read apart from the answers'
        self.latency = Histogram(p + "request_duration_seconds", "HTTP request latency in the "
                                 "gateway (request start to answer), by route and status",
                                 ("route", "status"), buckets=_LATENCY, registry=r)
        self.in_flight = Gauge(p + "in_flight_requests", "HTTP requests being served "
                               "(their body in; what max_in_flight caps)", registry=r)
        self.receiving = Gauge(p + "receiving_requests", "HTTP requests whose body is still "
                               "arriving (they hold only the bytes received)", registry=r)
        self.timeouts = Counter(p + "client_timeouts_total", "requests whose client was too "
                                "slow: its head (stage=head) or body (stage=body), 408",
                                ("stage",), registry=r)
        self.connections_refused = Counter(p + "connections_refused_total", "connections "
                                           "refused before a request was read (429), by "
                                           "reason: per_client", ("reason",), registry=r)
        self.disconnects = Counter(p + "client_disconnects_total",
                                   "requests whose client hung up: while sending the body "
                                   "(stage=body) or before the answer (stage=response)",
                                   ("route", "stage"), registry=r)
        self.shed = Counter(p + "shed_total", "requests refused at admission (503 + "
                            "Retry-After), by reason: memory, in_flight, capacity",
                            ("reason",), registry=r)
        self.memory_in_use = Gauge(p + "memory_in_use_bytes", "bytes of bodies and decoded "
                                   "frames held by requests in flight", registry=r)
        self.memory_budget = Gauge(p + "memory_budget_bytes", "the memory budget", registry=r)
        self.decode = Histogram(p + "decode_duration_seconds",
                                "decode + letterbox time of one image (in the pool)",
                                buckets=_LATENCY, registry=r)
        self.triton = Histogram(p + "triton_duration_seconds", "one batched gRPC infer call",
                                ("model",), buckets=_LATENCY, registry=r)
        self.triton_errors = Counter(p + "triton_errors_total", "failed Triton calls by code",
                                     ("model", "code"), registry=r)
        self.bytes_in = Histogram(p + "request_body_bytes", "HTTP request body size",
                                  ("route",), buckets=_BYTES, registry=r)
        self.bytes_to_triton = Counter(p + "triton_sent_bytes_total",
                                       "tensor bytes sent to Triton", ("model",), registry=r)
        self.input_path = Counter(p + "triton_input_path_total",
                                  "Triton calls by how the image tensor travelled: shm "
                                  "(system shared memory) or wire (gRPC bytes)",
                                  ("model", "path"), registry=r)
        self.shm_fallbacks = Counter(p + "shm_wire_fallbacks_total",
                                     "image batches sent over the wire although shared memory "
                                     "is on, by reason", ("reason",), registry=r)
        self.images = Counter(p + "images_total", "images decoded", ("format",), registry=r)
        self.api_key_requests = Counter(p + "api_key_requests_total",
                                        "requests by the label of their API key (api_keys_file; "
                                        'key="" : none or a wrong one, 401) and status',
                                        ("key", "status"), registry=r)
        self._pools: list[Callable[[], dict]] = []
        self._capacity: Callable[[], dict] | None = None
        r.register(_PoolCollector(self))
        r.register(_CapacityCollector(self))

    def watch_pool(self, stats: Callable[[], dict]) -> None:
        """Export a shared-memory slot pool's state (its `stats()`) at every scrape, summed
        with the other pools' (one per Triton endpoint on this machine)."""
        self._pools.append(stats)

    def watch_capacity(self, gates: Callable[[], dict]) -> None:
        """Export each model's capacity gate ({model: ModelCapacity}) at every scrape."""
        self._capacity = gates

    def unwatch_pool(self, stats: Callable[[], dict]) -> None:
        if stats in self._pools:
            self._pools.remove(stats)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeTimeCollector:
    """A custom collector reading the Metrics' sources when scraped (nothing to describe
    up front: families appear once their source exists)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []


class _PoolCollector(_ScrapeTimeCollector):
    """Slots by state and bytes of the shared-memory pool, read when scraped."""

    def collect(self):
        pools = list(self.metrics._pools)
        if not pools:
            return
        s: dict[str, int] = {}
        for stats in pools:
            for key, value in stats().items():
                s[key] = s.get(key, 0) + value
        slots = GaugeMetricFamily("visionserve_gateway_shm_slots",
                                  "shared-memory slots by state: in_use (leased), free, "
                                  "retired (Triton may still read them; reclaimed later)",
                                  labels=("state",))
        for state in ("in_use", "free", "retired"):
            slots.add_metric((state,), s[state])
        yield slots
        yield GaugeMetricFamily("visionserve_gateway_shm_bytes",
                                "bytes of all shared-memory slots", value=s["bytes"])
        yield GaugeMetricFamily("visionserve_gateway_shm_bytes_limit",
                                "shm_pool_bytes", value=s["bytes_limit"])


class _CapacityCollector(_ScrapeTimeCollector):
    """Per model: the admission limit by measured capacity and the requests holding it."""

    def collect(self):
        gates = self.metrics._capacity() if self.metrics._capacity else {}
        limit = GaugeMetricFamily("visionserve_gateway_capacity_limit", "requests a model "
                                  "admits at once (gateway/capacity.py)", labels=("model",))
        held = GaugeMetricFamily("visionserve_gateway_capacity_in_flight",
                                 "requests holding a place in a model's capacity",
                                 labels=("model",))
        for model, gate in sorted(gates.items()):
            limit.add_metric((model,), gate.limit)
            held.add_metric((model,), gate.in_flight)
        yield limit
        yield held


class MetricsServer:
    """Prometheus text (`/metrics`) and the admin readiness view (`/readyz`) on their own
    port, served from daemon threads (a scrape never waits for, or delays, the event
    loop). The port is for the cluster's inside only (Prometheus, operators): it is
    never exposed and needs no key, so what only operators may see lives here.

    `detail()`: (ready, body) of the admin view, or None while the app is starting."""

    def __init__(self, metrics: Metrics, host: str, port: int,
                 detail: Callable[[], tuple[bool, dict] | None] | None = None):
        import socket
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        from prometheus_client import make_wsgi_app

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                flags=socket.AI_PASSIVE)[0][0]

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        scrape = make_wsgi_app(metrics.registry)

        def app(environ, start_response):
            if environ.get("PATH_INFO") == "/readyz" and detail is not None:
                return _detail_view(detail, start_response)
            return scrape(environ, start_response)

        import threading

        self.httpd = make_server(host, port, app, Server, handler_class=Quiet)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        log.info("metrics on http://%s:%d/metrics (admin readiness: /readyz)", host, port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _detail_view(detail, start_response):
    import orjson

    try:
        got = detail()
    except Exception as exc:   # the event loop did not answer in time, or a bug: say so
        got = False, {"ready": False, "reason": f"no readiness detail: {type(exc).__name__} {exc}"}
    ready, body = got if got is not None else (False, {"ready": False, "reason": "starting"})
    data = orjson.dumps(body, option=orjson.OPT_INDENT_2)
    start_response("200 OK" if ready else "503 Service Unavailable",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
