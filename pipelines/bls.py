"""Calling other Triton models from a python-backend model (BLS), in one place.

Both pipelines (faces, ocr) need the same things from a step call: the request, outputs
asked for in CPU memory (step models may run on the GPU while the pipeline post-processes
on the CPU), a clear error naming the step, and chunking at the step's max batch size.
Only importable inside Triton's python backend (it needs triton_python_backend_utils).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np

# The trace of the request a pipeline is executing (Triton's OpenTelemetry mode): its step
# calls are passed it, so they appear as children of that request in the same trace.
# Triton traces a BLS call only when given its parent's trace (docs: "Tracing for BLS
# models"); a batch of several requests runs its steps once, under the first one's trace.
_trace = None


@contextmanager
def traced(requests):
    """Step calls made inside belong to the trace of `requests[0]`."""
    global _trace
    _trace = requests[0].trace() if requests and hasattr(requests[0], "trace") else None
    try:
        yield
    finally:
        _trace = None


class StepError(RuntimeError):
    """A model called by a pipeline answered with an error or an unusable output."""


def call(model: str, inputs: dict, outputs: Sequence[str]) -> dict[str, np.ndarray]:
    """One BLS request to `model`; outputs as numpy arrays in CPU memory.

    An input may be a numpy array or a pb_utils.Tensor of that name (e.g. the pipeline's
    own request tensor): a Tensor is passed through as it is, so an image batch already
    in the python backend's shared memory is not copied again for each step."""
    import triton_python_backend_utils as pb_utils

    kwargs = {}
    if hasattr(pb_utils, "PreferredMemory"):
        kwargs["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
    if _trace is not None:
        kwargs["trace"] = _trace
    request = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=list(outputs),
        inputs=[_as_input(pb_utils, k, v) for k, v in inputs.items()], **kwargs)
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


def _as_input(pb_utils, name: str, value):
    if isinstance(value, np.ndarray):
        return pb_utils.Tensor(name, np.ascontiguousarray(value))
    if value.name() == name:       # a Tensor of the right name: no copy
        return value
    return pb_utils.Tensor(name, value.as_numpy())


def rows(value) -> int:
    return (value if isinstance(value, np.ndarray) else value.as_numpy()).shape[0]


def call_chunked(model: str, inputs: dict, outputs: Sequence[str], limit: int) -> dict[str, np.ndarray]:
    """`call` over a batch in chunks of at most `limit` rows (usually one chunk: then the
    inputs go as they are, pass-through Tensors included; chunks slice numpy views)."""
    n = rows(next(iter(inputs.values())))
    if n <= limit:
        return call(model, inputs, outputs)
    arrays = {k: (v if isinstance(v, np.ndarray) else v.as_numpy()) for k, v in inputs.items()}
    parts = [call(model, {k: v[i:i + limit] for k, v in arrays.items()}, outputs) for i in range(0, n, limit)]
    if len(parts) == 1:
        return parts[0]
    return {o: np.concatenate([p[o] for p in parts]) for o in outputs}
