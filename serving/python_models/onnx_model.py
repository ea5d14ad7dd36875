"""Triton python-backend model: one ONNX graph run by ONNX Runtime (CPU).

The embedded CPU profile (serving/profiles.py) places this file as `<model>/1/model.py`
beside `<model>/1/model.onnx` for every network model. Triton's dynamic batcher hands
`execute` a list of requests; their inputs are concatenated along the batch axis, the
graph runs ONCE, and the outputs are split back by each request's batch size.

Config parameters (strings), all optional:
  intra_op_threads   ONNX Runtime intra-op threads (default 1: several model processes
                     share a couple of cores; oversubscription costs more than it gives)
  inter_op_threads   default 1
  onnx_file          graph file name in the version folder (default model.onnx)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.name = config["name"]
        folder = Path(args["model_repository"]) / args["model_version"]
        path = folder / _param(config, "onnx_file", "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(_param(config, "intra_op_threads", "1"))
        opts.inter_op_num_threads = int(_param(config, "inter_op_threads", "1"))
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [t["name"] for t in config["input"]]
        self.outputs = [t["name"] for t in config["output"]]
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self.inputs if n not in graph_inputs] + \
                  [n for n in self.outputs if n not in graph_outputs]
        if missing:
            raise pb_utils.TritonModelException(
                f"{self.name}: {path} lacks the config's tensors {missing}; "
                f"graph has inputs {sorted(graph_inputs)} outputs {sorted(graph_outputs)}. "
                f"Re-export it: make export-onnx MODELS={self.name}")
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
            results = self.session.run(self.outputs, feed)
        except Exception as exc:  # noqa: BLE001 - an ORT failure fails this batch, not the server
            err = pb_utils.TritonError(f"{self.name}: ONNX Runtime failed on a batch of {sum(sizes)}: {exc}")
            return [pb_utils.InferenceResponse(error=err) for _ in requests]
        bounds = np.cumsum(sizes)[:-1]
        per_output = [np.split(np.asarray(res, dtype=self.out_dtypes[n]), bounds)
                      for n, res in zip(self.outputs, results)]
        return [pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(n, np.ascontiguousarray(parts[j])) for n, parts in zip(self.outputs, per_output)])
                for j in range(len(requests))]

    def finalize(self):
        self.session = None
