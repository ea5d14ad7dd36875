"""The request-independent core every route uses: decode a batch, call Triton batched.

One `Service` per app (held in app.state): the backend seam, the learned catalog, the
bounded decode pool and the metrics.
"""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import codec
from .backend import Backend
from .catalog import Catalog, ModelInfo
from .errors import TritonTimeout, TritonUnavailable, UpstreamError
from .metrics import Metrics
from .settings import GatewaySettings


@dataclass
class Frames:
    """A decoded, letterboxed batch and what is needed to map results back."""
    pixels: np.ndarray     # [N, H, W, 3] uint8
    scale: np.ndarray      # [N, 2] model px per original px (x, y)
    size: np.ndarray       # [N, 2] original (width, height), oriented
    lease: object = None   # shm.Lease when `pixels` lives in a shared-memory slot

    def release(self, *, retire: bool = False) -> None:
        """Give the shm slot back (idempotent); the pixels are gone afterwards, so
        nothing can read another request's frame through a stale view."""
        if self.lease is not None:
            lease, self.lease = self.lease, None
            self.pixels = self.pixels[:0]
            lease.release(retire=retire)


class Service:
    def __init__(self, settings: GatewaySettings, backend: Backend, metrics: Metrics):
        self.settings = settings
        self.backend = backend   # the Fleet: every Triton endpoint
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")

    @property
    def catalog(self) -> Catalog | None:
        """The models the ready endpoints serve (None: no endpoint is ready)."""
        return self.backend.catalog

    def model(self, name: str) -> ModelInfo:
        catalog = self.catalog
        if catalog is None:   # no endpoint is ready (yet): say why
            raise TritonUnavailable(self.backend.reason(), retry_after=self.settings.retry_after_s)
        return catalog.get(name)

    async def frames(self, images: list[bytes], frame_hw: tuple[int, int],
                     max_batch: int = 0) -> Frames:
        """Headers first (limits judged before any pixel is decoded), then all images
        decoded in parallel in the pool, each straight into its batch slot: a shared-
        memory slot when the backend offers one (the pixels are then never copied),
        else a fresh array. A leased Frames must be released: use `infer_frames`."""
        s = self.settings
        headers = [codec.read_header(d, max_pixels=s.max_image_pixels, max_side=s.max_image_side)
                   for d in images]
        fh, fw = frame_hw
        boxes = [codec.plan_letterbox(*h.size, fw, fh) for h in headers]
        lease_fn = getattr(self.backend, "lease", None)
        lease = (await lease_fn(frame_hw, max_batch, len(images))
                 if lease_fn is not None and max_batch else None)
        pixels = lease.array if lease is not None else np.empty((len(images), fh, fw, 3), np.uint8)
        futures = [self.pool.submit(self._decode_one, d, h, b, pixels[i])
                   for i, (d, h, b) in enumerate(zip(images, headers, boxes))]
        try:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        except BaseException:
            # a bad image or a cancelled request: decode threads may still be writing
            # into the slot, so it goes back only once every one of them has stopped
            if lease is not None:
                _release_when_done(futures, lease)
            raise
        scale = np.array([b.scale for b in boxes], np.float64)
        size = np.array([(b.width, b.height) for b in boxes], np.float64)
        return Frames(pixels, scale, size, lease)

    def _decode_one(self, data, header, box, out) -> None:
        t0 = time.perf_counter()
        codec.decode_into(data, header, box, out, self.settings.pad_value)
        self.metrics.decode.observe(time.perf_counter() - t0)
        self.metrics.images.labels(header.kind).inc()

    async def infer_frames(self, model: str, frames: Frames, outputs: tuple[str, ...],
                           input_name: str = "images") -> dict[str, np.ndarray]:
        """`infer` on a decoded batch, then its shm slot released: as soon as the
        response arrives, or retired (never reused) when Triton may still be reading it
        (deadline passed, connection lost, request cancelled)."""
        retire = True
        try:
            out = await self.infer(model, {input_name: frames.pixels}, outputs)
            retire = False
            return out
        except (TritonTimeout, TritonUnavailable):
            raise
        except UpstreamError:   # Triton answered with an error: it is done with the input
            retire = False
            raise
        finally:
            frames.release(retire=retire)

    async def infer(self, model: str, inputs: dict[str, np.ndarray],
                    outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """All rows in as few calls as max_batch_size allows (one when it fits), the
        chunks sent concurrently, the results concatenated in order."""
        info = self.model(model)
        n = len(next(iter(inputs.values())))
        step = max(1, info.max_batch_size)
        chunks = [{k: v[i:i + step] for k, v in inputs.items()} for i in range(0, n, step)]
        parts = await asyncio.gather(*(self._call(model, c, outputs) for c in chunks))
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in outputs}

    async def _call(self, model, inputs, outputs):
        m = self.metrics
        m.bytes_to_triton.labels(model).inc(
            sum(a.nbytes for a in inputs.values() if a.dtype != np.object_))
        t0 = time.perf_counter()
        try:
            return await self.backend.infer(model, inputs, outputs,
                                            timeout_s=self.settings.triton_timeout_s)
        except UpstreamError as exc:
            m.triton_errors.labels(model, exc.code).inc()
            raise
        finally:
            m.triton.labels(model).observe(time.perf_counter() - t0)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _release_when_done(futures, lease) -> None:
    """Release `lease` once all decode futures are finished (queued ones are cancelled)."""
    for f in futures:
        f.cancel()
    pending = [f for f in futures if not f.done()]
    if not pending:
        lease.release()
        return
    left, lock = [len(pending)], threading.Lock()

    def one_done(_):
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            lease.release()

    for f in pending:
        f.add_done_callback(one_done)
