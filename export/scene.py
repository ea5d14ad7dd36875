"""A real scene for the perf tools and the tests: faces, objects and lines of text, built at run
time from photos and a font that ship inside pip wheels (nothing is downloaded or committed).

Black or random frames measure the empty path: no face reaches face_align or arcface, no line
reaches the recogniser. This scene makes every branch of every pipeline run:

- the astronaut (skimage): a face SCRFD/CenterFace find, and a person;
- chelsea the cat and the coffee cup (skimage): COCO objects;
- a white panel with printed lines in DejaVu Sans (matplotlib's copy) for the OCR pipeline.

`scene(h, w)` is the frame (uint8 RGB); `render_lines` draws any text for OCR tests;
`inputs_for(specs, batch)` feeds a model from its contract; `perf_analyzer_json` writes the
same data for `perf_analyzer --input-data`.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from contract.encoded import takes_files

SCENE_SIZE = 640
SCENE_LINES = ("VISIONSERVE 2026", "Triton Inference Server", "faces, objects and text", "Lorem ipsum 12345")
CAPTIONS = ("a photo of an astronaut", "a cat sleeping on a sofa", "a cup of coffee on a table",
            "a page of printed text")
FONT_FILE = "DejaVuSans.ttf"


class SceneError(RuntimeError):
    """What the scene needs (scikit-image's photos, matplotlib's font) is not installed."""


def font_path() -> Path:
    """DejaVu Sans from the matplotlib wheel (a project dependency), found without importing
    matplotlib; Debian's fonts are not on every CI machine."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise SceneError("the scene's font comes from matplotlib: pip install matplotlib (the perf extra)")
    path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / FONT_FILE
    if not path.is_file():
        raise SceneError(f"matplotlib has no {FONT_FILE} at {path}")
    return path


@lru_cache(maxsize=16)
def _font(px: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path()), px)


def render_lines(lines, width: int, font_px: int = 22, line_gap: float = 1.6, margin: int = 8,
                 height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Black text on white, one line per entry: (uint8 [H, width, 3], boxes [n, 4] x1,y1,x2,y2
    of each line's ink in panel pixels). Lines wider than the panel are the caller's problem:
    the boxes say how wide each one came out."""
    from PIL import Image, ImageDraw

    font = _font(font_px)
    step = int(round(font_px * line_gap))
    h = height or 2 * margin + step * len(lines)
    panel = Image.new("RGB", (width, h), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    boxes = []
    for i, text in enumerate(lines):
        xy = (margin, margin + i * step)
        draw.text(xy, text, fill=(0, 0, 0), font=font)
        boxes.append(draw.textbbox(xy, text, font=font))
    return np.asarray(panel, np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4)


def _photo(name: str) -> np.ndarray:
    try:
        from skimage import data
    except ImportError as exc:
        raise SceneError("the scene's photos come from scikit-image: pip install scikit-image") from exc
    img = getattr(data, name)()
    return np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img[..., :3]


def _fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize keeping the aspect ratio, centred on white (a tile of the scene)."""
    import cv2

    s = min(h / img.shape[0], w / img.shape[1])
    nh, nw = max(1, round(img.shape[0] * s)), max(1, round(img.shape[1] * s))
    tile = np.full((h, w, 3), 255, np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    tile[y:y + nh, x:x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return tile


@lru_cache(maxsize=8)
def _scene(h: int, w: int) -> np.ndarray:
    import cv2

    half = SCENE_SIZE // 2
    frame = np.full((SCENE_SIZE, SCENE_SIZE, 3), 255, np.uint8)
    frame[:half, :half] = _fit(_photo("astronaut"), half, half)             # a face, a person
    frame[:half, half:] = _fit(_photo("chelsea"), half, half)               # a cat
    frame[half:, :half] = _fit(_photo("coffee"), half, half)                # a cup
    text, _ = render_lines(SCENE_LINES, half, font_px=22, height=half, margin=16)
    frame[half:, half:] = text
    if (h, w) != frame.shape[:2]:
        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    frame.setflags(write=False)
    return frame


def scene(height: int = SCENE_SIZE, width: int = SCENE_SIZE) -> np.ndarray:
    """The scene as uint8 RGB [height, width, 3] (a fresh, writable copy)."""
    return _scene(height, width).copy()


def scene_jpeg(height: int = 720, width: int = 1280, quality: int = 90) -> bytes:
    """The scene as a JPEG, for HTTP benchmarks of the gateway."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(scene(height, width)[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise SceneError("OpenCV could not encode the scene as JPEG")
    return buf.tobytes()


def scene_jpegs(n: int, height: int = 720, width: int = 1280, quality: int = 90) -> list[bytes]:
    """`n` JPEGs of the scene that differ in their bytes (item i's number drawn as a gray
    8x8 block in the top-left corner), for encoded entry points: a replay of the same
    bytes would measure Triton's response cache, not the decode and the model."""
    import cv2

    base = np.ascontiguousarray(scene(height, width)[..., ::-1])
    out = []
    for i in range(n):
        frame = base.copy()
        frame[:8, :8 * 4] = np.repeat([(i >> (8 * k)) & 255 for k in range(4)], 8)[None, :, None]
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise SceneError("OpenCV could not encode the scene as JPEG")
        out.append(buf.tobytes())
    return out


def face_landmarks(k: int) -> np.ndarray:
    """[k, 5, 2] landmarks for face_align at the scene's 640x640 size: the ArcFace template
    placed on the astronaut's face in slot 0, the rest spread over the frame."""
    template = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], np.float32)
    rng = np.random.default_rng(0)
    centres = rng.uniform(80, SCENE_SIZE - 80, (k, 1, 2)).astype(np.float32)
    centres[0] = (141.0, 72.0)      # the astronaut's face in the top-left tile
    return (template - 56.0) * 0.5 + centres


def tokens(n: int, context: int = 77) -> np.ndarray:
    """CLIP token ids of the captions (serving's own tokenizer, open_clip's vocabulary)."""
    from open_clip.tokenizer import default_bpe

    from pipelines.clip_tokenizer import ClipTokenizer

    return ClipTokenizer(default_bpe(), context_length=context)([CAPTIONS[i % len(CAPTIONS)] for i in range(n)])


def inputs_for(specs, batch: int) -> dict[str, np.ndarray]:
    """A feed for any model from its contract's input specs (contract.TensorSpec):
    the scene for images (as frames, or as distinct 1280x720 JPEGs for an encoded entry
    point's `image`), captions for text, token ids, face landmarks."""
    out = {}
    for s in specs:
        shape = (batch, *s.dims)
        if takes_files(s):                                      # `<model>_encoded`: JPEG files
            out[s.name] = np.array(scene_jpegs(batch), dtype=object).reshape(shape)
        elif s.dtype == np.object_:
            out[s.name] = np.array([c.encode() for c in CAPTIONS] * batch, dtype=object)[:batch].reshape(shape)
        elif s.dtype == np.uint8 and len(s.dims) == 3 and s.dims[2] == 3:
            out[s.name] = np.broadcast_to(_scene(s.dims[0], s.dims[1]), shape).copy()
        elif s.name == "tokens":
            out[s.name] = tokens(batch, s.dims[0]).astype(s.dtype)
        elif s.name == "landmarks":
            out[s.name] = np.broadcast_to(face_landmarks(s.dims[0]), shape).astype(s.dtype)
        else:
            raise SceneError(f"no real data for input {s.name} {s.dtype}{list(s.dims)}")
    return out


def _b64(arr: np.ndarray) -> str:
    if arr.dtype == np.object_:     # Triton's BYTES wire format: 4-byte little-endian length + bytes
        raw = b"".join(struct.pack("<I", len(v)) + v for v in arr.reshape(-1))
    else:
        raw = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return base64.b64encode(raw).decode("ascii")


def perf_analyzer_json(specs, path: Path, steps: int = 1) -> Path:
    """perf_analyzer's real-input JSON (--input-data PATH): `steps` batch-1 entries of the
    scene's data, base64 raw little-endian (BYTES with their length prefixes)."""
    feed = inputs_for(specs, steps)
    data = [{s.name: {"content": {"b64": _b64(feed[s.name][i])}, "shape": list(s.dims)} for s in specs}
            for i in range(steps)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path
