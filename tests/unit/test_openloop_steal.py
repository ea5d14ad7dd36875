"""perf.openloop.StealWatch: which answers came while the hypervisor took CPU."""
import time

from perf.openloop import Record, StealWatch


def _rec(started, total):
    return Record(503, total, total, started=started)


def test_during_matches_overlapping_and_just_ended_steal():
    w = StealWatch(least=0.1)
    w.intervals = [(0.0, 0.5, 0.02), (0.5, 1.0, 0.30), (1.0, 1.5, 0.05), (1.5, 2.0, 0.12)]
    assert w.during(_rec(0.6, 0.1)) == 0.30              # inside a stolen half second
    assert w.during(_rec(1.1, 0.1)) == 0.0               # quiet, the steal ended before
    assert w.during(_rec(1.1, 0.1), before_s=0.2) == 0.30  # ... but its backlog drains now
    assert w.during(_rec(1.2, 0.5)) == 0.12
    assert w.stolen == [(0.5, 1.0, 0.30), (1.5, 2.0, 0.12)]
    quiet = _rec(1.1, 0.1)
    assert w.unexplained([_rec(0.6, 0.1), quiet]) == [quiet]
    assert w.quiet_share == 0.5
    assert "50% of the time" in w.summary() and "peak 30%" in w.summary()


def test_the_watch_process_reports_intervals():
    with StealWatch(every_s=0.05) as w:
        time.sleep(0.4)
    assert len(w.intervals) >= 3
    assert all(t0 < t1 and 0.0 <= share <= 1.0 for t0, t1, share in w.intervals)


def test_a_refusal_names_its_code():
    assert Record(503, 0.0, 0.0, body=b'{"error":{"code":"gateway_overloaded","m":1}}').code \
        == "gateway_overloaded"
    assert Record(200, 0.0, 0.0, body=b'{"code":"x"}').code == ""
    assert Record(None, None, 0.0, error="cut").code == ""
