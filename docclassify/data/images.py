"""Decoding and resizing of one image into the working format: uint8 RGB, HxWx3.

Every mode a real data set throws at us ends up as 8-bit RGB: grayscale, palette (with or
without transparency), RGBA/LA (composited on white: transparent areas of a scan are
paper), CMYK JPEGs, 16-bit PNGs. JPEG EXIF orientation is applied (a phone photo looks
the way the phone showed it), which is what a person looking at the file expects.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from docclassify.errors import UserError
from docclassify.utils.choices import RESIZE

# PIL's resize first reduces by an integer factor (box filter) while the image stays >= this many
# times the target, then resamples bilinearly: the exact transform, stated in docs/inference.md and
# in every checkpoint's header (models/checkpoint.py preprocessing()).
REDUCING_GAP = 3.0
RESAMPLE = "bilinear"


class BadImageError(UserError):
    """An image file that cannot be decoded (empty, truncated, not an image)."""


class ImageTooLargeError(BadImageError):
    """An image with more pixels than allowed (a decompression bomb, or over a service's limit)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, F ...
    return img


def decode_image(path: str | Path, draft_size: int | None = None) -> np.ndarray:
    """Read ``path`` as an RGB uint8 array (H, W, 3), EXIF orientation applied.

    ``draft_size`` lets the JPEG decoder scale down by a power of two while both sides stay
    >= draft_size (several times faster for large photos that are resized anyway).

    Raises BadImageError naming the file when it is empty or cannot be decoded.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read ({exc})") from exc
    return decode_bytes(data, str(path), draft_size)


def decode_bytes(data: bytes, name: str, draft_size: int | None = None,
                 max_pixels: int | None = None) -> np.ndarray:
    """:func:`decode_image` of a file's bytes (an upload, docclassify.deploy); ``name`` names it in
    errors. ``max_pixels``: refuse (ImageTooLargeError) an image with more pixels, read from its header
    before any pixel is decoded (PIL's own decompression-bomb limit also raises that error)."""
    if not data:
        raise BadImageError(f"{name}: file is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
                raise ImageTooLargeError(f"{name}: {img.size[0]} x {img.size[1]} pixels, more than the limit of "
                                         f"{max_pixels}")
            if draft_size and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            return np.asarray(_to_rgb(img), dtype=np.uint8).copy()
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"{name}: cannot decode image ({exc})") from exc


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) of the image as :func:`decode_image` returns it (EXIF orientation applied),
    read from the header only; None when the file cannot be read as an image."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            # EXIF orientations 5-8 turn the image by a quarter turn: decode_image swaps the sides.
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return int(h), int(w)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def resize_image(img: np.ndarray, size: int, policy: str = "pad", pad_value: int = 0) -> np.ndarray:
    """Resize an RGB uint8 array to ``size`` x ``size``.

    pad: the long side becomes ``size`` (aspect kept), the short side is centred and padded
    with ``pad_value``; stretch: both sides become ``size``.
    """
    if policy not in RESIZE:
        raise ValueError(f"data.resize={policy!r}: expected one of {RESIZE}")
    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    if policy == "stretch":
        return np.asarray(pil.resize((size, size), Image.BILINEAR, reducing_gap=REDUCING_GAP))
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = np.asarray(pil.resize((nw, nh), Image.BILINEAR, reducing_gap=REDUCING_GAP))
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def load_image(path: str | Path, size: int, policy: str = "pad", pad_value: int = 0) -> np.ndarray:
    """Decode + resize: the array every Dataset and the decode cache hold."""
    return resize_image(decode_image(path, draft_size=size), size, policy, pad_value)
