"""Distortions of a document image: the one home of the distortion profile (``validation.distort``).

One family of pure functions ``(image uint8 HxWx3, value, rng) -> new image``, one per profile
key, applied in the order a page meets them on its way to a test photo::

    occlusion      something lying on the page (a thumb, a sticker, a shadow): an ellipse
    flip           the file is mirrored left-right
    rot90          the file is turned by an exact quarter turn (k counter-clockwise turns)
    angle          the page lies skewed on the desk (canvas expanded, corners filled)
    perspective    the page is photographed at a slant (corners pulled inwards, filled)
    crop           the photo cuts the page's edges
    color          brightness (additive) and contrast (around the image mean)
    blur           defocus: Gaussian blur, sigma relative to the long side
    noise          sensor noise: Gaussian, std a share of full scale
    jpeg           re-encoding at a low quality

:func:`sample_params` draws the values of one distorted copy from a profile (a mapping with the
keys of ``config_schema.DistortProfile``); :func:`apply_params` applies them; :func:`distort`
does both. Every step draws from its own generator (derived from one draw of ``rng`` and the
step's position), so changing one key of a profile (e.g. ``noise_p=0``) leaves every other
step's draws, and thus the other distortions of each copy, unchanged: profiles can be compared
key by key on the same copies.

Sizes are shares of the image's long side and colours shares of full scale, so a profile means
the same at any resolution; what does depend on resolution is physical (noise and JPEG blocks
average out when an image is shrunk), which is why robust validation copies are distorted at
the images' own resolution (``data.validation``). Corners uncovered by a rotation or a
perspective are filled with the image's border colour (the median of its outermost pixels: the
paper, or the desk around a photographed page), not black.

The functions do not know about validation: training augmentation can draw from the same
profile (each step is an OpenCV/numpy call on the image, fast at working size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from docclassify.predict.tta import View, apply_view_numpy

Params = dict[str, Any]  # step name -> drawn value; a step absent from the dict is not applied


# -------------------------------------------------------------------------------------- helpers
def long_side(image: np.ndarray) -> int:
    return int(max(image.shape[:2]))


def border_colour(image: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the image's outermost pixels: what surrounds the content (paper or desk)."""
    frame = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return tuple(int(v) for v in np.median(frame, axis=0))


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------- the steps
def occlude(image: np.ndarray, blob: Mapping[str, Any], rng: np.random.Generator | None = None) -> np.ndarray:
    """An opaque ellipse: centre (cx, cy) and semi-axes (ax, ay) as shares of width/height/long
    side, rotated by ``theta`` degrees, in colour ``rgb``."""
    h, w = image.shape[:2]
    side = long_side(image)
    out = image.copy()
    centre = (int(round(blob["cx"] * (w - 1))), int(round(blob["cy"] * (h - 1))))
    axes = (max(1, int(round(blob["ax"] * side))), max(1, int(round(blob["ay"] * side))))
    cv2.ellipse(out, centre, axes, float(blob["theta"]), 0, 360, tuple(int(c) for c in blob["rgb"]), -1,
                lineType=cv2.LINE_AA)
    return out


def mirror(image: np.ndarray, on: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
    """Left-right mirror (the same transform as the hflip TTA view)."""
    return apply_view_numpy(image, View("mirror", hflip=True)) if on else image.copy()


def rotate90(image: np.ndarray, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``k`` exact counter-clockwise quarter turns (the same transform as the rot TTA views)."""
    return apply_view_numpy(image, View(f"rot{90 * k}", k=int(k)))


def rotate(image: np.ndarray, angle: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Rotate by ``angle`` degrees counter-clockwise; the canvas grows to hold the whole page and
    the uncovered corners take the border colour."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    return cv2.warpAffine(image, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=border_colour(image))


def perspective(image: np.ndarray, corners: list[float], rng: np.random.Generator | None = None) -> np.ndarray:
    """A page photographed at a slant: the four corners (top-left, top-right, bottom-right,
    bottom-left) move inwards by the given shares of width and height (8 values, x then y per
    corner); the area outside the page takes the border colour."""
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    inward = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    shift = np.asarray(corners, dtype=np.float32).reshape(4, 2) * np.float32([w - 1, h - 1])
    dst = src + inward * shift
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=border_colour(image))


def crop(image: np.ndarray, sides: list[float], rng: np.random.Generator | None = None) -> np.ndarray:
    """Cut (left, top, right, bottom) shares of the width/height off the image (at least 1 px kept)."""
    h, w = image.shape[:2]
    left, top, right, bottom = sides
    x0, y0 = int(round(left * w)), int(round(top * h))
    x1, y1 = max(x0 + 1, w - int(round(right * w))), max(y0 + 1, h - int(round(bottom * h)))
    return image[y0:y1, x0:x1].copy()


def color(image: np.ndarray, bc: tuple[float, float], rng: np.random.Generator | None = None) -> np.ndarray:
    """``(brightness, contrast)``: contrast scales around the image mean, then brightness (a share of
    full scale) is added."""
    brightness, contrast = bc
    x = image.astype(np.float32)
    mean = float(x.mean())
    return _uint8((x - mean) * float(contrast) + mean + 255.0 * float(brightness))


def blur(image: np.ndarray, sigma: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Gaussian blur with sigma = ``sigma`` x the long side (in pixels)."""
    px = float(sigma) * long_side(image)
    if px < 0.2:  # below a fifth of a pixel the kernel is the identity
        return image.copy()
    return cv2.GaussianBlur(image, (0, 0), sigmaX=px, sigmaY=px, borderType=cv2.BORDER_REFLECT)


def noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise with std = ``std`` x 255, drawn per pixel and channel from ``rng``."""
    grain = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(255.0 * float(std))
    return _uint8(image.astype(np.float32) + grain)


def jpeg(image: np.ndarray, quality: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Encode as JPEG at ``quality`` (1-100) and decode again (block and ringing artefacts)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed (quality {quality}, shape {image.shape})")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


# -------------------------------------------------------------------------------------- sampling
def _fires(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < float(p))


def _span(rng: np.random.Generator, pair) -> float:
    lo, hi = (float(v) for v in pair)
    return float(rng.uniform(lo, hi))


def sample_occlusion(profile: Mapping, rng: np.random.Generator) -> dict | None:
    if not _fires(rng, profile["occlusion_p"]) or profile["occlusion_size"] <= 0:
        return None
    radius = float(profile["occlusion_size"]) / 2.0  # the size is the blob's diameter
    return {"cx": float(rng.random()), "cy": float(rng.random()), "ax": radius * float(rng.uniform(0.3, 1.0)),
            "ay": radius * float(rng.uniform(0.3, 1.0)), "theta": float(rng.uniform(0, 180)),
            "rgb": [int(v) for v in rng.integers(0, 256, size=3)]}


def sample_flip(profile: Mapping, rng: np.random.Generator) -> bool | None:
    return True if _fires(rng, profile["flip_p"]) else None


def sample_rot90(profile: Mapping, rng: np.random.Generator) -> int | None:
    return int(rng.integers(1, 4)) if _fires(rng, profile["rot90_p"]) else None


def sample_angle(profile: Mapping, rng: np.random.Generator) -> float | None:
    a = float(profile["angle"])
    return float(rng.uniform(-a, a)) if _fires(rng, profile["angle_p"]) and a > 0 else None


def sample_perspective(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    s = float(profile["perspective"])
    return [float(v) for v in rng.uniform(0, s, size=8)] if _fires(rng, profile["perspective_p"]) and s > 0 else None


def sample_crop(profile: Mapping, rng: np.random.Generator) -> list[float] | None:
    s = float(profile["crop"])
    return [float(v) for v in rng.uniform(0, s, size=4)] if _fires(rng, profile["crop_p"]) and s > 0 else None


def sample_color(profile: Mapping, rng: np.random.Generator) -> tuple[float, float] | None:
    if not _fires(rng, profile["color_p"]):
        return None
    return _span(rng, profile["brightness"]), _span(rng, profile["contrast"])


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
    """One distortion: how its value is drawn from a profile, and how it is applied."""

    name: str
    sample: Callable[[Mapping, np.random.Generator], Any]
    apply: Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]


# In the order they are applied. Appending a step keeps every existing step's draws (each step
# has its own child generator, by position): add new steps at the end of the list.
STEPS: tuple[Step, ...] = (
    Step("occlusion", sample_occlusion, occlude),
    Step("flip", sample_flip, mirror),
    Step("rot90", sample_rot90, rotate90),
    Step("angle", sample_angle, rotate),
    Step("perspective", sample_perspective, perspective),
    Step("crop", sample_crop, crop),
    Step("color", sample_color, color),
    Step("blur", sample_blur, blur),
    Step("noise", sample_noise, noise),
    Step("jpeg", sample_jpeg, jpeg),
)
STEP_NAMES = tuple(s.name for s in STEPS)


def _step_generators(rng: np.random.Generator) -> list[np.random.Generator]:
    """One generator per step, derived from a single draw of ``rng`` and the step's position."""
    seed = int(rng.integers(2**63))
    return [np.random.default_rng([seed, i]) for i in range(len(STEPS))]


def sample_params(profile: Mapping, rng: np.random.Generator) -> Params:
    """The drawn values of one distorted copy (only the steps that fire); JSON-serialisable.

    Takes exactly one draw from ``rng``."""
    params: Params = {}
    for step, draw in zip(STEPS, _step_generators(rng)):
        value = step.sample(profile, draw)
        if value is not None:
            params[step.name] = value
    return params


def apply_params(image: np.ndarray, params: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Apply the drawn ``params`` to ``image`` in the steps' order (the input is not modified).

    ``rng`` feeds the steps that draw per pixel (noise); takes exactly one draw from it."""
    unknown = sorted(set(params) - set(STEP_NAMES))
    if unknown:
        raise ValueError(f"unknown distortion step(s) {unknown}; known: {', '.join(STEP_NAMES)}")
    out = np.ascontiguousarray(image)
    for step, pixels in zip(STEPS, _step_generators(rng)):
        if step.name in params:
            out = step.apply(out, params[step.name], pixels)
    return out if out is not image else image.copy()


def distort(image: np.ndarray, profile: Mapping, rng: np.random.Generator) -> tuple[np.ndarray, Params]:
    """One distorted copy of ``image`` drawn from ``profile``: (new image, the drawn params)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"distort expects a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    params = sample_params(profile, rng)
    return apply_params(image, params, rng), params
