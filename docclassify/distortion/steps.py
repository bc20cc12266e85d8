"""The steps: one pure function per distortion, ``(image uint8 HxWx3, value, rng) -> new image``.

``value`` is what the step's sampler drew (draw.py); ``rng`` feeds the steps that draw per pixel
(noise) and is ignored by the others. A step never modifies its input. In the order a page meets
them on its way to a test photo (draw.py's STEPS applies them in this order)::

    occlusion      things lying on the page (a thumb, a sticker, a shadow): opaque ellipses
    flip           the file is mirrored (left-right, or top-bottom)
    rot90          the file is turned by an exact quarter turn (k counter-clockwise turns)
    angle          the page lies skewed (any angle; canvas expanded, corners filled)
    perspective    the page is photographed at a slant (corners pulled inwards, filled)
    desk           the page photographed lying on a desk: smaller than the frame, tilted, the
                   desk (a drawn colour or texture) all around it
    crop           the photo cuts the page's edges
    moire          interference bands of a photographed screen or halftone print
    shadow         a shadow band across the photo (a soft-edged darker stripe)
    glare          a glare spot (a soft disc brightened towards white)
    color          brightness (additive) and contrast (around the image mean)
    channel        per-channel contrast (each colour channel scaled around its own mean)
    blur           defocus: Gaussian blur, sigma relative to the long side
    motion         camera shake: a straight motion streak, length relative to the long side
    exposure       over- or under-exposure: light multiplied, contrast around mid-grey, a gamma
    noise          sensor noise: Gaussian, std a share of full scale
    jpeg           re-encoding at a low quality

Sizes are shares of the image's long side and colours shares of full scale, so a value means the
same at any resolution; what does depend on resolution is physical (noise and JPEG blocks average
out when an image is shrunk): ``scale`` (the image's size as a share of its own resolution) lets
those two act at a working size as they would have at the image's own size. Corners uncovered by a
rotation or a perspective take the image's border colour (the median of its outermost pixels: the
paper, or the desk around a photographed page), unless a ``surround`` (a drawn background or the
desk) is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from docclassify.data.dihedral import Element, apply_numpy

# JPEG at a working size below the image's own size: encoded larger, at most this many times and
# at most JPEG_MAX_SIDE px on the long side (cost), e.g. a 64 px page of a 600 px scan at 256 px:
# blocks of 2 px instead of the 0.85 px they have on the shrunk copy (and 8 px without this).
JPEG_MAX_UPSAMPLE, JPEG_MAX_SIDE = 4.0, 512
# The mirror images a flip can be: left-right (True, as drawn, or "h"), or top-bottom ("v": a
# left-right mirror turned twice).
MIRRORS = {True: Element(0, True), "h": Element(0, True), "v": Element(2, True)}


# -------------------------------------------------------------------------------------- helpers
def long_side(image: np.ndarray) -> int:
    return int(max(image.shape[:2]))


def border_colour(image: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the image's outermost pixels: what surrounds the content (paper or desk)."""
    frame = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return tuple(int(v) for v in np.median(frame, axis=0))


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def surface(spec: Mapping[str, Any], h: int, w: int) -> np.ndarray:
    """A background of ``h`` x ``w``: the solid colour ``rgb``, or with a ``texture`` (seed, cells,
    amplitude, streaks) that colour modulated by smooth noise (blotches ``cells`` per side) and
    streaks along a random direction (wood, fabric), the same pattern at any resolution."""
    rgb = np.asarray(spec["rgb"], dtype=np.float32)
    texture = spec.get("texture")
    if not texture:
        return np.broadcast_to(rgb.astype(np.uint8), (h, w, 3)).copy()
    g = np.random.default_rng(int(texture["seed"]))
    cells = int(texture["cells"])

    def smooth(gh: int, gw: int) -> np.ndarray:
        return cv2.resize(g.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)

    field = smooth(cells + 1, cells + 1) + 0.5 * smooth(4 * cells + 1, 4 * cells + 1)
    streaks = smooth(2, 8 * cells + 1) if g.random() < 0.5 else smooth(8 * cells + 1, 2)
    field = field + float(texture["streaks"]) * streaks
    field /= max(float(field.std()), 1e-6)
    return _uint8(rgb[None, None, :] * (1.0 + float(texture["amplitude"]) * field[..., None]))


def _warp(image: np.ndarray, m: np.ndarray, size: tuple[int, int], surround: Mapping | None) -> np.ndarray:
    """``image`` warped by the 2x3 (affine) or 3x3 (perspective) matrix ``m`` onto a ``size`` (w, h)
    canvas: the uncovered area takes the image's border colour, or the ``surround`` surface."""
    warp = cv2.warpAffine if m.shape[0] == 2 else cv2.warpPerspective
    flags = dict(flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    if surround is None:
        return warp(image, m, size, borderValue=border_colour(image), **flags)
    # Premultiplied compositing: the warped page is already blended with 0 by its coverage.
    page = warp(image, m, size, borderValue=(0, 0, 0), **flags).astype(np.float32)
    cover = warp(np.full(image.shape[:2], 255, np.uint8), m, size, borderValue=0, **flags)
    back = surface(surround, size[1], size[0]).astype(np.float32)
    return _uint8(page + back * (1.0 - cover[..., None].astype(np.float32) / 255.0))


# -------------------------------------------------------------------------------------- the steps
def occlude(image: np.ndarray, blobs: Mapping[str, Any] | list, rng: np.random.Generator | None = None) -> np.ndarray:
    """Opaque ellipses (one blob or a list): centre (cx, cy) and semi-axes (ax, ay) as shares of
    width/height/long side, rotated by ``theta`` degrees, in colour ``rgb``."""
    h, w = image.shape[:2]
    side = long_side(image)
    out = image.copy()
    for blob in [blobs] if isinstance(blobs, Mapping) else blobs:
        centre = (int(round(blob["cx"] * (w - 1))), int(round(blob["cy"] * (h - 1))))
        axes = (max(1, int(round(blob["ax"] * side))), max(1, int(round(blob["ay"] * side))))
        cv2.ellipse(out, centre, axes, float(blob["theta"]), 0, 360, tuple(int(c) for c in blob["rgb"]), -1,
                    lineType=cv2.LINE_AA)
    return out


def mirror(image: np.ndarray, axis: bool | str = True, rng: np.random.Generator | None = None) -> np.ndarray:
    """Mirror image: True or ``h`` left-right (the group element the hflip TTA view and orientation
    augmentation apply, data/dihedral.py), ``v`` top-bottom (``Element(2, mirror=True)``)."""
    return apply_numpy(image, MIRRORS[axis])


def rotate90(image: np.ndarray, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``k`` exact counter-clockwise quarter turns (the group element the rot TTA views apply)."""
    return apply_numpy(image, Element(int(k)))


def rotate(image: np.ndarray, angle: float, rng: np.random.Generator | None = None, *,
           surround: Mapping | None = None) -> np.ndarray:
    """Rotate by ``angle`` degrees counter-clockwise (any angle); the canvas grows to hold the whole
    page and the uncovered corners take the border colour (or the ``surround`` surface)."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    return _warp(image, m, (nw, nh), surround)


def perspective(image: np.ndarray, corners: list[float], rng: np.random.Generator | None = None, *,
                surround: Mapping | None = None) -> np.ndarray:
    """A page photographed at a slant: the four corners (top-left, top-right, bottom-right,
    bottom-left) move inwards by the given shares of width and height (8 values, x then y per
    corner); the area outside the page takes the border colour (or the ``surround`` surface)."""
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    inward = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    shift = np.asarray(corners, dtype=np.float32).reshape(4, 2) * np.float32([w - 1, h - 1])
    m = cv2.getPerspectiveTransform(src, src + inward * shift)
    return _warp(image, m, (w, h), surround)


def desk(image: np.ndarray, photo: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
    """The page photographed lying on a desk: a frame 1/``scale`` the page's size (same aspect), the
    page placed at (``x``, ``y``) (shares of the free room), its corners moved by ``corners`` (8
    shares of the page's width/height, x then y per corner, outwards or inwards) and the
    ``surface`` (the desk) all around it. The whole page stays inside the frame."""
    h, w = image.shape[:2]
    scale = float(photo["scale"])
    fw, fh = max(w, int(round(w / scale))), max(h, int(round(h / scale)))
    x0, y0 = float(photo["x"]) * (fw - w), float(photo["y"]) * (fh - h)
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    moved = src + np.float32([x0, y0]) + np.asarray(photo["corners"], np.float32).reshape(4, 2) * np.float32([w, h])
    dst = np.clip(moved, 0, np.float32([fw - 1, fh - 1]))
    return _warp(image, cv2.getPerspectiveTransform(src, dst), (fw, fh), photo["surface"])


def crop(image: np.ndarray, sides: list[float], rng: np.random.Generator | None = None) -> np.ndarray:
    """Cut (left, top, right, bottom) shares of the width/height off the image (at least 1 px kept)."""
    h, w = image.shape[:2]
    left, top, right, bottom = sides
    x0, y0 = int(round(left * w)), int(round(top * h))
    x1, y1 = max(x0 + 1, w - int(round(right * w))), max(y0 + 1, h - int(round(bottom * h)))
    return image[y0:y1, x0:x1].copy()


def _distance_to_line(h: int, w: int, cx: float, cy: float, theta: float) -> np.ndarray:
    """Per pixel, the distance (px) to the line through (cx, cy) (shares of w, h) at ``theta`` degrees."""
    t = np.deg2rad(theta)
    xs = (np.arange(w, dtype=np.float32) - np.float32(cx * (w - 1))) * np.float32(-np.sin(t))
    ys = (np.arange(h, dtype=np.float32) - np.float32(cy * (h - 1))) * np.float32(np.cos(t))
    return np.abs(ys[:, None] + xs[None, :])


def _falloff(d: np.ndarray, core: float, soft: float) -> np.ndarray:
    """1 within ``core`` px, a smooth step down to 0 over the next ``soft`` px, exactly 0 beyond."""
    t = np.clip((d - core) / max(soft, 1e-6), 0.0, 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def shadow(image: np.ndarray, band: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
    """A shadow band: pixels within ``width``/2 (share of the long side) of the line through (cx, cy)
    at ``theta`` degrees are multiplied by 1 - ``strength``, with a soft edge of ``soft`` x the half
    width; pixels beyond the edge are unchanged."""
    h, w = image.shape[:2]
    half = 0.5 * float(band["width"]) * long_side(image)
    weight = _falloff(_distance_to_line(h, w, band["cx"], band["cy"], band["theta"]), half,
                      float(band["soft"]) * half)
    return _uint8(image.astype(np.float32) * (1.0 - float(band["strength"]) * weight)[..., None])


def glare(image: np.ndarray, spot: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
    """A glare spot: within ``radius`` (share of the long side) of (cx, cy) each pixel moves towards
    white by ``strength`` x (1 - (d / radius)^2)^2 (full at the centre); pixels beyond are unchanged."""
    h, w = image.shape[:2]
    r = max(float(spot["radius"]) * long_side(image), 1.0)
    xs = ((np.arange(w, dtype=np.float32) - np.float32(spot["cx"] * (w - 1))) / np.float32(r)) ** 2
    ys = ((np.arange(h, dtype=np.float32) - np.float32(spot["cy"] * (h - 1))) / np.float32(r)) ** 2
    d2 = ys[:, None] + xs[None, :]
    weight = np.clip(1.0 - d2, 0.0, 1.0) ** 2 * float(spot["strength"])
    x = image.astype(np.float32)
    return _uint8(x + (255.0 - x) * weight[..., None])


def color(image: np.ndarray, bc: tuple[float, float], rng: np.random.Generator | None = None) -> np.ndarray:
    """``(brightness, contrast)``: contrast scales around the image mean, then brightness (a share of
    full scale) is added."""
    brightness, contrast = bc
    x = image.astype(np.float32)
    mean = float(x.mean())
    return _uint8((x - mean) * float(contrast) + mean + 255.0 * float(brightness))


def channel_contrast(image: np.ndarray, factors: list[float], rng: np.random.Generator | None = None) -> np.ndarray:
    """Each colour channel scaled around its own mean by its factor (R, G, B): contrast and colour
    cast change together, as with a bad white balance or a colour photocopy."""
    mean = np.asarray(cv2.mean(image)[:3], np.float32)
    levels = np.arange(256, dtype=np.float32)[:, None]
    lut = _uint8((levels - mean) * np.asarray(factors, np.float32) + mean)  # (256, 3): one table per channel
    return cv2.LUT(np.ascontiguousarray(image), lut.reshape(256, 1, 3))


def blur(image: np.ndarray, sigma: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Gaussian blur with sigma = ``sigma`` x the long side (in pixels). Also takes a grey (HxW) image
    (the shift measurement calibrates its blur fit with this step)."""
    px = float(sigma) * long_side(image)
    if px < 0.2:  # below a fifth of a pixel the kernel is the identity
        return image.copy()
    return cv2.GaussianBlur(image, (0, 0), sigmaX=px, sigmaY=px, borderType=cv2.BORDER_REFLECT)


def motion(image: np.ndarray, streak: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
    """Motion blur: the mean along a straight streak ``length`` (share of the long side) long at
    ``theta`` degrees (counter-clockwise from the x axis) through each pixel."""
    n = int(round(float(streak["length"]) * long_side(image)))
    if n < 2:
        return image.copy()
    size = n | 1  # odd: the streak is centred on the pixel
    kernel = np.zeros((size, size), np.float32)
    t = np.deg2rad(float(streak["theta"]))
    for s in np.linspace(-(n - 1) / 2.0, (n - 1) / 2.0, 2 * n):  # sub-pixel steps along the streak
        x, y = int(round(size // 2 + s * np.cos(t))), int(round(size // 2 - s * np.sin(t)))
        kernel[y, x] = 1.0
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def exposed(image: np.ndarray, gain: float, contrast: float, gamma: float) -> np.ndarray:
    """The exposure's arithmetic (float32, 0-255, not rounded): contrast around mid-grey, light times
    ``gain``, clipped, then the ``gamma`` curve. The synthetic test split (synthetic_test.py) adds
    its noise to this before rounding."""
    x = image.astype(np.float32) / 255.0
    x = np.clip(((x - 0.5) * contrast + 0.5) * gain, 0.0, 1.0) ** gamma
    return x * 255.0


def exposure(image: np.ndarray, ggc: list[float], rng: np.random.Generator | None = None) -> np.ndarray:
    """``(gain, contrast, gamma)``: an over- or under-exposed photo (gain < 1 and gamma > 1: low light)."""
    gain, contrast, gamma = (float(v) for v in ggc)
    return _uint8(exposed(image, gain, contrast, gamma))


def moire(image: np.ndarray, bands: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
    """Moire: two fine gratings of ``period`` (share of the long side) at ``theta`` and ``theta`` +
    ``beat`` degrees beat into coarse bands; each channel (its own ``phase``) is darkened by up to
    ``strength`` where they meet (colour fringes, as on a photographed screen)."""
    h, w = image.shape[:2]
    k = np.float32(2 * np.pi / max(float(bands["period"]) * long_side(image), 2.0))
    xs, ys = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
    out = image.astype(np.float32)
    for c, phase in enumerate(bands["phase"]):
        wave = np.zeros((h, w), np.float32)
        for theta in (float(bands["theta"]), float(bands["theta"]) + float(bands["beat"])):
            t = np.deg2rad(theta)
            wave += np.cos(k * (xs * np.float32(np.cos(t)) + ys * np.float32(np.sin(t))) + np.float32(phase))
        out[..., c] *= 1.0 - float(bands["strength"]) * (0.5 + 0.25 * wave)
    return _uint8(out)


def noise(image: np.ndarray, std: float, rng: np.random.Generator, *, scale: float = 1.0) -> np.ndarray:
    """Additive Gaussian noise with std = ``std`` x 255, drawn per pixel and channel from ``rng``.

    ``scale`` < 1 (the image is that share of its own size): noise added at the own size and then
    averaged down has std x ``scale`` per pixel here, so that is what is added."""
    grain = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(255.0 * float(std) * min(1.0, scale))
    return _uint8(image.astype(np.float32) + grain)


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed (quality {quality}, shape {image.shape})")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def jpeg(image: np.ndarray, quality: int, rng: np.random.Generator | None = None, *, scale: float = 1.0) -> np.ndarray:
    """Encode as JPEG at ``quality`` (1-100) and decode again (block and ringing artefacts).

    ``scale`` < 1: encoded at 1/``scale`` the size (bounded by JPEG_MAX_UPSAMPLE and JPEG_MAX_SIDE)
    and shrunk back, so the 8 px blocks come closer to the size they have on the image at its own
    resolution."""
    h, w = image.shape[:2]
    up = min(1.0 / max(scale, 1e-6), JPEG_MAX_UPSAMPLE, JPEG_MAX_SIDE / max(h, w))
    if up <= 1.0:
        return _jpeg_roundtrip(image, quality)
    big = cv2.resize(image, (int(round(w * up)), int(round(h * up))), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(_jpeg_roundtrip(big, quality), (w, h), interpolation=cv2.INTER_AREA)
