"""Triton's python backend loads this file; the model's code is pipelines/tokenizer.py."""
from pipelines.tokenizer import TritonPythonModel  # noqa: F401
