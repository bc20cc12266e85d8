"""Does bf16 autocast on CPU (trainer.amp=auto on a CPU with bf16 instructions) keep the accuracy
of fp32? The same training command per seed, once with trainer.amp=none (fp32) and once with
trainer.amp=bf16, each with submit=true: clean and robust cv macro F1 (results.json) and the
macro F1 of the synthetic data's labelled test split (the submission's summary), per seed, and
the mean difference bf16 - fp32 next to the spread between seeds.

Default: end_to_end_benchmark.py's command (convnext_atto from scratch, 128 px, batch 32,
pipeline=highperf with the hard augmentation off, fold 0 of 5, the default validation=both).

    python benchmarks/bf16_accuracy_benchmark.py                      # 3 epochs, seeds 0 1
    python benchmarks/bf16_accuracy_benchmark.py --epochs 6 --seeds 0 1 2
    python benchmarks/bf16_accuracy_benchmark.py --tta none                 # test F1 without TTA: quicker
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, ensure_data, machine_line


def train(args, amp: str, seed: int, run_dir: Path, cache: Path) -> dict:
    cmd = [sys.executable, "-m", "docclassify.train", "data=competition", f"data.root={args.data}",
           f"model={args.model}", "model.pretrained=false", f"data.img_size={args.img_size}",
           f"trainer.batch_size={args.batch}", f"trainer.epochs={args.epochs}", "folds.n=5", "folds.run=[0]",
           "pipeline=highperf", "augment.advanced_p_end=0.0", "trainer.lr=2e-3", "schedule.warmup_epochs=0",
           "logger=none", "submit=true", f"data.test_labels={args.test_labels}", f"infer.tta={args.tta}",
           f"trainer.amp={amp}", f"seed={seed}", f"hydra.run.dir={run_dir}", f"paths.cache_dir={cache}"]
    t0 = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}); see {run_dir.with_suffix('.log')}")
    results = json.loads((run_dir / "results.json").read_text())
    summary = json.loads((run_dir / "infer" / "summary.json").read_text())
    return {"amp": results.get("amp", amp), "seed": seed, "cv": results["cv_macro_f1"],
            "cv_robust": results["cv_macro_f1_robust"], "test": summary["test_metrics"]["macro_f1"],
            "n_test": summary["n_test"],
            "best_epoch": results["folds"][0]["best_epoch"], "s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="competition-layout data set (default: synthetic)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--model", default="convnext_atto")
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--test-labels", default="test_labels.csv", help="data.test_labels (in the data root)")
    ap.add_argument("--tta", default="orient", help="the submission's infer.tta (none: a quicker check)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="paths.cache_dir (default: a fresh one; another benchmark's saves the decode and copies)")
    args = ap.parse_args()
    args.data = ensure_data(args.data, work=args.work)
    print(machine_line(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bf16-acc-", dir=args.work) as tmp:
        cache = args.cache or Path(tmp) / "cache"
        for seed in args.seeds:
            for amp in ("none", "bf16"):  # alternated: a changing load hits both alike
                rows.append(train(args, amp, seed, Path(tmp) / f"{amp}_s{seed}", cache))
                print(rows[-1], flush=True)
    print(f"\n{args.model} at {args.img_size} px, batch {args.batch}, {args.epochs} epochs, fold 0 of 5, "
          f"validation=both, submit=true infer.tta={args.tta}; "
          f"load avg now {machine_line().split('load avg ')[1].split(' |')[0]}")
    print(f"test split: {rows[0]['n_test']} labelled images")
    print("| seed | amp | cv macro F1 | robust cv | test macro F1 | best epoch | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['amp']} | {r['cv']:.4f} | {r['cv_robust']:.4f} | {r['test']:.4f} | "
              f"{r['best_epoch']} | {r['s']:.0f} |")
    for key in ("cv", "cv_robust", "test"):
        fp32 = {r["seed"]: r[key] for r in rows if r["amp"] == "none"}
        bf16 = {r["seed"]: r[key] for r in rows if r["amp"] == "bf16"}
        diffs = [bf16[s] - fp32[s] for s in args.seeds]
        spread = statistics.pstdev(fp32.values()) if len(fp32) > 1 else float("nan")
        per_seed = ", ".join(f"{d:+.4f}" for d in diffs)
        print(f"{key}: bf16 - fp32 per seed {per_seed} (mean {statistics.mean(diffs):+.4f}); "
              f"fp32 spread between seeds (std) {spread:.4f}")


if __name__ == "__main__":
    main()
