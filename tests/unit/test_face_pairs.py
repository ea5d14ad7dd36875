"""perf/face_pairs.py's pair list reader and accuracy arithmetic, against hand-counted
answers (the live run on generated photos: tests/integration/test_face_compare_live.py)."""
from __future__ import annotations

import numpy as np
import pytest

from perf.face_pairs import Pair, best_threshold, read_pairs, scores

LFW = """10\t300
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
"""


def test_lfw_pairs_lines_read_as_same_and_different_pairs():
    assert read_pairs(LFW) == [Pair(("Abel_Pacheco", 1), ("Abel_Pacheco", 4), True),
                               Pair(("Akhmed_Zakayev", 1), ("Akhmed_Zakayev", 3), True),
                               Pair(("Abdel_Madi_Shabneh", 1), ("Dean_Barker", 1), False)]
    assert read_pairs("a 1 2\n\n") == [Pair(("a", 1), ("a", 2), True)]


@pytest.mark.parametrize("bad", ["a 1", "a x 2", "a 1 b 2 c", "5 6\n7 8"])
def test_other_lines_are_refused_naming_the_line(bad):
    with pytest.raises(ValueError, match="line"):
        read_pairs(bad)


SIM = np.array([0.9, 0.8, 0.3, 0.6, 0.1, np.nan])
SAME = np.array([True, True, True, False, False, True])


def test_scores_count_a_pair_without_a_face_as_a_non_match():
    s = scores(SIM, SAME, 0.5)
    # matches: 0.9, 0.8, 0.6 -> correct: 0, 1, 4 (non-match, different) = 3 of 6
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert s["true_match_rate"] == pytest.approx(2 / 4) and s["false_match_rate"] == pytest.approx(1 / 2)


def test_the_best_threshold_is_the_lowest_of_equal_bests():
    # t=0.3: matches 0.9 0.8 0.3 0.6 -> correct 0,1,2,4 = 4; t=0.8: 0,1,3,4 = 4; t=0.9: 0,3,4 = 3
    assert best_threshold(SIM, SAME) == pytest.approx(0.3)
    assert scores(SIM, SAME, best_threshold(SIM, SAME))["accuracy"] == pytest.approx(4 / 6)


def test_brute_force_agrees_on_random_lists():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        sim = np.round(rng.uniform(-1, 1, n), 1)
        same = rng.random(n) < 0.5
        best = max(scores(sim, same, t)["accuracy"] for t in [*sim, np.inf])
        assert scores(sim, same, best_threshold(sim, same))["accuracy"] == pytest.approx(best)


def test_nothing_matching_can_be_best():
    assert best_threshold(np.array([0.5, 0.4]), np.array([False, False])) == float("inf")
    assert best_threshold(np.array([np.nan]), np.array([True])) == float("inf")
