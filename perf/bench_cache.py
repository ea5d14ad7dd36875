"""`make bench-cache`: Triton's response cache, hit vs miss, and a replay with 30% repeats,
side by side in ONE run on the real tritonserver (derived CPU repository).

    python -m perf.bench_cache [--pairs 30] [--replay 80] [--repeat 0.3] [--photo-model yolo]

One tritonserver with the cache (`--response-cache-bytes`, 256 MiB) serves text_embed and
`<photo model>_encoded`. Sequential gRPC calls, one at a time:
- hit vs miss: per pair, a NEW input (a miss: the whole pipeline runs, then its answer is
  stored) then the SAME input again (a hit), interleaved so both see the same machine state.
  Captions are distinct sentences; photos are bus.jpg with distinct bytes after its end
  (libjpeg stops at EOI: the same picture, other bytes, so every miss decodes and infers).
- replay: `replay` requests of which each is, with probability `repeat`, one already sent
  (chosen uniformly), else a new one; the same sequence (seeded) then runs on a second
  tritonserver started with the cache off (size 0): today's path beside the cached one.
  The hit rate is Triton's own (its statistics: cache_hit / (cache_hit + cache_miss)).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from contract import REPO_ROOT

from .processes import BenchError

WORK = REPO_ROOT / "build" / "bench-cache"
CACHE_BYTES = 256 << 20


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs) * 1000, q))


class Target:
    """One model on one server: `call(i)` sends input number i (the same i, the same bytes)."""

    def __init__(self, server, model: str, tensor: str, make):
        import tritonclient.grpc as grpcclient

        self.server, self.model, self.tensor, self.make = server, model, tensor, make
        self.client = grpcclient.InferenceServerClient(server.grpc_url)
        self._mod = grpcclient

    def call(self, i: int) -> float:
        t = self._mod.InferInput(self.tensor, [1, 1], "BYTES")
        t.set_data_from_numpy(np.array([[self.make(i)]], dtype=object))
        start = time.perf_counter()
        self.client.infer(self.model, [t], client_timeout=300)
        return time.perf_counter() - start

    def stats(self, model: str) -> tuple[int, int]:
        import json
        import urllib.request

        req = urllib.request.Request(f"http://{self.server.http_url}/v2/models/{model}/stats",
                                     headers=self.server.admin_headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            inf = json.loads(r.read())["model_stats"][0]["inference_stats"]
        return int(inf["cache_hit"]["count"]), int(inf["cache_miss"]["count"])


def hit_vs_miss(t: Target, pairs: int, first: int) -> tuple[list[float], list[float]]:
    miss, hit = [], []
    t.call(first - 1)                                   # the first call of a fresh model pays extra
    for i in range(first, first + pairs):
        miss.append(t.call(i))
        hit.append(t.call(i))
    return miss, hit


def replay_sequence(n: int, repeat: float, first: int, seed: int = 7) -> list[int]:
    rng, seen, seq = random.Random(seed), [], []
    for _ in range(n):
        if seen and rng.random() < repeat:
            seq.append(rng.choice(seen))
        else:
            seen.append(first + len(seen))
            seq.append(seen[-1])
    return seq


def replay(t: Target, seq: list[int], cached_model: str) -> dict:
    h0, m0 = t.stats(cached_model)
    lat = [t.call(i) for i in seq]
    h1, m1 = t.stats(cached_model)
    hits, misses = h1 - h0, m1 - m0
    return {"lat": lat, "hits": hits, "misses": misses,
            "rate": hits / (hits + misses) if hits + misses else float("nan")}


def _inputs(photo_model: str):
    from ultralytics.utils import ASSETS

    bus = (Path(ASSETS) / "bus.jpg").read_bytes()
    words = ["red", "small", "old", "wooden", "bright", "quiet", "busy", "tall", "striped", "broken"]
    things = ["bicycle", "house", "street", "boat", "dog", "kitchen", "bridge", "market", "lamp", "garden"]

    def caption(i: int) -> bytes:
        return f"a {words[i % 10]} {things[(i // 10) % 10]} photographed in the year {1900 + i}".encode()

    def photo(i: int) -> bytes:
        return bus + f"visionserve-bench-{i}".encode()

    return [("text_embed", "text_embed", "text", caption),
            (f"{photo_model}_encoded", f"{photo_model}_encoded_cached", "image", photo)]


def run(pairs: int, replay_n: int, repeat: float, photo_model: str) -> str:
    from serving import profiles
    from serving.tritonserver import TritonServer, free_port

    d = profiles.derive("cpu", dest=WORK / "repo", models=["text_embed", photo_model])
    inputs = _inputs(photo_model)
    results: dict[str, dict] = {}
    seqs = {name: replay_sequence(replay_n, repeat, first=10_000) for name, *_ in inputs}
    for size in (CACHE_BYTES, 0):
        server = TritonServer(d.path, free_port(), free_port(), free_port(), log_path=WORK / f"triton-{size}.log",
                              response_cache_bytes=size)
        server.start(600)
        try:
            for name, cached, tensor, make in inputs:
                t = Target(server, name, tensor, make)
                r = results.setdefault(name, {})
                if size:
                    r["miss"], r["hit"] = hit_vs_miss(t, pairs, first=1)
                else:
                    t.call(0)                           # warm, as the cached run did
                r["on" if size else "off"] = replay(t, seqs[name], cached)
        finally:
            server.stop()
    return report(results, pairs, replay_n, repeat)


def report(results: dict, pairs: int, replay_n: int, repeat: float) -> str:
    lines = [f"hit vs miss: {pairs} pairs (a new input, then the same again), sequential, one at a time",
             "| model | miss p50 ms | miss p95 ms | hit p50 ms | hit p95 ms | miss/hit (p50) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        m50, h50 = _pct(r["miss"], 50), _pct(r["hit"], 50)
        lines.append(f"| {name} | {m50:.1f} | {_pct(r['miss'], 95):.1f} | {h50:.2f} | {_pct(r['hit'], 95):.2f} "
                     f"| {m50 / h50:.0f}x |")
    lines += ["", f"replay: {replay_n} requests, each a repeat with probability {repeat:.0%} (same seeded "
              "sequence on both servers)",
              "| model | Triton hit rate (cache on) | mean ms, cache off | mean ms, cache on | p50 off / on | "
              "on / off (mean) |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        on, off = r["on"], r["off"]
        if off["hits"] or off["misses"]:
            raise BenchError(f"{name}: the cache-off server looked the cache up ({off})")
        mean_on, mean_off = statistics.fmean(on["lat"]) * 1000, statistics.fmean(off["lat"]) * 1000
        lines.append(f"| {name} | {on['rate']:.0%} ({on['hits']} of {on['hits'] + on['misses']}) | {mean_off:.1f} "
                     f"| {mean_on:.1f} | {_pct(off['lat'], 50):.1f} / {_pct(on['lat'], 50):.1f} "
                     f"| {mean_on / mean_off:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_cache", description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--replay", type=int, default=80)
    ap.add_argument("--repeat", type=float, default=0.3)
    ap.add_argument("--photo-model", default="yolo", help="the photo entry point: <model>_encoded")
    a = ap.parse_args(argv)
    if a.pairs < 1 or a.replay < 1 or not 0 <= a.repeat < 1:
        ap.error("--pairs and --replay >= 1, 0 <= --repeat < 1")
    WORK.mkdir(parents=True, exist_ok=True)
    from serving.profiles import ProfileError
    from serving.tritonserver import TritonServerError

    try:
        print(run(a.pairs, a.replay, a.repeat, a.photo_model), flush=True)
    except (BenchError, ProfileError, TritonServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
