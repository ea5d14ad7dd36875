"""The GPU profile's `encoded_check` step (pipelines/encoded_decode.py in check mode, run
here with a stand-in for Triton's python-backend module) and imaging.admit behind it: a bad
file fails ITS request before anything reaches DALI, whose decoder fails the whole batch
on one bad file; what it passes on (zero-padded rows) decodes in the DALI pipeline (cpu
device here: the same definition the GPU runs "mixed") exactly as the files alone."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from google.protobuf import json_format

import imaging
from contract import defaults
from pipelines import ENTRY_FILE, entry_source
from serving import encoded as gen
from tests.support import images
from tests.support.dali import require_dali
from tests.unit import crafted_images as crafted
from tests.unit.bls_harness import Tensor, loaded_pipeline

LIMITS = dict(max_pixels=defaults.MAX_IMAGE_PIXELS, max_side=defaults.MAX_IMAGE_SIDE)
APP15 = 0xEF


class TritonError:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code=None):
        self.msg, self.code = message, code


def good_jpeg(w=320, h=240, seed=0) -> bytes:
    return images.noise_jpeg(w, h, seed=seed)


def good_png() -> bytes:
    return crafted.png(crafted.gradient(90, 120))


def with_app15(data: bytes, payload: bytes) -> bytes:
    """`data` with an APP15 segment right after SOI (metadata before the image data)."""
    seg = bytes([0xFF, APP15]) + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + seg + data[2:]


def bad_files() -> dict[str, tuple[bytes, str]]:
    jpg, png = good_jpeg(), good_png()
    idat = png.index(b"IDAT")
    flipped = bytearray(png)
    flipped[idat + 10] ^= 0xFF
    return {
        "truncated jpeg": (jpg[: len(jpg) // 2], "end-of-image"),
        # an end-of-image marker in metadata (EXIF thumbnails have one) is not the image's
        "truncated jpeg, EOI in metadata": (with_app15(jpg, b"\xff\xd8thumb\xff\xd9")[: len(jpg) // 2 + 12],
                                            "end-of-image"),
        "png crc": (bytes(flipped), "CRC"),
        "truncated png": (png[: idat + 20], "truncated PNG"),
        "png without IDAT": (png[:33] + crafted.chunk(b"IEND", b""), "IDAT"),
        "not an image": (b"GIF89a" + b"\0" * 64, "not a JPEG or PNG"),
        "too many pixels": (crafted.png(np.zeros((1, 1, 3), np.uint8))[:16]
                            + (20000).to_bytes(4, "big") * 2 + crafted.png(np.zeros((1, 1, 3), np.uint8))[24:],
                            "limits"),
        "progressive scan bomb": (crafted.jpeg(crafted.gradient(64, 80), progressive=True)
                                  + b"\xff\xda" * (imaging.MAX_SCANS + 1), "scans"),
    }


@pytest.mark.parametrize("name", list(bad_files()))
def test_admit_refuses(name):
    data, why = bad_files()[name]
    with pytest.raises(imaging.ImagingError, match=why):
        imaging.admit(data, **LIMITS)


def test_admit_passes_good_files_and_strips_png_metadata():
    jpg = with_app15(good_jpeg(), b"\xff\xd9 metadata")
    assert imaging.admit(jpg, **LIMITS)[1] is jpg
    assert imaging.admit(jpg + b"\0" * 100, **LIMITS)[1].startswith(jpg)     # trailing bytes: libjpeg stops at EOI
    bomb = crafted.png_text_bomb(n=3, inflated=100_000)
    header, handed = imaging.admit(bomb, **LIMITS)
    assert handed == imaging.png.critical(bomb) and len(handed) < len(bomb)
    assert (header.width, header.height) == (64, 64)


@pytest.fixture()
def check_step(tmp_path):
    cfg = gen.check_config(8)
    model_py = tmp_path / gen.CHECK / "1" / ENTRY_FILE
    model_py.parent.mkdir(parents=True)
    model_py.write_text(entry_source("encoded_decode"))
    config = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    with loaded_pipeline(model_py, tmp_path, config, run_step=None) as model:
        sys.modules["triton_python_backend_utils"].TritonError = TritonError
        yield model
    model.finalize()


def request(*files: bytes) -> dict:
    return {"image": Tensor("image", np.array(files, dtype=object).reshape(-1, 1))}


def test_a_bad_file_fails_its_own_request(check_step):
    a, b, c = good_jpeg(seed=1), good_jpeg(400, 300, seed=2), good_png()
    bad = bad_files()
    reqs = [request(a)] + [request(d) for d, _ in bad.values()] + [request(b, c), request(c, bad["png crc"][0])]
    out = check_step.execute(reqs)
    assert len(out) == len(reqs)
    assert out[0].error is None
    for resp, (name, (_, why)) in zip(out[1:-2], bad.items()):
        assert resp.error is not None and resp.error.code == TritonError.INVALID_ARG, name
        assert resp.error.msg.startswith(f"{gen.CHECK}: ") and why in resp.error.msg, (name, resp.error.msg)
        assert "item" not in resp.error.msg
    assert out[-1].error.msg.startswith(f"{gen.CHECK}: item 1: ") and "CRC" in out[-1].error.msg
    rows = out[-2].output_tensors[0].as_numpy()            # two files: zero-padded to the longer
    assert rows.dtype == np.uint8 and rows.shape == (2, max(len(b), len(c)))
    assert rows[0, :len(b)].tobytes() == b and not rows[0, len(b):].any()
    assert rows[1, :len(c)].tobytes() == c and not rows[1, len(c):].any()
    assert out[0].output_tensors[0].as_numpy().tobytes() == a


def test_what_passes_decodes_in_one_dali_batch_and_the_refused_file_would_have_failed_it(check_step):
    """The check step's rows (padded) batched into the DALI pipeline decode exactly like the
    files alone; the truncated file it refused fails the whole DALI batch when let through."""
    require_dali()
    from perf.decode_parity import dali_letterbox

    files = [good_jpeg(seed=3), good_jpeg(640, 360, seed=4), good_png()]
    truncated = bad_files()["truncated jpeg"][0]
    out = check_step.execute([request(files[0]), request(truncated), request(files[1], files[2])])
    assert out[1].error is not None
    rows = [r.tobytes() for resp in (out[0], out[2]) for r in resp.output_tensors[0].as_numpy()]
    assert len(rows[2]) > len(files[2])                     # the PNG travels padded
    frames, size, scale = dali_letterbox(rows, (256, 256))
    alone = dali_letterbox(files, (256, 256))
    assert np.array_equal(frames, alone[0]) and np.array_equal(size, alone[1]) and np.array_equal(scale, alone[2])
    with pytest.raises(RuntimeError):
        dali_letterbox(rows + [truncated], (256, 256))
