"""Triton's python backend loads this file; the model's code is pipelines/ocr.py."""
from pipelines.ocr import TritonPythonModel  # noqa: F401
