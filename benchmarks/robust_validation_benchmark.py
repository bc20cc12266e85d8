"""Does the cv figure predict the distorted test? Clean cv vs robust cv vs test macro F1 per recipe.

Each recipe trains with `python -m docclassify.train` on the built-in synthetic data (clean
training images; its test split is turned, mirrored, tilted, cropped, blurred, noisier and
differently lit, labels in test_labels.csv) with the default `validation=both`, so every run
reports `cv_macro_f1` (clean out-of-fold rows) and `cv_macro_f1_robust` (their distorted
copies, `validation.distort` = the default profile of conf/validation/robust.yaml (both.yaml composes it), which is
not fitted to this data set). Then `python -m docclassify.infer` predicts the labelled test
split with the fold checkpoints (`tta=none`) and reports its macro F1. The table shows how far
each cv figure is from the test figure, and whether robust cv ranks the recipes as the test does.

    python benchmarks/robust_validation_benchmark.py                  # resnet18 from scratch, 64 px, 3 folds, 8 epochs
    python benchmarks/robust_validation_benchmark.py --epochs 10 --recipes basic advanced
    python benchmarks/robust_validation_benchmark.py --train-override validation.distort.noise_p=0  # a profile variant
    python benchmarks/robust_validation_benchmark.py --recipes default highperf --folds 5 --epochs 6  # default command

Runs already trained under --work are reused (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, machine_line

# name -> docclassify.train overrides. default: no override (with --folds 5 --epochs 6 the default
# command itself); basic: light augmentation, no turns or flips; advanced: the
# hard augmentation set (quarter turns, flips, blur, noise, JPEG ...) on every sample; highperf:
# the highperf preset (mixup/cutmix, label smoothing, EMA, advanced share ramping to 0.5) with
# its warmup and lr scaled to a CPU budget of a few epochs from scratch; flips: basic with both
# mirrors (together a half turn) and +-20 degree skew, cheap orientation cover.
RECIPES = {
    "default": [],  # python -m docclassify.train as shipped (pipeline=quick)
    "basic": ["pipeline=basic"],
    "advanced": ["pipeline=basic", "augment=advanced"],
    "highperf": ["pipeline=highperf", "schedule.warmup_epochs=1", "trainer.lr=1e-3", "trainer.batch_size=48"],
    "flips": ["pipeline=basic", "augment.hflip=true", "augment.vflip=true", "augment.rotate_limit=20"],
}


def run_cmd(cmd: list[str], log_path: Path) -> None:
    print(" ".join(cmd[1:]), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}), see {log_path}")


def train(recipe: str, run_dir: Path, args) -> float:
    if (run_dir / "results.json").is_file():
        print(f"{recipe}: reusing {run_dir}", flush=True)
        return float(json.loads((run_dir / "results.json").read_text()).get("seconds", "nan"))
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "docclassify.train", *RECIPES[recipe], f"model={args.model}", "model.pretrained=false",
           f"data.img_size={args.img_size}", f"trainer.epochs={args.epochs}", f"folds.n={args.folds}",
           f"seed={args.seed}", "logger=none", *args.train_override, f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    run_cmd(cmd, run_dir.parent / f"{run_dir.name}.train.log")
    return time.time() - t0


def test_f1(run_dir: Path, tta: str) -> float:
    """Macro F1 of `docclassify.infer` on the labelled synthetic test split."""
    out = run_dir / f"infer-{tta}"
    summary = out / "summary.json"
    if not summary.is_file():
        # The synthetic data set brings its test labels (test_labels.csv); infer scores the submission.
        cmd = [sys.executable, "-m", "docclassify.infer", f"runs=[{run_dir}]", f"tta={tta}", f"hydra.run.dir={out}"]
        run_cmd(cmd, run_dir.parent / f"{run_dir.name}.infer-{tta}.log")
    return float(json.loads(summary.read_text())["test_metrics"]["macro_f1"])


def ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    out = [0] * len(values)
    for r, i in enumerate(order, 1):
        out[i] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tta", default="none", help="infer's TTA set for the test figure")
    parser.add_argument("--train-override", nargs="*", default=[], help="extra docclassify.train overrides (all)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "robust-validation", help="where runs go")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(machine_line(), flush=True)
    extra = "-".join(o.replace("=", "").replace(".", "_") for o in args.train_override)
    tag = f"{args.model}-{args.img_size}px-{args.epochs}ep-{args.folds}f-s{args.seed}" + (f"-{extra}" if extra else "")
    rows = []
    for recipe in args.recipes:
        run_dir = args.work / f"{recipe}-{tag}"
        seconds = train(recipe, run_dir, args)
        results = json.loads((run_dir / "results.json").read_text())
        # cv_robust: the copies that chose nothing; cv_robust_select: those that picked the best epochs (a
        # run from before the split has one figure, on copies that did both)
        row = {"recipe": recipe, "train_s": round(seconds, 1), "cv_clean": results["cv_macro_f1"],
               "cv_robust": results["cv_macro_f1_robust"],
               "cv_robust_select": results.get("cv_macro_f1_robust_select", results["cv_macro_f1_robust"]),
               "test": test_f1(run_dir, args.tta), "run": str(run_dir)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{args.model} from scratch at {args.img_size} px, {args.epochs} epochs, {args.folds} folds, seed "
          f"{args.seed}, test tta={args.tta}; overrides {args.train_override or 'none'}; load avg now "
          f"{machine_line().split('load avg ')[1].split(' |')[0]}")
    rank_clean, rank_robust, rank_test = (ranks([r[k] for r in rows]) for k in ("cv_clean", "cv_robust", "test"))
    print("| recipe | clean cv | robust cv | robust cv (selecting copies) | test | robust - test | clean - test "
          "| rank clean / robust / test |")
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print(f"| {r['recipe']} | {r['cv_clean']:.3f} | {r['cv_robust']:.3f} | {r['cv_robust_select']:.3f} | "
              f"{r['test']:.3f} | {r['cv_robust'] - r['test']:+.3f} | {r['cv_clean'] - r['test']:+.3f} | "
              f"{rank_clean[i]} / {rank_robust[i]} / {rank_test[i]} |")
    print(f"robust cv ranks the recipes as the test does: {rank_robust == rank_test}; "
          f"clean cv does: {rank_clean == rank_test}")


if __name__ == "__main__":
    main()
