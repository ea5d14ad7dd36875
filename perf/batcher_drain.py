"""How Triton's dynamic batcher drains a queued backlog once no new request arrives.

    python -m perf.batcher_drain [--requests 13] [--batch-ms 100] [--max-batch 4]

Sends `requests` requests at once to a fixed-time stand-in (serving/standins.py: one
instance, `batch_ms` per batch of at most `max_batch`), twice per setting, and prints when
each of the second round came back beside the ideal (one full batch after another:
the k-th batch done at k x batch_ms). Settings: the committed queue policy with a 1 s
timeout, no queue timeout, and no timeout with max_queue_delay_microseconds 0.

Measured with Triton 2.51 on the CPU development box (docs/gateway.md, "Overload"): now
and then, in each setting, the batches behind the running one come back ~0.5 s late (a
request can then pass a 1 s queue timeout): requests still queued in Triton when a burst
ends can wait for Triton's batcher, not for the gateway.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import contract
from serving import standins
from serving.tritonserver import TritonServer, free_port

MODEL = "mobileclip_image"
SETTINGS = {   # name -> (queue_timeout_us, max_queue_delay_us or None: the committed one)
    "queue timeout 1 s": (1_000_000, None),
    "no queue timeout": (0, None),
    "no queue timeout, max_queue_delay 0": (0, 0),
}


def ideal_s(n: int, max_batch: int, batch_ms: float) -> list[float]:
    """When each of `n` requests sent at once is done if batches follow each other."""
    return [math.ceil((i + 1) / max_batch) * batch_ms / 1000 for i in range(n)]


def late_s(seen: list[float], ideal: list[float]) -> float:
    """How much later than ideal the slowest came back (both sorted)."""
    return max(s - i for s, i in zip(sorted(seen), sorted(ideal)))


def _round(url: str, c: contract.ModelContract, n: int, label: str) -> list[float]:
    import tritonclient.grpc as grpcclient

    spec = c.inputs[0]
    client = grpcclient.InferenceServerClient(url)
    frame = np.zeros([1, *[abs(d) for d in spec.dims]], dtype=spec.dtype)
    times: list[float] = []
    errors: list[str] = []

    def one():
        inp = grpcclient.InferInput(spec.name, frame.shape, spec.triton_dtype)
        inp.set_data_from_numpy(frame)
        t0 = time.monotonic()
        try:
            client.infer(MODEL, [inp], client_timeout=30)
            times.append(time.monotonic() - t0)
        except Exception as exc:   # a 429 of the queue timeout is a result here
            errors.append(str(exc).splitlines()[0][:80])

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.close()
    if errors:
        print(f"    {label}: {len(errors)} of {n} failed: {sorted(set(errors))}")
    return sorted(times)


def probe(work: Path, timeout_us: int, delay_us: int | None, n: int, batch_ms: float,
          max_batch: int) -> list[float]:
    repo = standins.write_fixed_time_repository(work / "repo", {MODEL: batch_ms},
                                                max_batch_size=max_batch,
                                                queue_timeout_us=timeout_us)
    if delay_us is not None:
        cfg_path = repo / MODEL / "config.pbtxt"
        cfg = contract.parse_config(cfg_path.read_text())
        cfg.dynamic_batching.max_queue_delay_microseconds = delay_us
        cfg_path.write_text(contract.to_text(cfg))
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_path=work / "triton.log")
    server.start(120)
    try:
        c = contract.load(MODEL, repo)
        _round(server.grpc_url, c, n, "warm-up round")     # it loads the stub
        return _round(server.grpc_url, c, n, "measured round")
    finally:
        server.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=13)
    ap.add_argument("--batch-ms", type=float, default=100)
    ap.add_argument("--max-batch", type=int, default=4)
    args = ap.parse_args(argv)
    ideal = ideal_s(args.requests, args.max_batch, args.batch_ms)
    print(f"{args.requests} requests at once, {args.batch_ms:g} ms per batch of at most "
          f"{args.max_batch}; ideal: last done at {ideal[-1]:.2f} s")
    with tempfile.TemporaryDirectory(prefix="batcher_drain_") as tmp:
        for name, (timeout_us, delay_us) in SETTINGS.items():
            seen = probe(Path(tmp), timeout_us, delay_us, args.requests, args.batch_ms,
                         args.max_batch)
            late = late_s(seen, ideal[:len(seen)]) if seen else float("nan")
            print(f"  {name:<38} done at {', '.join(f'{t:.2f}' for t in seen)} s; "
                  f"slowest {late:+.2f} s from ideal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
