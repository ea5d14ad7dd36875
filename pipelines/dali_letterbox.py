"""Encoded JPEG/PNG bytes -> letterboxed uint8 frames, inside Triton's DALI backend.

One pipeline definition for both places it runs: ``device="mixed"`` in the GPU profile
(nvJPEG / the hardware JPEG decoder, resize and pad on the GPU) and ``device="cpu"`` here,
where the tests hold it to the gateway codec. The geometry is the codec's
(``plan_letterbox``): the image, EXIF-oriented, resized with its aspect ratio kept to
``round(w * r)`` x ``round(h * r)`` (Python's round: half to even, clipped to [1, frame]),
``r = min(frame_w / w, frame_h / h)``, placed at the TOP-LEFT of the frame, the rest
filled with the pad value. The drawn size is computed here from the peeked (oriented)
image shape with float64 DALI arithmetic, the same operations in the same order as the
codec, so sizes and scales are equal exactly, not within a tolerance.

Outputs per batch item: the frame, the original oriented size (w, h) and the scale
(model px per original px, x and y): what an answer needs to map boxes back.

``nvidia.dali`` is imported inside the functions that need it: the module can be imported
(to write a config, to read the names) where DALI is not installed.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

# Tensor names of the DALI model (config.pbtxt and the pipeline's external_source agree on
# them: the backend matches inputs by name). FRAMES is named like the detectors' input so an
# ensemble step maps it without renaming.
INPUT = "image"        # UINT8 [-1]: one encoded JPEG/PNG file per batch item (ragged)
FRAMES = "images"      # UINT8 [frame_h, frame_w, 3]
SIZE = "size"          # INT32 [2]: original width, height after EXIF orientation
SCALE = "scale"        # FP64 [2]: model px per original px, x and y (drawn size / size)
DEVICES = ("cpu", "mixed")
# DALI's own CPU thread pool per pipeline (the backend's "num_threads" parameter overrides).
DEFAULT_THREADS = 2


ANTIALIAS = ("auto", "on", "off")


@dataclass(frozen=True)
class ResizeFilter:
    """fn.resize's filter, chosen by measurement against the codec (docs/decode.md; the
    table behind it: `python -m perf.bench_decode compare`). interp: a DALIInterpType
    name. antialias: "on", "off", or "auto": per image, on where the image shrinks more than
    2x (where the codec low-passes: DCT-domain scaling of a JPEG, INTER_AREA for a PNG), off
    up to 2x (where the codec interpolates linearly without it; at exactly 2x linear sampling
    without antialiasing is a 2x2 box average, what the codec's DCT-domain halving of a
    JPEG approximates and what INTER_AREA computes)."""
    interp: str = "INTERP_LINEAR"
    antialias: str = "auto"

    def __post_init__(self):
        if self.antialias not in ANTIALIAS:
            raise ValueError(f"antialias must be one of {ANTIALIAS}, got {self.antialias!r}")


RESIZE = ResizeFilter()


def dali_missing() -> str:
    """Why this pipeline cannot run here ("" when it can): DALI and the nvImageCodec
    library its decoders load (a separate wheel) must both import."""
    for module, wheel in (("nvidia.dali", "nvidia-dali-cuda120"), ("nvidia.nvimgcodec", "nvidia-nvimgcodec-cu12")):
        try:
            __import__(module)
        except ImportError as exc:
            return (f"{module} does not import ({exc}); install the `dali` extra "
                    f"(`make setup`, or pip install {wheel} with constraints.txt)")
    return ""


def contract_module():
    """The repository contract (config.pbtxt read with Triton's schema); imported here only,
    so the module imports without it where only the pipeline is built."""
    import contract

    return contract


def frame_of(model: str) -> tuple[int, int, int]:
    """(frame_h, frame_w, max_batch_size) from a model's contract: its input named like
    FRAMES, uint8 [H, W, 3], and its batch limit."""
    c = contract_module().load(model)
    frames = [t for t in c.inputs if t.name == FRAMES]
    if not frames or frames[0].triton_dtype != "UINT8" or len(frames[0].dims) != 3 \
            or frames[0].dims[2] != 3 or min(frames[0].dims) <= 0:
        raise ValueError(f"model {model!r} has no fixed-size uint8 [H, W, 3] input {FRAMES!r} to letterbox into")
    h, w, _ = frames[0].dims
    return h, w, c.max_batch_size


def round_half_even(x, floor):
    """Python's round() for float64 x >= 0 out of DALI operators: floor(x + 0.5) is exact
    for every x where it matters (the sum stays in x's binade or is exact; the one
    exception, x just under 0.5, is clipped to 1 by the caller), and a tie (x exactly
    n + 0.5) goes to the even neighbour. `floor` is dali.math.floor or numpy.floor."""
    f = floor(x + 0.5)
    tie = (f - x) == 0.5                      # exact: Sterbenz (f/2 <= x <= 2f for f >= 1)
    odd = (f - 2.0 * floor(f * 0.5)) == 1.0
    return f - (tie & odd)


def letterbox_size(w, h, frame_w: int, frame_h: int, ops):
    """The drawn size (new_w, new_h) of a w x h image (float64 tensors) in the frame, as
    imaging.plan_letterbox computes it: r = min(fw / w, fh / h), then
    min(frame, max(1, round(side * r))). `ops` gives floor/min/max (nvidia.dali.math)."""
    r = ops.min(float(frame_w) / w, float(frame_h) / h)
    new_w = ops.min(float(frame_w), ops.max(1.0, round_half_even(w * r, ops.floor)))
    new_h = ops.min(float(frame_h), ops.max(1.0, round_half_even(h * r, ops.floor)))
    return new_w, new_h


def pipeline(frame_hw: tuple[int, int], *, device: str = "cpu", pad_value: int = 0,
             max_batch_size: int = 8, num_threads: int = DEFAULT_THREADS,
             device_id: int | None = None, resize: ResizeFilter = RESIZE):
    """The DALI pipeline (not built). device: "cpu" (every operator on the CPU; runs
    without CUDA) or "mixed" (GPU decode, resize and pad; needs device_id to run, not to
    serialize: the Triton backend sets the device, batch size and threads itself)."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be 0..255, got {pad_value}")
    frame_h, frame_w = (int(v) for v in frame_hw)
    if frame_h < 1 or frame_w < 1 or max_batch_size < 1:
        raise ValueError(f"bad frame {frame_hw} or max_batch_size {max_batch_size}")
    import nvidia.dali as dali
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    interp = getattr(types.DALIInterpType, resize.interp)

    # prefetch_queue_depth 1: one batch in flight per run, as the Triton backend creates it
    # (requests are answered batch by batch; nothing to prefetch).
    @dali.pipeline_def(batch_size=max_batch_size, num_threads=num_threads, device_id=device_id,
                       enable_conditionals=resize.antialias == "auto", prefetch_queue_depth=1)
    def letterbox():
        encoded = fn.external_source(name=INPUT, device="cpu", dtype=types.UINT8, ndim=1)
        # The shape the decoder will produce, EXIF orientation applied, read from the header
        # on the CPU: the resize size is an argument input, which DALI wants on the CPU.
        hwc = fn.peek_image_shape(encoded, adjust_orientation=True, dtype=types.FLOAT64)
        h, w = hwc[0], hwc[1]
        new_w, new_h = letterbox_size(w, h, frame_w, frame_h, dmath)
        # jpeg_fancy_upsampling: the mixed decoder's chroma upsampling made libjpeg-turbo's
        # (the cpu decoder and the codec always use it). With "mixed" the decoded image is on
        # the GPU, so resize and pad run there too.
        image = fn.decoders.image(encoded, device=device, output_type=types.RGB,
                                  adjust_orientation=True, jpeg_fancy_upsampling=True)
        drawn = fn.cast(fn.stack(new_h, new_w), dtype=types.FLOAT)
        if resize.antialias == "auto":
            if (2.0 * new_w < w) & (2.0 * new_h < h):
                image = fn.resize(image, size=drawn, interp_type=interp, antialias=True)
            else:
                image = fn.resize(image, size=drawn, interp_type=interp, antialias=False)
        else:
            image = fn.resize(image, size=drawn, interp_type=interp,
                              antialias=resize.antialias == "on")
        frames = fn.pad(image, axis_names="HW", shape=(frame_h, frame_w), fill_value=pad_value)
        size = fn.cast(fn.stack(w, h), dtype=types.INT32)
        scale = fn.stack(new_w / w, new_h / h)
        return frames, size, scale

    return letterbox()


def serialize(path: Path | str, frame_hw: tuple[int, int], *, device: str = "mixed",
              pad_value: int = 0, max_batch_size: int = 8, num_threads: int = DEFAULT_THREADS,
              resize: ResizeFilter = RESIZE) -> Path:
    """Write the serialized pipeline (Triton's `model.dali`, a build artifact). Works
    without a GPU: the device is chosen by the backend when it loads the model. Run it
    with the DALI of the Triton image that will load the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe = pipeline(frame_hw, device=device, pad_value=pad_value, max_batch_size=max_batch_size,
                    num_threads=num_threads, device_id=None, resize=resize)
    pipe.serialize(filename=str(path))
    return path


def triton_config(name: str, frame_hw: tuple[int, int], *, max_batch_size: int,
                  device: str = "mixed", num_threads: int = DEFAULT_THREADS,
                  max_queue_delay_us: int = 2000) -> str:
    """config.pbtxt text of the DALI model: backend "dali", the encoded input (ragged: one
    file per item, any length), the frame, size and scale outputs. Built with Triton's own
    schema (the contract's parser reads it back)."""
    contract = contract_module()
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    mc = contract.mc
    frame_h, frame_w = (int(v) for v in frame_hw)
    cfg = mc.ModelConfig(name=name, backend="dali", max_batch_size=max_batch_size)
    cfg.input.add(name=INPUT, data_type=mc.TYPE_UINT8, dims=[-1], allow_ragged_batch=True)
    cfg.output.add(name=FRAMES, data_type=mc.TYPE_UINT8, dims=[frame_h, frame_w, 3])
    cfg.output.add(name=SIZE, data_type=mc.TYPE_INT32, dims=[2])
    cfg.output.add(name=SCALE, data_type=mc.TYPE_FP64, dims=[2])
    kind = mc.ModelInstanceGroup.KIND_GPU if device == "mixed" else mc.ModelInstanceGroup.KIND_CPU
    # One instance: DALI runs its own thread pool and GPU streams; the backend's docs warn
    # that count > 1 multiplies its memory.
    cfg.instance_group.add(kind=kind, count=1)
    cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    cfg.parameters["num_threads"].string_value = str(num_threads)
    header = ("# Generated by `python -m pipelines.dali_letterbox` (pipelines/dali_letterbox.py):\n"
              "# encoded JPEG/PNG bytes -> letterboxed frames, original size, scale. 1/model.dali is\n"
              "# a build artifact serialized by the same command.\n")
    return header + contract.to_text(cfg)


def write_model(out: Path | str, name: str, frame_hw: tuple[int, int], *, max_batch_size: int,
                device: str = "mixed", pad_value: int = 0,
                num_threads: int = DEFAULT_THREADS) -> Path:
    """A complete Triton model folder: out/<name>/config.pbtxt and out/<name>/1/model.dali."""
    folder = Path(out) / name
    serialize(folder / "1" / "model.dali", frame_hw, device=device, pad_value=pad_value,
              max_batch_size=max_batch_size, num_threads=num_threads)
    (folder / "config.pbtxt").write_text(triton_config(
        name, frame_hw, max_batch_size=max_batch_size, device=device, num_threads=num_threads))
    return folder


def parse_frame(text: str) -> tuple[int, int]:
    """'640x640' (width x height) -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"frame must be WIDTHxHEIGHT, e.g. 640x640 (got {text!r})") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"frame sides must be >= 1 (got {text!r})")
    return h, w


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipelines.dali_letterbox",
        description="Write a DALI letterbox model (config.pbtxt + 1/model.dali) for Triton.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--frame", type=parse_frame, help="frame WIDTHxHEIGHT, e.g. 640x640")
    src.add_argument("--model", help="take the frame and max_batch_size from this model's config.pbtxt")
    ap.add_argument("--out", required=True, type=Path, help="model repository folder to write into")
    ap.add_argument("--name", help="model name (default: letterbox_<W>x<H>)")
    ap.add_argument("--device", choices=DEVICES, default="mixed")
    ap.add_argument("--max-batch-size", type=int, help="default: the model's, else 64")
    ap.add_argument("--pad-value", type=int, default=0)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    args = ap.parse_args(argv)
    if args.model:
        frame_h, frame_w, model_batch = frame_of(args.model)
    else:
        (frame_h, frame_w), model_batch = args.frame, 64
    name = args.name or f"letterbox_{frame_w}x{frame_h}"
    folder = write_model(args.out, name, (frame_h, frame_w),
                         max_batch_size=args.max_batch_size or model_batch, device=args.device,
                         pad_value=args.pad_value, num_threads=args.threads)
    print(f"wrote {folder}/config.pbtxt and {folder}/1/model.dali ({args.device}, frame {frame_w}x{frame_h})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
