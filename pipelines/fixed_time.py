"""Triton python-backend model: a stand-in that takes a FIXED time per batch.

It answers with the interface of the model it replaces (its own config: inputs and
outputs come from the committed contract, see serving/standins.py) and spends
`batch_ms + image_ms x batch` sleeping, which uses no CPU. It stands for a GPU-bound
model: a replica's capacity is then known (instances x max_batch / time per batch) and
does not depend on the cores of the machine that runs the test or the benchmark.
Outputs are zeros (empty strings for BYTES; an output's variable dims take the inputs'
variable dims in order, divided by the contract's `variable_dim_output_divisor`), so a detector stand-in finds nothing, unless
`outputs_file` names canned ones (a pipeline's later steps then run, as on real images).

Config parameters (strings):
  batch_ms       time per execution, whatever its batch size (default 0: an instant stub)
  image_ms       additional time per batch item (default 0)
  batch_ms_file  a file (relative: in the model's folder) whose number, when present,
                 replaces batch_ms; read again every 50 ms while an execution sleeps, so
                 a test can make a running replica hang (a large number) and recover
                 (a small one) without restarting it, while Triton's health answers stay
                 unaffected (as a GPU kernel that hangs would leave them)
  outputs_file   an .npz (relative: in the model's folder) holding, per output name, ONE
                 item's answer; every item of every batch gets it (outputs it lacks: zeros)
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(config: dict, key: str) -> float:
    return float(config.get("parameters", {}).get(key, {}).get("string_value", "0") or 0)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.batch_s = _param(config, "batch_ms") / 1000.0
        self.image_s = _param(config, "image_ms") / 1000.0
        path = config.get("parameters", {}).get("batch_ms_file", {}).get("string_value", "")
        self.batch_file = os.path.join(args["model_repository"], path) if path else None
        self.first_input = config["input"][0]["name"]
        self.variable = {i["name"]: [k for k, d in enumerate(i["dims"]) if int(d) < 0]
                         for i in config["input"] if any(int(d) < 0 for d in i["dims"])}
        self.divisor = int(_param(config, "variable_dim_output_divisor") or 1)
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"]),
                         [int(d) for d in o["dims"]]) for o in config["output"]]
        canned = config.get("parameters", {}).get("outputs_file", {}).get("string_value", "")
        self.canned = {}
        if canned:
            with np.load(os.path.join(args["model_repository"], canned)) as f:
                self.canned = {name: f[name].astype(dtype).reshape(dims)
                               for name, dtype, dims in self.outputs if name in f}

    def execute(self, requests):
        sizes = [pb_utils.get_input_tensor_by_name(r, self.first_input).as_numpy().shape[0]
                 for r in requests]
        self._sleep(self.image_s * sum(sizes))
        responses = []
        for n, r in zip(sizes, requests):
            steps = [pb_utils.get_input_tensor_by_name(r, name).as_numpy().shape[1 + k] // self.divisor
                     for name, dims in self.variable.items() for k in dims]
            tensors = []
            for name, dtype, dims in self.outputs:
                left = iter(steps)
                dims = [next(left, 1) if d < 0 else d for d in dims]
                if name in self.canned:
                    arr = np.broadcast_to(self.canned[name], (n, *self.canned[name].shape)).copy()
                elif dtype == np.object_:
                    arr = np.full([n, *dims], b"", dtype=np.object_)
                else:
                    arr = np.zeros([n, *dims], dtype)
                tensors.append(pb_utils.Tensor(name, arr))
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _sleep(self, extra_s: float) -> None:
        if self.batch_file is None:
            time.sleep(self.batch_s + extra_s)
            return
        start = time.monotonic()
        while True:
            left = start + self._batch_s() + extra_s - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def _batch_s(self) -> float:
        try:
            with open(self.batch_file) as f:
                return float(f.read().strip() or 0) / 1000.0
        except (OSError, ValueError):   # absent or being written: the configured time
            return self.batch_s
