"""Measuring a data set: per-image statistics of brightness, contrast, sharpness, noise, size,
text-line direction and skew, JPEG quality, and a split's table of them (cached by content).
The formulas are in docs/shift.md.

    image_stats     one decoded image -> its statistics (+ the blur/noise calibration: train images
                    put through the blur and noise steps at known strengths)
    measure_split   a (sampled) image set -> SplitStats, cached by the images' content

Images are measured at a common working size (long side ``shift.work_size`` for brightness,
contrast, sharpness and text lines; noise at the decoded resolution, where the noise step adds
it). Telling an upside-down page from an upright one needs a model of the content: the rotation
estimate tells 0/180 from 90/270 (text-line direction) and measures the small skew, no more.
"""

from __future__ import annotations

import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from docclassify.data.cache import content_key, write_cache_file
from docclassify.data.images import BadImageError, decode_image
from docclassify.distortion import steps
from docclassify.utils.io import atomic_write_json

log = logging.getLogger(__name__)

STATS_VERSION = 3  # bump when a statistic's definition changes (invalidates cached statistics)
SAMPLE_SEED = 0    # which images a capped sample takes (fixed: every run measures the same images)
LINE_SQUARE = 256  # side of the central square whose text lines are measured
MIN_INK = 200      # fewer ink pixels than this: no text lines to measure
MAX_INK = 4000     # a random sample of this many ink pixels is projected (speed)
LINES_CONFIDENT = 0.2  # line score at the best angle / score at the perpendicular - 1
CALIB_IMAGES = 24  # train images blurred / noised at known strengths to calibrate the fit
BLUR_GRID = (0.0, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.03)   # sigma / long side
NOISE_GRID = (0.0, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)                   # std / full scale

# The IJG (libjpeg) luminance table at quality 50, natural order (what PIL's quantization gives).
_IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                      14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                      18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                      49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
_IJG_TABLES = np.stack([np.clip(np.floor((_IJG_LUMA * (5000 / q if q < 50 else 200 - 2 * q) + 50) / 100), 1, 255)
                        for q in range(1, 101)])
_RESIDUAL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)  # Immerkaer's noise kernel, norm 6


# ------------------------------------------------------------------------------------------ one image
def ijg_quality(table) -> int:
    """The IJG quality (1-100) whose scaled standard luminance table is nearest to ``table``."""
    t = np.asarray(list(table), dtype=np.float64)
    if t.shape != (64,):
        raise ValueError(f"expected a 64-entry quantisation table, got {t.shape}")
    return int(np.argmin(np.abs(_IJG_TABLES - t).sum(axis=1))) + 1


def jpeg_quality(path: str | Path) -> float:
    """IJG quality estimated from the file's luminance table; NaN for files that are not JPEG."""
    try:
        with Image.open(path) as img:
            tables = getattr(img, "quantization", None)
            return float(ijg_quality(tables[0])) if img.format == "JPEG" and tables else math.nan
    except (OSError, ValueError, KeyError):
        return math.nan


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def at_work_size(g: np.ndarray, work_size: int) -> np.ndarray:
    """``g`` (uint8 grey) resized so its long side is ``work_size``, as float32."""
    h, w = g.shape
    s = work_size / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR).astype(np.float32)


def coarse_contrast(gw: np.ndarray) -> float:
    """RMS contrast (grey std, share of full scale) of the page shrunk to 1/8 of the working size:
    a contrast change scales it like the full image's, while blur and noise (fine detail) hardly
    move it, so a blurred or noisy test set does not read as a contrast shift."""
    h, w = gw.shape
    s = max(16, max(h, w) // 8) / max(h, w)
    small = cv2.resize(gw, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return float(small.std()) / 255.0


def sharpness(gw: np.ndarray) -> tuple[float, float]:
    """(variance of the Laplacian, the same divided by the grey variance). The second does not
    change with contrast, so the blur fit is not fooled by a darker or flatter test set."""
    lap = float(cv2.Laplacian(gw, cv2.CV_32F).var())
    return lap, lap / max(float(gw.var()), 1e-6)


def noise_sigma(rgb: np.ndarray) -> float:
    """Noise std (share of full scale): the median absolute residual of Immerkaer's Laplacian-of-
    Laplacian kernel, per colour channel (sensor noise is drawn per channel), averaged. The median
    ignores edges as long as most of the page is flat paper."""
    values = []
    for c in range(rgb.shape[2]):
        res = cv2.filter2D(rgb[..., c].astype(np.float32), -1, _RESIDUAL)[1:-1, 1:-1]
        values.append(float(np.median(np.abs(res))) / (0.6745 * 6.0))
    return float(np.mean(values)) / 255.0


def _ink_points(gw: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Coordinates (centred, in the inscribed disc) of thin dark structure (text, rules) in the central
    square: a black-hat removes page edges and large dark areas, Otsu splits ink from paper."""
    h, w = gw.shape
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    sq = np.clip(gw[y0:y0 + side, x0:x0 + side], 0, 255).astype(np.uint8)
    if side > LINE_SQUARE:
        sq, side = cv2.resize(sq, (LINE_SQUARE, LINE_SQUARE), interpolation=cv2.INTER_AREA), LINE_SQUARE
    k = max(5, round(side / 17)) | 1
    hat = cv2.morphologyEx(sq, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    thr, ink = cv2.threshold(hat, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    if thr < 8:  # no structure darker than its surroundings by 8 grey levels
        return None
    ys, xs = np.nonzero(ink)
    rng = np.random.default_rng(0)  # sub-pixel jitter: pixel-grid alignment must not favour 0/90 degrees
    c, r = (side - 1) / 2.0, side / 2.0
    xs = xs - c + rng.uniform(-0.5, 0.5, len(xs))
    ys = ys - c + rng.uniform(-0.5, 0.5, len(ys))
    inside = xs ** 2 + ys ** 2 <= r * r  # a disc: every direction sees the same extent
    xs, ys = xs[inside], ys[inside]
    if len(xs) < MIN_INK:
        return None
    if len(xs) > MAX_INK:
        keep = rng.choice(len(xs), MAX_INK, replace=False)
        xs, ys = xs[keep], ys[keep]
    return xs, ys, r


def _line_scores(xs, ys, r: float, angles_deg: np.ndarray, bin_px: float = 1.5) -> np.ndarray:
    """Projection-profile energy of the ink along lines at each angle (counter-clockwise from the
    x axis, image y pointing down): text lines at that angle give a spiky profile."""
    a = np.deg2rad(angles_deg)
    t = -np.outer(np.sin(a), xs) + np.outer(np.cos(a), ys)
    nb = int(2 * r / bin_px) + 3
    idx = np.floor((t + r) / bin_px + 1).astype(np.int64) + np.arange(len(a))[:, None] * nb
    hist = np.bincount(idx.ravel(), minlength=len(a) * nb).reshape(len(a), nb).astype(np.float64)
    return (hist ** 2).sum(axis=1) * nb / float(len(xs)) ** 2


def line_direction(gw: np.ndarray) -> tuple[float, float]:
    """(direction of the text lines in degrees [0, 180), confidence); (NaN, 0) without text.

    0 = horizontal lines (upright or upside down), 90 = vertical (a quarter turn). Coarse 2-degree
    search, then 0.2 degree around the best. Confidence = score / score at the perpendicular - 1."""
    pts = _ink_points(gw)
    if pts is None:
        return math.nan, 0.0
    xs, ys, r = pts
    coarse = np.arange(0.0, 180.0, 2.0)
    s = _line_scores(xs, ys, r, coarse)
    k = int(np.argmax(s))
    fine = coarse[k] + np.arange(-2.0, 2.001, 0.2)
    best = float(fine[int(np.argmax(_line_scores(xs, ys, r, fine)))]) % 180.0
    return best, float(s[k] / max(s[(k + 45) % 90], 1e-12) - 1.0)


def skew_of(direction: float) -> float:
    """Skew in degrees, counter-clockwise positive (PIL's ``rotate``), in [-45, 45)."""
    return -(((direction + 45.0) % 90.0) - 45.0)


def image_stats(path: str | Path, work_size: int, calibrate: bool = False) -> dict[str, Any]:
    """The statistics of one image (see the module doc); with ``calibrate``, also the sharpness
    ratio after the blur step at BLUR_GRID and the noise estimate after the noise step at NOISE_GRID
    (the steps the fitted profile's copies go through)."""
    rgb = decode_image(path, draft_size=2 * work_size)
    g = grey(rgb)
    gw = at_work_size(g, work_size)
    lap, sharp = sharpness(gw)
    direction, confidence = line_direction(gw)
    row = {"width": rgb.shape[1], "height": rgb.shape[0], "brightness": float(gw.mean()) / 255.0,
           "contrast": coarse_contrast(gw), "laplacian_var": lap, "sharpness": sharp,
           "noise": noise_sigma(rgb), "line_direction": direction, "line_confidence": confidence,
           "jpeg_quality": jpeg_quality(path)}
    if calibrate:
        row["calib_blur"] = [sharpness(at_work_size(steps.blur(g, s), work_size))[1] / max(sharp, 1e-12)
                             for s in BLUR_GRID]
        rng = np.random.default_rng(1)
        row["calib_noise"] = [noise_sigma(steps.noise(rgb, s, rng) if s > 0 else rgb) for s in NOISE_GRID]
    return row


# ------------------------------------------------------------------------------------------ an image set
@dataclass
class SplitStats:
    """The measured images of one split: one row per image (ID + statistics) and, for train, the
    median blur/noise calibration curves over BLUR_GRID / NOISE_GRID."""

    table: pd.DataFrame
    n_images: int                         # images in the split (before the sample cap)
    bad: list[str]                        # IDs that could not be decoded (left out)
    calib_blur: list[float] | None = None
    calib_noise: list[float] | None = None

    @property
    def readable(self) -> pd.DataFrame:
        """Rows whose text lines were measured confidently."""
        return self.table[self.table["line_confidence"] >= LINES_CONFIDENT]

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "table"}
        out["table"] = self.table.to_dict(orient="list")  # exact floats (json writes their repr)
        return out

    @classmethod
    def from_json(cls, d: dict) -> SplitStats:
        table = pd.DataFrame(d["table"]).astype({"ID": str})
        return cls(table, d["n_images"], d["bad"], d.get("calib_blur"), d.get("calib_noise"))


def sample_rows(n: int, max_images: int | None) -> np.ndarray:
    """Indices of the rows to measure: all, or a seeded sample of ``max_images`` (sorted)."""
    if max_images is None or n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(SAMPLE_SEED).choice(n, int(max_images), replace=False))


def _measure_all(paths: list[Path], work_size: int, calibrate: bool) -> list[dict | None]:
    """image_stats of every path in threads (OpenCV and PIL release the GIL); None = undecodable.
    With ``calibrate``, CALIB_IMAGES of them (spread evenly over the set) are also calibrated."""
    calib_rows = set(np.linspace(0, len(paths) - 1, min(CALIB_IMAGES, len(paths))).round().astype(int).tolist())

    def work(i: int) -> dict | None:
        try:
            return image_stats(paths[i], work_size, calibrate and i in calib_rows)
        except BadImageError as exc:
            log.debug("%s", exc)
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(work, range(len(paths))))


def _from_rows(ids: list[str], rows: list[dict | None], n_images: int) -> SplitStats:
    ok = [(i, r) for i, r in zip(ids, rows) if r is not None]
    plain = [{k: v for k, v in r.items() if not k.startswith("calib_")} for _, r in ok]
    table = pd.DataFrame(plain, columns=list(plain[0]) if plain else [])
    table.insert(0, "ID", [i for i, _ in ok])
    stats = SplitStats(table, n_images, [i for i, r in zip(ids, rows) if r is None])
    curves = {k: [r[k] for _, r in ok if k in r] for k in ("calib_blur", "calib_noise")}
    if curves["calib_blur"]:
        stats.calib_blur = np.median(np.asarray(curves["calib_blur"]), axis=0).round(6).tolist()
        stats.calib_noise = np.median(np.asarray(curves["calib_noise"]), axis=0).round(6).tolist()
    return stats


def measure_split(frame: pd.DataFrame, work_size: int, max_images: int | None, cache_dir: str | Path | None,
                  calibrate: bool = False) -> SplitStats:
    """Statistics of the rows (``ID``, ``path``) of one split, at most ``max_images`` of them (a seeded
    sample). Cached in ``cache_dir/shift/`` by the images' bytes and the settings: a sweep, a resumed
    run or a second command on the same data reads them back instead of decoding again."""
    rows = sample_rows(len(frame), max_images)
    ids = frame["ID"].astype(str).to_numpy()[rows].tolist()
    paths = [Path(p) for p in frame["path"].to_numpy()[rows]]
    key = content_key(paths, work_size, f"shift-v{STATS_VERSION}-calib{int(calibrate)}-of{len(frame)}", 0)
    path = Path(cache_dir).expanduser() / "shift" / f"{key}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            cached = SplitStats.from_json(json.loads(path.read_text()))
            if cached.table["ID"].tolist() == [i for i in ids if i not in set(cached.bad)]:
                return cached
        except (ValueError, KeyError, TypeError):
            log.warning("shift statistics cache %s is unreadable: measuring again", path)
    stats = _from_rows(ids, _measure_all(paths, work_size, calibrate), len(frame))
    if path is not None:
        write_cache_file(path, lambda target: atomic_write_json(target, stats.to_json()), "shift statistics cache")
    return stats
