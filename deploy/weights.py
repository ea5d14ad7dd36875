"""Where every exported model's weights came from; refuse synthetic ones unless asked.

    python -m deploy.weights [--policy require-real|allow-synthetic] [REPOSITORY]

Runs at image build time after `python -m export` (docker/triton.Dockerfile, stage onnx):
an image built without real weights (the exporter falls back to deterministic random
weights when none are found) serves well-formed but meaningless answers. The default
policy stops that build; `--build-arg WEIGHTS_POLICY=allow-synthetic` is the explicit
opt-in for demos, and such an image says so again at every start (deploy/entrypoint.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

POLICIES = ("require-real", "allow-synthetic")


def records(repository: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(repository).glob("*/1/export.json")):
        out[path.parent.parent.name] = json.loads(path.read_text())
    return out


def synthetic(recs: dict[str, dict]) -> list[str]:
    return sorted(m for m, r in recs.items() if r.get("synthetic"))


def report(recs: dict[str, dict]) -> str:
    lines = [f"{'model':<18} weights"]
    lines += [f"{m:<18} {'SYNTHETIC ' if r.get('synthetic') else ''}{r.get('provenance', '?')}"
              for m, r in sorted(recs.items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.weights", description=__doc__.splitlines()[0])
    p.add_argument("repository", nargs="?", type=Path, default=Path("model_repository"))
    p.add_argument("--policy", choices=POLICIES, default="require-real")
    args = p.parse_args(argv)
    recs = records(args.repository)
    if not recs:
        print(f"error: no export records under {args.repository}/*/1/export.json", file=sys.stderr)
        return 2
    print(report(recs))
    fake = synthetic(recs)
    if fake:
        msg = (f"{len(fake)} model(s) exported with SYNTHETIC weights: {', '.join(fake)}. Put real weights in "
               "./weights (docs/deploy.md, 'Images') and rebuild")
        if args.policy == "require-real":
            print(f"error: {msg}; --build-arg WEIGHTS_POLICY=allow-synthetic builds a demo image anyway",
                  file=sys.stderr)
            return 1
        print(f"WARNING: {msg} (WEIGHTS_POLICY=allow-synthetic: a demo image)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
