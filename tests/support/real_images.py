"""Real, distinct inputs for any served model: photos that ship in pip wheels (skimage's
astronaut, coffee, chelsea, camera, rocket; ultralytics' bus.jpg and zidane.jpg), their crops,
resizes and mirror images, letterboxed like the gateway; captions; face landmarks."""
from __future__ import annotations

import numpy as np

from contract import TensorSpec
from export.samples import letterbox, ultralytics_photo
from export.scene import CAPTIONS, render_lines

EXTRA_CAPTIONS = ("two dogs playing in the snow", "a red car parked next to a fire hydrant", "日本の寺",
                  "a diagram of a neural network", "emoji 🐱 party 🎉", "x")


def photos() -> list[np.ndarray]:
    from skimage import data

    base = [data.astronaut(), data.coffee(), data.chelsea(), np.repeat(data.camera()[..., None], 3, -1),
            data.rocket(), ultralytics_photo("bus.jpg"), ultralytics_photo("zidane.jpg")]
    return [img[..., :3] for img in base]


def distinct_photos(n: int = 24) -> list[np.ndarray]:
    """n different photos: the originals, then crops, mirror images and rescales of them."""
    import cv2

    base = photos()
    out = list(base)
    i = 0
    while len(out) < n:
        img = base[i % len(base)]
        h, w = img.shape[:2]
        kind = (i // len(base)) % 3
        if kind == 0:                                   # a crop of the left/top part
            out.append(img[: int(h * 0.7), : int(w * 0.6)].copy())
        elif kind == 1:                                 # mirror image
            out.append(img[:, ::-1].copy())
        else:                                           # half size
            out.append(cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
        i += 1
    return out[:n]


def captions(n: int) -> list[str]:
    pool = list(CAPTIONS) + list(EXTRA_CAPTIONS)
    return [pool[i % len(pool)] + ("" if i < len(pool) else f" number {i}") for i in range(n)]


def landmarks(n: int, k: int, frame: tuple[int, int]) -> np.ndarray:
    """[n, k, 5, 2]: the ArcFace template at different places and sizes in each image."""
    template = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], np.float32) - 56.0
    rng = np.random.default_rng(7)
    scale = rng.uniform(0.5, 2.0, (n, k, 1, 1))
    centre = rng.uniform(100, min(frame) - 100, (n, k, 1, 2))
    return (template * scale + centre).astype(np.float32)


def inputs(specs: tuple[TensorSpec, ...], n: int = 24) -> list[dict[str, np.ndarray]]:
    """n different batch-1 feeds for a model's inputs."""
    from pipelines.clip_tokenizer import ClipTokenizer

    imgs = distinct_photos(n)
    feeds: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for s in specs:
        if s.dtype == np.object_:
            vals = [np.array([[c.encode()]], dtype=object).reshape(1, *s.dims) for c in captions(n)]
        elif s.name == "tokens":
            from open_clip.tokenizer import default_bpe

            tok = ClipTokenizer(default_bpe(), context_length=s.dims[0])(captions(n))
            vals = [tok[i:i + 1].astype(s.dtype) for i in range(n)]
        elif s.name == "landmarks":
            lm = landmarks(n, s.dims[0], (640, 640))
            vals = [lm[i:i + 1] for i in range(n)]
        elif s.dtype == np.uint8 and len(s.dims) == 3:
            h, w, _ = s.dims
            texts = captions(n)
            if w > 2 * h:                               # a text-line strip (ppocr_rec): a printed caption
                vals = [render_lines([t[:24]], w, font_px=max(8, h // 2), margin=h // 8, height=h)[0][None]
                        for t in texts]
            else:                                       # the photo with its caption printed in a white band
                vals = []
                for im, t in zip(imgs, texts):
                    frame = letterbox(im, h, w)[0]
                    band = max(16, h // 12)
                    frame[h - band:] = render_lines([t[:40]], w, font_px=max(8, band // 2), margin=band // 5,
                                                    height=band)[0]
                    vals.append(frame[None])
        else:
            raise ValueError(f"no real data for {s.name} {s.dtype}{list(s.dims)}")
        for f, v in zip(feeds, vals):
            f[s.name] = v
    return feeds
