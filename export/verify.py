"""`python -m export.verify [--models a,b]`: one table per model, non-zero exit on any failure.

Checks: ONNX checker and opset; inputs/outputs vs config.pbtxt (names, dtypes, dims, dynamic
batch); ONNX Runtime vs the family's independent reference at batch 1 and 8; batch
invariance (row i of a batch of 8 equals its batch-1 run); model-specific known answers.
Tolerances are the family records' (export/registry.py). A check that cannot run (no
independent reference, synthetic weights for a known answer) is SKIPPED with its reason,
never PASS.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import contract as contract_mod
from contract import MODEL_REPOSITORY, ModelContract

from . import registry
from .base import DEFAULT_SEED, ExportJob, WeightsSearch, WeightsSource
from .runner import onnx_path, read_record

ONNX_TO_NP = {1: np.float32, 2: np.uint8, 6: np.int32, 7: np.int64, 10: np.float16}


PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"


@dataclass
class Check:
    model: str
    name: str
    status: str          # PASS, FAIL or SKIPPED (detail says why)
    detail: str

    @property
    def ok(self) -> bool:
        return self.status != FAIL


def sample_inputs(contract: ModelContract, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Plausible inputs from the contract (a family's record may name its own)."""
    own = registry.record(contract.name).hook("inputs")
    if own is not None:
        return own(contract, batch, rng)
    out = {}
    for spec in contract.with_variable_dims("opt").inputs:
        shape = (batch, *spec.dims)
        if spec.dtype == np.uint8:
            out[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif np.issubdtype(spec.dtype, np.integer):
            out[spec.name] = rng.integers(0, 1000, shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.random(shape, dtype=np.float32) * 100
    return out


def _canonical(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Padded detection outputs -> the valid rows of each image in a position-based order.

    Two candidates with near-equal scores may swap places between runtimes, so rows are
    ordered by box position (rounded to 0.1 px) rather than by score before comparing."""
    count_key = next((k for k in outputs if k.startswith("num_")), None)
    box_key = next((k for k in outputs if k.endswith("boxes")), None)
    if count_key is None:
        return outputs
    counts = outputs[count_key].reshape(-1)
    k = int(counts.max()) if counts.size else 0
    rows = {n: a[:, :k] for n, a in outputs.items() if n != count_key and a.ndim >= 2}
    if box_key is not None and k:
        key = np.round(rows[box_key].astype(np.float64), 1)          # [B,k,4]
        valid = np.arange(k)[None, :] < counts[:, None]
        x = np.where(valid, key[..., 0], np.inf)
        y = np.where(valid, key[..., 1], np.inf)
        order = np.lexsort((y, x), axis=-1)                            # per image, by x1 then y1
        rows = {n: np.take_along_axis(a, order.reshape(*order.shape, *([1] * (a.ndim - 2))), axis=1)
                for n, a in rows.items()}
    return {**rows, count_key: outputs[count_key]}


def max_diff(a: dict, b: dict, model: str) -> float:
    a, b = _canonical(a), _canonical(b)
    worst = 0.0
    for name in a:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if x.shape != y.shape:
            return float("inf")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return worst


def detection_diff(got: dict, ref: dict, count: str) -> tuple[float, int, int]:
    """Detections paired by box (boxes.matched_rows): (max abs diff over the matched
    rows, rows only one side has, reference rows). A near-tie at the score threshold or in
    NMS may flip one box between runtimes; the caller bounds how many."""
    from .boxes import matched_rows

    rows = [n for n in got if n != count and np.asarray(got[n]).ndim >= 2]
    r, g = matched_rows({n: np.asarray(v) for n, v in ref.items()}, {n: np.asarray(v) for n, v in got.items()},
                        count, rows, min_iou=0.9)
    diff = np.abs(r["boxes"] - g["boxes"]).max(axis=-1) if len(r["boxes"]) else np.zeros(0)
    matched = diff < 1e5
    worst = max((float(np.abs(r[n] - g[n]).reshape(len(diff), -1)[matched].max(initial=0.0)) for n in rows),
                default=0.0)
    return worst, int((~matched).sum()), int(np.asarray(ref[count]).sum())


def recorded_weights(record: dict | None) -> WeightsSource | None:
    """The weights the file was actually exported from (export.json), so the reference
    is built from the same source whatever the current search path finds."""
    w = (record or {}).get("weights") or {}
    if w.get("weights_kind") == "synthetic" and "weights_seed" in w:
        return WeightsSource("synthetic", w.get("weights_description", ""), seed=int(w["weights_seed"]))
    src = w.get("weights_source")
    if src and Path(src).is_file():
        return WeightsSource(w.get("weights_kind", "file"), w.get("weights_description", ""), path=Path(src))
    return None


def check_model(model: str, repository: Path, search: WeightsSearch) -> list[Check]:
    import onnx
    import onnxruntime as ort

    checks: list[Check] = []
    rec = registry.record(model)

    def add(name: str, ok: bool | None, detail: str) -> None:   # ok None: the check could not run
        checks.append(Check(model, name, SKIPPED if ok is None else PASS if ok else FAIL, detail))

    path = onnx_path(model, repository)
    if not path.exists():
        add("exported", False, f"{path} missing: run `make export-onnx MODELS={model}`")
        return checks
    contract = contract_mod.load(model, repository)
    m = onnx.load(str(path))
    try:
        onnx.checker.check_model(str(path))
        add("onnx checker", True, "passed")
    except Exception as exc:  # noqa: BLE001 - report any checker failure as a failed check
        add("onnx checker", False, str(exc)[:200])
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    add("opset", opset >= 13, f"opset {opset}")
    checks += _io_checks(model, m, contract)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in contract.outputs]
    rng = np.random.default_rng(DEFAULT_SEED)
    batch8 = sample_inputs(contract, 8, rng)
    out8 = dict(zip(names, sess.run(names, batch8)))
    singles = [dict(zip(names, sess.run(names, {k: v[i:i + 1] for k, v in batch8.items()}))) for i in range(8)]
    stacked = {n: np.concatenate([s[n] for s in singles]) for n in names}
    diff = max_diff(out8, stacked, model)
    tol = rec.tolerances.batch
    add("batch invariance (8 vs 8x1)", diff <= tol, f"max abs diff {diff:.2e} (tol {tol:g})")

    ref_fn = None
    make_reference = rec.hook("reference")
    if make_reference is not None:
        weights = recorded_weights(read_record(model, repository)) or registry.resolve_weights(model, search)
        with tempfile.TemporaryDirectory() as tmp:
            ref_fn = make_reference(ExportJob(contract, path, weights, Path(tmp)))
            if ref_fn is not None:
                tol = rec.tolerances.reference
                for b in (1, 8):
                    inp = {k: v[:b] for k, v in batch8.items()}
                    ok, detail = _against_reference({n: out8[n][:b] for n in names}, ref_fn(inp), names, tol)
                    add(f"ORT vs reference, batch {b}", ok, detail)
                # a variable dim (faces per image, crop width): the range's ends too
                for which, size in _range_ends(contract):
                    at = contract.with_variable_dims(size)
                    inp = sample_inputs(at, 2, rng)
                    ok, detail = _against_reference(dict(zip(names, sess.run(names, inp))), ref_fn(inp), names, tol)
                    shapes = ", ".join(f"{t.name} {list(t.dims)}" for t, v in zip(at.inputs, contract.inputs)
                                       if -1 in v.dims)
                    add(f"ORT vs reference, range {which}", ok, f"batch 2, {shapes}: {detail}")
    if ref_fn is None:
        add("ORT vs reference", None, rec.no_reference or "the family has no reference for these weights")
    known = rec.hook("known_answers")
    for name, ok, detail in (known(contract, sess) if known else ()):
        add(name, ok, detail)
    record = read_record(model, repository) or {}
    add("provenance", "provenance" in record, record.get("provenance", "export.json missing"))
    return checks


def _range_ends(contract: ModelContract) -> tuple[tuple[str, int], ...]:
    """("min", size), ("max", size) of a variable dim's range (the batch-1/8 checks use the
    family's own inputs, usually at opt); () when every dim is fixed."""
    rng = contract.variable_dim_range
    return () if rng is None else (("min", rng[0]), ("max", rng[2]))


def _against_reference(got: dict, ref: dict, names: list[str], tol: float) -> tuple[bool, str]:
    """Outputs vs the reference's: detections matched by box (near-ties allowed), the rest
    elementwise."""
    count = next((n for n in names if n.startswith("num_")), None)
    if count is None or "boxes" not in names:
        d = max_diff(got, {n: np.asarray(ref[n]) for n in names}, "")
        return d <= tol, f"max abs diff {d:.2e} (tol {tol:g})"
    d, lone, found = detection_diff(got, ref, count)
    allowed = max(1, found // 50)           # 2%: near-ties at the threshold or in NMS
    return (d <= tol and lone <= allowed and found > 0,
            f"max abs diff {d:.2e} (tol {tol:g}) over {found} detections matched by box, "
            f"{lone} found by one side only (allowed {allowed})"
            + (": the inputs exercise nothing (zero-padded rows prove nothing)" if not found else ""))


def _io_checks(model: str, m, contract: ModelContract) -> list[Check]:
    checks = []
    graph_inputs = {i.name: i for i in m.graph.input}
    graph_outputs = {o.name: o for o in m.graph.output}
    for kind, specs, tensors in (("input", contract.inputs, graph_inputs), ("output", contract.outputs, graph_outputs)):
        for spec in specs:
            t = tensors.get(spec.name)
            if t is None:
                checks.append(Check(model, f"{kind} {spec.name}", FAIL, f"missing in graph (has {sorted(tensors)})"))
                continue
            tt = t.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
            dtype = ONNX_TO_NP.get(tt.elem_type)
            ok = (dtype is not None and np.dtype(dtype) == spec.dtype and len(dims) == len(spec.dims) + 1
                  and not isinstance(dims[0], int)
                  # a variable config dim (-1) must be symbolic in the graph too
                  and all((isinstance(g, str) if w < 0 else g == w) for g, w in zip(dims[1:], spec.dims)))
            checks.append(Check(model, f"{kind} {spec.name}", PASS if ok else FAIL,
                                f"graph {np.dtype(dtype).name if dtype else tt.elem_type}{dims} vs config "
                                f"{spec.dtype.name}[batch,{','.join(map(str, spec.dims))}]"))
    return checks


def main(argv=None) -> int:
    from .__main__ import selected_models, weights_search

    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m export.verify")
    p.add_argument("--models", default="")
    p.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    p.add_argument("--weights-dir", action="append", default=[])
    p.add_argument("--weights", action="append", default=[])
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = p.parse_args(argv)
    search = weights_search(args)
    counts = {PASS: 0, FAIL: 0, SKIPPED: 0}
    for model in selected_models(args.models):
        checks = check_model(model, args.repository, search)
        print(f"\n== {model}")
        for c in checks:
            print(f"  {c.status:<7} {c.name:<32} {c.detail}")
            counts[c.status] += 1
    print(f"\nverify totals: PASS {counts[PASS]}, FAIL {counts[FAIL]}, SKIPPED {counts[SKIPPED]}")
    return 1 if counts[FAIL] else 0


if __name__ == "__main__":
    sys.exit(main())
