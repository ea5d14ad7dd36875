"""Gateway settings: one pydantic-settings class, environment prefix VISIONSERVE_GATEWAY_."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.contract import MODEL_REPOSITORY


class GatewaySettings(BaseSettings):
    """Every knob of the gateway. `VISIONSERVE_GATEWAY_MAX_IMAGES=4` etc. override defaults."""

    model_config = SettingsConfigDict(env_prefix="VISIONSERVE_GATEWAY_", frozen=True)

    # Where Triton is: host:port, ipv4:a:p,b:p, ipv6:[a]:p,..., dns:///name:port (every
    # A/AAAA record an endpoint, re-resolved every discovery_interval_s) or
    # dns://DNS_HOST:DNS_PORT/name:port (gateway/target.py).
    triton_grpc: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint(s)")
    host: str = "127.0.0.1"
    port: int = 8080
    # The committed contract the Triton metadata is checked against at start-up.
    contract_repository: Path = MODEL_REPOSITORY

    # Request limits (client mistakes beyond these are 413 / 422, never 500).
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0, description="judged from the header")
    max_image_side: int = Field(16384, gt=0)
    max_images: int = Field(16, gt=0, description="images (or texts) per request")
    max_text_chars: int = Field(1000, gt=0)

    # Concurrency: decode threads, and the in-flight cap that sheds load with 503.
    decode_threads: int = Field(2, gt=0)
    max_in_flight: int = Field(256, gt=0)

    # Triton calls.
    triton_timeout_s: float = Field(10.0, gt=0, description="deadline of a request's Triton "
                                    "calls, retries included (504); also Triton's queue timeout")
    startup_wait_s: float = Field(5.0, ge=0, description="the longest start-up waits for a first "
                                  "look at the endpoints; the gateway never exits for Triton")
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 503/429")

    # Spreading requests over the endpoints (gateway/fleet.py).
    # least_outstanding: per call, the ready endpoint with the fewest calls in flight, own
    # discovery, health checks and retries. pick_first / round_robin: ONE gRPC channel
    # over the whole target with gRPC's own policy (the old behaviour; behind a mesh).
    balancer: Literal["least_outstanding", "pick_first", "round_robin"] = "least_outstanding"
    discovery_interval_s: float = Field(15.0, gt=0, description="re-resolve dns: targets")
    health_interval_s: float = Field(2.0, gt=0, description="probe ready endpoints")
    probe_backoff_max_s: float = Field(5.0, gt=0, description="longest wait between probes "
                                       "of an ejected endpoint")
    retry_budget_ratio: float = Field(0.1, ge=0, le=1, description="retries per request, at most")

    # Image tensors through system shared memory when beside Triton (gateway/shm.py).
    # auto: when the Triton host is loopback AND an admin key is configured; on: required
    # (start-up fails if the slots cannot be registered); off: always the gRPC wire.
    shared_memory: Literal["auto", "on", "off"] = "auto"
    # Triton restricts its shared-memory API behind the gRPC header `admin-key: <key>`
    # (serving/tritonserver.py; VISIONSERVE_TRITON_ADMIN_KEY chooses Triton's key).
    triton_admin_key: str | None = Field(None, repr=False)

    # Letterbox padding value (uint8) around the resized image.
    pad_value: int = Field(0, ge=0, le=255)

    @field_validator("triton_grpc")
    @classmethod
    def _target(cls, value: str) -> str:
        from .target import parse

        parse(value)   # TargetError (a ValueError) names the accepted forms
        return value
