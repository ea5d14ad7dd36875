"""Parity after build: the plan vs ONNX Runtime on the same inputs, at batch 1 and max batch.

The tolerances of every model are its family record's (export/registry.py,
`tolerances.engine`) and nowhere else. Each output is held to `atol + rtol * |reference|`
elementwise, of which a fraction `max_mismatch` may miss (NMS / top-K outputs: a near-tie
can swap two rows or move one box across the score threshold under FP16, which shifts the
rows after it), and, for embeddings, a floor on the per-row cosine similarity. Integer
outputs use the same rule on their values.

Runners are Polygraphy's (OnnxrtRunner for the reference, TrtRunner for the plan); any
object with `__enter__/__exit__` and `infer(feed) -> {name: array}` works, which is how
the tests run the whole check as ONNX Runtime vs ONNX Runtime.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import TensorSpec

from .. import registry
from ..boxes import matched_rows
from ..tolerances import DEFAULT_PARITY, ParitySpec, Tolerance  # noqa: F401 (part of this module's API)
from .errors import ParityError

DEFAULT = DEFAULT_PARITY


def spec_for(model: str) -> ParitySpec:
    """The model's engine tolerances from its family record (DEFAULT for models without one)."""
    return registry.record(model).tolerances.engine if model in registry.MODELS else DEFAULT


@dataclass(frozen=True)
class OutputParity:
    output: str
    batch: int
    max_abs: float
    mismatch: float                     # fraction of elements outside tolerance
    min_cosine: float | None
    passed: bool
    why: str = ""


def compare(output: str, batch: int, ref: np.ndarray, got: np.ndarray, tol: Tolerance) -> OutputParity:
    """Pure comparison of one output (vectorised over the whole batch)."""
    if ref.shape != got.shape:
        return OutputParity(output, batch, float("inf"), 1.0, None, False,
                            f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
    r, g = ref.astype(np.float64), got.astype(np.float64)
    if not np.isfinite(g).all() and np.isfinite(r).all():
        return OutputParity(output, batch, float("inf"), 1.0, None, False, "non-finite values in the plan's output")
    diff = np.abs(r - g)
    max_abs = float(diff.max()) if diff.size else 0.0
    bad = diff > tol.atol + tol.rtol * np.abs(r)
    mismatch = float(bad.mean()) if bad.size else 0.0
    cos = None
    why = []
    if tol.min_cosine is not None and r.ndim >= 1 and r.size:
        num = (r * g).sum(-1)
        den = np.linalg.norm(r, axis=-1) * np.linalg.norm(g, axis=-1)
        cos = float(np.min(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))
        if cos < tol.min_cosine:
            why.append(f"cosine {cos:.5f} < {tol.min_cosine}")
    if mismatch > tol.max_mismatch:
        why.append(f"{mismatch:.2%} of values beyond atol {tol.atol:g} + rtol {tol.rtol:g} "
                   f"(allowed {tol.max_mismatch:.2%}; max |diff| {max_abs:.4g})")
    return OutputParity(output, batch, max_abs, mismatch, cos, not why, "; ".join(why))


def make_inputs(specs: tuple[TensorSpec, ...], batch: int, spec: ParitySpec, seed: int = 0) -> dict:
    """Deterministic inputs: real photos for [H,W,3] images (export/samples.py: the first frame
    the perf scene with a face, objects and printed text; printed lines for text-line strips),
    so detectors find something to compare; ranged ints/floats for the rest."""
    from .. import samples

    rng = np.random.default_rng(seed + batch)
    feed = {}
    for s in specs:
        shape = (batch, *s.dims)
        lo, hi = spec.input_ranges.get(s.name, (0, 256) if s.dtype == np.uint8 else (0.0, 1.0))
        if s.dtype == np.uint8 and len(s.dims) == 3 and s.dims[-1] == 3 and s.name not in spec.input_ranges:
            feed[s.name] = samples.real_frames(batch, s.dims[0], s.dims[1], rng)
        elif s.dtype == np.uint8 and len(s.dims) == 3 and s.dims[-1] in (1, 3):
            h, w, c = s.dims
            coarse = rng.uniform(lo, hi, (batch, max(h // 32, 1), max(w // 32, 1), c))
            up = np.repeat(np.repeat(coarse, -(-h // coarse.shape[1]), 1), -(-w // coarse.shape[2]), 2)[:, :h, :w]
            feed[s.name] = np.clip(up + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)
        elif np.issubdtype(s.dtype, np.integer):
            feed[s.name] = rng.integers(int(lo), int(hi), shape).astype(s.dtype)
        else:
            feed[s.name] = rng.uniform(lo, hi, shape).astype(s.dtype)
    return feed


@dataclass(frozen=True)
class ParityReport:
    model: str
    results: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def figures(self) -> str:
        """One line for the summary table: worst figure per batch."""
        parts = []
        for b in sorted({r.batch for r in self.results}):
            rs = [r for r in self.results if r.batch == b]
            s = f"b{b} max|d| {max(r.max_abs for r in rs):.3g}"
            coss = [r.min_cosine for r in rs if r.min_cosine is not None]
            if coss:
                s += f" cos {min(coss):.5f}"
            parts.append(s)
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {"passed": self.passed, "figures": self.figures(),
                "outputs": [r.__dict__ for r in self.results]}

    def failure(self) -> str:
        bad = [f"{r.output} at batch {r.batch}: {r.why}" for r in self.results if not r.passed]
        return f"{self.model}: plan differs from ONNX Runtime: " + "; ".join(bad)


def check(model: str, reference, candidate, inputs: tuple[TensorSpec, ...], outputs: tuple[str, ...],
          batches: tuple[int, ...], seed: int = 0) -> ParityReport:
    """Run both runners on the same inputs at each batch and compare every output."""
    spec = spec_for(model)
    results = []
    with reference as ref_runner, candidate as cand_runner:
        for b in batches:
            feed = make_inputs(inputs, b, spec, seed)
            ref = {k: np.asarray(v) for k, v in ref_runner.infer(feed).items()}
            got = {k: np.asarray(v) for k, v in cand_runner.infer(feed).items()}
            count = next((n for n in outputs if n.startswith("num_")), None)
            if count is not None and "boxes" in outputs and count in ref and count in got and "boxes" in got:
                if not ref[count].sum():
                    results.append(OutputParity(count, b, 0.0, 1.0, None, False, "the reference found nothing "
                                                "in the parity inputs: zero-padded rows prove nothing"))
                ref, got = matched_rows(ref, got, count, [n for n in outputs if n != count and n in got])
            for name in outputs:
                if name not in got:
                    results.append(OutputParity(name, b, float("inf"), 1.0, None, False, "missing from the plan"))
                    continue
                results.append(compare(name, b, ref[name], got[name], spec.tolerance(name)))
    return ParityReport(model, tuple(results))


def require(report: ParityReport) -> ParityReport:
    if not report.passed:
        raise ParityError(report.failure())
    return report


def onnxrt_runner(onnx: Path | bytes):
    """ONNX Runtime (CUDA provider when this onnxruntime has it, else CPU) via Polygraphy."""
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    have = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]
    src = onnx if isinstance(onnx, bytes) else str(onnx)
    return OnnxrtRunner(SessionFromOnnx(src, providers=providers))


def trt_runner(plan: bytes):
    """The plan under test, via Polygraphy's TrtRunner (imports tensorrt)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    return TrtRunner(EngineFromBytes(plan))
