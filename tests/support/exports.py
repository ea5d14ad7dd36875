"""Exported models in tests: what `make export-onnx` put in model_repository/, whether it
carries real weights, and one export into a temporary repository when it is stale."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from contract import MODEL_REPOSITORY


def provenance(model: str, repository: Path = MODEL_REPOSITORY) -> str:
    from export.runner import read_record

    return (read_record(model, repository) or {}).get("provenance", "not exported")


def require_real(model: str, needs: str = "", repository: Path = MODEL_REPOSITORY) -> str:
    """The export's provenance, or skip saying the weights are synthetic (or missing) and
    how to export the real ones."""
    from export.runner import read_record

    record = read_record(model, repository)
    if record is None:
        pytest.skip(f"{model} is not exported (make export-onnx MODELS={model})")
    if record.get("synthetic", True):
        pytest.skip(f"{model} was exported with synthetic weights ({record.get('provenance')})"
                    + (f": {needs}" if needs else "") + "; real weights: ../shared/weights or "
                    f"--weights {model}=PATH, then make export-onnx MODELS={model}")
    return record["provenance"]


def exported_model(model: str, tmp_path_factory, search=None):
    """(onnx path, ExportJob) for `model`: model_repository's file when the export runner
    says it is up to date for the weights its export record names (else those `make
    export-onnx` finds: VISIONSERVE_WEIGHTS_DIR), else one export into a temporary
    repository."""
    from export import registry, runner
    from export.__main__ import weights_search
    from export.base import ExportJob
    import contract

    if search is None:
        import argparse

        from export.base import DEFAULT_SEED

        search = weights_search(argparse.Namespace(weights_dir=[], weights=[], seed=DEFAULT_SEED))
    from export.verify import recorded_weights

    path = runner.onnx_path(model, MODEL_REPOSITORY)
    record = runner.read_record(model, MODEL_REPOSITORY)
    weights = recorded_weights(record) or registry.resolve_weights(model, search)
    if not (path.exists() and record
            and record.get("fingerprint") == runner.fingerprint(model, weights, MODEL_REPOSITORY)):
        repo = tmp_path_factory.mktemp("repo")
        (repo / model).mkdir()
        shutil.copy(MODEL_REPOSITORY / model / "config.pbtxt", repo / model / "config.pbtxt")
        path = runner.export_one(model, search, repo).path
    job = ExportJob(contract.load(model, MODEL_REPOSITORY), path, weights, Path(tmp_path_factory.mktemp("work")))
    return path, job


def smallest_exported_network():
    """The exported network model with the smallest graph (a perf tool's quickest run);
    skips when none is exported."""
    import contract

    exported = [c for c in contract.load_all().values()
                if c.kind == "network" and (c.version_dir() / "model.onnx").is_file()]
    if not exported:
        pytest.skip("no network model exported (make export-onnx)")
    return min(exported, key=lambda c: (c.version_dir() / "model.onnx").stat().st_size)
