"""The Triton seam: what the gateway needs from ONE Triton endpoint, and the real one.

`Backend` is the per-endpoint seam; gateway/fleet.py spreads requests over several of
them (tests pass fakes with the same methods). `TritonBackend` holds one grpc.aio channel
to one endpoint address (one HTTP/2 connection for inference and control plane alike).
This module is the only place where gRPC errors become gateway errors (`translate`).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from contract import defaults

from . import tracing
from .errors import ModelUnavailable, TritonError, TritonOverloaded, TritonTimeout, TritonUnavailable, UpstreamError

if TYPE_CHECKING:
    from .shm import Lease, SlotPool

log = logging.getLogger("visionserve.gateway.backend")


class Backend(Protocol):
    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
                    *, timeout_s: float | None = None,
                    queue_timeout_us: int | None = None) -> dict[str, np.ndarray]:
        """One batched call. `timeout_s` is the gRPC deadline; `queue_timeout_us`, when
        given, Triton's per-request `timeout` (how long it may wait in the model's queue).
        Raises the gateway's UpstreamError subclasses."""

    async def ready(self, models: Sequence[str]) -> dict[str, bool]:
        """Readiness of each model (none: only liveness); raises TritonUnavailable when
        the server is down."""

    async def metadata(self, model: str) -> dict:
        """Triton's model metadata as JSON: name, platform, inputs/outputs with
        name, datatype and shape (-1 for the batch)."""

    async def config(self, model: str) -> dict:
        """Triton's model config as JSON (max_batch_size, parameters, ...)."""

    async def close(self) -> None: ...

    # Optional (TritonBackend only; the Service checks with getattr):
    #   async def lease(frame_hw, max_batch, n) -> shm.Lease | None
    # a [n, H, W, 3] uint8 view in a shared-memory slot registered with Triton, for the
    # decoder to write into; infer() then sends (region, size, offset) for any input that
    # lies in a leased slot instead of its bytes.


# Triton's dynamic batcher rejects with gRPC UNAVAILABLE when its queue policy refuses a
# request (queue full, queue timeout): the code alone cannot tell "busy" from "down", so
# the message decides (Triton 2.51: "[request id: ...] Exceeds maximum queue size",
# "Request timeout expired").
_OVERLOAD_MARKERS = ("Exceeds maximum queue size", "Request timeout")
# Triton forgot our regions (it restarted): re-register once, else use the wire.
# (NOT_FOUND "Unable to find shared memory region: 'name'", measured with 2.51)
_LOST_REGION_MARKERS = ("Unable to find", "not registered", "unknown shared memory region")
# Triton closed the connection as the call started (see _AgainAfterGoaway).
_GOAWAY_MARKER = "GOAWAY received"


def translate(exc: Exception, model: str, retry_after: int):
    """Map a gRPC error (grpc.RpcError, or tritonclient's InferenceServerException) to
    the gateway error tree: the one place that does. The status code decides; the message
    only where one code means two things. What each class means for a retry (Triton did
    or did not take the request) is gateway/retry.py's table.

    Checked against Triton 2.51: a stopping server (SIGTERM) answers health calls with
    UNAVAILABLE "Server exiting" and new inferences with NOT_FOUND "Request for unknown
    model: '<m>' has no available versions" while it drains the ones in flight; an
    unreachable one gives UNAVAILABLE "failed to connect to all addresses"."""
    code, msg = _code_and_message(exc)
    if code == "UNAVAILABLE" and any(m in msg for m in _OVERLOAD_MARKERS):
        return TritonOverloaded(f"Triton is busy ({model}): {msg}", retry_after=retry_after)
    if code == "DEADLINE_EXCEEDED":
        return TritonTimeout(f"Triton did not answer for {model!r} before the deadline")
    if code == "NOT_FOUND":
        return ModelUnavailable(f"model {model!r} is not available: {msg}",
                                retry_after=retry_after)
    if "restricted" in msg:   # a hardened Triton refusing an admin API: not transient
        return TritonError(f"Triton refused the call: {msg}")
    if code in ("UNAVAILABLE", "CANCELLED"):   # down, draining, connection lost
        return TritonUnavailable(f"Triton is unreachable: {msg}", retry_after=retry_after)
    return TritonError(f"Triton failed on {model!r}: {code} {msg}")


def _code_and_message(exc) -> tuple[str, str]:
    """("UNAVAILABLE", details) from either error type."""
    if callable(getattr(exc, "code", None)) and callable(getattr(exc, "details", None)):
        code = exc.code()
        return getattr(code, "name", str(code)), exc.details() or ""
    status = str(getattr(exc, "status", lambda: "")() or "")
    msg = str(getattr(exc, "message", lambda: "")() or exc)
    return status.rsplit(".", 1)[-1], msg


class TritonBackend:
    """The real backend: one async gRPC channel to one endpoint, binary tensors.

    Inference bypasses tritonclient's InferInput/InferResult wrappers: they copy the
    1.2 MB image tensor four times per call (tobytes, into the protobuf, serialise,
    into gRPC). Here the small request header is serialised by protobuf and the raw
    tensor bytes are appended as `raw_input_contents` fields by hand (protobuf's wire
    format concatenates), so the pixels are copied once before gRPC takes them.
    Control-plane calls (readiness, metadata, config) use the generated stub on the same
    channel and return the JSON form tritonclient's `as_json=True` gives.

    With `enable_shared_memory()` (gateway beside Triton, admin key known) image inputs
    go through POSIX shared memory instead: see gateway/shm.py.
    """

    def __init__(self, url: str, *, retry_after: int = 1, admin_key: str | None = None,
                 metrics=None, lb_policy: str | None = None):
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._pb = service_pb2
        self._retry_after = retry_after
        self.bytes_sent = 0   # payload bytes shipped to Triton (for metrics and benchmarks)
        self._metrics = metrics
        # Triton's shared-memory API is restricted behind the header `admin-key`; on gRPC
        # Triton expects it as metadata with its protocol prefix (its own error says so:
        # "expecting header 'triton-grpc-protocol-admin-key'")
        self._admin = ((ADMIN_METADATA, admin_key),) if admin_key else None
        self.shm: SlotPool | None = None
        # Reconnect quickly after Triton restarts (gRPC's default backoff grows to 120 s),
        # and keep tritonclient's unlimited message sizes.
        args = [
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # pings every 10 s while calls are active; Triton's launcher accepts pings
            # every 5 s (serving/tritonserver.py), so no GOAWAY "too_many_pings"
            ("grpc.keepalive_time_ms", KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", 5_000),
        ]
        if lb_policy:   # one channel over every address of `url` (the single-channel modes)
            args.append(("grpc.lb_policy_name", lb_policy))
        self.url = url
        self._channel = grpc.aio.insecure_channel(url, options=args)
        self._stub = _Stub(service_pb2_grpc.GRPCInferenceServiceStub(self._channel))
        # request_serializer=None: the request is already wire bytes (see _request)
        self._model_infer = _AgainAfterGoaway(self._channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
            response_deserializer=service_pb2.ModelInferResponse.FromString), traced=True)

    def _request(self, model, inputs, outputs, shared=None, queue_timeout_us=None) -> bytes:
        """`shared`: {input name: (slot, offset)} for inputs lying in leased slots."""
        from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

        pb = self._pb
        req = pb.ModelInferRequest(model_name=model, outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs])
        if queue_timeout_us:   # Triton rejects it from the queue once this has passed
            req.parameters["timeout"].int64_param = queue_timeout_us
        parts = [b""]
        for name, arr in inputs.items():
            if shared and name in shared:
                slot, offset = shared[name]
                t = req.inputs.add(name=name, datatype=np_to_triton_dtype(arr.dtype),
                                   shape=arr.shape)
                t.parameters["shared_memory_region"].string_param = slot.name
                t.parameters["shared_memory_byte_size"].int64_param = arr.nbytes
                if offset:
                    t.parameters["shared_memory_offset"].int64_param = offset
                continue   # no raw_input_contents entry: Triton reads the region
            if arr.dtype == np.object_:
                dtype, raw = "BYTES", serialize_byte_tensor(arr)
                raw = raw.item() if raw.size else b""
            else:
                dtype = np_to_triton_dtype(arr.dtype)
                raw = memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
                self.bytes_sent += arr.nbytes
            req.inputs.add(name=name, datatype=dtype, shape=arr.shape)
            parts += (_RAW_INPUT_TAG, _varint(len(raw)), raw)
        parts[0] = req.SerializeToString()
        return b"".join(parts)   # the one copy of the tensor before gRPC's own

    async def infer(self, model, inputs, outputs, *, timeout_s=None, queue_timeout_us=None):
        import grpc

        shared = self._shared(inputs)
        qt = queue_timeout_us
        try:
            if shared:
                response, path = await self._infer_shared(model, inputs, outputs, shared,
                                                          timeout_s, qt), "shm"
                if response is None:   # Triton lost the regions twice: the wire, this once
                    self.shm.fallback("lost_region")
                    response, path = await self._model_infer(
                        await self._wire_request(model, inputs, outputs, qt),
                        timeout=timeout_s), "wire"
            else:
                response, path = await self._model_infer(
                    await self._wire_request(model, inputs, outputs, qt), timeout=timeout_s), "wire"
        except grpc.RpcError as exc:
            raise translate(exc, model, self._retry_after) from exc
        if self._metrics is not None:
            self._metrics.input_path.labels(model, path).inc()
        # traces are operator data: the endpoint's address is useful there (the last try's)
        tracing.annotate(**{"server.address": self.url, "visionserve.input_path": path})
        return _outputs(response, outputs)

    async def _wire_request(self, model, inputs, outputs, queue_timeout_us) -> bytes:
        """The request with its tensors' bytes: joined in the event loop's (bounded)
        default executor when large (a 16-frame batch is ~20 MB of memcpy), inline else."""
        if sum(a.nbytes for a in inputs.values()) <= INLINE_REQUEST_BYTES:
            return self._request(model, inputs, outputs, None, queue_timeout_us)
        return await asyncio.get_running_loop().run_in_executor(
            None, self._request, model, inputs, outputs, None, queue_timeout_us)

    async def _infer_shared(self, model, inputs, outputs, shared, timeout_s, queue_timeout_us):
        """The shm call; after a restart of Triton (regions unknown) re-register the slots
        once and retry. None: still unknown, use the wire. The slots stay leased by the
        caller throughout, so a retry can never read another request's pixels."""
        import grpc

        request = self._request(model, inputs, outputs, shared, queue_timeout_us)
        try:
            return await self._model_infer(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            if not _lost_region(exc):
                raise
            log.warning("Triton lost the shared-memory regions (restarted?): re-registering")
        try:
            for slot in {id(s): s for s, _ in shared.values()}.values():
                await self._register_slot(slot)
            return await self._model_infer(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            if not _lost_region(exc):
                raise
        except UpstreamError as exc:   # refused or unreachable: the wire decides
            log.warning("re-registering shared memory failed: %s", exc)
        return None

    def _shared(self, inputs) -> dict:
        """{input: (slot, offset)} for uint8 inputs that are views into leased slots."""
        if self.shm is None:
            return {}
        out = {}
        for name, arr in inputs.items():
            if arr.dtype == np.uint8 and arr.flags.c_contiguous:
                hit = self.shm.locate(arr)
                if hit is not None:
                    out[name] = hit
        return out

    # -- shared memory (control plane, admin key) ---------------------------------------
    async def enable_shared_memory(self, pool_bytes: int,
                                   shapes: Sequence[tuple[tuple[int, int], int]]) -> None:
        """Create the pool (at most `pool_bytes` of slots) and one registered one-frame
        slot per frame shape now, so a refused registration (wrong key, no /dev/shm)
        fails here and not per request; retired slots are reclaimed in the background."""
        from .shm import SlotPool

        m = self._metrics
        pool = SlotPool(pool_bytes, self._register_slot, self._unregister_slot,
                        on_fallback=None if m is None else
                        (lambda reason: m.shm_fallbacks.labels(reason).inc()))
        try:
            for frame in sorted({frame for frame, _ in shapes}):
                await pool.prepare(frame, 1)   # the common one-image slot
        except BaseException:
            await pool.close(self._unregister_slot)
            raise
        pool.start()
        self.shm = pool
        if m is not None:
            m.watch_pool(pool.stats)

    async def lease(self, frame_hw, max_batch, n) -> Lease | None:
        return None if self.shm is None else await self.shm.lease(frame_hw, max_batch, n)

    async def _register_slot(self, slot) -> None:
        import grpc

        pb = self._pb
        request = pb.SystemSharedMemoryRegisterRequest(
            name=slot.name, key="/" + slot.name, offset=0, byte_size=slot.capacity)
        try:
            await self._stub.SystemSharedMemoryRegister(request, metadata=self._admin,
                                                        timeout=5.0)
        except grpc.RpcError as exc:
            if "already in manager" in (exc.details() or ""):
                return   # a concurrent re-registration of the same slot won the race
            raise translate(exc, "<shared memory>",
                            self._retry_after) from exc

    async def _unregister_slot(self, name: str) -> None:
        await self._stub.SystemSharedMemoryUnregister(
            self._pb.SystemSharedMemoryUnregisterRequest(name=name), metadata=self._admin,
            timeout=2.0)

    async def ready(self, models):
        import grpc

        pb = self._pb
        try:
            if not (await self._stub.ServerLive(pb.ServerLiveRequest(), timeout=2.0)).live:
                raise TritonUnavailable("Triton is not live", retry_after=self._retry_after)
            # all models at once: a probe takes one round trip, not one per model
            answers = await asyncio.gather(*(self._stub.ModelReady(
                pb.ModelReadyRequest(name=m), timeout=2.0) for m in models))
            return {m: bool(a.ready) for m, a in zip(models, answers)}
        except grpc.RpcError as exc:
            raise translate(exc, "<server>", self._retry_after) from exc

    async def metadata(self, model):
        return await self._control(self._stub.ModelMetadata, self._pb.ModelMetadataRequest(name=model), model)

    async def config(self, model):
        return (await self._control(self._stub.ModelConfig, self._pb.ModelConfigRequest(name=model), model))["config"]

    async def _control(self, rpc, request, model) -> dict:
        import grpc
        from google.protobuf import json_format

        try:
            response = await rpc(request, timeout=5.0)
        except grpc.RpcError as exc:
            raise translate(exc, model, self._retry_after) from exc
        # the same JSON form as tritonclient's as_json=True
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    async def close(self):
        if self.shm is not None:
            pool, self.shm = self.shm, None
            if self._metrics is not None:
                self._metrics.unwatch_pool(pool.stats)
            await pool.close(self._unregister_slot)
        await self._channel.close()


class _AgainAfterGoaway:
    """A unary gRPC method sent once more, within its deadline, when Triton closed the
    connection just as the call started. Triton runs with `--grpc-max-connection-age`
    (serving/tritonserver.py: 60 s, so clients spread over replicas): at that age it
    sends GOAWAY and closes a connection with no call in flight, and a call that races
    with the close fails UNAVAILABLE "Stream removed (Socket closed (GOAWAY received;
    Error code: 0 ...))" (a gRPC core race, grpc/grpc#31733; measured with Triton 2.51:
    a gateway under load lost a call nearly every connection age, ejected its only
    endpoint and answered 503 for 1-2 s). The channel is already connecting anew, so the
    same request (inference is idempotent; shm slots stay leased) goes there. Not a
    retry elsewhere: the endpoint is not down. A second failure is raised as it came."""

    def __init__(self, method, traced: bool = False):
        import grpc

        self._method, self._rpc_error, self._traced = method, grpc.RpcError, traced

    async def __call__(self, request, *, timeout=None, **kw):
        if self._traced and "metadata" not in kw:
            # the W3C traceparent of the current (sampled) span: Triton's OpenTelemetry
            # mode makes its request span a child of it (gateway/tracing.py)
            kw["metadata"] = tracing.grpc_metadata()
        start = time.monotonic()
        try:
            return await self._method(request, timeout=timeout, **kw)
        except self._rpc_error as exc:
            if not _goaway(exc):
                raise
            log.info("Triton closed the connection as a call started (%s): sent again",
                     exc.details())
        left = None if timeout is None else max(timeout - (time.monotonic() - start), 0.001)
        return await self._method(request, timeout=left, **kw)


class _Stub:
    """Triton's generated stub with every method sent again after a GOAWAY race."""

    def __init__(self, stub):
        self._stub = stub

    def __getattr__(self, name):
        method = _AgainAfterGoaway(getattr(self._stub, name))
        setattr(self, name, method)          # made once per method, not per call
        return method


def _goaway(exc) -> bool:
    code, msg = _code_and_message(exc)
    return code == "UNAVAILABLE" and _GOAWAY_MARKER in msg


ADMIN_METADATA = defaults.GRPC_ADMIN_METADATA
# Requests with more tensor bytes than this are assembled off the event loop (a 640x640
# frame is 1.2 MB: one-image requests stay inline, where a thread hop costs more).
INLINE_REQUEST_BYTES = 4 * 1024 * 1024
KEEPALIVE_MS = 10_000
# ModelInferRequest.raw_input_contents is field 7, length-delimited: tag (7 << 3) | 2.
_RAW_INPUT_TAG = b"\x3a"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _lost_region(exc) -> bool:
    """Triton does not know a region the request names: NOT_FOUND first (2.51 answers
    NOT_FOUND "Unable to find shared memory region: '<name>'"), then the message, as
    NOT_FOUND also means an unknown model."""
    code, msg = _code_and_message(exc)
    return (code == "NOT_FOUND" and "shared memory region" in msg
            and any(m in msg for m in _LOST_REGION_MARKERS))


def _outputs(response, names) -> dict[str, np.ndarray]:
    """The requested outputs as numpy arrays (views of the response's raw bytes), decoded
    as tritonclient's InferResult.as_numpy does; a missing output is None as there."""
    from tritonclient.utils import deserialize_bf16_tensor, deserialize_bytes_tensor, triton_to_np_dtype

    raw = response.raw_output_contents
    found = {}
    for i, out in enumerate(response.outputs):
        if out.name not in names or out.name in found:
            continue
        if i < len(raw):
            if out.datatype == "BYTES":
                arr = deserialize_bytes_tensor(raw[i])
            elif out.datatype == "BF16":
                arr = deserialize_bf16_tensor(raw[i])
            else:
                arr = np.frombuffer(raw[i], dtype=triton_to_np_dtype(out.datatype))
        elif len(out.contents.bytes_contents):
            arr = np.array(out.contents.bytes_contents, copy=False)
        else:
            arr = np.empty(0)
        found[out.name] = arr.reshape(list(out.shape))
    return {n: found.get(n) for n in names}
