"""What robust validation costs: the one-time build of the distorted copies, and the per-epoch
validation time of validation=clean vs both vs robust, next to the training epoch it follows.

The real engine pieces on one fold (fold 0 of 5) of a competition-shaped data set (default: the
synthetic 1,570 JPEGs at ~600 px long side of benchmarks/_common.py): `engine.kfold` loads the
data and builds the copies (timed cold, in a fresh cache dir, then warm: opened from the cache as
every later run and sweep trial does), `engine.fold.prepare_fold` builds the fold, one training
epoch is timed, then `engine.fold.validate` for each validation option (median of --repeats):
clean, both in one pass (the clean rows and their copies in the same batches, what training does),
both in two separate passes (the clean loader, then the copies' loader: before issue 30), robust.
--amp and extra overrides (after --) set the precision and anything else as on the command line.

    python benchmarks/robust_validation_cost.py                        # resnet18 from scratch, 128 px
    python benchmarks/robust_validation_cost.py --img-size 64 --copies 2 4
    python benchmarks/robust_validation_cost.py --model convnext_atto --amp auto   # bf16 on a bf16 CPU
    python benchmarks/robust_validation_cost.py --model convnext_atto --amp none -- trainer.channels_last=false
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import (
    DEFAULT_WORK,
    compose,
    data_overrides,
    ensure_data,
    machine_line,
    set_threads,
    timed,
)


def measure(args, copies: int, cache_dir: Path) -> dict:
    from docclassify.data import cache
    from docclassify.engine import fold as fold_mod
    from docclassify.engine import kfold
    from docclassify.engine.epoch import EpochProgress, train_one_epoch

    cfg = compose([*data_overrides(args.data, cache_dir, args.img_size), f"model={args.model}",
                   "model.pretrained=false", "trainer.epochs=1", "folds.n=5", "folds.run=[0]",
                   f"validation.copies={copies}", f"hydra.run.dir={cache_dir / 'run'}",
                   f"paths.output_dir={cache_dir / 'run'}", f"trainer.amp={args.amp}", *args.overrides])
    run = kfold.start_run(cfg, kfold.CallbackList([]))
    data = kfold.load_run_data(run)  # decoded images (built once, not timed here)
    t0 = time.perf_counter()
    kfold.add_robust_copies(run, data)
    cold = time.perf_counter() - t0
    cache._OPEN.clear()  # as a new process (a later run, a sweep trial) would
    t0 = time.perf_counter()
    kfold.add_robust_copies(run, data)
    warm = time.perf_counter() - t0
    job = fold_mod.prepare_fold(data.plans[0], run, data)
    t0 = time.perf_counter()
    train_one_epoch(job.parts, job.train_loader, job.ctx, epoch=0, start=EpochProgress())
    train_s = time.perf_counter() - t0
    seconds = {}
    one_pass = job.views_loader  # validation=both's loader of the clean rows and their copies
    for name, views, merged in (("clean", ("clean",), None), ("both", ("clean", "robust"), one_pass),
                                ("both_separate", ("clean", "robust"), None), ("robust", ("robust",), None)):
        job.views, job.views_loader = views, merged
        job.monitor = "clean" if views == ("clean",) else "robust"
        seconds[name] = timed(lambda: fold_mod.validate(job), args.repeats)
    n_train = int(data.keep.sum())
    return {"copies": copies, "n_train": n_train, "n_val": len(job.val_idx), "amp": run.amp.name,
            "channels_last": job.ctx.channels_last, "build_cold_s": cold,
            "open_warm_s": warm, "train_epoch_s": train_s, **{f"val_{k}_s": v for k, v in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="a competition-layout folder (default: synthetic)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--copies", type=int, nargs="+", default=[2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--amp", default="none", help="trainer.amp (auto: bf16 on a CPU with bf16 instructions)")
    parser.add_argument("overrides", nargs="*", help="more docclassify overrides (after --)")
    args = parser.parse_args()
    set_threads(args.threads)
    args.data = ensure_data(args.data, work=args.work)
    print(machine_line(), flush=True)
    rows = []
    for copies in args.copies:
        with tempfile.TemporaryDirectory(prefix="robust-cost-") as tmp:  # a cold cache for every setting
            rows.append(measure(args, copies, Path(tmp)))
        print(rows[-1], flush=True)
    print(f"\n{args.model} at {args.img_size} px, fold 0 of 5 ({rows[0]['n_train']} images, {rows[0]['n_val']} "
          f"validation rows), amp {rows[0]['amp']}, channels-last {rows[0]['channels_last']}; load avg now "
          f"{machine_line().split('load avg ')[1].split(' |')[0]}")
    print("| copies | copies built once (cold) | opened (warm) | train epoch | validation clean | both, one pass "
          "| both, two passes | robust | both (one pass) vs clean, share of an epoch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra = r["val_both_s"] - r["val_clean_s"]
        epoch = r["train_epoch_s"] + r["val_clean_s"]
        print(f"| {r['copies']} | {r['build_cold_s']:.1f} s ({r['n_train'] * r['copies']} images) | "
              f"{r['open_warm_s']:.2f} s | {r['train_epoch_s']:.1f} s | {r['val_clean_s']:.1f} s | "
              f"{r['val_both_s']:.1f} s | {r['val_both_separate_s']:.1f} s | {r['val_robust_s']:.1f} s | "
              f"+{extra:.1f} s = +{100 * extra / epoch:.0f}% |")


if __name__ == "__main__":
    main()
