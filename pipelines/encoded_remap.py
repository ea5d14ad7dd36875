"""The remap step of an encoded entry point (Triton python backend): the model's geometric
outputs (frame pixels) -> the original image's pixels, clipped to the image, with the
gateway's arithmetic (imaging.to_original), plus `original_size`.

Its inputs are the model's geometric outputs (its config's `geometry_outputs`, under the
same names), `size` INT32 [2] and `scale` FP64 [2] from the decode step; its outputs are
the same geometric tensors mapped and `original_size`. Every request of a batch is mapped
in one array operation per output.
"""
from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

import imaging
from contract import encoded, from_json


class TritonPythonModel:
    def initialize(self, args):
        c = from_json(json.loads(args["model_config"]))
        self.geometry = [o.name for o in c.outputs if o.name != encoded.ORIGINAL_SIZE]

    def execute(self, requests):
        def batch(name: str) -> np.ndarray:
            parts = [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        size, scale = batch("size"), batch("scale")
        counts = [pb_utils.get_input_tensor_by_name(r, "size").as_numpy().shape[0] for r in requests]
        out = {g: imaging.to_original(batch(g), scale, size) for g in self.geometry}
        out[encoded.ORIGINAL_SIZE] = size.astype(np.int32, copy=False)
        bounds = np.cumsum(counts)[:-1]
        split = {k: np.split(v, bounds) for k, v in out.items()}
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, split[k][j]) for k in split])
                for j in range(len(requests))]
