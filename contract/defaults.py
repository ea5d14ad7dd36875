"""Values every layer shares, stated once: where the servers listen by default and the
header that opens Triton's restricted APIs.

The make targets pass a port only when one is given (mk/defaults.mk), so these defaults
hold on the command line too; k8s and compose files state their own deployment's ports.
"""
from __future__ import annotations

HOST = "127.0.0.1"                 # loopback: nothing is exposed unless asked
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002
GATEWAY_PORT = 8080
GATEWAY_METRICS_PORT = 8081

TRITON_GRPC = f"{HOST}:{TRITON_GRPC_PORT}"
TRITON_HTTP = f"{HOST}:{TRITON_HTTP_PORT}"
TRITON_METRICS_URL = f"http://{HOST}:{TRITON_METRICS_PORT}/metrics"
GATEWAY_URL = f"http://{HOST}:{GATEWAY_PORT}"

# Triton's restricted APIs (model repository, shared memory, statistics, ...) want this
# header on HTTP; over gRPC the same key travels as metadata with Triton's prefix.
ADMIN_HEADER = "admin-key"
GRPC_ADMIN_METADATA = f"triton-grpc-protocol-{ADMIN_HEADER}"

# Image limits, judged from the header before any decoding: the gateway's defaults
# (max_image_pixels, max_image_side) and the parameters of Triton's encoded-image decode
# step (serving/encoded.py writes them into its config) both come from here.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_SIDE = 16384
PAD_VALUE = 0                      # letterbox padding (uint8) around the resized image

# OTLP/HTTP traces (the gateway's `otlp_endpoint`, `python -m serving --trace-otlp`): a
# collector's base URL gets the signal path OTLP defines; a URL with a path is kept.
OTLP_TRACES_PATH = "/v1/traces"


def otlp_traces_url(url: str) -> str:
    """`http://collector:4318` -> `http://collector:4318/v1/traces`; a path is kept."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"an OTLP/HTTP endpoint is an http(s):// URL, got {url!r}")
    return url if parts.path not in ("", "/") else url.rstrip("/") + OTLP_TRACES_PATH
