"""Print where every exported model's weights came from; fail on synthetic ones if asked.

    python docker/weights_report.py [--policy warn|require-real] [REPOSITORY]

Runs at image build time after `python -m export`: an image built without real weights
(the exporter falls back to deterministic random weights when none are found) serves
well-formed but meaningless answers, and that must be visible in the build log, or stop
the build (`--build-arg WEIGHTS_POLICY=require-real`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def records(repository: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(repository).glob("*/1/export.json")):
        out[path.parent.parent.name] = json.loads(path.read_text())
    return out


def report(recs: dict[str, dict]) -> tuple[str, list[str]]:
    synthetic = sorted(m for m, r in recs.items() if r.get("synthetic"))
    lines = [f"{'model':<18} weights"]
    lines += [f"{m:<18} {'SYNTHETIC ' if r.get('synthetic') else ''}{r.get('provenance', '?')}"
              for m, r in sorted(recs.items())]
    return "\n".join(lines), synthetic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("repository", nargs="?", type=Path, default=Path("model_repository"))
    p.add_argument("--policy", choices=("warn", "require-real"), default="warn")
    args = p.parse_args(argv)
    recs = records(args.repository)
    if not recs:
        print(f"error: no export records under {args.repository}/*/1/export.json", file=sys.stderr)
        return 2
    table, synthetic = report(recs)
    print(table)
    if synthetic:
        msg = (f"{len(synthetic)} model(s) exported with SYNTHETIC weights: {', '.join(synthetic)}. Put real "
               "weights in ./weights (see docs/deploy.md) and rebuild")
        if args.policy == "require-real":
            print(f"error: {msg}", file=sys.stderr)
            return 1
        print(f"WARNING: {msg}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
