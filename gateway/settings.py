"""Gateway settings: one pydantic-settings class, environment prefix VISIONSERVE_GATEWAY_."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract import MODEL_REPOSITORY, defaults


class GatewaySettings(BaseSettings):
    """Every knob of the gateway. `VISIONSERVE_GATEWAY_MAX_IMAGES=4` etc. override defaults."""

    model_config = SettingsConfigDict(env_prefix="VISIONSERVE_GATEWAY_", frozen=True)

    # Where Triton is: host:port, ipv4:a:p,b:p, ipv6:[a]:p,..., dns:///name:port (every
    # A/AAAA record an endpoint, re-resolved every discovery_interval_s) or
    # dns://DNS_HOST:DNS_PORT/name:port (gateway/target.py).
    triton_grpc: str = Field(defaults.TRITON_GRPC, description="Triton gRPC endpoint(s)")
    host: str = defaults.HOST
    port: int = defaults.GATEWAY_PORT
    # Prometheus /metrics is served ONLY on this port (same host), never on the API port,
    # so it can stay inside the cluster while the API is exposed (`python -m gateway`
    # serves it; create_app alone does not). 0: no metrics server.
    metrics_port: int = Field(defaults.GATEWAY_METRICS_PORT, ge=0, le=65535)
    # /docs, /redoc and /openapi.json: off unless asked for (they describe every route
    # and limit to whoever can reach the API port).
    docs: bool = False
    # API keys (gateway/auth.py): a file of `label:key` lines (`#` comments). Set: every
    # route but /healthz and /readyz requires `Authorization: Bearer <key>` or
    # `X-API-Key: <key>` (401 `unauthorized`), the file re-read when it changes; a file
    # that cannot be read or holds no key stops start-up. Unset: no key required.
    api_keys_file: Path | None = None
    # The committed contract the Triton metadata is checked against at start-up.
    contract_repository: Path = MODEL_REPOSITORY

    # Request limits (client mistakes beyond these are 413 / 422, never 500).
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(defaults.MAX_IMAGE_PIXELS, gt=0, description="judged from the header")
    max_image_side: int = Field(defaults.MAX_IMAGE_SIDE, gt=0)
    max_images: int = Field(16, gt=0, description="images (or texts) per request")
    max_text_chars: int = Field(1000, gt=0)
    # The request line and headers together (uvicorn's httptools parser has no limit of
    # its own; gateway/protocol.py): over it, 431 `header_too_large` and the connection closed.
    max_header_bytes: int = Field(32 * 1024, ge=1024)
    # Slow and idle clients (gateway/protocol.py, gateway/admission.py). A request's head
    # not complete within header_timeout_s of its first byte (or of the connection being
    # opened) is a 408 `header_timeout`; its body not complete within body_timeout_s of its
    # head is a 408 `body_timeout` (at 30 s a 32 MiB body needs ~9 Mbit/s). Either way the
    # connection is closed. Idle keep-alive connections are uvicorn's: closed after 5 s.
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    # Open connections per client address (the socket's peer), beyond which a new one is
    # answered 429 `too_many_connections` and closed before its request is read. Unset:
    # twice the in-flight cap (512), so that a fronting proxy, whose connections all come
    # from its own address, can always carry the gateway's full load; 0: no limit.
    max_connections_per_client: int | None = Field(None, ge=0)

    # Memory admitted at once: bytes of request bodies plus decoded frames (and decode
    # intermediates) of the requests in flight. Checked from Content-Length before a body
    # is read and again while it streams; over it: 503 + Retry-After at once. Sized for
    # a 1 GiB pod: ~150 MB for the process itself, the rest slack for allocator and
    # response buffers (measured: docs/gateway.md).
    memory_budget_bytes: int = Field(512 * 1024 * 1024, gt=0)
    # Concurrency: decode (and big parse/render) threads, and a cap on requests in
    # flight. Unset: the budget divided by a typical one-image request (below).
    decode_threads: int = Field(2, gt=0)
    # A request's images not decoding within this are refused (503 + Retry-After): the
    # decodes not started are cancelled, the running ones (bounded by the image limits)
    # awaited before the answer.
    decode_timeout_s: float = Field(10.0, gt=0)
    max_in_flight: int | None = Field(None, gt=0)

    # Triton calls.
    triton_timeout_s: float = Field(10.0, gt=0, description="deadline of a request's Triton "
                                    "calls, retries included (504); also Triton's queue timeout")
    startup_wait_s: float = Field(5.0, ge=0, description="the longest start-up waits for a first "
                                  "look at the endpoints; the gateway never exits for Triton")
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 503/429")

    # Spreading requests over the endpoints (gateway/fleet.py).
    # least_outstanding: per call, the ready endpoint with the fewest calls in flight, own
    # discovery, health checks and retries. pick_first / round_robin: ONE gRPC channel
    # over the whole target with gRPC's own policy (for a service mesh that balances itself).
    balancer: Literal["least_outstanding", "pick_first", "round_robin"] = "least_outstanding"
    discovery_interval_s: float = Field(15.0, gt=0, description="re-resolve dns: targets")
    health_interval_s: float = Field(2.0, gt=0, description="probe ready endpoints")
    probe_backoff_max_s: float = Field(5.0, gt=0, description="longest wait between probes "
                                       "of an ejected endpoint")
    retry_budget_ratio: float = Field(0.1, ge=0, le=1, description="retries per request, at most")
    # Outlier ejection (gateway/outlier.py): an endpoint whose calls time out while its
    # health check passes (a hung Triton) is ejected after this many timed-out calls in a
    # row, or as many making up `outlier_timeout_ratio` of its calls within
    # `outlier_window_s`; probed back with a real inference. 0: off.
    outlier_timeouts: int = Field(3, ge=0, description="timed-out calls that eject an endpoint")
    outlier_timeout_ratio: float = Field(0.5, gt=0, le=1)
    outlier_window_s: float = Field(30.0, gt=0)

    # Image tensors through system shared memory when beside Triton (gateway/shm.py).
    # auto: when the Triton host is loopback AND an admin key is configured; on: required
    # (start-up fails if the slots cannot be registered); off: always the gRPC wire.
    shared_memory: Literal["auto", "on", "off"] = "auto"
    # Triton restricts its shared-memory API behind the gRPC header `admin-key: <key>`
    # (serving/tritonserver.py; VISIONSERVE_TRITON_ADMIN_KEY chooses Triton's key).
    triton_admin_key: str | None = Field(None, repr=False)

    # Bytes of shared-memory slots the pool may hold (in use, free and retired), on top
    # of the budget above: /dev/shm pages are the gateway's memory too.
    shm_pool_bytes: int = Field(128 * 1024 * 1024, gt=0)

    # OpenTelemetry traces (gateway/tracing.py): off unless set. An OTLP/HTTP collector
    # (`http://collector:4318`, or a full `.../v1/traces` URL); spans are exported in
    # protobuf batches from a background thread. Requests with a W3C `traceparent` follow
    # its sampled flag; others are sampled at `trace_sample_rate`.
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP collector for traces (off when unset)")
    trace_sample_rate: float = Field(1.0, ge=0, le=1, description="share of requests without a "
                                     "traceparent that are traced")

    # What crosses the wire to Triton for image routes (gateway/forward.py): pixels (the
    # gateway decodes; frames through shared memory beside Triton, else gRPC), encoded
    # (the client's JPEG/PNG bytes to `<model>_encoded`, Triton decodes; an endpoint without
    # the entry points is refused), auto: per endpoint, encoded where it serves the entry
    # points and frames would not go through shared memory.
    forward: Literal["pixels", "encoded", "auto"] = "auto"

    # Letterbox padding value (uint8) around the resized image.
    pad_value: int = Field(defaults.PAD_VALUE, ge=0, le=255)

    # What one in-flight request is assumed to hold when max_in_flight is not set: a
    # 640x640 RGB frame (1.2 MB) and its JPEG body (~0.8 MB at most for a phone photo
    # scaled to 1280 px). The count cap then only binds when requests are smaller.
    typical_request_bytes: int = Field(2 * 1024 * 1024, gt=0)

    @property
    def in_flight_limit(self) -> int:
        if self.max_in_flight is not None:
            return self.max_in_flight
        return max(1, self.memory_budget_bytes // self.typical_request_bytes)

    @property
    def connections_per_client(self) -> int:
        """The per-address connection limit (0: none)."""
        if self.max_connections_per_client is not None:
            return self.max_connections_per_client
        return 2 * self.in_flight_limit

    @property
    def request_limit(self) -> int:
        """The most one request may hold: its body limit, and never more than the budget
        (a request that could never fit is a 413, not a 503 to retry)."""
        return min(self.max_body_bytes, self.memory_budget_bytes)

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp(cls, value: str | None) -> str | None:
        if not value:
            return None
        defaults.otlp_traces_url(value)   # an http(s) URL, else a ValueError saying so
        return value

    @field_validator("triton_grpc")
    @classmethod
    def _target(cls, value: str) -> str:
        from .target import parse

        parse(value)   # TargetError (a ValueError) names the accepted forms
        return value
