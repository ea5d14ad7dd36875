"""Triton's python backend loads this file; the model's code is pipelines/faces.py."""
from pipelines.faces import TritonPythonModel  # noqa: F401
