"""Run a BLS pipeline's model.py without Triton: a stand-in for triton_python_backend_utils
whose InferenceRequest.exec() runs the step model's exported ONNX in ONNX Runtime.

It records every step call (model, the input objects as passed, their shapes) so tests can
check what a pipeline sends (how many face crops, which tensors are passed through
rather than copied). Installed into sys.modules only inside `loaded_pipeline()`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def is_cpu(self) -> bool:
        return True


class _Error:
    def __init__(self, message: str):
        self._m = message

    def message(self) -> str:
        return self._m


class _Response:
    def __init__(self, outputs: dict | None = None, error: str | None = None):
        self.outputs, self._error = outputs or {}, error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self):
        return _Error(self._error)


def make_module(run_step) -> types.ModuleType:
    """A triton_python_backend_utils stand-in; `run_step(model, {name: Tensor}) -> {name: array}`."""
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = Tensor
    pb.TritonError = _Error
    pb.TritonModelException = RuntimeError

    class InferenceRequest:
        def __init__(self, model_name, requested_output_names, inputs, **_):
            self.model, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            try:
                out = run_step(self.model, {t.name(): t for t in self.inputs})
            except Exception as exc:  # noqa: BLE001 - becomes the step's error response
                return _Response(error=str(exc))
            return _Response({k: out[k] for k in self.outputs})

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None):
            self.output_tensors, self.error = output_tensors or [], error

    pb.InferenceRequest = InferenceRequest
    pb.InferenceResponse = InferenceResponse
    pb.get_output_tensor_by_name = lambda resp, name: Tensor(name, resp.outputs[name]) if name in resp.outputs else None
    pb.get_input_tensor_by_name = lambda req, name: req[name]
    return pb


class OnnxSteps:
    """Step models from a repository's exported ONNX, run in ONNX Runtime; every call recorded."""

    def __init__(self, repository: Path, models: tuple[str, ...]):
        import onnxruntime as ort

        self.sessions = {m: ort.InferenceSession(str(repository / m / "1" / "model.onnx"),
                                                 providers=["CPUExecutionProvider"]) for m in models}
        self.calls: list[tuple[str, dict]] = []     # (model, {input name: the object passed})

    def __call__(self, model: str, inputs: dict) -> dict:
        self.calls.append((model, dict(inputs)))
        s = self.sessions[model]
        names = [o.name for o in s.get_outputs()]
        return dict(zip(names, s.run(names, {k: t.as_numpy() for k, t in inputs.items()})))


@contextlib.contextmanager
def loaded_pipeline(model_py: Path, repository: Path, config: dict, run_step):
    """Import `model_py` with the stand-in module, initialise it, yield the TritonPythonModel."""
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = make_module(run_step)
    forget_backend_modules()   # model.py imports pipelines.<module>: bind it to THIS stand-in
    try:
        spec = importlib.util.spec_from_file_location(f"_pipeline_{model_py.parent.parent.name}", model_py)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        model = mod.TritonPythonModel()
        model.initialize({"model_config": json.dumps(config), "model_repository": str(repository / config["name"]),
                          "model_version": "1"})
        yield model
    finally:
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved
        forget_backend_modules()


def forget_backend_modules() -> None:
    """Drop the imported pipelines.* modules that hold a triton_python_backend_utils (the model
    classes, imported at module level), so the next import binds the stand-in then installed."""
    for name in [n for n, m in sys.modules.items() if n.startswith("pipelines.") and hasattr(m, "pb_utils")]:
        del sys.modules[name]
