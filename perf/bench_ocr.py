"""`make bench-ocr`: how the OCR pipeline reads rendered lines, its ways side by side in ONE run.

Pages of printed lines (random words, digits and punctuation in DejaVu Sans at several sizes,
sparse and dense) with a known truth, read by the exported ppocr_det/ppocr_rec in ONNX Runtime
through pipelines/ocr_postprocess.py (the code the `ocr` model runs between its calls), in these
variants of its settings, and by rapidocr's own pipeline (the reference the weights come from):

  buckets       the default: each line at its own width rounded up to the width buckets,
                crops 1.3x the box's height
  own-width     no buckets (a bucket every 8 px): what rounding up to buckets costs
  ratio-1.5     buckets up to 1.5x apart instead of 1.25x: fewer shapes, more padding
  crop-1.0      the buckets with crops exactly the box's height: what the taller crop buys
  chunks-320    a fixed 48x320 recogniser: lines in 320-px chunks (the contract before)
  rapidocr      rapidocr-onnxruntime's RapidOCR() on the same pages (BGR, as it reads; its
                defaults, angle classifier included: its time is not like for like)

Printed per variant: lines read exactly, exactly but for spaces, recogniser calls and
milliseconds per page (one process, the same pages, back to back: the ratios are what count
on a shared machine). A line counts only when the detector found every line of its page.

    python -m perf.bench_ocr [--lines 24] [--sizes 14,16,20,24] [--gaps 2.2,1.35] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from export import scene

from . import report

WORDS = ("Lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
         "labore et dolore magna aliqua Ut enim ad minim veniam quis nostrud exercitation ullamco laboris "
         "nisi aliquip ex ea commodo Triton Inference Server VISIONSERVE 2026 faces objects and text batch "
         "of 8 images port 8001 gRPC version 1.4.4 CenterNet finds a bus OCR reads long lines shared memory "
         "Kubernetes KEDA 640x640 HELLO WORLD 42 0123456789 the quick brown fox jumps over lazy dog").split()
PAGE = 640
VARIANTS = ("buckets", "own-width", "ratio-1.5", "crop-1.0", "chunks-320", "rapidocr")


@dataclass
class Tally:
    exact: int = 0
    no_space: int = 0
    lines: int = 0
    calls: int = 0
    seconds: float = 0.0
    pages: int = 0
    misses: list[tuple[str, str]] = field(default_factory=list)

    def row(self, name: str) -> str:
        pct = 100.0 / max(self.lines, 1)
        return (f"| {name} | {self.exact}/{self.lines} ({self.exact * pct:.0f}%) | "
                f"{self.no_space}/{self.lines} ({self.no_space * pct:.0f}%) | "
                f"{'-' if self.calls < 0 else f'{self.calls / max(self.pages, 1):.1f}'} | "
                f"{1000 * self.seconds / max(self.pages, 1):.0f} |")


def corpus(seed: int, n: int, font_px: int, lo: int = 10, hi: int = 80) -> list[str]:
    """n lines of lo..hi characters that fit the page at font_px."""
    font = scene._font(font_px)
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        want, text = rng.randint(lo, hi), ""
        while len(text) < want:
            text += (" " if text else "") + rng.choice(WORDS)
        text = text[:want].rstrip()
        if font.getlength(text) <= PAGE - 25:
            out.append(text)
    return out


def pages(lines: list[str], font_px: int, gap: float):
    """(page uint8 [640,640,3], its lines) as many lines a page as fit."""
    per = max(1, int((PAGE - 40) // (font_px * gap)))
    for i in range(0, len(lines), per):
        chunk = lines[i:i + per]
        yield scene.render_lines(chunk, PAGE, font_px=font_px, line_gap=gap, margin=10, height=PAGE)[0], chunk


def settings(variant: str, base):
    if variant == "own-width":
        return replace(base, bucket_ratio=1.0 + base.rec_stride / base.rec_max_width)
    if variant == "ratio-1.5":
        return replace(base, bucket_ratio=1.5)
    if variant == "crop-1.0":
        return replace(base, crop_height=1.0)
    if variant == "chunks-320":
        return replace(base, rec_opt_width=320, rec_max_width=320, crop_height=1.0)
    return base


def run(args) -> dict[str, Tally]:
    import onnxruntime as ort

    import contract
    from export.ppocr import charset_path
    from pipelines import ocr_postprocess as op

    repo = contract.MODEL_REPOSITORY
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    det = ort.InferenceSession(str(repo / "ppocr_det/1/model.onnx"), so, providers=["CPUExecutionProvider"])
    rec = ort.InferenceSession(str(repo / "ppocr_rec/1/model.onnx"), so, providers=["CPUExecutionProvider"])
    charset = op.load_charset(charset_path(repo))
    rec_c = contract.load("ppocr_rec")
    base = op.OcrSettings.for_recogniser(rec_c)
    tallies = {v: Tally() for v in args.variants}
    rapid = None
    if "rapidocr" in tallies:
        from rapidocr_onnxruntime import RapidOCR

        rapid = RapidOCR()
    calls = [0]

    def recognize(crops):
        calls[0] += 1
        return tuple(rec.run(None, {"crops": crops}))

    for gap in args.gaps:
        for px in args.sizes:
            for page, truth in pages(corpus(args.seed + px + int(gap * 100), args.lines, px), px, gap):
                found = len(op.db_boxes(det.run(None, {"images": page[None]})[0][0], base)[0])
                for v, t in tallies.items():
                    calls[0] = 0
                    start = time.perf_counter()
                    if v == "rapidocr":
                        got = [text for _, text, _ in (rapid(page[..., ::-1])[0] or [])]
                        calls[0] = -1                       # its own batching (and angle classifier)
                    else:
                        r = op.run_ocr(page[None], lambda x: det.run(None, {"images": x})[0], recognize, charset,
                                       det_max_batch=1, rec_max_batch=rec_c.max_batch_size, s=settings(v, base))
                        got = [x.decode() for x in r.texts[0, :r.num_lines[0, 0]]]
                    t.seconds += time.perf_counter() - start
                    t.pages += 1
                    t.calls += calls[0]
                    if found != len(truth) or len(got) != len(truth):
                        continue          # a detector miss or a dropped line: not a recognition figure
                    t.lines += len(truth)
                    t.exact += sum(g == w for g, w in zip(got, truth))
                    t.no_space += sum(g.replace(" ", "") == w.replace(" ", "") for g, w in zip(got, truth))
                    t.misses += [(g, w) for g, w in zip(got, truth) if g != w]
    return tallies


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.bench_ocr", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=24, help="lines per font size and line gap")
    ap.add_argument("--sizes", default="14,16,20,24", help="font sizes in pixels")
    ap.add_argument("--gaps", default="2.2,1.35", help="line pitch as a multiple of the font size")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reports", type=Path, default=report.REPORTS_DIR)
    a = ap.parse_args(argv)
    a.sizes = [int(x) for x in a.sizes.split(",")]
    a.gaps = [float(x) for x in a.gaps.split(",")]
    a.variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(a.variants) - set(VARIANTS))
    if unknown:
        print(f"error: unknown variants {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    tallies = run(a)
    head = "| variant | lines exact | exact but spaces | rec calls / page | ms / page |\n|---|---|---|---|---|"
    text = "\n".join([head, *(t.row(v) for v, t in tallies.items())])
    print(text)
    out = report.new_dir("bench-ocr", a.reports)
    (out / "summary.md").write_text(f"# bench-ocr\n\n`python -m perf.bench_ocr {' '.join(argv or sys.argv[1:])}`\n\n"
                                    + text + "\n")
    (out / "results.json").write_text(json.dumps(
        {v: {"exact": t.exact, "no_space": t.no_space, "lines": t.lines, "calls": t.calls, "pages": t.pages,
             "seconds": t.seconds, "misses": t.misses[:50]} for v, t in tallies.items()}, indent=1))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
