"""Real photos as encoded files, for the decoders' equality tests and benchmarks.

Everything comes from installed packages (ultralytics' bus.jpg and zidane.jpg, scikit-image's
sample images): nothing is downloaded. The variants are made from those photos with Pillow
and OpenCV: EXIF orientations 1-8 written into a JPEG, progressive, grayscale and CMYK
JPEGs, a PNG with alpha, a 16-bit PNG, and the benchmark sizes (1280x720 and a 4032x3024
phone-size photo, JPEG quality 90).
"""
from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np

# scikit-image samples that ship inside the wheel (no pooch download): photos, not drawings.
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "hubble_deep_field",
                  "retina", "motorcycle_left")
BENCH_SIZES = {"1280x720": (1280, 720), "4032x3024": (4032, 3024)}


def ultralytics_asset(name: str) -> Path:
    import ultralytics

    path = Path(ultralytics.__file__).parent / "assets" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the installed ultralytics package has no {name}")
    return path


def skimage_photo(name: str) -> np.ndarray:
    """RGB uint8 HWC (grayscale samples as they are: 2-D)."""
    from skimage import data

    if name == "motorcycle_left":
        img = data.stereo_motorcycle()[0]
    else:
        img = getattr(data, name)()
    return img


def jpeg(rgb: np.ndarray, quality: int = 90, **pil_options) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, **pil_options)
    return buf.getvalue()


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def with_orientation(rgb: np.ndarray, orientation: int, quality: int = 95) -> bytes:
    """A JPEG of the stored pixels `rgb` carrying EXIF orientation `orientation` (1-8)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg(rgb, quality, exif=exif.tobytes())


def png16(rgb: np.ndarray) -> bytes:
    """A 16-bit RGB PNG whose low bytes vary (so 16 -> 8 bit conversion is exercised)."""
    import cv2

    low = np.random.default_rng(16).integers(0, 256, rgb.shape, dtype=np.uint16)
    wide = rgb.astype(np.uint16) * 256 + low
    ok, enc = cv2.imencode(".png", np.ascontiguousarray(wide[..., ::-1]))
    assert ok
    return enc.tobytes()


@lru_cache(maxsize=None)
def photos() -> dict[str, bytes]:
    """Real photos as their files (ultralytics JPEGs as shipped) or JPEG quality 90."""
    out = {name: ultralytics_asset(name).read_bytes() for name in ("bus.jpg", "zidane.jpg")}
    for name in SKIMAGE_PHOTOS:
        img = skimage_photo(name)
        out[name] = jpeg(img)
    return out


@lru_cache(maxsize=None)
def variants() -> dict[str, bytes]:
    """The encodings the decoders must agree on, made from real photos."""
    from PIL import Image

    base = skimage_photo("chelsea")          # 451x300: not square, so transposes show
    out = {f"exif{o}": with_orientation(base, o) for o in range(1, 9)}
    out["progressive"] = jpeg(base, progressive=True)
    out["grayscale"] = jpeg(skimage_photo("camera"))
    cmyk = io.BytesIO()
    Image.fromarray(base).convert("CMYK").save(cmyk, "JPEG", quality=90)
    out["cmyk"] = cmyk.getvalue()
    coffee = skimage_photo("coffee")
    alpha = np.linspace(0, 255, coffee.shape[1]).astype(np.uint8)[None, :].repeat(coffee.shape[0], 0)
    out["png_alpha"] = png(np.dstack([coffee, alpha]), "RGBA")
    out["png16"] = png16(coffee)
    out["png_large"] = png(skimage_photo("retina"))   # 1411x1411: downscaled > 2x, no DCT step
    return out


def scaled_photo(width: int, height: int, *, source: str = "zidane.jpg", quality: int = 90) -> bytes:
    """A real photo resized to width x height (cropped to the aspect first) as JPEG. The
    phone size is an upscale with light noise added (sigma 2), so its file is about the size
    of a real phone photo's rather than that of a smooth upscale."""
    import cv2

    img = cv2.cvtColor(cv2.imread(str(ultralytics_asset(source))), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    want = width / height
    if w / h > want:
        cw = round(h * want)
        img = img[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = round(w / want)
        img = img[(h - ch) // 2:(h - ch) // 2 + ch]
    if (img.shape[1], img.shape[0]) != (width, height):
        upscale = width > img.shape[1]
        img = cv2.resize(img, (width, height),
                         interpolation=cv2.INTER_CUBIC if upscale else cv2.INTER_AREA)
        if upscale:
            noise = np.random.default_rng(2).normal(0, 2, img.shape)
            img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return jpeg(np.ascontiguousarray(img), quality)


@lru_cache(maxsize=None)
def bench_photos() -> dict[str, bytes]:
    """The benchmark inputs: 1280x720 (zidane, re-encoded at q90) and a 4032x3024 photo."""
    return {name: scaled_photo(w, h) for name, (w, h) in BENCH_SIZES.items()}
