"""How much do near-duplicates across folds inflate cv? `folds.group_duplicates` off vs on.

Two data sets, both the built-in synthetic data's images (30 training pages per class, the labelled
distorted test split of 340 images):

- **as generated**: no near-duplicate at the default thresholds. Grouping then finds nothing and
  the folds are StratifiedKFold's, row for row (checked here without training); the only cost is
  the search (timed here, cold cache and warm).
- **with planted copies**: `--per-kind` copies of each kind of docclassify.audit.planted (resized,
  re-encoded, cropped, turned, combined) added to the training rows with their original's label;
  the test split is untouched. Each is trained with the default command on that folder (`data=competition`,
  ResNet-18 from scratch, 64 px, 5 folds, 6 epochs, seed 42) with `folds.group_duplicates` off and
  on, then `python -m docclassify.infer` (tta=none) scores the test split. A copy in another fold
  than its original is validated on an image the model trained on: cv rises, the test does not.

    python benchmarks/group_duplicates_benchmark.py                   # 10 copies of each of 5 kinds
    python benchmarks/group_duplicates_benchmark.py --per-kind 20 --folds 3

Runs already trained under --work are reused (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, machine_line


def synthetic_data(work: Path, planted: int) -> Path:
    """The default synthetic data set (SyntheticSpec's defaults, the images data=synthetic trains on)
    in the competition layout, with ``planted`` copies of each kind added to its training rows."""
    import pandas as pd

    from docclassify.audit.planted import plant_copies
    from docclassify.data.synthetic import SyntheticSpec, generate

    out = work / f"synthetic-planted{planted}"
    if (out / "planted.csv").is_file():
        return out
    tmp = work / f"{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    generate(tmp, SyntheticSpec(), progress=False)
    copies = plant_copies(tmp, planted, split="train", seed=1) if planted else pd.DataFrame()
    copies.to_csv(tmp / "planted.csv", index=False)
    tmp.rename(out)
    return out


def search_cost(root: Path, folds: int, seed: int) -> dict:
    """Duplicate search on ``root``'s training images, cold (empty cache) and warm, and whether the
    grouped folds equal the ungrouped ones."""
    import numpy as np
    from omegaconf import OmegaConf

    import docclassify.predict.tta  # noqa: F401 - imported by every training process anyway (torch)
    from docclassify.data.folds import assign_folds, duplicate_groups_for
    from docclassify.data.sources import load_competition

    train = load_competition(root).train
    cfg = OmegaConf.create({"group_duplicates": True, "duplicate_distance": 12, "duplicate_similarity": 0.91})
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        groups, summary = duplicate_groups_for(cfg, list(train["path"]), cache)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        duplicate_groups_for(cfg, list(train["path"]), cache)
        warm = time.perf_counter() - t0
    targets = train["target"].to_numpy()
    same = bool(np.array_equal(assign_folds(targets, folds, seed, groups), assign_folds(targets, folds, seed)))
    return {"images": len(train), "pairs": summary["pairs"], "cold_s": cold, "warm_s": warm, "same_folds": same}


def run(cmd: list[str], log_path: Path) -> None:
    print(" ".join(cmd[1:]), flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}), see {log_path}")


def train_and_score(root: Path, grouped: bool, args) -> dict:
    run_dir = args.work / "group_duplicates" / f"{root.name}-grouped{grouped}-{args.folds}f-{args.epochs}ep"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "results.json").is_file():
        run([sys.executable, "-m", "docclassify.train", "data=competition", f"data.root={root}",
             f"model={args.model}", "model.pretrained=false", f"data.img_size={args.img_size}",
             f"trainer.epochs={args.epochs}", f"folds.n={args.folds}", f"seed={args.seed}", "logger=none",
             f"folds.group_duplicates={str(grouped).lower()}", f"hydra.run.dir={run_dir}"],
            run_dir.parent / f"{run_dir.name}.train.log")
    infer = run_dir / "infer-none"
    if not (infer / "summary.json").is_file():
        run([sys.executable, "-m", "docclassify.infer", f"runs=[{run_dir}]", "tta=none",
             "data.test_labels=test_labels.csv", f"hydra.run.dir={infer}"],
            run_dir.parent / f"{run_dir.name}.infer.log")
    import pandas as pd

    results = json.loads((run_dir / "results.json").read_text())
    groups = (results["data"].get("duplicate_groups") or {})
    # the clean OOF rows a leak touches (each planted copy and its original) and the others
    planted = pd.read_csv(root / "planted.csv", dtype=str)
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"ID": str})
    touched = oof["ID"].isin(set(planted["ID"]) | set(planted["source"]))
    right = oof["target"] == oof["pred"]
    return {"grouped": grouped, "pairs": groups.get("pairs"), "cv_clean": results["cv_macro_f1"],
            "cv_robust": results["cv_macro_f1_robust"], "seconds": results["seconds"],
            "acc_touched": float(right[touched].mean()), "n_touched": int(touched.sum()),
            "acc_other": float(right[~touched].mean()),
            "test": json.loads((infer / "summary.json").read_text())["test_metrics"]["macro_f1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-kind", type=int, default=10, help="planted copies of each of the 5 kinds")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(machine_line(), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    plain, planted = synthetic_data(args.work, 0), synthetic_data(args.work, args.per_kind)
    print("\n| data | training images | pairs found | search, cold cache | search, warm | grouped folds = "
          "StratifiedKFold's |\n|---|---|---|---|---|---|")
    for name, root in (("as generated", plain), (f"+ {5 * args.per_kind} planted copies", planted)):
        c = search_cost(root, args.folds, args.seed)
        print(f"| {name} | {c['images']} | {c['pairs']} | {c['cold_s']:.1f} s | {c['warm_s']:.2f} s | "
              f"{c['same_folds']} |", flush=True)
    rows = [train_and_score(planted, grouped, args) for grouped in (False, True)]
    print(f"\n{args.model} from scratch, {args.img_size} px, {args.folds} folds, {args.epochs} epochs, "
          f"seed {args.seed}; {5 * args.per_kind} planted copies in the training rows; test tta=none\n")
    print("| folds.group_duplicates | pairs grouped | clean cv | robust cv | test | clean cv - test | "
          "robust cv - test | clean OOF accuracy: copies + originals / other rows | training s |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pairs = r["pairs"] if r["pairs"] is not None else "-"
        print(f"| {str(r['grouped']).lower()} | {pairs} | {r['cv_clean']:.4f} | "
              f"{r['cv_robust']:.4f} | {r['test']:.4f} | {r['cv_clean'] - r['test']:+.4f} | "
              f"{r['cv_robust'] - r['test']:+.4f} | {r['acc_touched']:.4f} ({r['n_touched']}) / "
              f"{r['acc_other']:.4f} | {r['seconds']:.0f} |")
    off, on = rows
    print(f"\ngrouping moves clean cv by {on['cv_clean'] - off['cv_clean']:+.4f}, robust cv by "
          f"{on['cv_robust'] - off['cv_robust']:+.4f}, test by {on['test'] - off['test']:+.4f}; {machine_line()}")


if __name__ == "__main__":
    main()
