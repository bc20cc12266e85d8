"""Comparing two measured splits: per statistic the quartiles, the median shift and the KS
distance, as a table (and the log line of the biggest shifts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from docclassify.distortion.measure import SplitStats, skew_of


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
        return {"n": len(v), "share": round(float(v.mean()), 4)}
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": len(v), "median": float(med), "q25": float(q25), "q75": float(q75)}


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
