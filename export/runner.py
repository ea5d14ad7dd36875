"""Runs exports: skip up-to-date models, then the family's exporter, then the finishing
steps every model shares, done here once: stamp the contract's dims on the graph's inputs
and outputs, check the graph, stamp provenance into metadata_props, place atomically."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import contract as contract_mod

from . import registry
from .base import ExportError, ExportJob, WeightsSearch, WeightsSource

log = logging.getLogger("export")

EXPORT_RECORD = "export.json"   # sidecar beside model.onnx: fingerprint + provenance
ONNX_NAME = "model.onnx"
_SHARED_SOURCES = ("base.py", "graph_ops.py", "onnx_graph.py", "patch_batch.py", "batch_proof.py", "runner.py",
                   "wheels.py")


@dataclass(frozen=True)
class Result:
    model: str
    status: str            # "exported" | "up-to-date"
    path: Path
    size_bytes: int
    seconds: float
    provenance: str
    synthetic: bool


def onnx_path(model: str, repository: Path) -> Path:
    return Path(repository) / model / "1" / ONNX_NAME


def read_record(model: str, repository: Path) -> dict | None:
    p = onnx_path(model, repository).with_name(EXPORT_RECORD)
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def fingerprint(model: str, weights: WeightsSource, repository: Path) -> str:
    """Changes when anything that shapes the exported file changes."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    h.update((Path(repository) / model / "config.pbtxt").read_bytes())
    rec = registry.record(model)
    for name in (*_SHARED_SOURCES, f"{rec.module}.py"):
        p = here / name
        if p.exists():
            h.update(p.read_bytes())
    # what of the record shapes the file (tolerances do not: changing one re-exports nothing)
    h.update(repr((rec.exporter, rec.weights)).encode())
    h.update(weights.fingerprint().encode())
    return h.hexdigest()


def export_one(model: str, search: WeightsSearch, repository: Path, force: bool = False) -> Result:
    rec = registry.record(model)
    contract = contract_mod.load(model, repository)
    weights = registry.resolve_weights(model, search)
    fp = fingerprint(model, weights, repository)
    out = onnx_path(model, repository)
    record = read_record(model, repository)
    sides_present = all(p.exists() for p in rec.side_paths(contract))
    if not force and out.exists() and sides_present and record and record.get("fingerprint") == fp:
        return Result(model, "up-to-date", out, out.stat().st_size, 0.0, record["provenance"], record["synthetic"])

    if weights.synthetic:
        log.warning("!!! %s: NO REAL WEIGHTS FOUND - exporting SYNTHETIC weights (%s). "
                    "Outputs are meaningless; give real weights with --weights %s=PATH or --weights-dir.",
                    model, weights.metadata()["weights_provenance"], model)
    else:
        log.info("%s: weights from %s", model, weights.description)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"export-{model}-", dir=out.parent) as tmp:
        tmp_out = Path(tmp) / ONNX_NAME
        job = ExportJob(contract, tmp_out, weights, Path(tmp),
                        progress=lambda msg, m=model: log.info("%s: %s", m, msg))
        metadata = build(job, {"visionserve_fingerprint": fp})
        os.replace(tmp_out, out)
    seconds = time.perf_counter() - t0
    rec = {"model": model, "fingerprint": fp, "provenance": metadata["weights_provenance"],
           "synthetic": weights.synthetic, "weights": metadata, "seconds": round(seconds, 2),
           "size_bytes": out.stat().st_size}
    out.with_name(EXPORT_RECORD).write_text(json.dumps(rec, indent=2) + "\n")
    return Result(model, "exported", out, rec["size_bytes"], seconds, rec["provenance"], weights.synthetic)


def build(job: ExportJob, extra_metadata: dict[str, str] | None = None) -> dict[str, str]:
    """The family's exporter, then the steps every export ends with: the contract's dims on
    the graph's edges, the ONNX checker, provenance in metadata_props, one save to job.out_path.
    Returns the metadata stamped."""
    import onnx

    from .onnx_graph import set_io_dims

    built = registry.record(job.name).hook("exporter")(job)
    if built is None and not job.out_path.is_file():
        raise ExportError(f"{job.name}: the exporter wrote nothing to {job.out_path}")
    m = built if built is not None else onnx.load(str(job.out_path), load_external_data=True)
    contract = job.contract
    set_io_dims(m, contract)
    try:
        onnx.checker.check_model(m, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{contract.name}: the exported graph fails the ONNX checker: {exc}") from exc
    metadata = {**job.weights.metadata(), "visionserve_model": job.name, **(extra_metadata or {})}
    existing = {p.key: p for p in m.metadata_props}
    for k, v in metadata.items():
        if k in existing:
            existing[k].value = v
        else:
            m.metadata_props.add(key=k, value=v)
    onnx.save(m, str(job.out_path))
    return metadata
