"""The pre-flight estimator: refuses the SCRFD field case, accepts small runs, suggests what fits."""
from __future__ import annotations

import re

import pytest

import contract
from perf import estimate as est
from perf.errors import OverCapError
from perf.memcap import default_cap

# The field case: the original SCRFD export, 1x3x640x640 fp32 in, 9 raw head outputs
# (score/bbox/kps for strides 8/16/32, 2 anchors): not our config, the shape that hit 437 GB.
ANCHORS = (12800, 3200, 800)
SCRFD_FIELD = est.TensorLoad(inputs=(3 * 640 * 640 * 4,),
                             outputs=tuple(a * k * 4 for k in (1, 4, 10) for a in ANCHORS))


def test_scrfd_field_case_is_refused_at_the_default_cap():
    shape = est.LoadShape(batch=64, concurrency=64)
    with pytest.raises(OverCapError) as info:
        est.check(SCRFD_FIELD, shape, default_cap())
    e = info.value
    assert e.estimate.total > 40 << 30            # tens of GiB from one data step
    assert "exceeds the cap" in str(e) and "--shared-memory" in str(e)
    # with a directory of ~80 frames as input data it reaches the field's hundreds of GB
    assert est.estimate(SCRFD_FIELD, est.LoadShape(64, 64, steps=80)).total > 400e9


def test_every_suggestion_fits_when_applied():
    cap = 4 << 30
    shape = est.LoadShape(batch=64, concurrency=64)
    sugg = est.suggestions(SCRFD_FIELD, shape, cap)
    conc = next(s for s in sugg if s.startswith("--concurrency-range"))
    batch = next(s for s in sugg if s.startswith("-b "))
    c = int(re.search(r"1:(\d+)", conc).group(1))
    b = int(re.search(r"-b (\d+)", batch).group(1))
    assert est.estimate(SCRFD_FIELD, est.LoadShape(64, c)).total <= cap
    assert est.estimate(SCRFD_FIELD, est.LoadShape(64, c + 1)).total > cap   # the largest that fits
    assert est.estimate(SCRFD_FIELD, est.LoadShape(b, 64)).total <= cap
    assert any("count_windows" in s for s in sugg)


def test_shared_memory_removes_the_serialised_copies():
    none = est.estimate(SCRFD_FIELD, est.LoadShape(8, 8))
    system = est.estimate(SCRFD_FIELD, est.LoadShape(8, 8, shared_memory="system"))
    assert system.total < none.total
    assert "in-flight requests" in none.parts and "in-flight requests" not in system.parts


def test_small_run_on_our_contract_is_accepted():
    yolo = est.TensorLoad.from_contract(contract.load("yolo"))
    assert yolo.inputs == (640 * 640 * 3,)                       # uint8 NHWC from the config
    assert yolo.outputs == (100 * 4 * 4, 100 * 4, 100 * 4, 4)
    e = est.check(yolo, est.LoadShape(batch=1, concurrency=4), 1 << 30)
    assert e.total < 1 << 30 and e.parts["in-flight requests"] == 4 * 2 * 640 * 640 * 3


def test_string_inputs_are_counted():
    text = est.TensorLoad.from_contract(contract.load("text_embed"), string_length=100)
    assert text.inputs and all(b >= 104 for b in text.inputs)


def test_estimate_grows_with_batch_and_concurrency():
    base = est.estimate(SCRFD_FIELD, est.LoadShape(1, 1)).total
    assert est.estimate(SCRFD_FIELD, est.LoadShape(2, 1)).total > base
    assert est.estimate(SCRFD_FIELD, est.LoadShape(1, 2)).total > base
