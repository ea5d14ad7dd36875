"""Fakes and app helpers for unit tests of the gateway: the app on a fake Triton through
TestClient, multipart bodies, and a fake Triton with a real shared-memory slot pool."""
from __future__ import annotations

import os

import numpy as np
from fastapi.testclient import TestClient

from gateway import shm
from gateway.app import create_app
from gateway.errors import TritonError, TritonUnavailable
from gateway.settings import GatewaySettings
from gateway.testing import FakeBackend

from .images import noise_jpeg

JPEG = noise_jpeg(1280, 720)          # 1280x720 of 8x8 noise squares, quality 85


def app_client(fake=None, **settings) -> TestClient:
    """The gateway app on `fake` (a FakeBackend by default) with these settings."""
    return TestClient(create_app(GatewaySettings(**settings), backend=fake or FakeBackend()))


def multipart(n: int, data: bytes = JPEG) -> list:
    """httpx `files=` for n images in the `images` field."""
    return [("images", (f"{i}.jpg", data, "image/jpeg")) for i in range(n)]


class Registry:
    """Stands in for Triton's register/unregister RPCs; `in_use` names are refused
    unregistration as Triton (>= 2.50) refuses a region a request still reads."""

    def __init__(self, fail=False):
        self.names, self.unregistered, self.fail = [], [], fail
        self.in_use: set[str] = set()

    async def register(self, slot):
        if self.fail:
            raise TritonUnavailable("refused", retry_after=1)
        assert os.path.exists(os.path.join(shm.SHM_DIR, slot.name))
        self.names.append(slot.name)

    async def unregister(self, name):
        if name in self.in_use:
            raise TritonError(f"Cannot unregister shared memory region '{name}', it is "
                              "currently in use.")
        self.unregistered.append(name)


class ShmFake(FakeBackend):
    """The fake Triton with a real slot pool, recording whether inputs lay in a slot."""

    def __init__(self, pool_bytes=1 << 26):
        super().__init__()
        self.pool = shm.SlotPool(pool_bytes, Registry().register)
        self.in_slot: list[bool] = []

    @property
    def shm(self):   # what the fleet looks in for a request's slot
        return self.pool

    async def enable_shared_memory(self, slots_per_shape, shapes):
        pass

    async def lease(self, frame_hw, max_batch, n):
        return await self.pool.lease(frame_hw, max_batch, n)

    async def infer(self, model, inputs, outputs, **kw):
        self.in_slot += [self.pool.locate(a) is not None for a in inputs.values()
                         if a.dtype == np.uint8]
        return await super().infer(model, inputs, outputs, **kw)


class VectorFake(FakeBackend):
    """The fake Triton with three faces/objects per image and random unit embeddings (the
    stock fake's one-hot vectors would compare equal however badly they were encoded)."""

    def __init__(self):
        super().__init__()
        self.detections = np.array([[10.5, 20.25, 110.0, 220.0], [300.0, 100.0, 400.0, 260.0],
                                    [50.0, 400.0, 90.0, 470.0]], np.float32)

    def _output(self, spec, n):
        if "embedding" not in spec.name:
            return super()._output(spec, n)
        v = np.random.default_rng(n).standard_normal((n, *spec.dims)).astype(spec.dtype)
        return v / np.linalg.norm(v, axis=-1, keepdims=True)
