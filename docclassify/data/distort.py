"""Distortions of a document image: the one home of the distortion profile (``validation.distort``).

One family of pure functions ``(image uint8 HxWx3, value, rng) -> new image``, one per profile
key, applied in the order a page meets them on its way to a test photo::

    occlusion      things lying on the page (a thumb, a sticker, a shadow): opaque ellipses
    flip           the file is mirrored left-right
    rot90          the file is turned by an exact quarter turn (k counter-clockwise turns)
    background     (a setting, not a step) what the uncovered corners of a rotation or a
                   perspective show: a drawn solid colour or texture instead of the border colour
    angle          the page lies skewed (any angle; canvas expanded, corners filled)
    perspective    the page is photographed at a slant (corners pulled inwards, filled)
    desk           the page photographed lying on a desk: smaller than the frame, tilted, the
                   desk (a drawn colour or texture) all around it
    crop           the photo cuts the page's edges
    shadow         a shadow band across the photo (a soft-edged darker stripe)
    glare          a glare spot (a soft disc brightened towards white)
    color          brightness (additive) and contrast (around the image mean)
    channel        per-channel contrast (each colour channel scaled around its own mean)
    blur           defocus: Gaussian blur, sigma relative to the long side
    noise          sensor noise: Gaussian, std a share of full scale
    jpeg           re-encoding at a low quality

:func:`sample_params` draws the values of one distorted copy from a profile (a mapping with the
keys of ``config_schema.DistortProfile``); :func:`apply_params` applies them; :func:`distort`
does both. Every step draws from its own generator (derived from one draw of ``rng`` and the
step's stream number, fixed per step), so changing one key of a profile (e.g. ``noise_p=0``)
leaves every other step's draws, and thus the other distortions of each copy, unchanged:
profiles can be compared key by key on the same copies, and a step added later leaves the
copies of a profile without it byte for byte as they were.

Sizes are shares of the image's long side and colours shares of full scale, so a profile means
the same at any resolution; what does depend on resolution is physical (noise and JPEG blocks
average out when an image is shrunk), which is why robust validation copies are distorted at
the images' own resolution (``data.validation``). Training augmentation (``data.match``)
distorts images already at the working size and passes ``scale`` (working size / the image's
own size): the noise and the JPEG step then act as they would have at the image's own size.
Corners uncovered by a rotation or a perspective are filled with the image's border colour (the
median of its outermost pixels: the paper, or the desk around a photographed page), not black,
unless a background (or a desk) was drawn.

The functions do not know about validation: training augmentation draws from the same profile
(each step is an OpenCV/numpy call on the image, fast at working size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from docclassify.data.orientation import Element, apply_numpy

Params = dict[str, Any]  # step name -> drawn value; a step absent from the dict is not applied
# JPEG at a working size below the image's own size: encoded larger, at most this many times and
# at most JPEG_MAX_SIDE px on the long side (cost), e.g. a 64 px page of a 600 px scan at 256 px:
# blocks of 2 px instead of the 0.85 px they have on the shrunk copy (and 8 px without this).
JPEG_MAX_UPSAMPLE, JPEG_MAX_SIDE = 4.0, 512


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


def mirror(image: np.ndarray, on: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
    """Left-right mirror: the group element the hflip TTA view and orientation augmentation apply
    (data/orientation.py). A flip then ``k`` turns is the element ``Element(k, mirror=True)``."""
    return apply_numpy(image, Element(0, True)) if on else image.copy()


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
    """Gaussian blur with sigma = ``sigma`` x the long side (in pixels)."""
    px = float(sigma) * long_side(image)
    if px < 0.2:  # below a fifth of a pixel the kernel is the identity
        return image.copy()
    return cv2.GaussianBlur(image, (0, 0), sigmaX=px, sigmaY=px, borderType=cv2.BORDER_REFLECT)


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


# -------------------------------------------------------------------------------------- sampling
def _fires(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < float(p))


def _span(rng: np.random.Generator, pair) -> float:
    lo, hi = (float(v) for v in pair)
    return float(rng.uniform(lo, hi))


def _blob(profile: Mapping, rng: np.random.Generator) -> dict:
    radius = float(profile["occlusion_size"]) / 2.0  # the size is the blob's diameter
    return {"cx": float(rng.random()), "cy": float(rng.random()), "ax": radius * float(rng.uniform(0.3, 1.0)),
            "ay": radius * float(rng.uniform(0.3, 1.0)), "theta": float(rng.uniform(0, 180)),
            "rgb": [int(v) for v in rng.integers(0, 256, size=3)]}


def sample_occlusion(profile: Mapping, rng: np.random.Generator) -> list[dict] | None:
    """1 to ``occlusion_count`` blobs (the first drawn as with a count of 1)."""
    if not _fires(rng, profile["occlusion_p"]) or profile["occlusion_size"] <= 0:
        return None
    blobs = [_blob(profile, rng)]
    count = int(profile.get("occlusion_count", 1))
    if count > 1:
        blobs += [_blob(profile, rng) for _ in range(int(rng.integers(0, count)))]
    return blobs


def sample_flip(profile: Mapping, rng: np.random.Generator) -> bool | None:
    return True if _fires(rng, profile["flip_p"]) else None


def sample_rot90(profile: Mapping, rng: np.random.Generator) -> int | None:
    return int(rng.integers(1, 4)) if _fires(rng, profile["rot90_p"]) else None


def sample_surface(profile: Mapping, rng: np.random.Generator) -> dict:
    """A solid colour, or (share ``background_texture``) a texture in that colour."""
    spec: dict[str, Any] = {"rgb": [int(v) for v in rng.integers(0, 256, size=3)], "texture": None}
    if _fires(rng, profile["background_texture"]):
        spec["texture"] = {"seed": int(rng.integers(2**31)), "cells": int(rng.integers(2, 9)),
                           "amplitude": float(rng.uniform(0.1, 0.4)), "streaks": float(rng.uniform(0.0, 1.5))}
    return spec


def sample_background(profile: Mapping, rng: np.random.Generator) -> dict | None:
    return sample_surface(profile, rng) if _fires(rng, profile["background_p"]) else None


def sample_angle(profile: Mapping, rng: np.random.Generator) -> float | None:
    a = float(profile["angle"])
    return float(rng.uniform(-a, a)) if _fires(rng, profile["angle_p"]) and a > 0 else None


def sample_perspective(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    s = float(profile["perspective"])
    return [float(v) for v in rng.uniform(0, s, size=8)] if _fires(rng, profile["perspective_p"]) and s > 0 else None


def sample_desk(profile: Mapping, rng: np.random.Generator) -> dict | None:
    if not _fires(rng, profile["desk_p"]):
        return None
    tilt = float(profile["desk_tilt"])
    return {"scale": _span(rng, profile["desk_scale"]), "x": float(rng.random()), "y": float(rng.random()),
            "corners": [float(v) for v in rng.uniform(-tilt, tilt, size=8)], "surface": sample_surface(profile, rng)}


def sample_crop(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    s = float(profile["crop"])
    return [float(v) for v in rng.uniform(0, s, size=4)] if _fires(rng, profile["crop_p"]) and s > 0 else None


def sample_shadow(profile: Mapping, rng: np.random.Generator) -> dict | None:
    """A band 0.1-0.4 of the long side wide, soft edge 0.2-1 x its half width, darkening by
    0.3-1 x ``shadow_strength``."""
    if not _fires(rng, profile["shadow_p"]) or profile["shadow_strength"] <= 0:
        return None
    return {"cx": float(rng.random()), "cy": float(rng.random()), "theta": float(rng.uniform(0, 180)),
            "width": float(rng.uniform(0.1, 0.4)), "soft": float(rng.uniform(0.2, 1.0)),
            "strength": float(profile["shadow_strength"]) * float(rng.uniform(0.3, 1.0))}


def sample_glare(profile: Mapping, rng: np.random.Generator) -> dict | None:
    """A spot 0.3-1 x ``glare_size`` in radius, brightening by 0.5-1 x ``glare_strength``."""
    if not _fires(rng, profile["glare_p"]) or profile["glare_strength"] <= 0 or profile["glare_size"] <= 0:
        return None
    return {"cx": float(rng.random()), "cy": float(rng.random()),
            "radius": float(profile["glare_size"]) * float(rng.uniform(0.3, 1.0)),
            "strength": float(profile["glare_strength"]) * float(rng.uniform(0.5, 1.0))}


def sample_color(profile: Mapping, rng: np.random.Generator) -> tuple[float, float] | None:
    if not _fires(rng, profile["color_p"]):
        return None
    return _span(rng, profile["brightness"]), _span(rng, profile["contrast"])


def sample_channel(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    if not _fires(rng, profile["channel_p"]):
        return None
    return [_span(rng, profile["channel_contrast"]) for _ in range(3)]


def sample_blur(profile: Mapping, rng: np.random.Generator) -> float | None:
    s = float(profile["blur_sigma"])
    return float(rng.uniform(0, s)) if _fires(rng, profile["blur_p"]) and s > 0 else None


def sample_noise(profile: Mapping, rng: np.random.Generator) -> float | None:
    s = float(profile["noise_std"])
    return float(rng.uniform(0, s)) if _fires(rng, profile["noise_p"]) and s > 0 else None


def sample_jpeg(profile: Mapping, rng: np.random.Generator) -> int | None:
    lo, hi = (int(v) for v in profile["jpeg_quality"])
    return int(rng.integers(lo, hi + 1)) if _fires(rng, profile["jpeg_p"]) else None


@dataclass(frozen=True)
class Step:
    """One distortion: how its value is drawn from a profile, and how it is applied.

    ``stream``: the number of the step's own generator (fixed per step, never reused, so a step
    added later leaves every existing step's draws unchanged). ``uses``: what the step reads of
    the copy's context (``surround``: the drawn background or desk; ``scale``: working size / own
    size). ``apply`` None: a setting other steps read, not a step of its own."""

    name: str
    stream: int
    sample: Callable[[Mapping, np.random.Generator], Any]
    apply: Callable[..., np.ndarray] | None
    uses: tuple[str, ...] = ()


# In the order they are applied. Streams 0-9 are the first ten steps' positions before the later
# steps were inserted: a profile without the later steps gives the copies it always gave.
STEPS: tuple[Step, ...] = (
    Step("occlusion", 0, sample_occlusion, occlude),
    Step("flip", 1, sample_flip, mirror),
    Step("rot90", 2, sample_rot90, rotate90),
    Step("background", 10, sample_background, None),
    Step("angle", 3, sample_angle, rotate, ("surround",)),
    Step("perspective", 4, sample_perspective, perspective, ("surround",)),
    Step("desk", 11, sample_desk, desk),
    Step("crop", 5, sample_crop, crop),
    Step("shadow", 12, sample_shadow, shadow),
    Step("glare", 13, sample_glare, glare),
    Step("color", 6, sample_color, color),
    Step("channel", 14, sample_channel, channel_contrast),
    Step("blur", 7, sample_blur, blur),
    Step("noise", 8, sample_noise, noise, ("scale",)),
    Step("jpeg", 9, sample_jpeg, jpeg, ("scale",)),
)
STEP_NAMES = tuple(s.name for s in STEPS)


def _step_seed(rng: np.random.Generator) -> int:
    """The one draw of ``rng`` that every step's generator derives from."""
    return int(rng.integers(2**63))


def _step_rng(seed: int, step: Step) -> np.random.Generator:
    return np.random.default_rng([seed, step.stream])


def sample_params(profile: Mapping, rng: np.random.Generator) -> Params:
    """The drawn values of one distorted copy (only the steps that fire); JSON-serialisable.

    Takes exactly one draw from ``rng``. A step whose probability is 0 draws nothing (its generator
    is not even made: they cost more than most steps at a training image's size)."""
    seed = _step_seed(rng)
    params: Params = {}
    for step in STEPS:
        if float(profile.get(f"{step.name}_p", 1.0)) <= 0.0:
            continue
        value = step.sample(profile, _step_rng(seed, step))
        if value is not None:
            params[step.name] = value
    return params


def context(params: Mapping[str, Any], scale: float = 1.0) -> dict[str, Any]:
    """What steps read besides their own value: the surround of the page (on a desk: the desk;
    else the drawn background; else None: the border colour) and the scale."""
    photo = params.get("desk")
    return {"surround": photo["surface"] if photo else params.get("background"), "scale": float(scale)}


def apply_params(image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator,
                 scale: float = 1.0) -> np.ndarray:
    """Apply the drawn ``params`` to ``image`` in the steps' order (the input is not modified).

    ``rng`` feeds the steps that draw per pixel (noise); takes exactly one draw from it.
    ``scale``: the image's size as a share of its own resolution (1: distorted at its own size)."""
    unknown = sorted(set(params) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"unknown distortion step(s) {unknown}; known: {', '.join(STEP_NAMES)}")
    ctx = context(params, scale)
    seed = _step_seed(rng)
    out = np.ascontiguousarray(image)
    for step in STEPS:
        if step.apply is not None and step.name in params:
            out = step.apply(out, params[step.name], _step_rng(seed, step), **{k: ctx[k] for k in step.uses})
    return out if out is not image else image.copy()


def distort(image: np.ndarray, profile: Mapping, rng: np.random.Generator,
            scale: float = 1.0) -> tuple[np.ndarray, Params]:
    """One distorted copy of ``image`` drawn from ``profile``: (new image, the drawn params).
    ``scale``: see :func:`apply_params`."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"distort expects a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    params = sample_params(profile, rng)
    return apply_params(image, params, rng, scale), params
