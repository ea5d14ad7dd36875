"""schemathesis against the gateway's own OpenAPI, on a running gateway (issue 20).

A real `python -m gateway` (docs on, so /openapi.json is served) in front of a tritonserver
of fixed-time stand-ins of EVERY model a route serves (derived from the route table: a
request that reaches Triton gets an answer, so a 5xx can only be the gateway's). For each
operation schemathesis generates requests from the schema, valid ones (positive) and ones
that break it (negative: wrong types, unknown values, missing bodies); image bodies come
from route-specific strategies below, because schemathesis' own binary samples are a few
tiny files: real JPEG/PNG of random sizes and contents, the same mutated (bytes flipped,
cut short), random bytes after each magic, and random bytes. Multipart `images` items and
base64 JSON `image(s)` fields draw from the same mix.

Every request must be answered 2xx/4xx within the client's bound (never a 5xx, never a
hang), the gateway must still answer /healthz at the end, and its peak RSS (VmHWM) must
stay within its memory budget + 200 MB.

`make test`: a bounded, derandomized pass (EXAMPLES per operation and mode);
`make fuzz`: VISIONSERVE_API_FUZZ_EXAMPLES randomized examples each.
"""
from __future__ import annotations

import base64
import os
import time
from collections import Counter

import numpy as np
import pytest

from contract.routes import route_table
from serving import standins
from tests.support import triton as triton_support
from tests.support.images import jpeg, png

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (the `test` extra) "
                                   "generates the requests from the gateway's OpenAPI")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

pytestmark = pytest.mark.integration

LONG = int(os.environ.get("VISIONSERVE_API_FUZZ_EXAMPLES", "0"))
EXAMPLES = LONG or 25            # per operation and generation mode
CLIENT_TIMEOUT_S = 20.0          # over it: a hang
BUDGET = 256 * 1024 * 1024       # the gateway's memory budget here
HEADROOM = 200 * 1024 * 1024


# -- image bodies ----------------------------------------------------------------------------
@st.composite
def real_images(draw) -> bytes:
    w = draw(st.integers(1, 1400))
    h = draw(st.integers(1, 1400))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    block = draw(st.sampled_from([1, 8, 64]))
    small = rng.integers(0, 256, (max(1, h // block), max(1, w // block), 3), np.uint8)
    img = np.repeat(np.repeat(small, block, 0), block, 1)[:h, :w]
    img = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)))
    if draw(st.booleans()):
        return png(img)
    quality, subsampling = draw(st.integers(5, 95)), draw(st.sampled_from([0, 1, 2]))
    try:
        return jpeg(img, quality=quality, progressive=draw(st.booleans()), subsampling=subsampling)
    except OSError:   # Pillow's progressive buffer is too small for noise at high quality
        return jpeg(img, quality=quality, subsampling=subsampling)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(real_images()))
    for _ in range(draw(st.integers(1, 16))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


MAGICS = [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\x89PNG\r\n\x1a\n",
          b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"]
IMAGES = st.one_of(real_images(), mutated(),
                   st.tuples(st.sampled_from(MAGICS), st.binary(max_size=2048)).map(b"".join),
                   st.binary(max_size=1024))

schemathesis.openapi.media_type("image/jpeg", IMAGES)
schemathesis.openapi.media_type("image/png", IMAGES)
schemathesis.openapi.format("binary", IMAGES)          # multipart `images` items
schemathesis.openapi.format("byte", st.one_of(         # base64 JSON `image(s)`
    IMAGES.map(lambda b: base64.b64encode(b).decode()), st.text(max_size=64)))


# -- the processes -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """(gateway, its pid): every route's models as 2 ms stand-ins behind one gateway."""
    from tests.support.gateway import GatewayFactory

    triton_support.require_triton()
    root = tmp_path_factory.mktemp("api_fuzz")
    models = route_table().models
    repo = standins.write_fixed_time_repository(root / "repo", dict.fromkeys(models, 2),
                                                queue_timeout_us=0)
    factory = GatewayFactory(root)
    with triton_support.running(repo, root / "triton.log", 180) as server:
        try:
            gw = factory.start(server.grpc_url, ready_s=60, docs="true",
                               memory_budget_bytes=BUDGET, shared_memory="off")
            yield gw
        finally:
            factory.stop_all()


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_generated_requests_get_2xx_or_4xx_never_5xx_or_a_hang(api):
    import requests

    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    session = requests.Session()
    tried, statuses, bad, slowest = Counter(), Counter(), [], (0.0, "")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {r.path for r in route_table().routes}, \
        "the OpenAPI lacks a route"
    t0 = time.monotonic()
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, derandomize=not LONG, database=None, deadline=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def one(case):
                nonlocal slowest
                label = f"{op.method.upper()} {op.path} ({mode.value})"
                start = time.monotonic()
                try:
                    r = case.call(base_url=api.url, session=session, timeout=CLIENT_TIMEOUT_S)
                    status, body = r.status_code, r.text[:300]
                except requests.Timeout:
                    status, body = "hang", f"no answer within {CLIENT_TIMEOUT_S:g} s"
                except requests.ConnectionError as exc:
                    status, body = "dropped", str(exc)[:300]
                took = time.monotonic() - start
                slowest = max(slowest, (took, label))
                tried[label] += 1
                statuses[status] += 1
                if not isinstance(status, int) or status >= 500:
                    bad.append((label, status, case.media_type, repr(case.query)[:200], body))

            try:
                one()
            except hypothesis.errors.Unsatisfiable:   # nothing to break: no parameters
                pass
    took = time.monotonic() - t0
    rss = peak_rss(api.pid)
    alive = api.client.get("/healthz", timeout=5).status_code
    print(f"\nAPI fuzz: {sum(tried.values())} requests over {len(tried)} operation/mode pairs "
          f"in {took:.0f} s; statuses {dict(sorted(statuses.items(), key=str))}; slowest "
          f"{slowest[0] * 1000:.0f} ms ({slowest[1]}); gateway peak RSS {rss / 2**20:.0f} MiB "
          f"(budget {BUDGET / 2**20:.0f} MiB + {HEADROOM / 2**20:.0f})")
    assert not bad, f"{len(bad)} requests got a 5xx, a hang or a dropped connection: {bad[:5]}"
    assert alive == 200 and api.alive()
    assert rss <= BUDGET + HEADROOM, f"peak RSS {rss / 2**20:.0f} MiB"
    assert sum(tried.values()) >= 8 * EXAMPLES, tried       # the generators really ran
    assert statuses[200] > 0 and sum(v for k, v in statuses.items()
                                     if isinstance(k, int) and 400 <= k < 500) > 0
