"""Shared by the DALI tests: skip, saying why, where nvidia.dali cannot run; never in CI."""
from __future__ import annotations

import os

import pytest


def require_dali() -> None:
    """Skip the calling test when DALI (or its image codec library) is missing, saying what
    to install. `make setup` installs both (the `dali` extra), so under CI (CI=true) a
    missing DALI is a failure, not a skip."""
    from pipelines import dali_letterbox

    reason = dali_letterbox.dali_missing()
    if not reason:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the DALI tests: {reason}")
    pytest.skip(reason)
