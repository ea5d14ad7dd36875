"""Triton python-backend model: one ONNX graph on the CPU (OpenVINO, else ONNX Runtime).

The embedded CPU profile (serving/profiles.py) places this file as `<model>/1/model.py`
beside `<model>/1/model.onnx` for every network model. Triton's dynamic batcher hands
`execute` a list of requests; their inputs are concatenated along the batch axis, the
graph runs ONCE, and the outputs are split back by each request's batch size.

Config parameters (strings; the CPU profile writes them from the machine, see
serving/cpu_machine.py), all optional:
  cpu_runtime     openvino (default) or onnxruntime; OpenVINO failing to load or compile
                  the graph falls back to ONNX Runtime, logged as a warning with the reason
  cpu_precision   bf16 or f32 (default f32); bf16 is OpenVINO's, where the CPU has it natively
  cpu_threads     threads of this model's pool (default 1)
  cpu_slots       at most this many graph executions at once across the server's models
                  (the profile writes 2 x cores // threads; 0 = no limit, the default here):
                  see cpu_runner.ExecutionSlots
  openvino_cache  OpenVINO's compiled-model cache folder (faster restarts); none by default
  onnx_file       graph file name in the version folder (default model.onnx)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from .cpu_runner import ExecutionSlots, RunnerError, open_runner


def _param(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        folder = Path(args["model_repository"]) / args["model_version"]
        path = folder / _param(config, "onnx_file", "model.onnx")
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        try:
            self.runner = open_runner(path, self.outputs, runtime=_param(config, "cpu_runtime", "openvino"),
                                      precision=_param(config, "cpu_precision", "f32"),
                                      threads=int(_param(config, "cpu_threads", "1")),
                                      cache_dir=_param(config, "openvino_cache", "") or None,
                                      inputs=self.inputs)
        except (RunnerError, KeyError, RuntimeError) as exc:
            raise pb_utils.TritonModelException(
                f"{self.name}: cannot run {path}: {exc}. Re-export it: make export-onnx MODELS={self.name}") from exc
        slots = int(_param(config, "cpu_slots", "0"))
        # the served repository folder: every model process of this server shares its lock files
        self.slots = ExecutionSlots(Path(args["model_repository"]).parent, slots) if slots > 0 else None
        level = pb_utils.Logger.WARNING if self.runner.fallback_reason else pb_utils.Logger.INFO
        pb_utils.Logger.log(f"{self.name}: {self.runner.description}", level)
        # Config dtypes are what Triton promises clients; cast graph outputs to them.
        self.out_dtypes = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}

    def execute(self, requests):
        try:
            arrays = [[pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs] for r in requests]
        except Exception as exc:  # noqa: BLE001 - report to every request, keep serving
            err = pb_utils.TritonError(f"{self.name}: reading inputs failed: {exc}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        sizes = [a[0].shape[0] for a in arrays]
        try:
            feed = {n: (arrays[0][i] if len(arrays) == 1 else np.concatenate([a[i] for a in arrays]))
                    for i, n in enumerate(self.inputs)}
            if self.slots is None:
                results = self.runner.run(feed)
            else:
                with self.slots:
                    results = self.runner.run(feed)
        except Exception as exc:  # noqa: BLE001 - a runtime failure fails this batch, not the server
            err = pb_utils.TritonError(f"{self.name}: {self.runner.runtime} failed on a batch of {sum(sizes)}: {exc}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        if len(requests) == 1:
            return [pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(n, np.ascontiguousarray(res, dtype=self.out_dtypes[n]))
                for n, res in zip(self.outputs, results)])]
        bounds = np.cumsum(sizes)[:-1]
        per_output = [np.split(np.asarray(res, dtype=self.out_dtypes[n]), bounds)
                      for n, res in zip(self.outputs, results)]
        return [pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(n, np.ascontiguousarray(parts[j])) for n, parts in zip(self.outputs, per_output)])
                for j in range(len(requests))]

    def finalize(self):
        self.runner = None
        if self.slots is not None:
            self.slots.close()
