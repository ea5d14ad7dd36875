"""pipelines/dali_letterbox.py: the DALI decode+letterbox pipeline (device "cpu" here; the
GPU profile serializes the same definition with device "mixed").

References, never computed by the pipeline: the shared codec (imaging:
read_header, plan_letterbox, decode_into) and Pillow's exif_transpose. Tolerances
(docs/decode.md, measured with `python -m perf.decode_parity`):
- geometry (original size, scale, drawn area, padding): exact;
- pixels where the image shrinks less than 2x or grows: |diff| <= 2. Both sides resize with
  linear interpolation (cv2's fixed-point weights round differently from DALI's float ones:
  1) and decode identically except CMYK JPEGs and 16-bit PNGs (DALI rounds 16 -> 8 bit and
  converts CMYK with its own rounding, the codec truncates: 1 more);
- pixels where it shrinks 2x or more: the codec decodes JPEGs at 1/2..1/8 scale in the
  DCT domain, which DALI cannot; there the mean |diff| <= 4 and the 99th percentile <= 24
  (measured worst: bus.jpg into 512x512, 2.1x: mean 3.2, p99 19); what that does to
  detections is tested on real weights in tests/integration/test_dali_detections.py.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageOps

from perf import decode_images, decode_parity
from pipelines import dali_letterbox as dl
from tests.support.dali import require_dali

codec = decode_parity.reference_codec()   # imaging: the shared codec
contract = dl.contract_module()           # serving/contract.py, or contract/ once it moves
MAX_ABS_BELOW_2X = 2
MEAN_ABS_ABOVE_2X = 4.0
P99_ABS_ABOVE_2X = 24
PAD = 114


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    return decode_parity.all_images()


@pytest.fixture(scope="module", params=[(640, 640), (512, 512)], ids=["640", "512"])
def letterboxed(request, images):
    """The DALI pipeline run once over every image into one frame size (pad 114)."""
    require_dali()
    names = list(images)
    frames, size, scale = decode_parity.dali_letterbox([images[n] for n in names], request.param,
                                                       pad_value=PAD)
    return request.param, {n: (frames[i], size[i], scale[i]) for i, n in enumerate(names)}


def test_every_image_matches_the_codec(letterboxed, images):
    frame_hw, got = letterboxed
    problems = []
    for name, (frame, size, scale) in got.items():
        ref, (w, h), ref_scale, (nw, nh) = decode_parity.codec_letterbox(images[name], frame_hw, PAD)
        assert frame.shape == (*frame_hw, 3) and frame.dtype == np.uint8
        assert size.dtype == np.int32 and tuple(size) == (w, h), name
        assert scale.dtype == np.float64 and tuple(scale) == ref_scale, name   # exact, not close
        assert (frame[nh:] == PAD).all() and (frame[:, nw:] == PAD).all(), f"{name}: padding"
        d = np.abs(frame[:nh, :nw].astype(np.int16) - ref[:nh, :nw])
        if w / nw < 2.0:
            if d.max() > MAX_ABS_BELOW_2X:
                problems.append(f"{name}: max |diff| {d.max()} > {MAX_ABS_BELOW_2X} at {w / nw:.2f}x")
        elif d.mean() > MEAN_ABS_ABOVE_2X or np.percentile(d, 99) > P99_ABS_ABOVE_2X:
            problems.append(f"{name}: mean |diff| {d.mean():.2f}, p99 {np.percentile(d, 99):.0f} "
                            f"at {w / nw:.2f}x")
    assert not problems, "; ".join(problems)


def test_the_set_covers_what_it_claims(letterboxed, images):
    """Upscales, mild and > 2x downscales, every orientation and the odd encodings are in."""
    (frame_h, frame_w), _ = letterboxed
    factors = []
    for data in images.values():
        header = codec.read_header(data, max_pixels=1 << 30, max_side=1 << 16)
        box = codec.plan_letterbox(*header.size, frame_w, frame_h)
        factors.append(box.width / box.new_w)
    assert min(factors) < 1 and any(1 < f < 2 for f in factors) and max(factors) > 6
    assert {f"exif{o}" for o in range(1, 9)} | {"progressive", "grayscale", "cmyk", "png_alpha",
                                                 "png16", "bus.jpg", "zidane.jpg"} <= set(images)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow_exactly(orientation):
    """Drawn at its own size (no resampling), the decoded, oriented image equals Pillow's
    exif_transpose of the same file bit for bit (both are libjpeg-turbo, islow IDCT)."""
    require_dali()
    stored = decode_images.skimage_photo("chelsea")          # 451x300: transposes show
    data = decode_images.with_orientation(stored, orientation)
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    frame, size, scale = decode_parity.dali_letterbox([data], ref.shape[:2])
    assert tuple(size[0]) == (ref.shape[1], ref.shape[0])
    assert tuple(scale[0]) == (1.0, 1.0)
    assert np.array_equal(frame[0], ref)


def test_ragged_batch_equals_one_at_a_time(images):
    """Files of different lengths and sizes in one batch come out as they do alone."""
    require_dali()
    picks = [images[n] for n in ("bus.jpg", "png_alpha", "exif6", "4032x3024")]
    batch = decode_parity.dali_letterbox(picks, (640, 640))
    for i, data in enumerate(picks):
        alone = decode_parity.dali_letterbox([data], (640, 640))
        for b, a in zip(batch, alone):
            assert np.array_equal(b[i], a[0])


def test_a_corrupt_item_fails_the_whole_batch(images):
    """DALI raises for the batch: callers check headers first (the codec's read_header) so
    one client's bad file cannot fail other clients' items batched with it."""
    require_dali()
    good = images["zidane.jpg"]
    with pytest.raises(RuntimeError):
        decode_parity.dali_letterbox([good, good[:len(good) // 2], good], (640, 640))


# --- geometry: the float64 DALI arithmetic equals plan_letterbox exactly -----------------

def _tie_sizes(frame_w: int, limit: int) -> np.ndarray:
    """Every (w, h), w, h <= limit, w >= h, where the exact h * frame_w / w is n + 0.5: the
    sizes where round-half-even and float rounding decide the answer."""
    w = np.arange(1, limit + 1)[:, None]
    h = np.arange(1, limit + 1)[None, :]
    num = 2 * h * frame_w
    tie = (h <= w) & (num % w == 0) & ((num // w) % 2 == 1)
    ww, hh = np.nonzero(tie)
    return np.stack([ww + 1, hh + 1], 1)


def _dali_sizes(pairs: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
    import nvidia.dali as dali
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types

    @dali.pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def sizes():
        w = fn.external_source(name="w", dtype=types.FLOAT64, ndim=1)
        h = fn.external_source(name="h", dtype=types.FLOAT64, ndim=1)
        return dl.letterbox_size(w, h, frame_w, frame_h, dmath)

    pipe = sizes()
    pipe.build()
    pipe.feed_input("w", [pairs[:, 0].astype(np.float64)])
    pipe.feed_input("h", [pairs[:, 1].astype(np.float64)])
    new_w, new_h = pipe.run()
    return np.stack([np.array(new_w.at(0)), np.array(new_h.at(0))], 1)


@pytest.mark.parametrize("frame_w,frame_h", [(640, 640), (512, 512), (640, 384), (256, 320)])
def test_letterbox_size_equals_plan_letterbox(frame_w, frame_h):
    require_dali()
    rng = np.random.default_rng(frame_w * 1000 + frame_h)
    ties = _tie_sizes(frame_w, 3000)
    pairs = np.concatenate([
        ties, ties[:, ::-1],                                     # ties on either side
        np.stack(np.meshgrid(np.arange(1, 160), np.arange(1, 160)), -1).reshape(-1, 2),
        rng.integers(1, 20000, (30000, 2)),
        np.array([[1, 20000], [20000, 1], [frame_w, frame_h], [2 * frame_w, frame_h]]),
    ])
    got = _dali_sizes(pairs, frame_w, frame_h)
    ref = np.array([(b.new_w, b.new_h) for b in
                    (codec.plan_letterbox(int(w), int(h), frame_w, frame_h) for w, h in pairs)])
    bad = np.nonzero((got != ref).any(1))[0]
    assert len(ties) > 100
    assert len(bad) == 0, f"{len(bad)} sizes differ, e.g. {pairs[bad[:5]].tolist()}: " \
                          f"{got[bad[:5]].tolist()} vs {ref[bad[:5]].tolist()}"


def test_round_half_even_is_pythons_round():
    ops = SimpleNamespace(floor=np.floor)
    x = np.array([0.5, 1.5, 2.5, 3.5, 0.49999999999999994, 2.4999999999999996, 2.5000000000000004,
                  359.5, 360.5, 1e6 + 0.5, 7.0, 0.0])
    got = dl.round_half_even(x, ops.floor)
    assert got.tolist() == [float(round(v)) for v in x]


# --- artifacts: serialized pipeline, Triton config, CLI ----------------------------------

def test_serialized_cpu_pipeline_runs_like_the_definition(tmp_path, images):
    require_dali()
    import nvidia.dali as dali

    path = dl.serialize(tmp_path / "model.dali", (512, 512), device="cpu", max_batch_size=2)
    pipe = dali.Pipeline.deserialize(filename=str(path), device_id=None, batch_size=2, num_threads=1)
    pipe.build()
    picks = [images["zidane.jpg"], images["exif7"]]
    pipe.feed_input(dl.INPUT, [np.frombuffer(d, np.uint8) for d in picks])
    outs = pipe.run()
    direct = decode_parity.dali_letterbox(picks, (512, 512))
    for out, ref in zip(outs, direct):
        assert np.array_equal(np.stack([np.array(out.at(i)) for i in range(2)]), ref)


def test_serialized_mixed_pipeline_needs_no_gpu_to_write(tmp_path):
    """The image build has no GPU: serializing the mixed variant must work without one."""
    require_dali()
    data = dl.serialize(tmp_path / "model.dali", (640, 640), device="mixed").read_bytes()
    assert b"decoders__Image" in data and b"mixed" in data


def letterboxed_models() -> list[str]:
    """Every model in the repository whose input `images` is a fixed-size uint8 [H, W, 3] frame."""
    out = []
    for name in contract.load_all():
        try:
            dl.frame_of(name)
        except ValueError:
            continue
        out.append(name)
    return out


def test_frame_sizes_come_from_the_contracts():
    models = letterboxed_models()
    assert {"yolo", "scrfd", "centernet", "faces", "ocr", "analyze", "detect_embed"} <= set(models)
    assert "arcface" not in models                    # aligned face crops, not a letterbox
    assert dl.frame_of("centernet")[:2] == (512, 512)
    assert dl.frame_of("yolo")[:2] == (640, 640)
    for name in ("mobileclip_text", "arcface", "ppocr_rec"):
        with pytest.raises(ValueError, match="uint8"):
            dl.frame_of(name)


@pytest.mark.parametrize("device,kind", [("mixed", "KIND_GPU"), ("cpu", "KIND_CPU")])
def test_triton_config_reads_back_with_tritons_schema(device, kind):
    for name in letterboxed_models():
        frame_h, frame_w, batch = dl.frame_of(name)
        text = dl.triton_config(f"{name}_decode", (frame_h, frame_w), max_batch_size=batch, device=device)
        cfg = contract.parse_config(text)
        c = contract.ModelContract(cfg.name, Path("config.pbtxt"), cfg)
        assert cfg.backend == "dali" and c.max_batch_size == batch
        assert [(t.name, t.triton_dtype, t.dims) for t in c.inputs] == [(dl.INPUT, "UINT8", (-1,))]
        assert cfg.input[0].allow_ragged_batch
        assert [(t.name, t.triton_dtype, t.dims) for t in c.outputs] == [
            (dl.FRAMES, "UINT8", (frame_h, frame_w, 3)), (dl.SIZE, "INT32", (2,)), (dl.SCALE, "FP64", (2,))]
        assert [contract.mc.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == [kind]
        # the frame output feeds the model's own input unchanged
        assert c.output(dl.FRAMES).dims == contract.load(name).input("images").dims


def test_cli_writes_config_and_model(tmp_path, capsys):
    require_dali()
    assert dl.main(["--model", "centernet", "--out", str(tmp_path), "--device", "mixed"]) == 0
    folder = tmp_path / "letterbox_512x512"
    cfg = contract.parse_config((folder / "config.pbtxt").read_text())
    assert cfg.name == "letterbox_512x512" and cfg.max_batch_size == contract.load("centernet").max_batch_size
    assert (folder / "1" / "model.dali").stat().st_size > 0
    assert "letterbox_512x512" in capsys.readouterr().out


def test_cli_arguments():
    assert dl.parse_frame("640x384") == (384, 640)
    for bad in ("640", "0x10", "axb"):
        with pytest.raises(argparse.ArgumentTypeError):
            dl.parse_frame(bad)
    with pytest.raises(SystemExit):
        dl.main(["--out", "x"])                       # neither --frame nor --model
    with pytest.raises(ValueError, match="device"):
        dl.pipeline((640, 640), device="gpu")
    with pytest.raises(ValueError, match="pad_value"):
        dl.pipeline((640, 640), pad_value=300)
    with pytest.raises(ValueError, match="antialias"):
        dl.ResizeFilter(antialias="yes")
