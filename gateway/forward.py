"""The `forward` setting: what crosses the wire to Triton for an image route.

  pixels   the gateway decodes and letterboxes (gateway/service.py); uint8 frames travel,
           through shared memory beside Triton (gateway/shm.py), else over gRPC.
  encoded  the client's JPEG/PNG bytes travel unchanged to `<model>_encoded` (the contract's
           rule, contract/encoded.py), after the gateway's header checks (magic, limits:
           the same 4xx as pixels, before anything is sent). Triton decodes, letterboxes,
           runs the model and answers in original pixels with `original_size`.
  auto     per endpoint, decided when it is probed: encoded where the endpoint serves the
           model's entry point and its frames do not go through shared memory; pixels
           otherwise (beside Triton, shared memory moves a frame for free and the decode
           stays off Triton's cores).

An endpoint's catalog learns its entry points from Triton's metadata and config, held to
the tensors the rule expects (gateway/catalog.py); the fleet routes `<model>_encoded` only
to the endpoints that decided to send it encoded (gateway/fleet.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import Counter

import contract
import imaging
from contract import encoded

from .errors import InvalidImage, ModelUnavailable, TritonError
from .inputs import off_loop

ENCODED, PIXELS, AUTO = "encoded", "pixels", "auto"
# The decode step's InvalidArgument: "<step>: [item k: ]<the codec's message>" (pipelines/
# encoded_decode.py), inside Triton's own wording of the failed ensemble step.
_DECODE_ERROR = re.compile(r"\bencoded_\w+: (?:item (\d+): )?(.+)", re.S)


class ForwardUnavailable(Exception):
    """forward=encoded, and the endpoint lacks an entry point the contract gives a model it
    serves: it is refused (as shared_memory=on refuses an endpoint without shared memory)."""


def decide(setting: str, catalog, shm_ready: bool, repository: Path) -> tuple[frozenset[str], str]:
    """(the route models sent encoded to this endpoint, why), from what it serves."""
    if setting == PIXELS:
        return frozenset(), "forward=pixels"
    served = frozenset(catalog.entries)
    if setting == AUTO:
        if shm_ready:
            return frozenset(), "auto: frames through shared memory with this endpoint"
        if not served:
            return frozenset(), "auto: it serves no encoded entry point"
        return served, "auto: it serves the encoded entry points, no shared memory"
    missing = [encoded.entry_name(m) for m in sorted(catalog.models)
               if m not in served and encoded.has_entry(contract.load(m, repository))]
    if missing:
        raise ForwardUnavailable(f"forward=encoded but it does not serve {', '.join(missing)} "
                                 "(an older repository? derive it again: python -m serving)")
    return served, "forward=encoded"


class ForwardMetrics:
    def __init__(self, registry):
        self.calls = Counter("visionserve_gateway_triton_forward_total",
                             "Triton calls of the image routes, by route model and what crossed "
                             "the wire (forward: pixels or encoded)", ("model", "forward"),
                             registry=registry)

    def count(self, model: str, forward: str, n: int, max_batch: int) -> None:
        self.calls.labels(model, forward).inc(-(-n // max(1, max_batch)))


@dataclass
class Encoded:
    """A request's images as the client sent them (header-checked), for `<model>_encoded`.
    `scale` is 1 and `size` becomes Triton's `original_size`: its answers are already in
    original pixels, so the postprocess maps nothing (it clips to the image, as Triton did)."""
    images: list
    scale: np.ndarray      # [N, 2] ones
    size: np.ndarray       # [N, 2] original (width, height), oriented
    lease: object = None

    def release(self, *, retire: bool = False) -> None:
        """Nothing to give back: no frame, no shared-memory slot."""


def check_headers(images: list, max_pixels: int, max_side: int) -> list:
    """What the pixels path judges before decoding, for every image: format by magic bytes,
    pixel and side limits, JPEG header consistency and scan count (imaging's errors: the
    same 4xx)."""
    headers = [imaging.read_header(d, max_pixels=max_pixels, max_side=max_side) for d in images]
    for d, h in zip(images, headers):
        imaging.check(d, h)
    return headers


async def frames(svc, images: list, reservation=None) -> Encoded:
    """The request's images, header-checked (off the event loop for big bodies), charged
    the copy the gRPC request makes of them (the body itself was charged when read; no
    decode happens here)."""
    s = svc.settings
    total = sum(len(d) for d in images)
    headers = await off_loop(svc.pool, total, check_headers, images, s.max_image_pixels,
                             s.max_image_side)
    if reservation is not None:
        await reservation.charge_decoding(2 * total, f"{len(images)} encoded images in the "
                                          "gRPC request", s.triton_timeout_s)
    n = len(images)
    return Encoded(images, np.ones((n, 2), np.float64),
                   np.array([h.size for h in headers], np.float64).reshape(n, 2))


async def infer(svc, model: str, enc: Encoded, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One BYTES item per image to `model`'s entry point (chunked at its max_batch_size,
    the chunks concurrent, as the pixels path); `enc.size` set from `original_size`."""
    cat = svc.catalog
    entry = cat.entries.get(model) if cat is not None else None
    if entry is None:
        raise ModelUnavailable(f"no ready Triton endpoint serves {encoded.entry_name(model)!r}",
                               retry_after=svc.settings.retry_after_s)
    batch = np.empty((len(enc.images), 1), np.object_)
    batch[:, 0] = [bytes(d) for d in enc.images]   # tritonclient's BYTES serialiser wants bytes
    svc.metrics.bytes_to_triton.labels(entry.name).inc(sum(len(b) for b in batch[:, 0]))
    svc.forward_metrics.count(model, ENCODED, len(batch), entry.max_batch_size)
    try:
        out = await svc.infer(entry.name, {encoded.INPUT: batch}, (*outputs, encoded.ORIGINAL_SIZE),
                              capacity_of=model)
    except TritonError as exc:
        refused = decode_error(exc, len(batch), entry.max_batch_size)
        if refused is None:
            raise
        raise refused from exc
    enc.size = out.pop(encoded.ORIGINAL_SIZE).reshape(-1, 2).astype(np.float64)
    return out


def decode_error(exc: TritonError, n: int, max_batch: int) -> InvalidImage | None:
    """Triton's decode step refused an image (InvalidArgument: a body whose header is fine
    but whose data is not, e.g. a truncated JPEG): the client's 400 `invalid_image`, with
    the codec's message and nothing of Triton's internals."""
    if "INVALID_ARGUMENT" not in exc.message:
        return None
    m = _DECODE_ERROR.search(exc.message)
    detail = m.group(2).strip() if m else "the image data is corrupt"
    where = f"image {int(m.group(1)) + 1}: " if m and m.group(1) and n <= max_batch else ""
    return InvalidImage(f"{where}{detail}")
