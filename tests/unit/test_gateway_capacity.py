"""Per-model capacity admission (gateway/capacity.py) on a fake clock."""
from __future__ import annotations

from gateway.capacity import ModelCapacity


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def saturate(cap: ModelCapacity, clock: Clock, rate: float, batch_s: float, seconds: float,
             own_s: float = 0.0, queued_after: float = 1.0):
    """Triton answering `rate` requests/s, each call `batch_s` (and `own_s` of the
    gateway's own work per request), for `seconds`."""
    step = 1.0 / rate
    for _ in range(int(seconds * rate)):
        clock.t += step
        ticket = cap.enter()
        cap.observe(batch_s, alone=batch_s <= queued_after)
        if ticket is not None:
            ticket.answered(batch_s)
            ticket.t0 -= batch_s + own_s    # one call, and the gateway's own work
            cap.leave(ticket)


def test_floor_until_measured_then_one_request_time_and_two_batches_waiting():
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=0.2, clock=clock)
    assert cap.limit == 8
    tickets = [cap.enter() for _ in range(8)]
    assert all(tickets) and cap.enter() is None and cap.full()
    for t in tickets:
        cap.leave(t)
    # 400 requests/s through a 50 ms execution: 20 per batch time, 3 x 20 in flight
    saturate(cap, clock, rate=400, batch_s=0.05, seconds=5)
    assert 0.9 * 400 <= cap.peak <= 1.1 * 400
    assert 57 <= cap.limit <= 66


def test_the_wait_never_reaches_half_the_queue_timeout():
    clock = Clock()
    cap = ModelCapacity(max_batch=1, queue_timeout_s=0.1, clock=clock)
    saturate(cap, clock, rate=100, batch_s=0.5, seconds=5)
    # request time 0.5 s + wait min(0.5, 0.05)
    assert 54 <= cap.limit <= 57


def test_below_saturation_the_limit_is_one_instances_capacity_not_the_load():
    """0.7 x C (28 requests/s through 100 ms batches of 4): the limit follows what one
    instance can do (40/s), not the 28/s it is asked for, so bursts are not shed."""
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=None, clock=clock)
    saturate(cap, clock, rate=28, batch_s=0.1, seconds=10)
    assert 27 <= cap.peak <= 29
    assert 12 <= cap.limit <= 13      # 40/s x (0.1 s + 2 x 0.1 s)


def test_the_request_time_counts_the_gateways_own_work_but_not_queueing():
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=0.2, clock=clock)
    saturate(cap, clock, rate=400, batch_s=0.05, seconds=5, own_s=0.02)
    assert 65 <= cap.limit <= 74              # 400/s x (0.02 + 0.05 + 0.1)
    first = cap.limit
    # saturated: every call now also waits in Triton's queue: the limit does not run away
    for _ in range(6):
        saturate(cap, clock, rate=400, batch_s=0.15, seconds=5, own_s=0.02, queued_after=0.1)
        assert cap.limit <= 1.1 * first


def test_capacity_lost_is_relearned():
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=0.2, clock=clock)
    saturate(cap, clock, rate=400, batch_s=0.05, seconds=5)
    high = cap.limit
    saturate(cap, clock, rate=100, batch_s=0.05, seconds=120)   # a replica gone
    assert cap.limit < high / 2


# -- capacity in frames -------------------------------------------------------------------
def test_places_are_frames_a_request_takes_one_per_image():
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=None, clock=clock)
    assert cap.limit == 8                                  # two max batches, in frames
    first, second = cap.enter(3), cap.enter(3)
    assert first and second and cap.in_flight == 6
    assert cap.enter(3) is None                            # 9 frames > 8: shed
    assert cap.enter(2) is not None and cap.full()         # 8: not one more frame
    cap.leave(first)
    assert cap.in_flight == 5


def test_an_empty_model_admits_a_request_bigger_than_its_limit():
    cap = ModelCapacity(max_batch=4, queue_timeout_s=None, clock=Clock())
    big = cap.enter(16)
    assert big is not None and cap.enter(1) is None
    cap.leave(big)
    assert cap.in_flight == 0


def test_the_rate_counts_frames_and_the_limit_never_exceeds_the_deadline():
    """A model without a queue timeout (a request waits until the gateway's deadline)
    answering 100 calls/s of 4 frames, 0.4 s each: the rate is 400 frames/s, and the
    limit is at most what Triton finishes within the deadline."""
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=None, clock=clock, deadline_s=0.5)
    for _ in range(400):                 # 4 s of 100 calls/s, 4 frames each
        clock.t += 0.01
        cap.observe(0.4, alone=True, frames=4)
    assert 360 <= cap.peak <= 440        # frames/s, not calls/s
    # rate x (request + wait) = 400 x (0.4 + 0.8) = 480 frames, capped at 400 x 0.5
    assert 180 <= cap.limit <= 220


def test_frames_seen_through_a_pipeline_count_toward_the_rate_not_the_batch_time():
    clock = Clock()
    cap = ModelCapacity(max_batch=4, queue_timeout_s=0.2, clock=clock)
    for _ in range(200):
        clock.t += 0.01
        cap.observe(5.0, alone=False, frames=2)   # an ensemble call: not this model's time
    assert not cap.measured and cap.limit == cap.floor
    assert cap.peak > 150
