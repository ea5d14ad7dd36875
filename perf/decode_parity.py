"""How far the DALI letterbox is from the gateway codec's, in pixels and in detections.

The codec (imaging: read_header, plan_letterbox, decode_into) is the reference;
the DALI pipeline (pipelines/dali_letterbox.py) runs with device "cpu" here, "mixed" on a
GPU host. Pixels: max and mean absolute difference inside the drawn area per image and
frame size (the padding is compared separately by the tests: it must be equal).
Detections: the exported real-weight detectors run with ONNX Runtime on both letterboxes;
boxes are mapped to original pixels with each side's own scale and matched one to one
(same class, greedy by IoU).

    python -m perf.decode_parity [--device cpu|mixed] [--filters]   (make decode-parity)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import decode_images

REPO = Path(__file__).resolve().parent.parent
# Detectors with real weights in a plain checkout (../shared/weights): their exported ONNX
# is used only when its export record says the weights were real.
DETECTORS = ("scrfd", "centernet")
MATCH_IOU = 0.5


def reference_codec():
    """The shared codec (imaging: read_header, plan_letterbox, decode_into, decode), the
    gateway's and Triton's CPU decode step's."""
    import imaging

    return imaging


def codec_letterbox(data: bytes, frame_hw: tuple[int, int], pad_value: int = 0):
    """(frame, (w, h), (scale_x, scale_y), (drawn w, drawn h)) from the gateway codec: the
    reference."""
    codec = reference_codec()
    header = codec.read_header(data, max_pixels=1 << 40, max_side=1 << 20)
    box = codec.plan_letterbox(*header.size, frame_hw[1], frame_hw[0])
    out = np.empty((*frame_hw, 3), np.uint8)
    codec.decode_into(data, header, box, out, pad_value)
    return out, (box.width, box.height), box.scale, (box.new_w, box.new_h)


def full_decode_letterbox(data: bytes, frame_hw: tuple[int, int]) -> np.ndarray:
    """The codec without its DCT-domain step: full-size decode, then cv2 INTER_AREA (>= 2x)
    or INTER_LINEAR. Not a reference: a second plausible resampling of the same image, to
    show how much a detector moves between two good resizes (its own sensitivity)."""
    import cv2

    codec = reference_codec()
    header = codec.read_header(data, max_pixels=1 << 40, max_side=1 << 20)
    box = codec.plan_letterbox(*header.size, frame_hw[1], frame_hw[0])
    img = codec.decode(data, header)
    out = np.zeros((*frame_hw, 3), np.uint8)
    interp = cv2.INTER_AREA if img.shape[1] >= 2 * box.new_w else cv2.INTER_LINEAR
    out[:box.new_h, :box.new_w] = cv2.resize(img, (box.new_w, box.new_h), interpolation=interp)
    return out


def dali_letterbox(datas: list[bytes], frame_hw: tuple[int, int], *, device: str = "cpu",
                   pad_value: int = 0, resize=None, device_id: int | None = None):
    """The DALI pipeline run once on `datas`: (frames [N,H,W,3], size [N,2], scale [N,2])."""
    from pipelines import dali_letterbox as dl

    kw = {} if resize is None else {"resize": resize}
    pipe = dl.pipeline(frame_hw, device=device, pad_value=pad_value, max_batch_size=len(datas),
                       num_threads=1, device_id=device_id, **kw)
    pipe.build()
    pipe.feed_input(dl.INPUT, [np.frombuffer(d, np.uint8) for d in datas])
    frames, size, scale = pipe.run()
    if device == "mixed":
        frames = frames.as_cpu()
    return (np.stack([np.array(frames.at(i)) for i in range(len(datas))]),
            np.stack([np.array(size.at(i)) for i in range(len(datas))]),
            np.stack([np.array(scale.at(i)) for i in range(len(datas))]))


@dataclass(frozen=True)
class PixelRow:
    image: str
    frame: int
    factor: float        # original px per drawn px (> 1: downscale)
    max_abs: int
    mean_abs: float
    p99_abs: float


def pixel_rows(images: dict[str, bytes], frames=(640, 512), **dali_kw) -> list[PixelRow]:
    rows = []
    names = list(images)
    for f in frames:
        got, _, _ = dali_letterbox([images[n] for n in names], (f, f), **dali_kw)
        for i, n in enumerate(names):
            ref, (w, _), _, (nw, nh) = codec_letterbox(images[n], (f, f))
            d = np.abs(got[i, :nh, :nw].astype(np.int16) - ref[:nh, :nw])
            rows.append(PixelRow(n, f, w / nw, int(d.max()), float(d.mean()), float(np.percentile(d, 99))))
    return rows


def detector(model: str):
    """(session, frame_hw) for an exported detector with REAL weights, or (None, reason)."""
    import onnxruntime as ort

    onnx = REPO / "model_repository" / model / "1" / "model.onnx"
    record = onnx.parent / "export.json"
    if not onnx.is_file() or not record.is_file():
        return None, f"{onnx} is not exported (make export-onnx)"
    if json.loads(record.read_text()).get("synthetic", True):
        return None, f"{onnx} was exported with synthetic weights (real ones: ../shared/weights)"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    h, w = sess.get_inputs()[0].shape[1:3]
    return sess, (int(h), int(w))


def detect(sess, frames: np.ndarray, scale: np.ndarray) -> list[dict]:
    """Per image: boxes in original pixels, scores, classes (0 for single-class models)."""
    names = [o.name for o in sess.get_outputs()]
    out = []
    for i in range(len(frames)):   # one at a time: the models' batch is not under test
        res = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: frames[i:i + 1]})))
        n = int(np.ravel(res["num_detections"])[0])
        sx, sy = scale[i]
        boxes = res["boxes"][0, :n].astype(np.float64) / np.array([sx, sy, sx, sy])
        classes = res["classes"][0, :n] if "classes" in res else np.zeros(n, np.int64)
        out.append({"boxes": boxes, "scores": res["scores"][0, :n], "classes": classes})
    return out


@dataclass(frozen=True)
class DetectionRow:
    model: str
    image: str
    n_codec: int
    n_dali: int
    matched: int
    mean_iou: float       # over matched pairs (1.0 when none)
    min_iou: float
    max_corner_px: float  # largest box-corner move, original pixels
    max_dscore: float
    unmatched_scores: tuple[float, ...]   # scores of boxes found on one side only
    baseline_min_iou: float   # codec vs full_decode_letterbox: the detector's own sensitivity


def match(a: dict, b: dict) -> tuple[list[tuple[int, int, float]], list[int], list[int]]:
    """Greedy one-to-one matching of detections by IoU (same class, IoU >= MATCH_IOU)."""
    from export.boxes import iou_matrix

    if len(a["boxes"]) == 0 or len(b["boxes"]) == 0:
        return [], list(range(len(a["boxes"]))), list(range(len(b["boxes"])))
    iou = iou_matrix(a["boxes"], b["boxes"])
    iou = np.where(a["classes"][:, None] == b["classes"][None, :], iou, 0.0)
    pairs = []
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < MATCH_IOU:
            break
        pairs.append((int(i), int(j), float(iou[i, j])))
        iou[i, :] = 0.0
        iou[:, j] = 0.0
    used_a, used_b = {p[0] for p in pairs}, {p[1] for p in pairs}
    return (pairs, [i for i in range(len(a["boxes"])) if i not in used_a],
            [j for j in range(len(b["boxes"])) if j not in used_b])


def detection_rows(model: str, images: dict[str, bytes], **dali_kw) -> list[DetectionRow]:
    sess, frame_hw = detector(model)
    if sess is None:
        raise RuntimeError(frame_hw)
    names = list(images)
    refs = [codec_letterbox(images[n], frame_hw) for n in names]
    ref_frames = np.stack([r[0] for r in refs])
    ref_scale = np.array([r[2] for r in refs])
    got_frames, _, got_scale = dali_letterbox([images[n] for n in names], frame_hw, **dali_kw)
    base_frames = np.stack([full_decode_letterbox(images[n], frame_hw) for n in names])
    rows = []
    for n, a, b, c in zip(names, detect(sess, ref_frames, ref_scale), detect(sess, got_frames, got_scale),
                          detect(sess, base_frames, ref_scale)):
        base_pairs, base_a, _ = match(a, c)
        base_iou = 0.0 if base_a else min((p[2] for p in base_pairs), default=1.0)
        pairs, only_a, only_b = match(a, b)
        ious = [p[2] for p in pairs] or [1.0]
        corner = max((float(np.abs(a["boxes"][i] - b["boxes"][j]).max()) for i, j, _ in pairs), default=0.0)
        dscore = max((abs(float(a["scores"][i]) - float(b["scores"][j])) for i, j, _ in pairs), default=0.0)
        lone = tuple(round(float(a["scores"][i]), 3) for i in only_a) + \
            tuple(round(float(b["scores"][j]), 3) for j in only_b)
        rows.append(DetectionRow(model, n, len(a["boxes"]), len(b["boxes"]), len(pairs),
                                 float(np.mean(ious)), float(min(ious)), corner, dscore, lone, base_iou))
    return rows


def all_images() -> dict[str, bytes]:
    return {**decode_images.photos(), **decode_images.variants(), **decode_images.bench_photos()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.decode_parity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "mixed"), default="cpu")
    ap.add_argument("--filters", action="store_true",
                    help="also compare other resize filters (interp x antialias) in one summary line each")
    args = ap.parse_args(argv)
    from pipelines import dali_letterbox as dl

    dev = {"device": args.device, "device_id": 0 if args.device == "mixed" else None}
    images = all_images()
    print(f"DALI letterbox ({args.device}, filter {dl.RESIZE}) vs gateway codec, pixels inside the drawn area")
    print(f"{'image':20s} {'frame':>5s} {'factor':>6s} {'max':>4s} {'p99':>4s} {'mean':>6s}")
    for r in pixel_rows(images, **dev):
        print(f"{r.image:20s} {r.frame:5d} {r.factor:6.2f} {r.max_abs:4d} {r.p99_abs:4.0f} {r.mean_abs:6.3f}")
    if args.filters:
        print("\nfilters: mean of per-image mean |diff| (all / below 2x / at least 2x), worst max")
        for interp in ("INTERP_LINEAR", "INTERP_CUBIC", "INTERP_LANCZOS3", "INTERP_GAUSSIAN"):
            for aa in dl.ANTIALIAS:
                rows = pixel_rows(images, resize=dl.ResizeFilter(interp, aa), **dev)
                lo = [r.mean_abs for r in rows if r.factor < 2] or [0.0]
                hi = [r.mean_abs for r in rows if r.factor >= 2] or [0.0]
                print(f"  {interp:16s} antialias={aa:4s} {np.mean([r.mean_abs for r in rows]):.3f} / "
                      f"{np.mean(lo):.3f} / {np.mean(hi):.3f}   max {max(r.max_abs for r in rows)}")
    for model in DETECTORS:
        try:
            rows = detection_rows(model, images, **dev)
        except RuntimeError as exc:
            print(f"\n{model}: skipped: {exc}")
            continue
        print(f"\n{model} (real weights, ONNX Runtime): detections on the codec's vs DALI's letterbox, "
              f"matched one to one (same class, IoU >= {MATCH_IOU}), boxes in original pixels")
        print(f"{'image':20s} {'codec':>5s} {'dali':>5s} {'match':>5s} {'meanIoU':>7s} {'minIoU':>7s} "
              f"{'corner px':>9s} {'|d score|':>9s} {'baseline':>8s}  unmatched scores")
        for r in rows:
            if r.n_codec == r.n_dali == 0:
                continue
            print(f"{r.image:20s} {r.n_codec:5d} {r.n_dali:5d} {r.matched:5d} {r.mean_iou:7.4f} {r.min_iou:7.4f} "
                  f"{r.max_corner_px:9.2f} {r.max_dscore:9.4f} {r.baseline_min_iou:8.4f}  {list(r.unmatched_scores) or ''}")
        total = sum(r.n_codec for r in rows)
        matched = sum(r.matched for r in rows)
        mean_iou = sum(r.mean_iou * r.matched for r in rows) / max(matched, 1)
        print(f"{model}: {matched} of {total} codec detections matched ({sum(r.n_dali for r in rows)} on DALI's); "
              f"mean IoU {mean_iou:.4f}, worst IoU {min(r.min_iou for r in rows):.4f}; "
              "'baseline': the worst IoU between the codec's "
              "detections and those on a full-size decode resized by cv2 (the detector's own sensitivity "
              "to a second good resampling)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
