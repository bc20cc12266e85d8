"""Train-vs-test shift: per-image statistics, their comparison, and a distortion profile fitted
from them (``validation.distort=auto``). The formulas are in docs/shift.md.

    image_stats     one decoded image -> brightness, contrast, Laplacian variance, sharpness, noise,
                    size, text-line direction and skew, JPEG quality (+ blur/noise calibration)
    measure_split   a (sampled) image set -> SplitStats, cached by the images' content
    compare         train vs test -> per statistic: quartiles, median shift, KS distance
    fit_profile     train vs test -> a DistortProfile (dict) covering the measured shift
    run_shift_check the training hook: log the biggest shifts, shift.png/shift.json, and for
                    validation.distort=auto the fitted profile (fit_profile_for_run: distort_profile.yaml)

Images are measured at a common working size (long side ``shift.work_size`` for brightness,
contrast, sharpness and text lines; noise at the decoded resolution, where h6's distortions add
it). Telling an upside-down page from an upright one needs a model of the content: the rotation
estimate tells 0/180 from 90/270 (text-line direction) and measures the small skew, no more.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from docclassify.data.images import BadImageError, decode_image

log = logging.getLogger(__name__)

STATS_VERSION = 2  # bump when a statistic's definition changes (invalidates cached statistics)
SAMPLE_SEED = 0    # which images a capped sample takes (fixed: every run measures the same images)
LINE_SQUARE = 256  # side of the central square whose text lines are measured
MIN_INK = 200      # fewer ink pixels than this: no text lines to measure
MAX_INK = 4000     # a random sample of this many ink pixels is projected (speed)
LINES_CONFIDENT = 0.2  # line score at the best angle / score at the perpendicular - 1
CALIB_IMAGES = 24  # train images blurred / noised at known strengths to calibrate the fit
BLUR_GRID = (0.0, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.03)   # sigma / long side
NOISE_GRID = (0.0, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)                   # std / full scale
TAIL = 0.05        # a test image "outside the train range" lies beyond the train's 2.5/97.5 % (or 5 %)
MIN_READABLE = 10  # images with readable text lines needed per split to fit rot90_p / angle

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
    ratio after Gaussian blurs of BLUR_GRID and the noise estimate after noise of NOISE_GRID."""
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
        row["calib_blur"] = [sharpness(at_work_size(blur_grey(g, s), work_size))[1] / max(sharp, 1e-12)
                             for s in BLUR_GRID]
        rng = np.random.default_rng(1)
        row["calib_noise"] = [noise_sigma(add_noise(rgb, s, rng)) for s in NOISE_GRID]
    return row


def blur_grey(g: np.ndarray, share: float) -> np.ndarray:
    """Gaussian blur with sigma = ``share`` x the long side, as data/distort.py's ``blur`` draws it."""
    px = share * max(g.shape)
    return g if px < 0.2 else cv2.GaussianBlur(g, (0, 0), sigmaX=px, sigmaY=px, borderType=cv2.BORDER_REFLECT)


def add_noise(rgb: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise per pixel and channel, std a share of full scale, clipped (as data/distort.py's ``noise``)."""
    if std <= 0:
        return rgb
    return np.clip(np.rint(rgb + rng.standard_normal(rgb.shape) * (255.0 * std)), 0, 255).astype(np.uint8)


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
    from docclassify.data.cache import content_key, write_cache_file
    from docclassify.utils.io import atomic_write_json

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


# ------------------------------------------------------------------------------------------ comparison
@dataclass(frozen=True)
class Statistic:
    """A row of the comparison: a column of SplitStats.table (or derived from it)."""

    name: str
    label: str
    share: bool = False   # a yes/no per image, compared as a share
    fmt: str = ".3f"
    log_plot: bool = False


STATISTICS = (
    Statistic("brightness", "brightness (mean grey, 0-1)"),
    Statistic("contrast", "contrast (RMS at 1/8 size, 0-1)"),
    Statistic("laplacian_var", "blur: variance of the Laplacian", fmt=".0f", log_plot=True),
    Statistic("sharpness", "sharpness (Laplacian var / grey var)", fmt=".4f", log_plot=True),
    Statistic("noise", "noise std (0-1)", fmt=".4f"),
    Statistic("aspect", "aspect ratio (width / height)", fmt=".2f"),
    Statistic("portrait", "portrait share", share=True),
    Statistic("quarter_turned", "text lines vertical (90/270)", share=True),
    Statistic("abs_skew", "skew of the text lines, absolute (deg)", fmt=".1f"),
    Statistic("jpeg_quality", "JPEG quality (IJG, from the tables)", fmt=".0f"),
)


def values(stats: SplitStats, name: str) -> np.ndarray:
    """The finite values of one statistic (derived ones computed here). Rotation statistics only
    count images whose text lines were read confidently; JPEG quality only JPEG files."""
    t = stats.table
    if t.empty:
        return np.zeros(0)
    if name == "aspect":
        v = t["width"] / t["height"]
    elif name == "portrait":
        v = (t["height"] > t["width"]).astype(float)
    elif name == "quarter_turned":
        d = stats.readable["line_direction"]
        v = ((d >= 45) & (d < 135)).astype(float)
    elif name == "abs_skew":
        v = stats.readable["line_direction"].map(skew_of).abs()
    else:
        v = t[name]
    v = np.asarray(v, dtype=np.float64)
    return v[np.isfinite(v)]


def ks_distance(a: np.ndarray, b: np.ndarray, side: str = "both") -> float:
    """Kolmogorov-Smirnov distance between two samples: the largest gap between their cumulative
    shares. ``side="low"``: only where ``b`` has more mass below (``b`` smaller); ``"high"``: above."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    gap = np.searchsorted(b, grid, "right") / len(b) - np.searchsorted(a, grid, "right") / len(a)
    if side == "low":
        return float(max(0.0, gap.max()))
    if side == "high":
        return float(max(0.0, -gap.min()))
    return float(np.abs(gap).max())


def _summary(v: np.ndarray, share: bool) -> dict:
    if len(v) == 0:
        return {"n": 0}
    if share:
        return {"n": int(len(v)), "share": round(float(v.mean()), 4)}
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(len(v)), "median": float(med), "q25": float(q25), "q75": float(q75)}


def compare(train: SplitStats, test: SplitStats) -> dict[str, dict]:
    """Per statistic: train and test summaries, the shift (test - train median, or share) and the
    KS distance (0 = same distribution, 1 = no overlap): what the table and the log rank by."""
    out = {}
    for st in STATISTICS:
        a, b = values(train, st.name), values(test, st.name)
        sa, sb = _summary(a, st.share), _summary(b, st.share)
        key = "share" if st.share else "median"
        shift = sb[key] - sa[key] if sa["n"] and sb["n"] else None
        out[st.name] = {"label": st.label, "train": sa, "test": sb, "shift": shift, "ks": round(ks_distance(a, b), 4)}
    return out


def _cell(summary: dict, st: Statistic, n_measured: int) -> str:
    if not summary["n"]:
        return "n/a"
    if st.share:
        return f"{100 * summary['share']:.1f}% (n={summary['n']})"
    of = f" (n={summary['n']})" if summary["n"] != n_measured else ""
    return f"{summary['median']:{st.fmt}} [{summary['q25']:{st.fmt}}, {summary['q75']:{st.fmt}}]{of}"


def format_table(comparison: dict[str, dict], n_train: int, n_test: int) -> str:
    """The comparison as a Markdown table: median [quartiles] (or share) per split, shift, KS. A count
    is shown where a statistic covers fewer images than were measured (text lines, JPEG files)."""
    lines = ["| statistic | train: median [q25, q75] | test: median [q25, q75] | shift | KS |",
             "|---|---|---|---|---|"]
    for st in STATISTICS:
        c = comparison[st.name]
        shift = "n/a" if c["shift"] is None else (f"{100 * c['shift']:+.1f} pp" if st.share
                                                   else f"{c['shift']:+{st.fmt}}")
        lines.append(f"| {st.label} | {_cell(c['train'], st, n_train)} | {_cell(c['test'], st, n_test)} "
                     f"| {shift} | {c['ks']:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ fitted profile
# Profile keys no image statistic measures: they keep DistortProfile's defaults.
UNMEASURED = ("flip_p", "crop_p", "crop", "perspective_p", "perspective", "occlusion_p", "occlusion_size")
_DECIMALS = {"brightness": 3, "contrast": 3, "blur_sigma": 4, "noise_std": 4, "angle": 1}


def profile_defaults() -> dict[str, Any]:
    import dataclasses

    from docclassify.config_schema import DistortProfile

    return dataclasses.asdict(DistortProfile())


def differs(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether train and test differ beyond sampling noise: the two-sample KS test at the 5 % level
    (KS distance > 1.36 / sqrt(n_eff), n_eff = n_a n_b / (n_a + n_b)). A statistic that does not
    differ is not fitted, so two samples of the same kind of images fit no distortion."""
    if len(a) == 0 or len(b) == 0:
        return False
    return ks_distance(a, b) > 1.36 / math.sqrt(len(a) * len(b) / (len(a) + len(b)))


def shifted_share(a: np.ndarray, b: np.ndarray, side: str) -> float:
    """Estimated share p of test images (``b``) that carry a shift, reading the test set as a
    mixture (1 - p) x train + p x shifted: the larger of the one-sided KS distance (never more
    than p) and the share of test images beyond the train's TAIL, less the TAIL that the train
    itself puts there, over 1 - TAIL (exact when every shifted image lies beyond the tail)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    if side == "both":
        lo, hi = np.quantile(a, [TAIL / 2, 1 - TAIL / 2])
        beyond = float(np.mean((b < lo) | (b > hi)))
    elif side == "low":
        beyond = float(np.mean(b < np.quantile(a, TAIL)))
    else:
        beyond = float(np.mean(b > np.quantile(a, 1 - TAIL)))
    return float(np.clip(max(ks_distance(a, b, side), (beyond - TAIL) / (1 - TAIL)), 0.0, 1.0))


Fit = tuple[dict[str, Any] | None, str]


def fit_rot90(train: SplitStats, test: SplitStats) -> Fit:
    """rot90_p from the share v of readable pages whose text lines run vertically (0 unless ``differs``). A 90 or 270
    turn makes lines vertical, a 180 turn does not (0 and 180 look alike without a model): with
    v0 = train share (pages read wrongly) and q = share turned by 90/270,
    v_test = (1 - q) v0 + q (1 - v0), so q = (v_test - v0) / (1 - 2 v0) and, k being uniform in
    {1, 2, 3}, rot90_p = 1.5 q."""
    a, b = values(train, "quarter_turned"), values(test, "quarter_turned")
    if min(len(a), len(b)) < MIN_READABLE:
        return None, f"default: fewer than {MIN_READABLE} images with readable text lines"
    v0, vt = float(a.mean()), float(b.mean())
    if v0 >= 0.4:
        return None, f"default: {100 * v0:.0f}% of train pages read as vertical (text-line direction unreliable)"
    q = float(np.clip((vt - v0) / (1 - 2 * v0), 0.0, 1.0))
    q = q if differs(a, b) else 0.0
    return {"rot90_p": min(1.0, 1.5 * q)}, (f"measured: vertical text lines {100 * vt:.1f}% test vs {100 * v0:.1f}% "
                                            f"train -> {100 * q:.1f}% turned by 90/270, x 1.5 for 180")


def fit_angle(train: SplitStats, test: SplitStats) -> Fit:
    """angle = the 95th percentile of |skew| of the test pages skewed beyond the train's 95th
    percentile (at least 1 degree); angle_p = shifted_share of |skew| (0 unless ``differs``)."""
    a, b = values(train, "abs_skew"), values(test, "abs_skew")
    if min(len(a), len(b)) < MIN_READABLE:
        return None, f"default: fewer than {MIN_READABLE} images with readable text lines"
    thr = max(float(np.quantile(a, 1 - TAIL)), 1.0)
    beyond = b[b > thr]
    p = shifted_share(a, b, "high") if len(beyond) else 0.0
    p = p if differs(a, b) else 0.0
    angle = float(np.quantile(beyond, 0.95)) if p > 0 else 0.0
    return {"angle_p": p, "angle": min(angle, 45.0)}, (f"measured: {len(beyond)} of {len(b)} readable test pages "
                                                       f"skewed beyond {thr:.1f} deg")


# ---- fitting a distortion's own model: min-KS mixture fits
P_GRID = np.round(np.linspace(0.0, 1.0, 21), 2)  # shares p tried
DRAWS = 8  # stratified draws of a distortion's strength per train image when pushing train through it


def _ecdf(sorted_values: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.searchsorted(sorted_values, points, "right") / len(sorted_values)


def _draws(lo: float, hi: float) -> np.ndarray:
    """DRAWS evenly spaced quantiles of U(lo, hi) (a deterministic stand-in for random draws)."""
    return lo + (hi - lo) * (np.arange(DRAWS) + 0.5) / DRAWS


def min_ks_fit(a: np.ndarray, b: np.ndarray, candidates) -> tuple[Any, float, float]:
    """The distortion that best explains test values ``b`` from train values ``a``.

    ``candidates`` yields (params, size, shifted): ``shifted`` is ``a`` pushed through the distortion
    with these params (its strengths drawn), ``size`` how big a change the params make. For every
    candidate and share p in P_GRID, the mixture (1 - p) a + p shifted is compared with ``b`` by the
    KS distance. Returned: (params, p, KS) of the closest mixture (ties: the smaller change p x size),
    or (None, 0, KS) when train and test do not differ (``differs``)."""
    points = np.sort(np.concatenate([a, b]))
    f_a, f_b = _ecdf(np.sort(a), points), _ecdf(np.sort(b), points)
    fits = [(float(np.abs(f_a - f_b).max()), 0.0, None, 0.0)]  # (KS, cost, params, p)
    for params, size, shifted in candidates:
        mix = (1 - P_GRID[:, None]) * f_a + P_GRID[:, None] * _ecdf(np.sort(shifted), points)
        ks = np.abs(mix - f_b).max(axis=1)
        fits += [(float(k), float(p) * size, params, float(p)) for k, p in zip(ks, P_GRID) if p > 0]
    if not differs(a, b):
        return None, 0.0, fits[0][0]
    best = min(fits, key=lambda f: (f[0], f[1]))
    return best[2], best[3], best[0]


def _range_grid(lo: float, hi: float, step: float):
    edges = np.round(np.arange(lo, hi + step / 2, step), 4)
    return [(float(x), float(y)) for i, x in enumerate(edges) for y in edges[i:]]


def fit_color(train: SplitStats, test: SplitStats) -> Fit:
    """brightness: the range [lo, hi] (-0.5..0.5 in steps of 0.025) and share p whose mixture
    (1 - p) train + p (train + U(lo, hi)) best matches the test brightness (min_ks_fit); contrast
    likewise with train x U(lo, hi) (0.3..2.0 in steps of 0.05); color_p = the larger share."""
    ba, bb = values(train, "brightness"), values(test, "brightness")
    ca, cb = values(train, "contrast"), values(test, "contrast")
    bright = ((r, max(abs(r[0]), abs(r[1])), np.clip(ba[:, None] + _draws(*r), 0, 1).ravel())
              for r in _range_grid(-0.5, 0.5, 0.025))
    (b_range, pb, kb) = min_ks_fit(ba, bb, bright)
    contrast = ((r, max(abs(math.log(r[0])), abs(math.log(r[1]))), (ca[:, None] * _draws(*r)).ravel())
                for r in _range_grid(0.3, 2.0, 0.05))
    (c_range, pc, kc) = min_ks_fit(ca, cb, contrast)
    fit = {"color_p": max(pb, pc), "brightness": list(b_range or (0.0, 0.0)), "contrast": list(c_range or (1.0, 1.0))}
    return fit, (f"measured: brightness share {pb:.2f} (KS {kb:.2f}), contrast share {pc:.2f} (KS {kc:.2f}) "
                 "of a min-KS mixture fit")


def _log_interp(x: np.ndarray, grid, curve) -> np.ndarray:
    return np.exp(np.interp(x, grid, np.log(np.maximum(np.minimum.accumulate(np.asarray(curve)), 1e-9))))


def at_train_quality(train: SplitStats, test: SplitStats) -> SplitStats:
    """The test images at the train's JPEG quality or above (files that are not JPEG count as 100),
    if there are at least 2 x MIN_READABLE of them: a low-quality JPEG smooths noise away and lowers
    the sharpness, so blur and noise are read on the others (their shares then stand for all)."""
    qa = np.nan_to_num(train.table["jpeg_quality"].to_numpy(dtype=np.float64), nan=100.0)
    qb = np.nan_to_num(test.table["jpeg_quality"].to_numpy(dtype=np.float64), nan=100.0)
    keep = qb >= np.quantile(qa, TAIL)
    if keep.all() or keep.sum() < 2 * MIN_READABLE:
        return test
    return SplitStats(test.table[keep].reset_index(drop=True), test.n_images, test.bad)


def fit_blur(train: SplitStats, test: SplitStats) -> Fit:
    """blur_sigma / blur_p: the S and p whose mixture (1 - p) train + p (train sharpness x r(U(0, S)))
    best matches the test sharpness (min_ks_fit, S from 0.0005 to 0.03 of the long side), r being the
    calibration curve: the median sharpness ratio of train images blurred at BLUR_GRID."""
    if not train.calib_blur:
        return None, "default: no calibration"
    a, b = values(train, "sharpness"), values(at_train_quality(train, test), "sharpness")
    cands = ((s, s, (a[:, None] * _log_interp(_draws(0.0, s), BLUR_GRID, train.calib_blur)).ravel())
             for s in np.round(np.geomspace(0.0005, 0.03, 36), 5))
    sigma, p, ks = min_ks_fit(np.log(np.maximum(a, 1e-9)), np.log(np.maximum(b, 1e-9)),
                              ((s, size, np.log(np.maximum(x, 1e-9))) for s, size, x in cands))
    why = f"measured: min-KS mixture fit of the sharpness (KS {ks:.2f})"
    return {"blur_p": p, "blur_sigma": float(sigma or 0.0)}, why


def fit_noise(train: SplitStats, test: SplitStats) -> Fit:
    """noise_std / noise_p: noise adds in quadrature, so an image of estimated noise x with noise of
    std s added reads sqrt(x^2 + e(s)^2), e the calibrated excess (train images with noise of
    NOISE_GRID added: sqrt(m(s)^2 - m(0)^2) of their median estimate m). S and p: min_ks_fit of
    (1 - p) train + p sqrt(train^2 + e(U(0, S))^2) to the test (S from 0.002 to 0.3)."""
    if not train.calib_noise:
        return None, "default: no calibration"
    a, b = values(train, "noise"), values(at_train_quality(train, test), "noise")
    m = np.asarray(train.calib_noise)
    excess = np.sqrt(np.maximum(0.0, np.maximum.accumulate(m) ** 2 - m[0] ** 2))
    cands = ((s, s, np.sqrt(a[:, None] ** 2 + np.interp(_draws(0.0, s), NOISE_GRID, excess) ** 2).ravel())
             for s in np.round(np.geomspace(0.002, 0.3, 36), 4))
    std, p, ks = min_ks_fit(a, b, cands)
    return {"noise_p": p, "noise_std": float(std or 0.0)}, f"measured: min-KS mixture fit of the noise (KS {ks:.2f})"


def fit_jpeg(train: SplitStats, test: SplitStats) -> Fit:
    """jpeg_quality = [5th, 95th percentile] of the test qualities below the train's 5th
    percentile (files that are not JPEG count as 100); jpeg_p = shifted_share towards lower quality."""
    a = np.nan_to_num(train.table["jpeg_quality"].to_numpy(dtype=np.float64), nan=100.0)
    b = np.nan_to_num(test.table["jpeg_quality"].to_numpy(dtype=np.float64), nan=100.0)
    low = b[b < np.quantile(a, TAIL)]
    p = shifted_share(a, b, "low") if len(low) else 0.0
    if p == 0:
        return {"jpeg_p": 0.0}, "measured: no test image below the train's JPEG quality"
    lo, hi = (int(np.clip(round(v), 1, 100)) for v in np.quantile(low, [0.05, 0.95]))
    why = f"measured: {len(low)} test images below quality {np.quantile(a, TAIL):.0f}"
    return {"jpeg_p": p, "jpeg_quality": [lo, hi]}, why


# Each fitter and the profile keys it sets (or, when not measurable, leaves at their defaults).
FITTERS = ((fit_rot90, ("rot90_p",)), (fit_angle, ("angle_p", "angle")),
           (fit_color, ("color_p", "brightness", "contrast")), (fit_blur, ("blur_p", "blur_sigma")),
           (fit_noise, ("noise_p", "noise_std")), (fit_jpeg, ("jpeg_p", "jpeg_quality")))


def _rounded(profile: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in profile.items():
        if k == "jpeg_quality":
            out[k] = [int(x) for x in v]
        elif isinstance(v, int) and not isinstance(v, bool):  # counts (occlusion_count) stay integers
            out[k] = v
        elif isinstance(v, list):
            out[k] = [round(float(x), _DECIMALS.get(k, 3)) for x in v]
        else:
            out[k] = round(float(v), _DECIMALS.get(k, 3))
    return out


def fit_profile_with_basis(train: SplitStats, test: SplitStats) -> tuple[dict[str, Any], dict[str, str]]:
    """(the fitted profile, per key the measurement it rests on or why it kept the default)."""
    profile = profile_defaults()
    basis = {k: "default: not measurable from image statistics" for k in profile}
    for fit, keys in FITTERS:
        fitted, why = fit(train, test)
        profile.update(fitted or {})
        basis.update({k: why for k in keys})
    return _rounded(profile), basis


def fit_profile(train: SplitStats, test: SplitStats) -> dict[str, Any]:
    """A DistortProfile (plain dict, every key) whose ranges cover the measured train-vs-test shift
    (docs/shift.md): keys no statistic measures (flip, crop, perspective, occlusion) keep the defaults."""
    return fit_profile_with_basis(train, test)[0]


# ------------------------------------------------------------------------------------------ report
SHIFT_JSON, SHIFT_PNG, SHIFT_CSV, PROFILE_YAML = "shift.json", "shift.png", "shift_images.csv", "distort_profile.yaml"


@dataclass
class ShiftReport:
    """Everything the report shows and writes: both splits' statistics, their comparison and the fit."""

    train: SplitStats
    test: SplitStats
    comparison: dict[str, dict]
    profile: dict[str, Any]
    basis: dict[str, str]
    work_size: int
    max_images: int | None
    seconds: float

    def to_json(self) -> dict:
        split = {name: {"measured": len(s.table), "images": s.n_images, "undecodable": s.bad}
                 for name, s in (("train", self.train), ("test", self.test))}
        return {"work_size": self.work_size, "max_images": self.max_images, "splits": split,
                "statistics": self.comparison, "profile": self.profile, "profile_basis": self.basis,
                "calibration": {"blur_sigma": list(BLUR_GRID), "sharpness_ratio": self.train.calib_blur,
                                "noise_std": list(NOISE_GRID), "noise_estimate": self.train.calib_noise},
                "seconds": round(self.seconds, 2)}


def no_test_message(data_cfg) -> str:
    """Why a data config has no test images, and where they would have to be."""
    name = data_cfg.get("name")
    if name == "synthetic":
        return "data=synthetic has no test images (data.n_test_per_class=0)"
    if name == "competition":
        where = (f"{data_cfg.get('sample_submission')} (listing the test IDs) and the images in "
                 f"{data_cfg.get('test_dir')}/")
    else:
        where = f"a {data_cfg.get('test_dir')}/ folder of images"
    return f"data={name} data.root={data_cfg.get('root')} has no test images: the shift is measured against {where}"


def build_report(source, work_size: int, max_images: int | None, cache_dir) -> ShiftReport:
    """Measure both splits of ``source`` (a DataSource with test rows), compare them, fit a profile."""
    from docclassify.data.sources import DataError

    t0 = time.time()
    train = measure_split(source.train, work_size, max_images, cache_dir, calibrate=True)
    test = measure_split(source.test, work_size, max_images, cache_dir)
    for name, s in (("train", train), ("test", test)):
        if s.table.empty:
            raise DataError(f"shift report: none of the {s.n_images} {name} images could be decoded "
                            f"(e.g. {', '.join(s.bad[:3])})")
    profile, basis = fit_profile_with_basis(train, test)
    return ShiftReport(train, test, compare(train, test), profile, basis, work_size, max_images, time.time() - t0)


def plot_shift(report: ShiftReport):
    """Histograms of every statistic, train vs test (bars for the shares), and the fitted profile
    (a matplotlib Figure on the Agg canvas)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 10))
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.04, top=0.91, hspace=0.45, wspace=0.3)  # no layout solver: fast
    axes = fig.subplots(3, 4).ravel()
    for ax, st in zip(axes, STATISTICS):
        a, b = values(report.train, st.name), values(report.test, st.name)
        if st.share:
            ax.bar(["train", "test"], [100 * a.mean() if len(a) else 0, 100 * b.mean() if len(b) else 0],
                   color=["tab:blue", "tab:orange"], alpha=0.7)
            ax.set_ylabel("% of images")
        else:
            _histograms(ax, a, b, st.log_plot)
        prefix = "log10 " if st.log_plot else ""
        ax.set_title(f"{prefix}{st.label}\nKS {report.comparison[st.name]['ks']:.2f}", fontsize=9)
    lines = [f"{k}: {json.dumps(v)}" + ("" if report.basis[k].startswith("measured") else "  (default)")
             for k, v in report.profile.items()]
    lines = ["fitted profile", "(validation.distort=auto)", ""] + lines
    half = (len(lines) + 1) // 2
    for ax, column in zip(axes[len(STATISTICS):], (lines[:half], lines[half:])):
        ax.axis("off")
        ax.text(0.0, 1.0, "\n".join(column), va="top", fontsize=8, family="monospace", transform=ax.transAxes)
    fig.suptitle(f"train vs test ({len(report.train.table)} / {len(report.test.table)} images, "
                 f"measured at {report.work_size} px)")
    return fig


def _histograms(ax, a: np.ndarray, b: np.ndarray, log_scale: bool) -> None:
    if log_scale:
        a, b = np.log10(np.maximum(a, 1e-6)), np.log10(np.maximum(b, 1e-6))
    pooled = np.concatenate([a, b])
    bins = np.histogram_bin_edges(pooled, bins=30) if len(pooled) else 10
    for v, colour, split in ((a, "tab:blue", "train"), (b, "tab:orange", "test")):
        ax.hist(v, bins=bins, density=True, alpha=0.5, color=colour, histtype="stepfilled",
                label=f"{split} (n={len(v)})")
    ax.legend(fontsize=7)


def profile_yaml(report: ShiftReport, origin: str) -> str:
    """The fitted profile as YAML, each key under a comment saying what it rests on."""
    lines = [f"# Distortion profile fitted by docclassify.data.shift from {origin} (docs/shift.md):",
             f"# {len(report.train.table)} train and {len(report.test.table)} test images measured.",
             "# validation.distort=auto fits this at the start of training; to pin it, pass its keys",
             "# as validation.distort.<key>=<value>."]
    previous = None
    for key, value in report.profile.items():
        if report.basis[key] != previous:  # one comment over the keys that one measurement sets
            lines.append(f"# {report.basis[key]}")
            previous = report.basis[key]
        lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | Path, report: ShiftReport, per_image_csv: bool = False) -> list[Path]:
    """shift.json and shift.png (and shift_images.csv: every measured image) into ``out_dir``."""
    from docclassify.tracking.reports import save_figure
    from docclassify.utils.io import atomic_write_csv, atomic_write_json

    out_dir = Path(out_dir)
    written = [out_dir / SHIFT_JSON, out_dir / SHIFT_PNG]
    atomic_write_json(written[0], report.to_json())
    save_figure(plot_shift(report), written[1])
    if per_image_csv:
        rows = pd.concat([report.train.table.assign(split="train"), report.test.table.assign(split="test")])
        written.append(out_dir / SHIFT_CSV)
        atomic_write_csv(rows, written[-1])
    return written


def biggest_shifts(comparison: dict[str, dict], n: int = 4, min_ks: float = 0.1) -> list[str]:
    """One line per statistic with KS >= min_ks, the largest first (at most n)."""
    ranked = sorted((c["ks"], name) for name, c in comparison.items() if c["ks"] >= min_ks)[::-1][:n]
    lines = []
    for ks, name in ranked:
        c = comparison[name]
        st = next(s for s in STATISTICS if s.name == name)
        key = "share" if st.share else "median"
        fmt = ".1%" if st.share else st.fmt
        lines.append(f"{st.label}: {key} {c['train'][key]:{fmt}} -> {c['test'][key]:{fmt}} (KS {ks:.2f})")
    return lines


# ------------------------------------------------------------------------------------------ training hook
def distort_is_auto(cfg) -> bool:
    validation = cfg.get("validation")
    distort = validation.get("distort") if validation is not None else None
    return isinstance(distort, str) and distort == "auto"


def _has_test(source) -> bool:
    return source.test is not None and not source.test.empty


def _measure_for_run(source, cfg) -> ShiftReport:
    """build_report with the run's ``shift`` settings (defaults when a config has no such node)."""
    settings = cfg.get("shift")
    work_size = int(settings.work_size) if settings is not None else 256
    max_images = settings.max_images if settings is not None else 500
    return build_report(source, work_size, max_images, cfg.paths.cache_dir)


def fit_profile_for_run(source, cfg, run_dir: str | Path, write: bool = True,
                        report: ShiftReport | None = None) -> dict:
    """``validation.distort=auto``: the profile fitted from ``source``'s train-vs-test shift (from
    ``report`` when already measured), logged and saved as distort_profile.yaml in ``run_dir``
    (``write``). A DataError naming what is missing when the data has no test images."""
    from docclassify.data.sources import DataError
    from docclassify.utils.io import atomic_write_text

    if not _has_test(source):
        raise DataError(f"validation.distort=auto: {no_test_message(cfg.data)}. Give the test images, "
                        "or a profile instead of auto (e.g. drop the override: the validation option's default)")
    report = report or _measure_for_run(source, cfg)
    if write:
        atomic_write_text(Path(run_dir) / PROFILE_YAML, profile_yaml(report, f"data={cfg.data.name}"))
        log.info("validation.distort=auto: fitted profile %s -> %s", json.dumps(report.profile),
                 Path(run_dir) / PROFILE_YAML)
    return report.profile


def run_shift_check(source, cfg, run_dir: str | Path, write: bool = True) -> dict | None:
    """At the start of training: with ``shift.report`` and test images, log the biggest shifts and
    write shift.json / shift.png into ``run_dir``; with ``validation.distort=auto``, fit the profile
    (fit_profile_for_run: saved as distort_profile.yaml) and return it, else None. Without test
    images the check is silent, unless the profile must be fitted (a DataError naming what is
    missing, before any training). ``write=False`` (DDP ranks other than 0) measures (from the
    cache) without writing or logging."""
    settings = cfg.get("shift")
    report_on = bool(settings is not None and settings.get("report", True))
    auto = distort_is_auto(cfg)
    if not auto and not (report_on and _has_test(source)):
        return None
    if not _has_test(source):
        return fit_profile_for_run(source, cfg, run_dir, write)  # raises: nothing to fit to
    t0 = time.time()
    report = _measure_for_run(source, cfg)
    if write and report_on:
        write_report(run_dir, report)
        shifts = biggest_shifts(report.comparison) or ["none with a KS distance of 0.1 or more"]
        log.info("train-vs-test shift (%d train / %d test images, measured in %.1f s, %.1f s with %s): %s",
                 len(report.train.table), len(report.test.table), report.seconds, time.time() - t0,
                 Path(run_dir) / SHIFT_PNG, "; ".join(shifts))
    return fit_profile_for_run(source, cfg, run_dir, write, report) if auto else None
