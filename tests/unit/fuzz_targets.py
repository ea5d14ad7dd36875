"""What every fuzzed input must satisfy, shared by the hypothesis tests (bounded in
`make test`, long in `make fuzz`) and the atheris run of `make fuzz`: any bytes give a
result or the parser's own error (imaging.ImagingError for the codec, the gateway's
ClientError for bodies), never another exception, within FUZZ_MAX_S."""
from __future__ import annotations

import resource
import time
from collections import Counter

import numpy as np

import imaging
from gateway import inputs
from gateway.errors import ClientError

# Fuzzed images may claim up to this many pixels: each decode stays within ~100 MB.
MAX_PIXELS, MAX_SIDE = 4_000_000, 4096
FRAME = 64
FUZZ_MAX_S = 5.0      # a hang guard, not a speed target: inputs decode in milliseconds


class Tally:
    """Inputs tried per target, their outcomes, the slowest, the process's peak RSS."""

    def __init__(self):
        self.outcomes: dict[str, Counter] = {}
        self.slowest: dict[str, float] = {}

    def add(self, target: str, outcome: str, seconds: float) -> None:
        self.outcomes.setdefault(target, Counter())[outcome] += 1
        self.slowest[target] = max(self.slowest.get(target, 0.0), seconds)
        assert seconds <= FUZZ_MAX_S, f"{target}: one input took {seconds:.1f} s"

    def report(self) -> str:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines = [f"{t}: {sum(c.values())} inputs, failures 0, slowest "
                 f"{self.slowest[t] * 1e3:.0f} ms, outcomes {dict(c.most_common())}"
                 for t, c in sorted(self.outcomes.items())]
        return "\n".join(lines + [f"peak RSS of the fuzzing process: {rss:.0f} MiB"])


TALLY = Tally()


def _timed(target: str, fn, expected: type):
    t0 = time.perf_counter()
    try:
        result = fn()
        outcome = "ok"
    except expected as exc:
        result, outcome = exc, type(exc).__name__
    TALLY.add(target, outcome, time.perf_counter() - t0)
    return result


def check_codec(data: bytes) -> None:
    """Header, cost, decode into a frame: a frame or an ImagingError."""
    frame = np.full((FRAME, FRAME, 3), 7, np.uint8)

    def run():
        h = imaging.read_header(data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
        assert 0 < h.width * h.height <= MAX_PIXELS and 1 <= h.orientation <= 8
        box = imaging.plan_letterbox(*h.size, FRAME, FRAME)
        cost = imaging.decode_cost(h, box, len(data))
        assert 0 < cost <= 40 * MAX_PIXELS + len(data) + 8 * 1024 * 1024, cost
        imaging.decode_into(data, h, box, frame)
        return h

    _timed("codec", run, imaging.ImagingError)
    assert frame.shape == (FRAME, FRAME, 3)


def check_multipart(body: bytes, content_type: str) -> None:
    def run():
        parts = inputs.parse_multipart(body, content_type, max_images=4)
        assert len(parts) <= 4
        for p in parts:
            memoryview(p)        # each part is a buffer of the body (or a copy)
        return parts

    _timed("multipart", run, ClientError)


def check_json(body: bytes) -> None:
    def run():
        images = inputs.decode_json_images(body, max_images=4)
        assert len(images) <= 4 and all(isinstance(b, bytes) for b in images)
        return images

    _timed("json", run, ClientError)


def check_texts(body: bytes) -> None:
    _timed("texts", lambda: inputs._texts(body, 4, 100), ClientError)
