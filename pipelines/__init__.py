"""Code that runs inside Triton's python backend: the BLS pipelines (faces, ocr), the CLIP
tokenizer model, the CPU ONNX/OpenVINO runner and the fixed-time stand-in.

Every python-backend model's `<model>/1/model.py` is the same two lines (`entry_source`),
committed or placed by serving/profiles.py and serving/standins.py: it imports the model's
class from here. Triton's python runs with the project importable (serving/tritonserver.py
puts the project root on PYTHONPATH; the images install it).
"""
from __future__ import annotations

ENTRY_FILE = "model.py"


def entry_source(module: str) -> str:
    """The model.py of a python-backend model whose code is pipelines/<module>.py."""
    return (f'"""Triton\'s python backend loads this file; the model\'s code is pipelines/{module}.py."""\n'
            f"from pipelines.{module} import TritonPythonModel  # noqa: F401\n")
