"""perf/reports/<timestamp>-<name>/: raw JSON/CSV, summary.md and PNG plots.

Plots are drawn with matplotlib's Agg backend (no display), one line per
(target, batch) series: throughput, latency percentiles and average batch size
against concurrency.
"""
from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path

from .record import ResultRecord, write_csv, write_json

REPORTS_DIR = Path(__file__).resolve().parent / "reports"


def new_dir(name: str, root: Path = REPORTS_DIR) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{safe}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{safe}-{n}"
    path.mkdir(parents=True)
    return path


def _fmt(v, digits=1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(records: list[ResultRecord]) -> str:
    head = ("| target | scenario | batch | conc | infer/s | p50 ms | p95 ms | p99 ms | errors | "
            "avg batch | queue us | infer us |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in records:
        lines.append(f"| {r.target} | {r.scenario or '-'} | {r.batch} | {r.concurrency} | "
                     f"{_fmt(r.throughput)} | {_fmt(r.p50_ms, 2)} | {_fmt(r.p95_ms, 2)} | "
                     f"{_fmt(r.p99_ms, 2)} | {r.errors} | {_fmt(r.avg_batch, 2)} | {_fmt(r.queue_us, 0)} | "
                     f"{_fmt(r.compute_infer_us, 0)} |")
    return "\n".join(lines)


def _series(records):
    groups = defaultdict(list)
    for r in records:
        groups[(r.target, r.batch, r.scenario)].append(r)
    for key in groups:
        groups[key].sort(key=lambda r: r.concurrency)
    return groups


def plot(records: list[ResultRecord], out_dir: Path) -> list[Path]:
    """Throughput, latency and average batch vs concurrency; [] when nothing is plottable."""
    recs = [r for r in records if r.concurrency > 0]
    if not recs:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _series(recs)
    paths = []

    def label(key):
        target, batch, scenario = key
        return f"{target} b={batch}" + (f" {scenario}" if scenario else "")

    specs = [("throughput.png", "throughput (inferences/s)", [("throughput", "")]),
             ("latency.png", "latency (ms)", [("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")]),
             ("avg_batch.png", "average batch (Triton metrics)", [("avg_batch", "")])]
    for fname, ylabel, fields_ in specs:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
        drawn = False
        for key, rs in groups.items():
            for attr, suffix in fields_:
                pts = [(r.concurrency, getattr(r, attr)) for r in rs if getattr(r, attr) is not None]
                if pts:
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, marker="o", label=f"{label(key)} {suffix}".strip())
                    drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / fname)
        plt.close(fig)
        paths.append(out_dir / fname)
    return paths


def write(out_dir: Path, title: str, records: list[ResultRecord], meta: dict,
          sections: dict[str, str] | None = None) -> dict[str, Path]:
    """Everything a report holds; returns the written paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(records, out_dir / "results.json", meta),
             "csv": write_csv(records, out_dir / "results.csv")}
    pngs = plot(records, out_dir)
    lines = [f"# {title}", ""]
    for k, v in meta.items():
        lines.append(f"- **{k}**: {v}")
    lines += ["", table(records), ""]
    for head, body in (sections or {}).items():
        lines += [f"## {head}", "", body, ""]
    if pngs:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs] + [""]
    (out_dir / "summary.md").write_text("\n".join(lines))
    paths["summary"] = out_dir / "summary.md"
    for p in pngs:
        paths[p.stem] = p
    return paths
