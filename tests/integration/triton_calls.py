"""One infer call shape for both protocols, used by the test_triton_* modules."""
from __future__ import annotations

import numpy as np

from .conftest import CLIENT_TIMEOUT_S


def infer(served, protocol: str, model: str, inputs: dict[str, np.ndarray],
          outputs: list[str] | None = None, client=None, **kw) -> dict[str, np.ndarray]:
    """Infer over "grpc" or "http" with binary tensors; returns {output: array}."""
    c = served.contracts[model]
    outputs = outputs or [o.name for o in c.outputs]
    dtypes = {s.name: s.triton_dtype for s in c.inputs}
    if protocol == "grpc":
        import tritonclient.grpc as mod
        client = client or served.grpc()
        kw.setdefault("client_timeout", CLIENT_TIMEOUT_S)
        req_out = [mod.InferRequestedOutput(o) for o in outputs]
    else:
        import tritonclient.http as mod
        client = client or served.http()
        req_out = [mod.InferRequestedOutput(o, binary_data=True) for o in outputs]
    req_in = []
    for name, arr in inputs.items():
        t = mod.InferInput(name, list(arr.shape), kw.pop(f"dtype_{name}", None) or dtypes.get(name, "UINT8"))
        if protocol == "grpc":
            t.set_data_from_numpy(arr)
        else:
            t.set_data_from_numpy(arr, binary_data=True)
        req_in.append(t)
    result = client.infer(model, req_in, outputs=req_out, **kw)
    return {o: result.as_numpy(o) for o in outputs}
