"""The Triton seam: what the gateway needs from an inference server, and the real one.

`Backend` is the seam the app factory takes; tests pass a fake with the same methods.
`TritonBackend` wraps ONE `tritonclient.grpc.aio` client (one HTTP/2 channel shared by
all requests) and is the only place where gRPC errors become gateway errors.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from .errors import (ModelUnavailable, TritonError, TritonOverloaded, TritonTimeout,
                     TritonUnavailable)


class Backend(Protocol):
    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
                    *, timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """One batched call. Raises the gateway's UpstreamError subclasses."""

    async def ready(self, models: Sequence[str]) -> dict[str, bool]:
        """Readiness of each model (none: only liveness); raises TritonUnavailable when
        the server is down."""

    async def metadata(self, model: str) -> dict:
        """Triton's model metadata as JSON: name, platform, inputs/outputs with
        name, datatype and shape (-1 for the batch)."""

    async def config(self, model: str) -> dict:
        """Triton's model config as JSON (max_batch_size, parameters, ...)."""

    async def close(self) -> None: ...


# Triton's dynamic batcher answers these (gRPC UNAVAILABLE) when its queue policy
# rejects a request; they mean "busy", not "down".
_OVERLOAD_MARKERS = ("Exceeds maximum queue size", "Request timeout")
_DOWN_MARKERS = ("failed to connect", "Connection refused", "Socket closed",
                 "connections to all backends failing", "Broken pipe", "Connection reset")


def translate(exc: Exception, model: str, retry_after: int):
    """Map a tritonclient exception to the gateway error tree (the one place that does)."""
    status = str(getattr(exc, "status", lambda: "")() or "")
    msg = str(getattr(exc, "message", lambda: "")() or exc)
    if any(m in msg for m in _OVERLOAD_MARKERS):
        return TritonOverloaded(f"Triton is busy ({model}): {msg}", retry_after=retry_after)
    if "DEADLINE_EXCEEDED" in status or "Deadline Exceeded" in msg:
        return TritonTimeout(f"Triton did not answer for {model!r} before the deadline")
    if "NOT_FOUND" in status or "is not ready" in msg or "unknown model" in msg:
        return ModelUnavailable(f"model {model!r} is not available: {msg}",
                                retry_after=retry_after)
    if "restricted" in msg:   # a hardened Triton refusing an admin API: not transient
        return TritonError(f"Triton refused the call: {msg}")
    if "UNAVAILABLE" in status or any(m in msg for m in _DOWN_MARKERS):
        return TritonUnavailable(f"Triton is unreachable: {msg}", retry_after=retry_after)
    return TritonError(f"Triton failed on {model!r}: {msg}")


class TritonBackend:
    """The real backend: one shared async gRPC channel, binary tensors."""

    def __init__(self, url: str, *, retry_after: int = 1):
        from tritonclient.grpc import aio as grpcaio

        self._grpcaio = grpcaio
        self._retry_after = retry_after
        self.bytes_sent = 0   # payload bytes shipped to Triton (for metrics and benchmarks)
        # Reconnect quickly after Triton restarts (gRPC's default backoff grows to 120 s),
        # and keep tritonclient's unlimited message sizes.
        self._client = grpcaio.InferenceServerClient(url, channel_args=[
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
        ])

    async def infer(self, model, inputs, outputs, *, timeout_s=None):
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        req = []
        for name, arr in inputs.items():
            dtype = "BYTES" if arr.dtype == np.object_ else np_to_triton_dtype(arr.dtype)
            t = self._grpcaio.InferInput(name, list(arr.shape), dtype)
            t.set_data_from_numpy(arr)
            req.append(t)
        outs = [self._grpcaio.InferRequestedOutput(n) for n in outputs]
        self.bytes_sent += sum(a.nbytes for a in inputs.values() if a.dtype != np.object_)
        try:
            result = await self._client.infer(model, req, outputs=outs,
                                              client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise translate(exc, model, self._retry_after) from exc
        return {n: result.as_numpy(n) for n in outputs}

    async def ready(self, models):
        from tritonclient.utils import InferenceServerException

        try:
            if not await self._client.is_server_live(client_timeout=2.0):
                raise TritonUnavailable("Triton is not live", retry_after=self._retry_after)
            return {m: bool(await self._client.is_model_ready(m, client_timeout=2.0))
                    for m in models}
        except InferenceServerException as exc:
            raise translate(exc, "<server>", self._retry_after) from exc

    async def metadata(self, model):
        return await self._call(self._client.get_model_metadata, model)

    async def config(self, model):
        return (await self._call(self._client.get_model_config, model))["config"]

    async def _call(self, fn, model):
        from tritonclient.utils import InferenceServerException

        try:
            return await fn(model, as_json=True, client_timeout=5.0)
        except InferenceServerException as exc:
            raise translate(exc, model, self._retry_after) from exc

    async def close(self):
        await self._client.close()
