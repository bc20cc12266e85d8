"""How close do a profile's copies of the train pages come to a test split? KS distance per image
statistic (docs/shift.md) between the synthetic data's test splits and copies of its train pages
drawn from each profile, beside the clean train pages' own distance.

    python benchmarks/profile_fidelity.py                     # n_train/test_per_class 20, 256 px
    python benchmarks/profile_fidelity.py --per-class 10 --long-side 128

A profile that describes a split (synthetic_test for test/, phone_photo for test_phone/) should
bring every statistic close to the split (KS near 0); the default validation profile and the
other split's profile show how far a profile written for something else stays. Copies are drawn
as robust copies are (distortion/draw.py, at the page's own size) and measured as PNG files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402

from docclassify.data.sources import load_competition  # noqa: E402
from docclassify.data.synthetic import SyntheticSpec, generate  # noqa: E402
from docclassify.distortion import distort, load_profile, normalise_profile  # noqa: E402
from docclassify.distortion.compare import STATISTICS, compare  # noqa: E402
from docclassify.distortion.measure import measure_split  # noqa: E402

SPLITS = {"test/": ("test", "sample_submission.csv"), "test_phone/": ("test_phone", "test_phone_sample_submission.csv")}
SHOWN = ("brightness", "contrast", "sharpness", "noise", "aspect", "quarter_turned", "abs_skew")


def copies_of(train: pd.DataFrame, profile: dict, out: Path) -> pd.DataFrame:
    """One copy of every train page (generator (1, row)), saved losslessly so only the profile shows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, path in enumerate(train["path"]):
        image, _ = distort(np.asarray(Image.open(path).convert("RGB")), profile, np.random.default_rng([1, i]))
        Image.fromarray(image).save(out / f"{i}.png")
        rows.append((f"{i}.png", out / f"{i}.png"))
    return pd.DataFrame(rows, columns=["ID", "path"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--long-side", type=int, default=256)
    args = ap.parse_args()
    print(machine_line(), flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "data", SyntheticSpec(args.per_class, args.per_class, args.long_side, seed=4),
                        progress=False)
        source = load_competition(root)
        train = measure_split(source.train, 256, None, None)
        splits = {name: measure_split(load_competition(root, sample_submission=sub, test_dir=folder).test, 256, None,
                                      None) for name, (folder, sub) in SPLITS.items()}
        profiles = {"default": normalise_profile({}), "synthetic_test": load_profile("synthetic_test"),
                    "phone_photo": load_profile("phone_photo")}
        measured = {"clean train pages": train}
        for name, profile in profiles.items():
            measured[f"copies: {name}"] = measure_split(copies_of(source.train, profile, Path(tmp) / name), 256, None,
                                                        None)
        labels = [next(s.label for s in STATISTICS if s.name == k) for k in SHOWN]
        for split, stats in splits.items():
            print(f"\nKS distance to {split} ({len(stats.table)} images; 0 = the same distribution)\n")
            print("| pages | " + " | ".join(labels) + " |\n|---|" + "---|" * len(SHOWN))
            for name, m in measured.items():
                ks = compare(m, stats)
                print(f"| {name} | " + " | ".join(f"{ks[k]['ks']:.2f}" for k in SHOWN) + " |")
    print(f"\n{len(source.train)} train pages, {args.long_side} px, {time.perf_counter() - t0:.0f} s; {machine_line()}")


if __name__ == "__main__":
    main()
