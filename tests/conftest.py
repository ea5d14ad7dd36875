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
