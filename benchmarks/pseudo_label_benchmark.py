"""Pseudo-label rounds on the synthetic data: a base run vs one and two rounds of pseudo.source.

The built-in synthetic data's test split (turned, mirrored, tilted, blurred, noisier, differently
lit: the stand-in for a hidden test set) is the unlabelled pool; its labels (test_labels.csv) are
read only to score. Each round is the plain command sequence of docs/pseudo-labels.md:

    train (base)                                    -> infer tta=none  (teacher 0, scored)
    train pseudo.source=<teacher 0 infer dir> ...   -> infer tta=none  (teacher 1, scored)
    train pseudo.source=<teacher 1 infer dir> ...   -> infer tta=none  (scored)

Printed per round: the test images added (and how many of their pseudo-labels are right, from
the test labels), clean cv, robust cv, and test macro F1 (`infer tta=none`).

    python benchmarks/pseudo_label_benchmark.py        # resnet18 from scratch, 64 px, 3 folds, 8 epochs
    python benchmarks/pseudo_label_benchmark.py --pseudo pseudo.soft=true pseudo.weight=0.5

Runs already finished under --work are reused (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
from _common import DEFAULT_WORK, REPO, machine_line
from robust_validation_benchmark import run_cmd

DEFAULT_PSEUDO = ["pseudo.threshold=null", "pseudo.top_fraction=0.5", "pseudo.per_class_max=12"]


def train(run_dir: Path, overrides: list[str]) -> float:
    if (run_dir / "results.json").is_file():
        print(f"reusing {run_dir}", flush=True)
        return float(json.loads((run_dir / "results.json").read_text()).get("seconds", "nan"))
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run_cmd([sys.executable, "-m", "docclassify.train", *overrides, f"hydra.run.dir={run_dir}"],
            run_dir.parent / f"{run_dir.name}.train.log")
    return time.time() - t0


def infer(run_dir: Path) -> Path:
    """`docclassify.infer runs=[run_dir] tta=none` (scored: the synthetic data brings its test labels)."""
    out = run_dir / "infer-none"
    if not (out / "summary.json").is_file():
        run_cmd([sys.executable, "-m", "docclassify.infer", f"runs=[{run_dir}]", "tta=none", f"hydra.run.dir={out}"],
                run_dir.parent / f"{run_dir.name}.infer.log")
    return out


def pseudo_precision(run_dir: Path, results: dict) -> float | None:
    """Share of the added pseudo-labels that equal the true test label (scoring only)."""
    selection = run_dir / "pseudo_labels.csv"
    labels = Path(results["data"]["root"]) / "test_labels.csv"
    if not selection.is_file() or not labels.is_file():
        return None
    chosen = pd.read_csv(selection, dtype={"ID": str})[["ID", "target"]]
    truth = pd.read_csv(labels, dtype={"ID": str}).rename(columns={"target": "truth"})
    merged = chosen.merge(truth, on="ID")
    return float((merged["target"] == merged["truth"]).mean()) if len(merged) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pseudo", nargs="*", default=DEFAULT_PSEUDO, help="pseudo.* selection overrides")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "pseudo-labels", help="where runs go")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(REPO)
    print(machine_line(), flush=True)
    base = [f"model={args.model}", "model.pretrained=false", f"data.img_size={args.img_size}",
            f"trainer.epochs={args.epochs}", f"folds.n={args.folds}", f"seed={args.seed}", "logger=none"]
    tag = f"{args.model}-{args.img_size}px-{args.epochs}ep-{args.folds}f-s{args.seed}"
    selection_tag = "_".join(o.replace("pseudo.", "").replace("=", "") for o in args.pseudo)
    rows, teacher = [], None
    for r in range(args.rounds + 1):
        run_dir = args.work / (f"base-{tag}" if r == 0 else f"round{r}-{tag}-{selection_tag}")
        overrides = base + ([f"pseudo.source={teacher}", *args.pseudo] if teacher else [])
        seconds = train(run_dir, overrides)
        results = json.loads((run_dir / "results.json").read_text())
        teacher = infer(run_dir)
        test = json.loads((teacher / "summary.json").read_text())["test_metrics"]["macro_f1"]
        pseudo = results.get("pseudo") or {}
        row = {"round": r, "added": pseudo.get("n_added", 0), "pool": pseudo.get("n_pool"),
               "precision": pseudo_precision(run_dir, results), "cv_clean": results["cv_macro_f1"],
               "cv_robust": results["cv_macro_f1_robust"], "test": test, "train_s": round(seconds),
               "run": str(run_dir)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{args.model} from scratch, {args.img_size} px, {args.folds} folds, {args.epochs} epochs, "
          f"seed {args.seed}; selection {' '.join(args.pseudo)}; test: infer tta=none; load avg now "
          f"{machine_line().split('load avg ')[1].split(' |')[0]}")
    print("| round | test images added (of pool) | their labels right | clean cv | robust cv | test macro F1 | "
          "test - base | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        added = f"{row['added']} of {row['pool']}" if row["pool"] else "-"
        right = f"{row['precision']:.1%}" if row["precision"] is not None else "-"
        print(f"| {row['round'] or 'base'} | {added} | {right} | {row['cv_clean']:.3f} | {row['cv_robust']:.3f} | "
              f"{row['test']:.3f} | {row['test'] - rows[0]['test']:+.3f} | {row['train_s']} |")


if __name__ == "__main__":
    main()
