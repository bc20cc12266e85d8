"""Memory across folds: RSS after each fold of a 5-fold run (engine.kfold.run_kfold in this
process, a callback reading /proc on on_fold_end). No growth means fold-5 RSS within ~10% of
fold-1 RSS: every fold's model, optimiser, EMA, loaders and worker processes are released.

    python benchmarks/memory_benchmark.py [--data DIR] [--epochs 1] [--img-size 128]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    DEFAULT_WORK,
    children_pids,
    compose,
    data_overrides,
    ensure_data,
    machine_line,
    pss_mb,
    rss_mb,
)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="competition-layout data set (default: synthetic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where data sets, caches and runs go")
    ap.add_argument("--n-per-class", type=int, default=30, help="size of the generated data set (without --data)")
    ap.add_argument("--model", default="convnext_atto")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: docclassify's)")
    ap.add_argument("--pipeline", default="highperf", help="preset (highperf: EMA, mixup, ...)")
    ap.add_argument("--trim", action="store_true",
                    help="gc + malloc_trim(0) before each reading: separates memory the C allocator keeps for "
                         "reuse from memory still in use")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = ensure_data(args.data, n_per_class=args.n_per_class, work=args.work)

    from docclassify.engine.kfold import run_kfold
    from docclassify.tracking.callbacks import Callback

    rows: list[tuple[int, float, float, float, int]] = []

    class RssAtFoldEnd(Callback):
        def on_fold_end(self, fold, outcome):
            if args.trim:
                gc.collect()
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            kids = children_pids()
            total_pss = pss_mb() + sum(pss_mb(k) for k in kids)
            rows.append((fold, rss_mb(), sum(rss_mb(k) for k in kids), total_pss, len(kids)))

    print(machine_line())
    run_dir = Path(tempfile.mkdtemp(prefix="memory-", dir=args.work))
    try:
        overrides = [*data_overrides(data, args.work / "cache", args.img_size), f"model={args.model}",
                     "model.pretrained=false", f"pipeline={args.pipeline}", f"trainer.epochs={args.epochs}",
                     f"trainer.batch_size={args.batch}", "folds.n=5", "logger=none", f"paths.output_dir={run_dir}"]
        if args.workers is not None:
            overrides.append(f"data.num_workers={args.workers}")
        cfg = compose(overrides)
        print(f"data {data}; {args.model} at {args.img_size} px, batch {args.batch}, {args.epochs} epoch(s) per fold, "
              f"pipeline {args.pipeline}")
        base = rss_mb()
        run_kfold(cfg, [RssAtFoldEnd()])
        gc.collect()
        after = rss_mb()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"RSS before the run {base:.0f} MiB")
    print(f"{'fold':>4} {'main RSS MiB':>12} {'workers RSS MiB':>15} {'total PSS MiB':>13} {'workers':>7}"
          "   (PSS: shared pages counted once)")
    for fold, main_rss, kids_rss, total_pss, n_kids in rows:
        print(f"{fold:>4} {main_rss:>12.0f} {kids_rss:>15.0f} {total_pss:>13.0f} {n_kids:>7}")
    first, last = rows[0], rows[-1]
    print(f"fold {last[0]} / fold {first[0]}: main RSS {last[1] / first[1]:.3f}, total PSS {last[3] / first[3]:.3f}; "
          f"main RSS after the run {after:.0f} MiB, "
          f"peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"load avg at the end: {machine_line().split('load avg ')[1].split(' |')[0]}")


if __name__ == "__main__":
    sys.exit(main())
