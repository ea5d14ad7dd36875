"""Face verification accuracy on a public pair list, against a running gateway: what the
synthetic ArcFace weights of the test suite cannot show (that different people do not match,
and whether arcface's `match_threshold` is calibrated), checked by a user with real weights.

    python -m perf.face_pairs --pairs lfw/pairs.txt --images lfw/ [--gateway http://127.0.0.1:8080]
    make face-pairs PAIRS=lfw/pairs.txt IMAGES=lfw/

The pair list is LFW's `pairs.txt` format: an optional header line of two numbers (folds,
pairs per fold), then `name idx1 idx2` (two photos of one person) or `name1 idx1 name2 idx2`
(two people), whitespace separated; photo `idx` of `name` is `<images>/<name>/<name>_<idx:04d>.jpg`
(`--pattern` changes that). Every photo is embedded once through /v1/faces (batches of
`--batch` images per request, msgpack answers), the largest face of each compared as
/v1/faces/compare compares them (gateway/compare.py's `choose` and `cosine`). A photo with no
face counts as a non-match. Reported: accuracy at the threshold the gateway serves (GET
/v1/models: the model's `match_threshold`), true/false match rates there, and the threshold
with the best accuracy on this list (an upper bound: it is fitted on the list it is scored on;
LFW's protocol fits it on 9 folds and scores the 10th).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import defaults
from gateway.compare import choose, cosine

PATTERN = "{name}/{name}_{idx:04d}.jpg"


@dataclass(frozen=True)
class Pair:
    a: tuple[str, int]
    b: tuple[str, int]
    same: bool


def read_pairs(text: str) -> list[Pair]:
    """LFW pairs.txt lines -> pairs; ValueError naming the line for anything else."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        f = line.split()
        if not f:
            continue
        try:
            if len(f) == 2 and n == 1:        # header: folds, pairs per fold
                int(f[0]), int(f[1])
                continue
            if len(f) == 3:
                out.append(Pair((f[0], int(f[1])), (f[0], int(f[2])), True))
            elif len(f) == 4:
                out.append(Pair((f[0], int(f[1])), (f[2], int(f[3])), False))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"line {n}: {line!r} is neither `name idx1 idx2` nor "
                             "`name1 idx1 name2 idx2`") from None
    return out


def scores(similarity: np.ndarray, same: np.ndarray, threshold: float) -> dict:
    """Accuracy and match rates of `similarity >= threshold` (NaN: no face, never a match)."""
    match = np.nan_to_num(similarity, nan=-np.inf) >= threshold
    return {"threshold": threshold, "accuracy": float(np.mean(match == same)),
            "true_match_rate": float(match[same].mean()) if same.any() else None,
            "false_match_rate": float(match[~same].mean()) if (~same).any() else None}


def best_threshold(similarity: np.ndarray, same: np.ndarray) -> float:
    """The threshold with the best accuracy: every distinct similarity tried at once (a pair
    matches at t when its similarity >= t), the lowest of equal bests; +inf (nothing matches)
    when that is best."""
    s = np.nan_to_num(similarity, nan=-np.inf)
    candidates = np.unique(s[np.isfinite(s)])
    if not candidates.size:
        return float("inf")
    order = np.sort(s)
    # pairs at or above each candidate, and the same-person pairs among them
    same_sorted = same[np.argsort(s, kind="stable")]
    first = np.searchsorted(order, candidates, side="left")
    same_above = np.concatenate([np.cumsum(same_sorted[::-1])[::-1], [0]])[first]
    above = len(s) - first
    correct = same_above + ((~same).sum() - (above - same_above))
    nothing = (~same).sum()                       # threshold +inf: every pair a non-match
    i = int(np.argmax(correct))
    return float(candidates[i]) if correct[i] >= nothing else float("inf")


def embed(client, photos: list[Path], model: str | None, batch: int) -> dict[Path, np.ndarray | None]:
    """Each photo's largest face's embedding (None: no face), /v1/faces in msgpack."""
    import msgpack

    out: dict[Path, np.ndarray | None] = {}
    for i in range(0, len(photos), batch):
        chunk = photos[i:i + batch]
        r = client.post("/v1/faces", params={"model": model} if model else {},
                        headers={"accept": "application/msgpack"},
                        files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk])
        if r.status_code != 200:
            raise RuntimeError(f"/v1/faces answered {r.status_code} for {chunk[0]}...: {r.text[:300]}")
        for p, res in zip(chunk, msgpack.unpackb(r.content)["results"]):
            faces = res["faces"]
            if not faces:
                out[p] = None
                continue
            k = choose(np.array([f["box"] for f in faces], np.float64), len(faces), None, p.name)
            e = faces[k]["embedding"]
            out[p] = np.frombuffer(e["data"], e["dtype"]).astype(np.float64)
    return out


def served_threshold(client, model: str | None) -> dict:
    models = client.get("/v1/models").json()["models"]
    route = "/v1/faces" if not model else f"/v1/faces?model={model}"
    entry = next(m for m in models if m["endpoint"] == route)
    if not entry.get("match_threshold"):
        raise RuntimeError(f"{entry['name']} states no match_threshold (GET /v1/models)")
    return {"model": entry["name"], **entry["match_threshold"]}


def run(pairs: list[Pair], images: Path, gateway: str, model: str | None = None,
        batch: int = 8, pattern: str = PATTERN) -> dict:
    import httpx

    path = lambda who: images / pattern.format(name=who[0], idx=who[1])  # noqa: E731
    photos = list(dict.fromkeys(path(w) for p in pairs for w in (p.a, p.b)))
    missing = [str(p) for p in photos if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} photos of the pair list are missing, e.g. {missing[0]}")
    with httpx.Client(base_url=gateway, timeout=120) as client:
        served = served_threshold(client, model)
        emb = embed(client, photos, model, batch)
    sim = np.array([np.nan if emb[path(p.a)] is None or emb[path(p.b)] is None
                    else cosine(emb[path(p.a)], emb[path(p.b)]) for p in pairs])
    same = np.array([p.same for p in pairs], bool)
    best = best_threshold(sim, same)
    return {"pairs": len(pairs), "same": int(same.sum()), "different": int((~same).sum()),
            "photos": len(photos), "photos_without_face": sum(e is None for e in emb.values()),
            "served": served, "at_served_threshold": scores(sim, same, served["value"]),
            "best": scores(sim, same, best), "similarities": [None if np.isnan(s) else round(float(s), 6)
                                                               for s in sim]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=Path, required=True, help="LFW pairs.txt format")
    ap.add_argument("--images", type=Path, required=True, help="folder of <name>/<name>_<idx:04d>.jpg")
    ap.add_argument("--gateway", default=defaults.GATEWAY_URL, help="the gateway's base URL")
    ap.add_argument("--model", default=None, help="/v1/faces ?model= (default: the route's)")
    ap.add_argument("--batch", type=int, default=8, help="photos per /v1/faces request")
    ap.add_argument("--pattern", default=PATTERN, help=f"photo path under --images ({PATTERN!r})")
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    a = ap.parse_args(argv)
    report = run(read_pairs(a.pairs.read_text()), a.images, a.gateway, a.model, a.batch, a.pattern)
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    s, b, t = report["at_served_threshold"], report["best"], report["served"]
    print(f"{report['pairs']} pairs ({report['same']} same, {report['different']} different), "
          f"{report['photos']} photos, {report['photos_without_face']} without a face")
    print(f"served threshold {t['value']:g} (stated by {t['stated_by']}; weights: {t['weights_provenance']}):"
          f" accuracy {s['accuracy']:.4f}, true match rate {s['true_match_rate']}, "
          f"false match rate {s['false_match_rate']}")
    print(f"best threshold on this list {b['threshold']:.4f}: accuracy {b['accuracy']:.4f}")
    if t.get("synthetic_weights"):
        print("NOTE: the served ArcFace weights are synthetic: these figures say nothing about "
              "face recognition", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
