"""Check a repository's generated encoded entry points, where they are built: the GPU
image's build runs it right after writing them into the image's repository

    python -m serving.encoded --profile gpu --out model_repository --serialize
    python -m deploy.encoded model_repository [--profile gpu]

and fails (exit 2) naming every problem, so an image never ships an entry point Triton
would refuse to load. What is expected is derived again from the repository's contract
(serving/encoded.py's rule), never listed here: every model the entries need is present
with exactly the generated config, each DALI model has its serialized 1/model.dali, each
python step its 1/model.py, and every ensemble step names a model of the repository.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import contract
from pipelines import ENTRY_FILE, entry_source
from serving import encoded

DALI_FILE = "model.dali"


def problems(repository: Path, profile: str = "gpu") -> list[str]:
    """What is wrong with the entry points in `repository` (empty: nothing)."""
    repository = Path(repository)
    contracts = contract.load_all(repository)
    expected = encoded.configs(contracts, profile)
    if not expected:
        return [f"{repository}: no model has an encoded entry point (no letterboxed model a route serves)"]
    found: list[str] = []
    for name, (cfg, module) in sorted(expected.items()):
        folder = repository / name
        if name not in contracts:
            found.append(f"{name}: missing (no {folder / 'config.pbtxt'})")
            continue
        if contracts[name].config != cfg:
            found.append(f"{name}: config.pbtxt differs from what serving/encoded.py derives from the contract")
        if module is not None:
            model_py = folder / "1" / ENTRY_FILE
            if not model_py.is_file() or model_py.read_text() != entry_source(module):
                found.append(f"{name}: {model_py} is missing or not pipelines/{module}.py's entry")
        elif cfg.backend == "dali":
            dali = folder / "1" / DALI_FILE
            if not dali.is_file() or dali.stat().st_size == 0:
                found.append(f"{name}: no serialized pipeline {dali} (`--serialize`, with the image's DALI)")
        for step in cfg.ensemble_scheduling.step:
            if step.model_name not in contracts:
                found.append(f"{name}: its step {step.model_name!r} is no model of {repository}")
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.encoded", description=__doc__.splitlines()[0])
    ap.add_argument("repository", type=Path)
    ap.add_argument("--profile", choices=encoded.PROFILES, default="gpu")
    args = ap.parse_args(argv)
    found = problems(args.repository, args.profile)
    for line in found:
        print(f"encoded entry points: {line}", file=sys.stderr)
    if found:
        return 2
    n = len(encoded.configs(contract.load_all(args.repository), args.profile))
    print(f"encoded entry points: {n} models in {args.repository} check out ({args.profile})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
