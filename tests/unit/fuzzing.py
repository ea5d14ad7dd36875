"""Hypothesis settings for the fuzz tests: `make test` runs each a bounded number of
examples, derandomized (the same inputs every run, no example database); `make fuzz`
sets VISIONSERVE_FUZZ_EXAMPLES to run each that many randomized examples."""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

LONG = int(os.environ.get("VISIONSERVE_FUZZ_EXAMPLES", "0"))


def fuzz_settings(bounded: int):
    return settings(max_examples=LONG or bounded, derandomize=not LONG, database=None,
                    deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
