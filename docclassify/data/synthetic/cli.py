"""Command line: ``python -m docclassify.data.synthetic OUT_DIR ...``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from docclassify.data.synthetic.generator import generate
from docclassify.data.synthetic.spec import SyntheticSpec
from docclassify.utils.prog import prog


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(
        prog=prog("docclassify.data.synthetic"),
        description="Write the synthetic 17-class document data set into OUT_DIR.")
    d = SyntheticSpec()
    ap.add_argument("out_dir", metavar="OUT_DIR")
    ap.add_argument("--n-train-per-class", type=int, default=d.n_train_per_class)
    ap.add_argument("--n-test-per-class", type=int, default=d.n_test_per_class)
    ap.add_argument("--long-side", type=int, default=d.long_side)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--no-imbalance", action="store_true",
                    help="give every class n_train_per_class train images")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    try:
        spec = SyntheticSpec(a.n_train_per_class, a.n_test_per_class, a.long_side, a.seed,
                             imbalance=not a.no_imbalance)
    except ValueError as e:
        ap.error(str(e))
    t0 = time.perf_counter()
    out = generate(a.out_dir, spec, progress=not a.quiet)
    print(f"wrote synthetic data set to {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return out


def console_main() -> None:
    """The ``docclassify-synthetic`` console script (its exit status must not be main's Path)."""
    main()
