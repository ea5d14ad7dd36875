"""Shared test fixtures: paths, real weights (skipped with a reason when absent), images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
SHARED_WEIGHTS = REPO_ROOT.parent / "shared" / "weights"


def shared_weight(name: str) -> Path:
    """A file from ../shared/weights, or skip saying exactly what is missing."""
    p = SHARED_WEIGHTS / name
    if not p.is_file():
        pytest.skip(f"real weights {name} not found at {p} (see ../shared/weights/README.md)")
    return p


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """skimage.data.astronaut(): 512x512 RGB uint8 with one face."""
    from skimage import data

    return data.astronaut()


def exported_model(model: str, tmp_path_factory, search=None):
    """(onnx path, ExportJob) for `model`: model_repository's file when the export runner
    says it is up to date for `search`, else one export into a temporary repository."""
    import shutil

    import contract
    from export import registry, runner
    from export.base import ExportJob, WeightsSearch

    search = search or WeightsSearch()
    weights = registry.resolve_weights(model, search)
    path = runner.onnx_path(model, MODEL_REPOSITORY)
    record = runner.read_record(model, MODEL_REPOSITORY)
    if not (path.exists() and record and record.get("fingerprint") == runner.fingerprint(model, weights, MODEL_REPOSITORY)):
        repo = tmp_path_factory.mktemp("repo")
        (repo / model).mkdir()
        shutil.copy(MODEL_REPOSITORY / model / "config.pbtxt", repo / model / "config.pbtxt")
        path = runner.export_one(model, search, repo).path
    job = ExportJob(contract.load(model, MODEL_REPOSITORY), path, weights, Path(tmp_path_factory.mktemp("work")))
    return path, job
