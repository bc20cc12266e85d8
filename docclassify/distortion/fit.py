"""Fitting a profile to a measured shift (``validation.distort=auto``): each fitter reads train vs
test statistics and sets the profile keys of one step (docs/shift.md gives the formulas)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from docclassify.distortion.compare import ks_distance, values
from docclassify.distortion.measure import BLUR_GRID, NOISE_GRID, SplitStats
from docclassify.distortion.profile import profile_defaults

TAIL = 0.05        # a test image "outside the train range" lies beyond the train's 2.5/97.5 % (or 5 %)
MIN_READABLE = 10  # images with readable text lines needed per split to fit rot90_p / angle
# ------------------------------------------------------------------------------------------ fitted profile
# Profile keys no image statistic measures: they keep DistortProfile's defaults.
UNMEASURED = ("flip_p", "crop_p", "crop", "perspective_p", "perspective", "occlusion_p", "occlusion_size")
_DECIMALS = {"brightness": 3, "contrast": 3, "blur_sigma": 4, "noise_std": 4, "angle": 1}


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
