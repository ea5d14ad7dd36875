"""Prometheus metrics, one registry per app (no module-level globals)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BYTES = tuple(2 ** k for k in range(10, 27, 2))  # 1 KiB .. 64 MiB


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        p = "visionserve_gateway_"
        self.requests = Counter(p + "requests_total", "HTTP requests by route and status",
                                ("route", "status"), registry=r)
        self.latency = Histogram(p + "request_duration_seconds", "HTTP request latency",
                                 ("route",), buckets=_LATENCY, registry=r)
        self.in_flight = Gauge(p + "in_flight_requests", "HTTP requests being served",
                               registry=r)
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
        self.images = Counter(p + "images_total", "images decoded", ("format",), registry=r)
