"""The one error the image's start-up raises for what an operator must fix."""
from __future__ import annotations


class StartupError(RuntimeError):
    """A start-up condition the operator must fix (no GPU, old driver, missing plan, bad
    volume, bad setting): logged, exit status 2."""
