"""Gateway settings: one pydantic-settings class, environment prefix VISIONSERVE_GATEWAY_."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.contract import MODEL_REPOSITORY


class GatewaySettings(BaseSettings):
    """Every knob of the gateway. `VISIONSERVE_GATEWAY_MAX_IMAGES=4` etc. override defaults."""

    model_config = SettingsConfigDict(env_prefix="VISIONSERVE_GATEWAY_", frozen=True)

    triton_grpc: str = Field("127.0.0.1:8001", description="Triton gRPC host:port")
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
    triton_timeout_s: float = Field(10.0, gt=0, description="deadline of one gRPC call (504)")
    startup_wait_s: float = Field(60.0, ge=0, description="how long start-up waits for Triton")
    retry_after_s: int = Field(1, ge=0, description="Retry-After on 503/429")

    # Image tensors through system shared memory when beside Triton (gateway/shm.py).
    # auto: when the Triton host is loopback AND an admin key is configured; on: required
    # (start-up fails if the slots cannot be registered); off: always the gRPC wire.
    shared_memory: Literal["auto", "on", "off"] = "auto"
    # Triton restricts its shared-memory API behind the gRPC header `admin-key: <key>`
    # (serving/tritonserver.py; VISIONSERVE_TRITON_ADMIN_KEY chooses Triton's key).
    triton_admin_key: str | None = Field(None, repr=False)

    # Letterbox padding value (uint8) around the resized image.
    pad_value: int = Field(0, ge=0, le=255)
