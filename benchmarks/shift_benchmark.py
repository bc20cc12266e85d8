"""Cost and accuracy of the train-vs-test shift report (docclassify/distortion/, docs/shift.md).

    python benchmarks/shift_benchmark.py                 # the built-in synthetic data (data=synthetic)
    python benchmarks/shift_benchmark.py --data DIR      # a competition-layout folder with test images

Prints (1) what the check costs a training run: measuring both splits with an empty statistics
cache, with a warm one (every later run, fold job and sweep trial), and the files it writes
(shift.json + shift.png); (2) on the synthetic data, whose test_distortions.csv records every
planted distortion, how well the per-image estimates and the fitted profile match the truth.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_WORK  # noqa: E402

from docclassify.data.sources import load_competition  # noqa: E402
from docclassify.distortion import measure  # noqa: E402
from docclassify.distortion import report as shift_report  # noqa: E402


def source_for(args):
    if args.data:
        return load_competition(args.data)
    from docclassify.data.synthetic import SyntheticSpec, ensure_synthetic

    root = ensure_synthetic(Path(args.work).expanduser(), SyntheticSpec())
    return load_competition(root, test_labels="test_labels.csv", name="synthetic")


def timings(source, work_size: int, max_images: int) -> list[tuple[str, float]]:
    """Seconds of each part of the run-start check, the cache cold and warm."""
    from docclassify.data import cache

    rows = []
    with tempfile.TemporaryDirectory() as cache_dir, tempfile.TemporaryDirectory() as run_dir:
        cache._DIGESTS.clear()  # as a new process: the files' bytes are hashed again
        t0 = time.perf_counter()
        report = shift_report.build_report(source, work_size, max_images, cache_dir)
        rows.append(("measure both splits, empty cache (first run on this data)", time.perf_counter() - t0))
        cache._DIGESTS.clear()
        t0 = time.perf_counter()
        shift_report.build_report(source, work_size, max_images, cache_dir)
        rows.append(("measure both splits, warm cache (a new process: files hashed again)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        shift_report.build_report(source, work_size, max_images, cache_dir)
        rows.append(("measure both splits, warm cache, same process (sweep trials)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        shift_report.write_report(run_dir, report)
        rows.append(("write shift.json + shift.png (first time in the process: imports matplotlib)",
                     time.perf_counter() - t0))
        t0 = time.perf_counter()
        shift_report.write_report(run_dir, report)
        rows.append(("write shift.json + shift.png again", time.perf_counter() - t0))
    return rows


def per_image_accuracy(report, truth: pd.DataFrame) -> list[tuple[str, str]]:
    t = report.test.table.merge(truth, on="ID")
    readable = t[t["line_confidence"] >= measure.LINES_CONFIDENT]
    vertical = (readable["line_direction"] >= 45) & (readable["line_direction"] < 135)
    turned = readable["rot90_k"] % 2 == 1
    true_skew = np.where(readable["flip"] == "none", readable["angle"], -readable["angle"])
    skew_err = np.abs(readable["line_direction"].map(measure.skew_of) - true_skew)
    return [
        ("test pages with readable text lines", f"{len(readable)} of {len(t)} ({100 * len(readable) / len(t):.0f}%)"),
        ("quarter turn (90/270 vs 0/180) right, readable pages", f"{100 * (vertical == turned).mean():.1f}%"),
        ("skew error, readable pages: median / 90th percentile", f"{np.median(skew_err):.2f} / "
                                                                  f"{np.quantile(skew_err, 0.9):.2f} deg"),
        ("JPEG quality read exactly", f"{100 * (t['jpeg_quality'] == t['jpeg_quality_true']).mean():.1f}%"),
    ]


def profile_vs_truth(report, truth: pd.DataFrame, long_side: int) -> list[tuple[str, str, str]]:
    p = report.profile
    low_q = truth["jpeg_quality_true"] < 92
    blur = truth["blur"] / long_side
    return [
        ("rot90_p", f"{p['rot90_p']}", f"{(truth['rot90_k'] > 0).mean():.2f} turned (k = 1, 2, 3)"),
        ("angle_p / angle", f"{p['angle_p']} / {p['angle']}",
         f"{(truth['angle'] != 0).mean():.2f} / {truth['angle'].abs().max():.1f} (3-20 deg)"),
        ("blur_p / blur_sigma", f"{p['blur_p']} / {p['blur_sigma']}",
         f"{(blur > 0).mean():.2f} / {blur.max():.4f} (plus resampling and JPEG softening)"),
        ("noise_p / noise_std", f"{p['noise_p']} / {p['noise_std']}",
         f"{(truth['noise'] > 0).mean():.2f} / {truth['noise'].max() / 255:.3f} (half then JPEG 12-45)"),
        ("color_p", f"{p['color_p']}", f"{(truth['brightness'] != 1).mean():.2f} (exposure x0.55-1.5, "
                                        "contrast x0.6-1.4, gamma 0.5-2)"),
        ("brightness / contrast", f"{p['brightness']} / {p['contrast']}", "(multiplicative + gamma: no direct value)"),
        ("jpeg_p / jpeg_quality", f"{p['jpeg_p']} / {p['jpeg_quality']}",
         f"{low_q.mean():.2f} / [{truth.loc[low_q, 'jpeg_quality_true'].min()}, "
         f"{truth.loc[low_q, 'jpeg_quality_true'].max()}]"),
    ]


def md(rows, header) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="competition-layout folder (default: data=synthetic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the synthetic data is generated")
    ap.add_argument("--work-size", type=int, default=256)
    ap.add_argument("--max-images", type=int, default=500)
    args = ap.parse_args()
    source = source_for(args)
    print(f"load average {os.getloadavg()[0]:.2f}; {len(source.train)} train / {len(source.test)} test images, "
          f"{os.cpu_count()} CPUs\n")
    print(md([(k, f"{v:.2f}") for k, v in timings(source, args.work_size, args.max_images)], ["step", "seconds"]))
    distortions = source.root / "test_distortions.csv"
    if distortions.is_file():
        report = shift_report.build_report(source, args.work_size, args.max_images, args.work / "shift-bench-cache")
        truth = pd.read_csv(distortions).rename(columns={"jpeg_quality": "jpeg_quality_true"})
        long_side = int(max(report.train.table[["width", "height"]].max()))
        print("\n" + md(per_image_accuracy(report, truth), ["per-image estimate (synthetic test split)", "value"]))
        header = ["profile key", "fitted", "planted by the generator"]
        print("\n" + md(profile_vs_truth(report, truth, long_side), header))
    print(f"\nload average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
