"""Deskewing (``tta.deskew``): a page's residual small-angle rotation estimated from its text lines
and undone before the image is resized to the model's input.

The skew is the one ``distortion/measure.py`` measures for the train-vs-test shift report: the projection
profile of the page's ink (OpenCV + numpy; docs/shift.md explains the method, its accuracy on the
synthetic test split and why not the ``deskew`` / ``jdeskew`` packages), so the report and the
correction agree. The estimate is the text lines' distance to the nearest axis, within +-45
degrees: quarter turns are left to the orientation estimate (``tta=orient``). Pages whose lines
are not readable (confidence under ``measure.LINES_CONFIDENT``: photos, blank or dense pages) and
skews under ``MIN_SKEW`` degrees are left as they are.

The page is rotated back with distortion/steps.py's ``rotate`` (the one the robust validation copies
are skewed with: a canvas that holds all of it, uncovered corners in the border colour), then the
centred box of the upright page is kept: a skewed scan or photo is a page turned on a larger
canvas, and cutting both rotations' corners away gives back the page's own frame, as the upright
training scans have it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from docclassify.data.images import decode_image, resize_image
from docclassify.distortion.measure import (
    LINES_CONFIDENT,
    at_work_size,
    grey,
    line_direction,
    skew_of,
)
from docclassify.distortion.steps import rotate

MIN_SKEW = 0.5     # degrees: smaller estimates are within the estimate's noise, not corrected
WORK_SIZE = 256    # long side (px) at which the text lines are measured (as the shift report does)


def estimate_skew(rgb: np.ndarray, work_size: int = WORK_SIZE) -> float:
    """The page's skew in degrees, counter-clockwise positive, in [-45, 45); NaN when its text lines
    are not readable."""
    direction, confidence = line_direction(at_work_size(grey(rgb), work_size))
    if math.isnan(direction) or confidence < LINES_CONFIDENT:
        return math.nan
    return float(skew_of(direction))


def unrotated_size(width: int, height: int, angle: float) -> tuple[int, int] | None:
    """(w, h) of the upright page whose rotation by ``angle`` degrees, on an expanded canvas, is
    ``width`` x ``height``: W = w cos + h sin, H = w sin + h cos solved for w, h (None near 45
    degrees, where it has no stable solution, or when no positive size fits)."""
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    det = c * c - s * s
    if det < 0.2:
        return None
    w, h = (width * c - height * s) / det, (height * c - width * s) / det
    return (int(round(w)), int(round(h))) if w >= 1 and h >= 1 else None


def rotate_back(image: np.ndarray, skew: float) -> np.ndarray:
    """Undo a skew of ``skew`` degrees: rotate by -skew on an expanded canvas, then keep the centred
    box of the upright page (the corners a skewed scan or photo added around the page, and those this
    rotation adds, are cut away), so the page fills the frame as an upright scan would."""
    h, w = image.shape[:2]
    out = rotate(image, -skew)
    size = unrotated_size(w, h, skew)
    if size is None:
        return out
    pw, ph = min(size[0], out.shape[1]), min(size[1], out.shape[0])
    top, left = (out.shape[0] - ph) // 2, (out.shape[1] - pw) // 2
    return np.ascontiguousarray(out[top:top + ph, left:left + pw])


def deskew(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(the page with its skew undone, the skew estimated; NaN when unreadable, the page unchanged)."""
    skew = estimate_skew(rgb)
    if math.isnan(skew) or abs(skew) < MIN_SKEW:
        return rgb, skew
    return rotate_back(rgb, skew), skew


def load_deskewed(path: str | Path, size: int, policy: str = "pad", pad_value: int = 0) -> tuple[np.ndarray, float]:
    """Decode at full resolution, deskew, resize like data.images.load_image: (array, estimated skew)."""
    page, skew = deskew(decode_image(path))
    return resize_image(page, size, policy, pad_value), skew


def deskew_all(paths, size: int, policy: str, pad_value: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(images ``(N, size, size, 3)``, skews in degrees (NaN: unreadable), rows that failed to decode)."""
    from docclassify.data.images import BadImageError

    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    skews = np.full(len(paths), np.nan)
    bad = []
    for i, path in enumerate(paths):
        try:
            out[i], skews[i] = load_deskewed(path, size, policy, pad_value)
        except BadImageError:
            bad.append(i)
    return out, skews, bad


def skew_summary(skews: np.ndarray) -> dict:
    """summary.json's deskew entry: how many pages were readable / corrected, the corrections' size."""
    skews = np.asarray(skews, dtype=np.float64)
    readable = ~np.isnan(skews)
    corrected = readable & (np.abs(np.nan_to_num(skews)) >= MIN_SKEW)
    size = np.abs(skews[corrected])
    return {"n": int(len(skews)), "readable": int(readable.sum()), "corrected": int(corrected.sum()),
            "median_abs_deg": float(np.median(size)) if len(size) else None,
            "max_abs_deg": float(size.max()) if len(size) else None}
