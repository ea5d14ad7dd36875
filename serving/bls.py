"""Calling other Triton models from a python-backend model (BLS), in one place.

Both pipelines (faces, ocr) need the same things from a step call: the request, outputs
asked for in CPU memory (step models may run on the GPU while the pipeline post-processes
on the CPU), a clear error naming the step, and chunking at the step's max batch size.
Only importable inside Triton's python backend (it needs triton_python_backend_utils).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class StepError(RuntimeError):
    """A model called by a pipeline answered with an error or an unusable output."""


def call(model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One BLS request to `model`; outputs as numpy arrays in CPU memory."""
    import triton_python_backend_utils as pb_utils

    kwargs = {}
    if hasattr(pb_utils, "PreferredMemory"):
        kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
    request = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=list(outputs),
        inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in inputs.items()], **kwargs)
    response = request.exec()
    if response.has_error():
        raise StepError(f"{model}: {response.error().message()}")
    result = {}
    for name in outputs:
        t = pb_utils.get_output_tensor_by_name(response, name)
        if t is None:
            raise StepError(f"{model} returned no output {name!r}")
        if not t.is_cpu():
            raise StepError(f"{model} returned {name!r} in GPU memory; this Triton lacks preferred_memory")
        result[name] = t.as_numpy()
    return result


def call_chunked(model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str],
                 limit: int) -> dict[str, np.ndarray]:
    """`call` over a batch in chunks of at most `limit` rows (usually one chunk)."""
    n = next(iter(inputs.values())).shape[0]
    parts = [call(model, {k: v[i:i + limit] for k, v in inputs.items()}, outputs) for i in range(0, n, limit)]
    if len(parts) == 1:
        return parts[0]
    return {o: np.concatenate([p[o] for p in parts]) for o in outputs}
