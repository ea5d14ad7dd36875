"""Per-model capacity admission (gateway/capacity.py) on a fake clock."""
from __future__ import annotations

from gateway.capacity import ModelCapacity


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def saturate(cap: ModelCapacity, clock: Clock, rate: float, batch_s: float, seconds: float):
    """Triton answering `rate` requests/s, each call `batch_s`, for `seconds`."""
    step = 1.0 / rate
    for _ in range(int(seconds * rate)):
        clock.t += step
        ticket = cap.enter()
        cap.observe(batch_s)
        if ticket is not None:
            ticket.answered = True
            ticket.t0 -= batch_s            # it took one call
            cap.leave(ticket)


def test_floor_until_measured_then_one_batch_running_and_one_waiting():
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=0.2, clock=clock)
    assert cap.limit == 8
    tickets = [cap.enter() for _ in range(8)]
    assert all(tickets) and cap.enter() is None and cap.full()
    for t in tickets:
        cap.leave(t)
    # 400 requests/s through a 50 ms execution: 20 per batch time, 2 x 20 in flight
    saturate(cap, clock, rate=400, batch_s=0.05, seconds=5)
    assert 0.9 * 400 <= cap.peak <= 1.1 * 400
    assert 38 <= cap.limit <= 44


def test_the_wait_never_reaches_half_the_queue_timeout():
    clock = Clock()
    cap = ModelCapacity(max_batch=1, queue_timeout_s=0.1, clock=clock)
    saturate(cap, clock, rate=100, batch_s=0.5, seconds=5)
    # request time 0.5 s + wait min(0.5, 0.05)
    assert 54 <= cap.limit <= 57


def test_the_request_time_counts_the_gateways_own_work():
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=0.2, clock=clock)
    saturate(cap, clock, rate=100, batch_s=0.05, seconds=5)
    before = cap.limit
    t = cap.enter()
    t.answered, t.t0 = True, clock.t - 0.01       # a request of 10 ms: faster than a call
    cap.leave(t)
    assert cap.limit < before


def test_capacity_lost_is_relearned():
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=0.2, clock=clock)
    saturate(cap, clock, rate=400, batch_s=0.05, seconds=5)
    high = cap.limit
    saturate(cap, clock, rate=100, batch_s=0.05, seconds=120)   # a replica gone
    assert cap.limit < high / 2
