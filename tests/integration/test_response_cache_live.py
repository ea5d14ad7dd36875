"""Triton's response cache on the real tritonserver: a repeated caption or photo is a hit
(Triton's own statistics count it) with the identical answer, a different input is a miss,
a failed request is not cached, a request naming some outputs never leaves a partial answer
for the next one, and with the cache off (size 0) nothing is looked up.

The session Triton (`served`) runs with a cache, as `python -m serving` does by default;
inputs here are unique to this module (a token in each caption, bytes after each JPEG's
end), so other tests' requests never hit or fill its entries."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

import contract
from contract import encoded
from serving import encoded as gen
from serving import profiles
from tests.support import images as test_images
from tests.support import triton as triton_support
from tests.support.polling import settled

RUN = uuid.uuid4().hex[:12]


def _entry(served) -> gen.Entry:
    """The cheapest entry point served (the CLIP image encoder's), else any."""
    es = gen.entries({m: served.contracts[m] for m in served.derived.models})
    if not es:
        pytest.skip("no encoded entry point is served (make export-onnx)")
    return next((e for e in es if e.model == "mobileclip_image"), es[0])


def _photo(tag: str) -> bytes:
    """A real photo's JPEG with `tag` after its end (libjpeg stops at EOI): other bytes, same picture."""
    from skimage import data

    return test_images.jpeg(data.astronaut(), quality=90) + tag.encode()


def _encoded(served, e: gen.Entry, data: bytes, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    c = served.contracts[e.name]
    return served.infer("grpc", e.name, {encoded.INPUT: np.array([[data]], dtype=object)},
                        outputs=outputs or [o.name for o in c.outputs])


def _text(served, caption: str) -> np.ndarray:
    return served.infer("grpc", "text_embed", {"text": np.array([[caption.encode()]], dtype=object)})["embeddings"]


def _delta(before: dict, after: dict) -> dict[str, int]:
    return {k: after[k] - before[k] for k in ("cache_hit", "cache_miss", "execution_count")}


def _counted(server, model: str, before: dict) -> dict[str, int]:
    """_delta once Triton's counts hold still: it records an execution just after sending
    its answer (a clean-clone run read 1 of 2 executions right after the second answer)."""
    return settled(lambda: _delta(before, triton_support.stats(server, model)), quiet_s=0.3)


def test_a_repeated_caption_is_a_hit_with_the_same_answer(served):
    served.need("text_embed")
    caption = f"a red bicycle leaning on a wall {RUN}"
    before = triton_support.stats(served.server, "text_embed")
    first = _text(served, caption)
    second = _text(served, caption)
    d = _counted(served.server, "text_embed", before)
    assert (d["cache_miss"], d["cache_hit"]) == (1, 1), d
    assert d["execution_count"] == 1, d            # the hit ran neither tokenizer nor encoder
    np.testing.assert_array_equal(second, first)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-3)   # a real embedding, not zeros

    other = _text(served, caption + " at night")
    d = _counted(served.server, "text_embed", before)
    assert (d["cache_miss"], d["cache_hit"]) == (2, 1), d
    assert not np.allclose(other, first, atol=1e-3)


def test_a_repeated_photo_is_a_hit_and_a_partial_request_leaves_no_partial_answer(served):
    """The entry point's inner ensemble holds the cache: whatever outputs the first request
    named, a repeat naming others gets them all, equal to a fresh computation."""
    e = _entry(served)
    names = [o.name for o in served.contracts[e.name].outputs]
    photo = _photo(f"a-{RUN}")
    before = triton_support.stats(served.server, e.cached)
    only_size = _encoded(served, e, photo, [encoded.ORIGINAL_SIZE])
    assert list(only_size) == [encoded.ORIGINAL_SIZE]
    rest = [n for n in names if n != encoded.ORIGINAL_SIZE]
    again = _encoded(served, e, photo, rest)                    # a hit, asking for the other outputs
    full = _encoded(served, e, photo)                           # and again, everything
    d = _counted(served.server, e.cached, before)
    assert (d["cache_miss"], d["cache_hit"]) == (1, 2), d
    assert d["execution_count"] == 1, d
    fresh = _encoded(served, e, _photo(f"b-{RUN}"))             # the same picture, other bytes: computed
    d = _counted(served.server, e.cached, before)
    assert (d["cache_miss"], d["cache_hit"]) == (2, 2), d
    for n in rest:
        np.testing.assert_array_equal(again[n], full[n], err_msg=n)
        np.testing.assert_allclose(full[n], fresh[n], atol=1e-4, err_msg=n)
    np.testing.assert_array_equal(full[encoded.ORIGINAL_SIZE], only_size[encoded.ORIGINAL_SIZE])
    np.testing.assert_array_equal(full[encoded.ORIGINAL_SIZE], [[512, 512]])   # the astronaut's size


def test_a_failed_request_is_not_cached(served):
    e = _entry(served)
    bad = b"\xff\xd8\xff" + f"not a jpeg {RUN}".encode()
    before = triton_support.stats(served.server, e.cached)
    for _ in range(2):
        with pytest.raises(Exception, match="(?i)invalid|decode|corrupt|format"):
            _encoded(served, e, bad)
    after = settled(lambda: triton_support.stats(served.server, e.cached), quiet_s=0.3)
    # both ran (and failed) in the chain; Triton counts a miss only when it stores an answer
    assert after["fail"] - before["fail"] >= 2, (before, after)     # Triton counts an ensemble failure per failing step too
    assert after["cache_hit"] == before["cache_hit"] and after["cache_miss"] == before["cache_miss"], (before, after)


def test_with_the_cache_off_nothing_is_looked_up(tmp_path):
    """Size 0 (`--response-cache-bytes 0`): the models still enable it in their configs,
    Triton looks nothing up and runs every request."""
    triton_support.require_triton()
    d = profiles.derive("cpu", dest=tmp_path / "repo", models=["text_embed"], skip_missing=True)
    if "text_embed" not in d.models:
        pytest.skip(f"text_embed not served: {d.skipped.get('text_embed')} (make export-onnx)")
    assert contract.load("text_embed", d.path).config.response_cache.enable
    caption = np.array([[f"a quiet lake {RUN}".encode()]], dtype=object)
    c = contract.load("text_embed", d.path)
    with triton_support.running(d.path, tmp_path / "triton.log", 180, response_cache_bytes=0) as server:
        before = triton_support.stats(server, "text_embed")
        a = triton_support.infer(server.grpc_url, c, "grpc", {"text": caption})["embeddings"]
        b = triton_support.infer(server.grpc_url, c, "grpc", {"text": caption})["embeddings"]
        dl = _counted(server, "text_embed", before)
    assert (dl["cache_hit"], dl["cache_miss"], dl["execution_count"]) == (0, 0, 2), dl
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_dashboards_cache_metrics_are_the_ones_triton_reports(served):
    """Every nv_cache_* name perf/grafana/visionserve.json queries is on the served Triton's
    /metrics, and the per-model hits it charts count the hits above."""
    import re
    import urllib.request

    from contract import REPO_ROOT

    served.need("text_embed")
    caption = f"a lighthouse in fog {RUN}"
    _text(served, caption)
    _text(served, caption)
    dash = (REPO_ROOT / "perf" / "grafana" / "visionserve.json").read_text()
    wanted = set(re.findall(r"nv_cache_\w+", dash))
    assert {"nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model", "nv_cache_util"} <= wanted
    with urllib.request.urlopen(served.server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    reported = set(re.findall(r"^(nv_cache_\w+)", text, re.M))
    assert wanted <= reported, wanted - reported
    assert served.metrics()[("nv_cache_num_hits_per_model", "text_embed")] >= 1
