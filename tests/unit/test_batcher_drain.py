"""perf.batcher_drain's arithmetic: the ideal drain of a backlog and how late one was."""
from perf.batcher_drain import ideal_s, late_s


def test_ideal_is_one_full_batch_after_another():
    assert ideal_s(9, 4, 100) == [0.1] * 4 + [0.2] * 4 + [0.3]


def test_late_compares_in_order():
    ideal = ideal_s(5, 4, 100)
    assert late_s([0.1, 0.1, 0.1, 0.1, 0.2], ideal) == 0.0
    assert abs(late_s([0.7, 0.1, 0.1, 0.1, 0.1], ideal) - 0.5) < 1e-9
