"""The shift report: both splits measured, compared and a profile fitted (``ShiftReport``), its
files (shift.json, shift.png, shift_images.csv, distort_profile.yaml), and the training hook
(``run_shift_check``: the report at the start of a run and the profile of ``validation.distort=auto``)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from docclassify.distortion.compare import STATISTICS, biggest_shifts, compare, values
from docclassify.distortion.fit import fit_profile_with_basis
from docclassify.distortion.measure import BLUR_GRID, NOISE_GRID, SplitStats, measure_split
from docclassify.errors import DataError
from docclassify.utils.io import (
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import CleanValidation, DataCommon, RobustValidation, ShiftCheck

log = logging.getLogger(__name__)

FIGURE_DPI = 90  # as the run reports' figures (tracking/reports.py)
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
    """Why a data config (the data group's typed settings or its node) has no test images, and where they
    would have to be."""
    name = getattr(data_cfg, "name", None)
    if name == "synthetic":
        return "data=synthetic has no test images (data.n_test_per_class=0)"
    if name == "competition":
        where = (f"{getattr(data_cfg, 'sample_submission', None)} (listing the test IDs) and the images in "
                 f"{getattr(data_cfg, 'test_dir', None)}/")
    else:
        where = f"a {getattr(data_cfg, 'test_dir', None)}/ folder of images"
    return (f"data={name} data.root={getattr(data_cfg, 'root', None)} has no test images: the shift is measured "
            f"against {where}")


def build_report(source, work_size: int, max_images: int | None, cache_dir) -> ShiftReport:
    """Measure both splits of ``source`` (a DataSource with test rows), compare them, fit a profile."""
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
    lines = [f"# Distortion profile fitted by docclassify.distortion from {origin} (docs/shift.md):",
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
    out_dir = Path(out_dir)
    written = [out_dir / SHIFT_JSON, out_dir / SHIFT_PNG]
    atomic_write_json(written[0], report.to_json())
    with atomic_write(written[1], "wb") as fh:
        plot_shift(report).savefig(fh, format="png", dpi=FIGURE_DPI)
    if per_image_csv:
        rows = pd.concat([report.train.table.assign(split="train"), report.test.table.assign(split="test")])
        written.append(out_dir / SHIFT_CSV)
        atomic_write_csv(rows, written[-1])
    return written


# ------------------------------------------------------------------------------------------ training hook
def distort_is_auto(validation) -> bool:
    """``validation.distort=auto`` (``validation``: the group's typed settings or its node; None: clean)."""
    distort = getattr(validation, "distort", None) if validation is not None else None
    return isinstance(distort, str) and distort == "auto"


def _has_test(source) -> bool:
    return source.test is not None and not source.test.empty


def _measure_for_run(source, shift: ShiftCheck | None, cache_dir) -> ShiftReport:
    """build_report with the run's ``shift`` settings (defaults when a config has no such node)."""
    work_size = int(shift.work_size) if shift is not None else 256
    max_images = shift.max_images if shift is not None else 500
    return build_report(source, work_size, max_images, cache_dir)


def fit_profile_for_run(source, shift: ShiftCheck | None, data: DataCommon, cache_dir, run_dir: str | Path,
                        write: bool = True, report: ShiftReport | None = None) -> dict:
    """``validation.distort=auto``: the profile fitted from ``source``'s train-vs-test shift (from
    ``report`` when already measured), logged and saved as distort_profile.yaml in ``run_dir``
    (``write``). A DataError naming what is missing when the data has no test images."""
    if not _has_test(source):
        raise DataError(f"validation.distort=auto: {no_test_message(data)}. Give the test images, "
                        "or a profile instead of auto (e.g. drop the override: the validation option's default)")
    report = report or _measure_for_run(source, shift, cache_dir)
    if write:
        atomic_write_text(Path(run_dir) / PROFILE_YAML, profile_yaml(report, f"data={data.name}"))
        log.info("validation.distort=auto: fitted profile %s -> %s", json.dumps(report.profile),
                 Path(run_dir) / PROFILE_YAML)
    return report.profile


def run_shift_check(source, validation: CleanValidation | RobustValidation | None, shift: ShiftCheck | None,
                    data: DataCommon, cache_dir, run_dir: str | Path, write: bool = True) -> dict | None:
    """At the start of training: with ``shift.report`` and test images, log the biggest shifts and
    write shift.json / shift.png into ``run_dir``; with ``validation.distort=auto``, fit the profile
    (fit_profile_for_run: saved as distort_profile.yaml) and return it, else None. Without test
    images the check is silent, unless the profile must be fitted (a DataError naming what is
    missing, before any training). ``validation``, ``shift`` and ``data`` are those groups' typed
    settings (``shift`` None: the defaults). ``write=False`` (DDP ranks other than 0) measures (from
    the cache) without writing or logging."""
    report_on = bool(shift is not None and shift.report)
    auto = distort_is_auto(validation)
    if not auto and not (report_on and _has_test(source)):
        return None
    if not _has_test(source):
        return fit_profile_for_run(source, shift, data, cache_dir, run_dir, write)  # raises: nothing to fit to
    t0 = time.time()
    report = _measure_for_run(source, shift, cache_dir)
    if write and report_on:
        write_report(run_dir, report)
        shifts = biggest_shifts(report.comparison) or ["none with a KS distance of 0.1 or more"]
        log.info("train-vs-test shift (%d train / %d test images, measured in %.1f s, %.1f s with %s): %s",
                 len(report.train.table), len(report.test.table), report.seconds, time.time() - t0,
                 Path(run_dir) / SHIFT_PNG, "; ".join(shifts))
    return fit_profile_for_run(source, shift, data, cache_dir, run_dir, write, report) if auto else None
