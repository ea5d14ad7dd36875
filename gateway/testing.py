"""A fake Triton for tests and demos: the `Backend` seam answered from config.pbtxt.

It reports the committed contract as its metadata (so the catalog checks pass), returns
outputs of the right names, dtypes and shapes, and records every call. Tests script it:
`fail` raises a gateway error on every call, `delay_s` slows calls, `detections` sets
the boxes a detector "finds" (model-input pixels), `hold` blocks calls until released.
`encoded=True` also serves every encoded entry point the contract's rule gives
(contract/encoded.py): its `original_size` read from each image's header, its other
outputs those of the model (already "in original pixels").
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
from google.protobuf import json_format

import contract
import imaging
from contract import encoded as entries

from .errors import ModelUnavailable, TritonUnavailable


class FakeBackend:
    def __init__(self, repository: Path = contract.MODEL_REPOSITORY,
                 models: tuple[str, ...] | None = None, overrides: dict | None = None,
                 encoded: bool = False):
        all_models = contract.load_all(repository)
        self.contracts = {n: c for n, c in all_models.items() if models is None or n in models}
        if encoded:
            self.contracts.update({e.name: e for e in (
                entries.entry_contract(c) for c in list(self.contracts.values()) if entries.has_entry(c))})
        self.overrides = overrides or {}          # model -> metadata dict replacing the real one
        self.calls: list[tuple[str, int]] = []    # (model, batch size) per infer call
        self.deadlines: list[tuple] = []          # (timeout_s, queue_timeout_us) per call
        self.fail: Exception | None = None
        self.delay_s = 0.0
        self.detections = np.array([[10.0, 20.0, 110.0, 220.0]], np.float32)
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.closed = False

    # -- the seam ------------------------------------------------------------------
    async def metadata(self, model):
        self._check_up()
        if model in self.overrides:
            return self.overrides[model]
        c = self._contract(model)
        return {"name": model, "platform": c.config.platform or c.config.backend,
                "inputs": [_tensor(t) for t in c.inputs], "outputs": [_tensor(t) for t in c.outputs]}

    async def config(self, model):
        self._check_up()
        return json_format.MessageToDict(self._contract(model).config,
                                         preserving_proto_field_name=True)

    async def ready(self, models):
        self._check_up()
        return {m: m in self.contracts for m in models}

    async def infer(self, model, inputs, outputs, *, timeout_s=None, queue_timeout_us=None):
        self.deadlines.append((timeout_s, queue_timeout_us))
        self.entered.set()
        while not self.hold.is_set():
            await asyncio.sleep(0.005)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        c = self._contract(model)
        n = len(next(iter(inputs.values())))
        assert n <= c.max_batch_size, f"batch {n} over {model}'s max_batch_size"
        for spec in c.inputs:
            arr = inputs[spec.name]
            assert arr.shape[1:] == spec.dims and arr.dtype == spec.dtype, (spec, arr.shape)
        self.calls.append((model, n))
        out = {name: self._output(c.output(name), n) for name in outputs}
        if entries.ORIGINAL_SIZE in out:
            out[entries.ORIGINAL_SIZE] = np.array(
                [imaging.read_header(d, max_pixels=1 << 40, max_side=1 << 20).size
                 for d in inputs[entries.INPUT][:, 0]], np.int32).reshape(n, 2)
        return out

    async def close(self):
        self.closed = True

    # -- helpers -------------------------------------------------------------------
    def _check_up(self):
        if isinstance(self.fail, TritonUnavailable):
            raise self.fail

    def _contract(self, model):
        if model not in self.contracts:
            raise ModelUnavailable(f"unknown model {model!r}")
        return self.contracts[model]

    def _output(self, spec, n):
        shape = (n,) + spec.dims
        name = spec.name
        if spec.dtype == np.object_:
            out = np.empty(shape, np.object_)
            out[...] = b""
            out[:, 0] = "héllo".encode()
            return out
        out = np.zeros(shape, spec.dtype)
        d = self.detections
        if name.endswith("boxes"):
            out[:, :len(d)] = d
        elif name.endswith("scores"):
            out[:, :len(d)] = np.linspace(0.9, 0.6, len(d))
        elif name.startswith("num_"):
            out[:] = len(d)
        elif name.endswith("landmarks"):
            out[:, :len(d)] = d[:, None, :2]
        elif name.endswith("polygons"):
            out[:, :len(d)] = d[:, None, :2]
        elif name.endswith("classes"):
            out[:, :len(d)] = np.arange(len(d)) % 80
        elif "embedding" in name:
            out[..., 0] = 1.0
        return out


def metrics_text(app) -> str:
    """The Prometheus text an app's metrics server would serve (`app`: the FastAPI app
    or a TestClient of it), without binding the metrics port."""
    app = getattr(app, "app", app)
    return app.state.metrics.text().decode()


def _tensor(spec: contract.TensorSpec) -> dict:
    return {"name": spec.name, "datatype": spec.triton_dtype,
            "shape": [str(-1)] + [str(d) for d in spec.dims]}
