"""Encoded entry points on the session Triton (derived CPU repository): JPEG/PNG bytes in,
answers in the original image's pixels, equal to the pixels path (the gateway's codec
letterbox into `<model>`, its to_original mapping); bad items fail only their request."""
from __future__ import annotations

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import contract
import imaging
from contract import defaults
from serving import encoded as gen
from tests.support import images as test_images

ENTRIES = gen.entries(contract.load_all())   # the rule on the committed contract


def _ultralytics(name: str) -> bytes:
    from ultralytics.utils import ASSETS

    return (Path(ASSETS) / name).read_bytes()


def _exif_rotated() -> bytes:
    """The astronaut stored sideways with EXIF orientation 6 (displayed upright)."""
    from PIL import Image
    from skimage import data

    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.ascontiguousarray(np.rot90(data.astronaut(), 1))
    return test_images.jpeg(stored, quality=90, exif=exif.tobytes())


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    from skimage import data

    return [_ultralytics("bus.jpg"), _ultralytics("zidane.jpg"),
            test_images.jpeg(data.astronaut(), quality=90), _exif_rotated()]


def _grpc_infer(served, model: str, inputs: dict[str, np.ndarray], outputs: list[str], client=None):
    import tritonclient.grpc as grpcclient

    client = client or served.grpc()
    req = []
    for name, arr in inputs.items():
        t = grpcclient.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == np.object_ else "UINT8")
        t.set_data_from_numpy(arr)
        req.append(t)
    res = client.infer(model, req, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                       client_timeout=120)
    return {o: res.as_numpy(o) for o in outputs}


def _encoded(items: list[bytes]) -> np.ndarray:
    return np.array(items, dtype=np.object_).reshape(-1, 1)


def _pixels_path(served, e: gen.Entry, items: list[bytes]) -> dict[str, np.ndarray]:
    """What the gateway does: its codec's letterbox, `<model>`, its to_original mapping."""
    fh, fw = e.frame
    frames = np.empty((len(items), fh, fw, 3), np.uint8)
    scale, size = [], []
    for i, d in enumerate(items):
        header = imaging.read_header(d, max_pixels=defaults.MAX_IMAGE_PIXELS, max_side=defaults.MAX_IMAGE_SIDE)
        box = imaging.plan_letterbox(*header.size, fw, fh)
        imaging.decode_into(d, header, box, frames[i], defaults.PAD_VALUE)
        scale.append(box.scale)
        size.append((box.width, box.height))
    c = served.contracts[e.model]
    out = _grpc_infer(served, e.model, {"images": frames}, [o.name for o in c.outputs])
    scale, size = np.array(scale, np.float64), np.array(size, np.float64)
    for g in e.geometry:
        out[g] = imaging.to_original(out[g], scale, size)
    out["original_size"] = size.astype(np.int32)
    return out


def _compare(e: gen.Entry, c: contract.ModelContract, got: dict, want: dict) -> None:
    for o in c.outputs:
        a, b = got[o.name], want[o.name]
        assert a.shape == b.shape, o.name
        if o.name in e.geometry:
            assert np.abs(a - b).max() <= 1.0, f"{o.name}: {np.abs(a - b).max()} px apart"
        elif a.dtype == np.object_ or np.issubdtype(a.dtype, np.integer):
            assert np.array_equal(a, b), o.name
        elif o.dims[-1] >= 64:          # embeddings: every non-zero row
            na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
            rows = nb > 0
            cos = (a * b).sum(-1)[rows] / (na[rows] * nb[rows])
            assert np.array_equal(na > 0, rows) and (cos.size == 0 or cos.min() >= 0.999), o.name
        else:                           # scores
            assert np.abs(a - b).max() <= 0.01, o.name


@pytest.mark.parametrize("e", ENTRIES, ids=lambda e: e.name)
def test_encoded_equals_pixels_path(served, photos, e):
    served.need(e.name)
    c = served.contracts[e.model]
    outputs = [o.name for o in c.outputs] + ["original_size"]
    got = _grpc_infer(served, e.name, {"image": _encoded(photos)}, outputs)
    want = _pixels_path(served, e, photos)
    assert got["original_size"].tolist() == [[810, 1080], [1280, 720], [512, 512], [512, 512]]
    assert np.array_equal(got["original_size"], want["original_size"])
    _compare(e, c, got, want)
    if e.geometry:          # the check exercises something: answers beyond the frame's pixels
        g = got[e.geometry[0]]
        assert g.max() > max(e.frame), f"{e.name}: nothing detected past the frame on these photos"


def _png_of_size(width: int, height: int) -> bytes:
    """A grey 8-bit PNG whose IDAT inflates to width x height zeros (a few KB for millions
    of pixels: the decompression bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z = zlib.compressobj(9)
    row = bytes(1 + width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_bad_items_fail_only_their_request(served, photos):
    """Concurrent one-image requests (the decode step batches them): each bad one answers
    InvalidArgument naming its problem, the good ones their answers, and the step keeps
    serving afterwards."""
    from tritonclient.utils import InferenceServerException

    e = next(e for e in ENTRIES if e.model == "yolo")
    served.need(e.name)
    good = photos[0]
    side = defaults.MAX_IMAGE_SIDE + 1
    bad = {
        "corrupt": (good[: len(good) // 3], "corrupt or truncated JPEG"),
        "oversized": (_png_of_size(side, 2), f"{side}x2"),
        "bomb": (_png_of_size(8000, 8000), "64000000 pixels"),
        "not an image": (b"GIF89a" + bytes(64), "not a JPEG or PNG"),
    }
    assert 8000 * 8000 > defaults.MAX_IMAGE_PIXELS and len(bad["bomb"][0]) < 200_000
    items = [good, *[d for d, _ in bad.values()], photos[1]]
    clients = [served.grpc() for _ in items]

    def call(i):
        try:
            return _grpc_infer(served, e.name, {"image": _encoded([items[i]])}, ["boxes", "num_detections"],
                               client=clients[i])
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(len(items)) as pool:
        results = list(pool.map(call, range(len(items))))
    for (name, (_, problem)), r in zip(bad.items(), results[1:-1]):
        assert isinstance(r, InferenceServerException), name
        assert "INVALID_ARGUMENT" in str(r.status()), (name, r.status(), r.message())
        assert problem in r.message(), (name, r.message())
    for i in (0, -1):
        assert not isinstance(results[i], Exception), results[i]
        alone = _grpc_infer(served, e.name, {"image": _encoded([items[i]])}, ["boxes", "num_detections"])
        assert np.array_equal(results[i]["num_detections"], alone["num_detections"])
        assert np.abs(results[i]["boxes"] - alone["boxes"]).max() <= 1.0
    # one request with a bad item among good ones fails as a whole, naming the item
    with pytest.raises(InferenceServerException, match="item 1: corrupt"):
        _grpc_infer(served, e.name, {"image": _encoded([good, bad["corrupt"][0]])}, ["boxes"])
    after = _grpc_infer(served, e.name, {"image": _encoded([good])}, ["num_detections"])
    assert after["num_detections"][0, 0] > 0
