"""Bare CPU runtime throughput of one exported graph: the ceiling `make bench-cpu` holds the
served figures against. Same runner as the served path (serving/cpu_runner.py), same
inputs as the load generator (a real photo with a caption, tokens of a sentence)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from serving import contract
from serving.cpu_runner import open_runner

from .bench_models import SAMPLE_TEXT, sample_frame


@dataclass(frozen=True)
class BarePoint:
    model: str
    runtime: str          # what ran (a fallback says so in `note`)
    precision: str
    threads: int
    batch: int
    items_per_s: float
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision} {self.threads}t b{self.batch}"


def model_inputs(c: contract.ModelContract, batch: int) -> dict[str, np.ndarray]:
    """Realistic inputs from the contract (variable dims at their opt size)."""
    import cv2

    c = c.with_variable_dims("opt")
    feed = {}
    for spec in c.inputs:
        shape = (batch, *spec.dims)
        if spec.dtype == np.uint8 and len(spec.dims) == 3:
            h, w, _ = spec.dims
            frame = sample_frame(640, 640)
            feed[spec.name] = np.ascontiguousarray(np.broadcast_to(cv2.resize(frame, (w, h)), shape))
        elif spec.name == "tokens":
            from serving.clip_tokenizer import ClipTokenizer

            feed[spec.name] = np.repeat(ClipTokenizer()([SAMPLE_TEXT.decode()]), batch, 0).astype(spec.dtype)
        elif spec.name == "landmarks":
            from export.face_align import template

            size = c.output("crops").dims[1]
            lmk = template(size) * 1.2 + np.array([250.0, 150.0])
            feed[spec.name] = np.broadcast_to(lmk, shape).astype(np.float32).copy()
        else:
            feed[spec.name] = np.zeros(shape, spec.dtype)
    return feed


def measure(model: str, runtime: str, precision: str, threads: int, batches, seconds: float,
            repository=contract.MODEL_REPOSITORY) -> list[BarePoint]:
    """items/s at each batch (one compiled model per thread count; at least 2 timed runs)."""
    c = contract.load(model, repository)
    path = c.version_dir() / "model.onnx"
    runner = open_runner(path, [o.name for o in c.outputs], runtime, precision, threads,
                         inputs=[i.name for i in c.inputs])
    note = runner.fallback_reason
    points = []
    for b in batches:
        if b > c.max_batch_size:
            continue
        feed = model_inputs(c, b)
        runner.run(feed)                                  # first run: allocations, lazy init
        n, t0 = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < seconds:
            runner.run(feed)
            n += 1
        points.append(BarePoint(model, runner.runtime, runner.precision, threads, b,
                                n * b / (time.perf_counter() - t0), note))
    return points
