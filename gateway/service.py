"""The request-independent core every route uses: admit, decode a batch, call Triton
batched, render the answer.

One `Service` per app (held in app.state): the backend seam, the learned catalog, the
bounded pool (decodes, and big JSON parsing and rendering: never on the event loop),
per-model capacity (gateway/capacity.py) and the metrics.
"""
from __future__ import annotations

import asyncio
import functools
import threading
import time
from contextvars import ContextVar
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

import imaging

from .admission import Reservation
from .backend import Backend
from .capacity import ModelCapacity
from .catalog import Catalog, ModelInfo
from .errors import GatewayOverloaded, TritonTimeout, TritonUnavailable, UpstreamError
from .inputs import off_loop
from .metrics import Metrics
from .responses import JSON_FLOAT, Answer
from .settings import GatewaySettings
from . import tracing

# The capacity ticket of the request being handled (set by Service.admit).
_TICKET: ContextVar = ContextVar("visionserve_capacity_ticket", default=None)
# Answers whose Triton outputs are larger than this are built and serialised in the
# pool, in every format (16 group photos, 288 faces: 3.1 MB and ~8 ms of CPU as JSON
# floats, 0.65 MB and ~0.6 ms as msgpack: make bench-answers).
RENDER_INLINE_BYTES = 1024 * 1024


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
        self.capacity: dict[str, ModelCapacity] = {}
        metrics.watch_capacity(lambda: dict(self.capacity))

    @property
    def catalog(self) -> Catalog | None:
        """The models the ready endpoints serve (None: no endpoint is ready)."""
        return self.backend.catalog

    def _info(self, name: str) -> ModelInfo:
        catalog = self.catalog
        if catalog is None:   # no endpoint is ready (yet): say why
            raise TritonUnavailable(self.backend.reason(), retry_after=self.settings.retry_after_s)
        return catalog.get(name)

    def model(self, name: str) -> ModelInfo:
        """The served model's info; a model (or a model its pipeline runs) with no room
        for one more frame sheds the request now (503 + Retry-After), before its body is
        read (gateway/capacity.py)."""
        info = self._info(name)
        if any(gate.full() for gate, judged in self._gates(info) if judged):
            raise self._shed(info)
        return info

    def admit(self, name: str, reservation: Reservation, frames: int = 1) -> None:
        """Take `frames` places in the capacity of the model and of every model it runs
        (a pipeline's components, from the catalog), or shed the request (503 +
        Retry-After). Called once the body is in, before decoding: a slow upload does
        not hold a place while Triton could be working."""
        info = self._info(name)
        taken = []
        for gate, judged in self._gates(info):
            ticket = gate.enter(frames, force=not judged)
            if ticket is None:
                for g, t in taken:
                    g.leave(t)
                raise self._shed(info)
            taken.append((gate, ticket))
        _TICKET.set(taken[0][1])   # _call marks it answered (the handler's task and its children)
        for gate, ticket in taken:
            reservation.defer(functools.partial(gate.leave, ticket))

    def _gates(self, info: ModelInfo) -> list[tuple[ModelCapacity, bool]]:
        """(gate, judged) of the model and of each model it runs: the route model's gate
        always judges; a component's only once its own calls were timed (a route calls
        it directly): until then the pipeline's measured gate bounds it."""
        gates = [(self._gate(info.name, info.max_batch_size, info.queue_timeout_s), True)]
        for name in self._components(info.name):
            gate = self.capacity.get(name) or self._gate(name, *self._batching(name))
            gates.append((gate, gate.measured))
        return gates

    def _components(self, name: str) -> list[str]:
        catalog = self.catalog
        return catalog.components(name) if catalog is not None else []

    def _batching(self, name: str) -> tuple[int, float | None]:
        """max_batch_size and queue timeout of a model the routes do not call directly,
        from the config its pipeline's endpoint reported."""
        config = self.catalog.configs.get(name, {}) if self.catalog is not None else {}
        policy = config.get("dynamic_batching", {}).get("default_queue_policy", {})
        timeout_us = int(policy.get("default_timeout_microseconds", 0))
        return int(config.get("max_batch_size", 0)), (timeout_us / 1e6 if timeout_us else None)

    def _gate(self, name: str, max_batch: int, queue_timeout_s: float | None) -> ModelCapacity:
        gate = self.capacity.get(name)
        if gate is None:
            gate = self.capacity[name] = ModelCapacity(max_batch, queue_timeout_s,
                                                       deadline_s=self.settings.triton_timeout_s)
        return gate

    def _shed(self, info: ModelInfo) -> GatewayOverloaded:
        self.metrics.shed.labels("capacity").inc()
        return GatewayOverloaded(
            f"{info.name} is at capacity ("
            + ", ".join(f"{n} {self.capacity[n].in_flight}/{self.capacity[n].limit} frames"
                        for n in (info.name, *self._components(info.name)) if n in self.capacity)
            + ")", retry_after=self.settings.retry_after_s)

    async def frames(self, images: list, frame_hw: tuple[int, int], max_batch: int = 0,
                     reservation: Reservation | None = None) -> Frames:
        """Headers first (limits judged before any pixel is decoded; off the event loop
        for big bodies), then what decoding will hold charged to the request
        (imaging.decode_cost), then all images decoded in parallel in the pool, each
        straight into its batch slot: a shared-memory slot when the backend offers one
        (the pixels are then never copied), else a fresh array. A leased Frames must be
        released: use `infer_frames`."""
        s = self.settings
        fh, fw = frame_hw
        headers, boxes, costs = await off_loop(
            self.pool, sum(len(d) for d in images), inspect, images, frame_hw,
            s.max_image_pixels, s.max_image_side)
        lease_fn = getattr(self.backend, "lease", None)
        lease = (await lease_fn(frame_hw, max_batch, len(images))
                 if lease_fn is not None and max_batch else None)
        try:
            if reservation is not None:
                await reservation.charge_decoding(
                    decoding_bytes(costs, frame_hw, s.decode_threads, lease is None),
                    f"{len(images)} decoded frames", s.triton_timeout_s)
            pixels = (lease.array if lease is not None
                      else np.empty((len(images), fh, fw, 3), np.uint8))
            futures = [self.pool.submit(self._decode_one, d, h, b, pixels[i])
                       for i, (d, h, b) in enumerate(zip(images, headers, boxes))]
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        try:
            await settle(futures, s.decode_timeout_s, self._late)
        except BaseException:
            # a bad image, the deadline or a cancelled request: the slot goes back once
            # every decode thread has stopped writing into it (settle awaited them)
            if lease is not None:
                _release_when_done(futures, lease)
            raise
        scale = np.array([b.scale for b in boxes], np.float64)
        size = np.array([(b.width, b.height) for b in boxes], np.float64)
        return Frames(pixels, scale, size, lease)

    def _late(self) -> GatewayOverloaded:
        self.metrics.shed.labels("decode_deadline").inc()
        return GatewayOverloaded(
            f"the request's images were not decoded within {self.settings.decode_timeout_s:g} s "
            "(the decoders are busy); retry later", retry_after=self.settings.retry_after_s)

    def _decode_one(self, data, header, box, out) -> None:
        t0 = time.perf_counter()
        imaging.decode_into(data, header, box, out, self.settings.pad_value)
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
        chunks sent concurrently, the results concatenated in order. When one chunk
        fails (or the request is cancelled) the others are cancelled and awaited before
        this raises: none runs on, or holds the request's arrays, after its answer."""
        info = self._info(model)
        n = len(next(iter(inputs.values())))
        step = max(1, info.max_batch_size)
        chunks = [{k: v[i:i + step] for k, v in inputs.items()} for i in range(0, n, step)]
        parts = await all_or_none([self._call(model, c, outputs) for c in chunks])
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in outputs}

    async def _call(self, model, inputs, outputs):
        m = self.metrics
        m.bytes_to_triton.labels(model).inc(
            sum(a.nbytes for a in inputs.values() if a.dtype != np.object_))
        gate = self.capacity.get(model)
        alone = gate is None or gate.alone
        t0 = time.perf_counter()
        try:
            with tracing.span(f"triton {model}", "client", model=model,
                              batch=len(next(iter(inputs.values())))):
                out = await self.backend.infer(model, inputs, outputs,
                                               timeout_s=self.settings.triton_timeout_s)
        except UpstreamError as exc:
            m.triton_errors.labels(model, exc.code).inc()
            raise
        finally:
            m.triton.labels(model).observe(time.perf_counter() - t0)
        if gate is not None:   # an answer: how long one execution (and any wait) took
            seconds = time.perf_counter() - t0
            rows = len(next(iter(inputs.values())))
            gate.observe(seconds, alone, rows)
            for name in self._components(model):   # the frames went through these too
                component = self.capacity.get(name)
                if component is not None:
                    component.observe(seconds, False, rows)
            ticket = _TICKET.get()
            if ticket is not None:
                ticket.answered(seconds)
        return out

    async def render(self, build, outputs: dict[str, np.ndarray], answer: Answer = JSON_FLOAT):
        """The answer `build(answer.vectors)` makes, serialised in the negotiated encoding
        (gateway/responses.py): built and serialised in the pool when the Triton outputs
        it comes from are large, inline otherwise."""
        weight = sum(a.nbytes for a in outputs.values() if a.dtype != np.object_)
        with tracing.span("render", inline=weight <= RENDER_INLINE_BYTES):
            if weight <= RENDER_INLINE_BYTES:
                return answer.response(build(answer.vectors))
            return answer.rendered(await asyncio.wrap_future(
                self.pool.submit(lambda: answer.dumps(build(answer.vectors)))))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def inspect(images: list, frame_hw: tuple[int, int], max_pixels: int, max_side: int):
    """Per image its header, its letterbox in the frame and what decoding it will hold
    (imaging.decode_cost: the one formula both charged and refused by)."""
    fh, fw = frame_hw
    headers = [imaging.read_header(d, max_pixels=max_pixels, max_side=max_side) for d in images]
    boxes = [imaging.plan_letterbox(*h.size, fw, fh) for h in headers]
    costs = [imaging.decode_cost(h, b, len(d)) for d, h, b in zip(images, headers, boxes)]
    return headers, boxes, costs


def decoding_bytes(costs: list[int], frame_hw, threads: int, on_heap: bool) -> int:
    """What decoding a request holds: its frames when they are not in a shared-memory
    slot (twice: the gRPC request joins a copy of them), and what the decodes of at most
    `threads` images at once hold (the largest ones)."""
    fh, fw = frame_hw
    frames = 2 * len(costs) * fh * fw * 3 if on_heap else 0
    return frames + sum(sorted(costs, reverse=True)[:threads])


async def all_or_none(coros: list) -> list:
    """The results of `coros` in order, run concurrently; on the first failure the
    others are cancelled and awaited (asyncio.TaskGroup's semantics, on Python 3.10 too)
    and that failure is raised as itself, not as an ExceptionGroup (the error handlers
    map gateway errors to answers). One coroutine runs inline."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await _end_all(tasks)
        raise
    failed = [t.exception() for t in tasks if t.done() and not t.cancelled()
              and t.exception() is not None]
    if failed:
        if await _end_all(tasks):
            raise asyncio.CancelledError()
        raise failed[0]          # the earliest chunk, in request order, that failed
    return [t.result() for t in tasks]


async def _end_all(tasks) -> bool:
    """Cancel the tasks not done and await every one (however often this task is
    cancelled meanwhile); True when it was."""
    for t in tasks:
        t.cancel()
    cancelled = False
    running = [t for t in tasks if not t.done()]
    while running:
        try:
            await asyncio.wait(running)
        except asyncio.CancelledError:
            cancelled = True
        running = [t for t in running if not t.done()]
    for t in tasks:              # retrieved: no "exception never retrieved" noise
        if not t.cancelled():
            t.exception()
    return cancelled


async def settle(futures, timeout_s: float, late) -> None:
    """Every decode of a request done, or none of them left running: on the first
    failure, at the deadline (`late()` is raised) or when the request is cancelled, the
    decodes not started are cancelled and the running ones awaited BEFORE raising, so
    no decode writes into a frame (or holds memory) after the request has answered."""
    if not futures:
        return
    waiters = [asyncio.wrap_future(f) for f in futures]
    try:
        done, pending = await asyncio.wait(waiters, timeout=timeout_s,
                                           return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        await _stop(futures, waiters)
        raise
    if not pending:
        for w in waiters:          # in image order: the first bad image is reported
            if w.exception() is not None:
                raise w.exception()
        return
    cancelled = await _stop(futures, waiters)
    if cancelled:
        raise asyncio.CancelledError()
    failed = [w.exception() for w in waiters if not w.cancelled() and w.exception() is not None]
    if failed:
        raise failed[0]
    if any(w.cancelled() for w in waiters):   # the deadline passed before they started
        raise late()


async def _stop(futures, waiters) -> bool:
    """Cancel what has not started, await what has (however often this task is
    cancelled meanwhile: decodes are bounded by the codec's limits). True when the
    task was cancelled while waiting."""
    for f in futures:
        f.cancel()
    cancelled = False
    running = [w for w in waiters if not w.done()]
    while running:
        try:
            await asyncio.wait(running)
        except asyncio.CancelledError:
            cancelled = True
        running = [w for w in running if not w.done()]
    for w in waiters:              # retrieved: no "exception never retrieved" noise
        if not w.cancelled():
            w.exception()
    return cancelled


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
