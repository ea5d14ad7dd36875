"""Fixtures shared by unit test modules (helpers shared by any tests: tests/support)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import contract
from contract import MODEL_REPOSITORY


@pytest.fixture(scope="session")
def ppocr_exports():
    """Both PP-OCR exports (the runner skips them when `make export-onnx` made them already,
    as it has before `make test`)."""
    pytest.importorskip("onnx")
    from export import registry
    from export.base import ExportError, WeightsSearch
    from export.runner import export_one

    try:
        results = {m: export_one(m, WeightsSearch(), MODEL_REPOSITORY) for m in registry.family_models("ppocr")}
    except ExportError as exc:
        if "could not download the wheel" in str(exc):
            pytest.skip(f"the rapidocr-onnxruntime wheel is not cached in build/wheels and PyPI is unreachable: {exc}")
        raise
    return results


@pytest.fixture()
def source(tmp_path) -> Path:
    """A copy of the committed configs with tiny stand-in artifacts (derive never reads them)."""
    src = tmp_path / "src"
    shutil.copytree(MODEL_REPOSITORY, src, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.data",
                                                                                   "export.json", "__pycache__"))
    for name, c in contract.load_all(src).items():
        v = c.version_dir()
        v.mkdir(exist_ok=True)
        if c.kind == "network":
            (v / "model.onnx").write_bytes(b"onnx")
            (v / "export.json").write_text(json.dumps({"provenance": f"weights of {name}"}))
        elif c.kind == "python":
            (v / "model.py").write_text("# model\n")
    (src / "ocr" / "1" / "charset.txt").write_text("a\nb\n")
    return src


