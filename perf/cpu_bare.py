"""Bare CPU runtime throughput of one exported graph: the ceiling `make bench-cpu` holds the
served figures against. Same runner as the served path (pipelines/cpu_runner.py), same
inputs as the load generators (export/scene.py: a real scene with faces, objects, text)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

import contract
from export import scene
from pipelines.cpu_runner import open_runner


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
    """The load generators' real scene (export.scene), variable dims at their opt size."""
    return scene.inputs_for(c.with_variable_dims("opt").inputs, batch)


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
