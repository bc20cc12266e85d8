"""Training for the measured shift: basic vs advanced vs augment.match_validation (and a searched recipe).

Each recipe trains with `python -m docclassify.train` on the built-in synthetic data (clean
training images; its labelled test split is turned, mirrored, tilted onto coloured corners,
cropped, blurred, noisier, differently lit and re-encoded) with the default `validation=both`,
then `python -m docclassify.infer` (`tta=none`) predicts that test split. Printed per recipe:
clean cv, robust cv (the run's objective), test macro F1, and the test gain over `advanced`.

Recipes (all at the same model, image size, folds, epochs and seed unless they are experiments):
  basic        pipeline=basic: light augmentation, no turns or flips
  advanced     pipeline=basic augment=advanced: the hard set (quarter turns, flips, warps, blur,
               noise, JPEG, lighting, dropout) on every sample
  match        pipeline=basic augment.match_validation=true: half the samples distorted by the
               robust copies' default profile (validation.distort), then the basic set
  match_auto   the same with validation.distort=auto: the profile fitted from the measured
               train-vs-test shift of the test images (no test labels read)
  --experiment NAME   a recipe from conf/experiment/NAME.yaml (e.g. the best of a robust_recipe
               search) at its own image size and epochs, on all folds

    python benchmarks/match_validation_benchmark.py                        # resnet18, 64 px, 3 folds, 10 epochs
    python benchmarks/match_validation_benchmark.py --recipes match --experiment robust_recipe_synthetic

Runs already trained under --work are reused (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, machine_line
from robust_validation_benchmark import run_cmd, test_f1

RECIPES = {
    "basic": ["pipeline=basic"],
    "advanced": ["pipeline=basic", "augment=advanced"],
    "match": ["pipeline=basic", "augment.match_validation=true"],
    "match_auto": ["pipeline=basic", "augment.match_validation=true", "validation.distort=auto"],
}


def train(name: str, overrides: list[str], run_dir: Path) -> float:
    if (run_dir / "results.json").is_file():
        print(f"{name}: reusing {run_dir}", flush=True)
        return float(json.loads((run_dir / "results.json").read_text()).get("seconds", "nan"))
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "docclassify.train", *overrides, "logger=none", f"hydra.run.dir={run_dir}"]
    t0 = time.time()
    run_cmd(cmd, run_dir.parent / f"{run_dir.name}.train.log")
    return time.time() - t0


def recipe_runs(args) -> list[tuple[str, list[str], str]]:
    """(name, docclassify.train overrides, run-dir tag) of every recipe asked for."""
    common = [f"model={args.model}", "model.pretrained=false", f"folds.n={args.folds}", f"seed={args.seed}"]
    budget = [f"data.img_size={args.img_size}", f"trainer.epochs={args.epochs}"]
    tag = f"{args.model}-{args.img_size}px-{args.epochs}ep-{args.folds}f-s{args.seed}"
    runs = [(r, [*RECIPES[r], *common, *budget], f"{r}-{tag}") for r in args.recipes]
    for name in args.experiment:  # its own size and epochs; every fold (a search trains fold 0 only)
        runs.append((name, [f"experiment={name}", *common, "folds.run=null"],
                     f"{name}-{args.model}-{args.folds}f-s{args.seed}"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--experiment", nargs="*", default=[], help="conf/experiment names to add as recipes")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tta", default="none", help="infer's TTA set for the test figure")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "match-validation", help="where runs go")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(REPO)
    print(machine_line(), flush=True)
    rows = []
    for name, overrides, tag in recipe_runs(args):
        run_dir = args.work / tag
        seconds = train(name, overrides, run_dir)
        results = json.loads((run_dir / "results.json").read_text())
        fold = results["folds"][0]
        row = {"recipe": name, "img_size": fold["img_size"], "epochs": fold["epochs_run"], "train_s": round(seconds),
               "cv_clean": results["cv_macro_f1"], "cv_robust": results["cv_macro_f1_robust"],
               "test": test_f1(run_dir, args.tta), "run": str(run_dir)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{args.model} from scratch, {args.folds} folds, seed {args.seed}, test tta={args.tta}; load avg now "
          f"{machine_line().split('load avg ')[1].split(' |')[0]}")
    base = next((r["test"] for r in rows if r["recipe"] == "advanced"), None)
    print("| recipe | size, epochs | clean cv | robust cv | test | test - advanced | robust - test | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = f"{r['test'] - base:+.3f}" if base is not None else "-"
        print(f"| {r['recipe']} | {r['img_size']} px, {r['epochs']} | {r['cv_clean']:.3f} | {r['cv_robust']:.3f} | "
              f"{r['test']:.3f} | {gain} | {r['cv_robust'] - r['test']:+.3f} | {r['train_s']} |")


if __name__ == "__main__":
    main()
