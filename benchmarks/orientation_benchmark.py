"""Orientation as a symmetry, measured on the synthetic data's distorted test split.

Trains one run per recipe with `python -m docclassify.train` on the default synthetic data (clean,
upright training images; the labelled test split is turned by 90/180/270 degrees, mirrored,
tilted, cropped, blurred...): with and without orientation augmentation (augment.orientation), with
and without the orientation head (model.orientation_head). Then predicts the test split with each
TTA mode (none, dihedral, orient, orient_soft, none and orient with tta.deskew=true, orient with
tta.upright_flip=true) and prints macro F1,
accuracy, accuracy by the test image's orientation (upright / turned / mirrored, from
test_distortions.csv) and how often the orientation estimate matched the known one.

    python benchmarks/orientation_benchmark.py                      # every recipe, folds 0 and 1 of 5
    python benchmarks/orientation_benchmark.py --recipes upright dihedral_head --epochs 12
    python benchmarks/orientation_benchmark.py --tta none orient --train-override model=convnext_atto
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from _common import DEFAULT_WORK, machine_line
from tta_benchmark import train as train_folds

TRAIN_DEFAULTS = ["logger=none", "trainer.deterministic=true", "model=resnet18", "model.pretrained=false",
                  "validation=clean"]
HIGHPERF = ["pipeline=highperf", "data.img_size=64", "trainer.lr=2e-3", "schedule.warmup_epochs=1",
            "trainer.amp=none"]
RECIPES = {
    "upright": [],  # augment=basic: no turns or mirror images
    "dihedral": ["augment.orientation=dihedral"],
    "dihedral_head": ["augment.orientation=dihedral", "model.orientation_head=dihedral8"],
    # pipeline=highperf (advanced set ramping to 0.5, mixup/cutmix, EMA, label smoothing), its lr and warmup
    # shortened for a short run from scratch
    "highperf_dihedral_head": [*HIGHPERF, "augment.orientation=dihedral", "model.orientation_head=dihedral8"],
    "highperf_rot90_head": [*HIGHPERF, "augment.orientation=rot90", "model.orientation_head=rot4"],
}
# (label, infer overrides)
TTA = {"none": ["tta=none"], "dihedral": ["tta=dihedral"], "orient": ["tta=orient"],
       "orient_soft": ["tta=orient_soft"], "orient+deskew": ["tta=orient", "tta.deskew=true"],
       "none+deskew": ["tta=none", "tta.deskew=true"], "orient_flip": ["tta=orient", "tta.upright_flip=true"]}
DEFAULT_TTA = ["none", "dihedral", "orient", "orient_soft", "none+deskew", "orient+deskew", "orient_flip"]


def train(run_dir: Path, folds: list[int], overrides: list[str]) -> Path:
    return train_folds(run_dir, folds, overrides, TRAIN_DEFAULTS)


def infer(run_dir: Path, label: str, overrides: list[str], out_dir: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR
    from docclassify.predict.pipeline import run_inference

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("infer", overrides=[f"runs=[{run_dir}]", "calibrate=false", *overrides,
                                          "reuse_logits=false"])  # timed: predict, never read stored logits
    t0 = time.time()
    summary = run_inference(cfg, out_dir)
    metrics, orient = summary["test_metrics"], summary.get("orientation") or {}
    if metrics is None:
        raise SystemExit("the run's data has no test labels (use the synthetic data or data.test_labels)")
    by = {c: v["accuracy"] for c, v in (orient.get("accuracy") or {}).items()}
    return {"tta": label, "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"], **by,
            "estimate_ok": orient.get("estimate_matches_known"), "estimator": orient.get("estimator"),
            "seconds": round(time.time() - t0, 1)}


def table(rows: list[dict]) -> str:
    head = ["recipe", "cv F1", "head acc (val copies)", "tta", "test macro F1", "accuracy", "upright", "turned",
            "mirrored", "estimate = known"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x):
        return "" if x is None else f"{x:.3f}"

    for r in rows:
        lines.append("| " + " | ".join([r["recipe"], f(r["cv_f1"]), f(r["head_acc"]), r["tta"], f(r["macro_f1"]),
                                        f(r["accuracy"]), f(r.get("upright")), f(r.get("turned")),
                                        f(r.get("mirrored")), f(r.get("estimate_ok"))]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "orientation", help="runs and outputs")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--tta", nargs="+", default=DEFAULT_TTA, choices=list(TTA))
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1], help="folds to train (of folds.n)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-override", nargs="*", default=[], help="extra docclassify.train overrides")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    logging.basicConfig(level=logging.WARNING)
    print(machine_line(), flush=True)
    rows = []
    for recipe in args.recipes:
        run_dir = train(args.work / recipe, args.folds,
                        [*RECIPES[recipe], f"trainer.epochs={args.epochs}", *args.train_override])
        results = json.loads((run_dir / "results.json").read_text())
        orient = results.get("orientation") or {}
        for label in args.tta:
            row = {"recipe": recipe, "cv_f1": results["cv_macro_f1"], "head_acc": orient.get("head_accuracy"),
                   **infer(run_dir, label, TTA[label], args.work / f"{recipe}-infer-{label}")}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (args.work / f"results-{'-'.join(args.tta)}.json").write_text(json.dumps(rows, indent=1))
    print(f"\nfolds {args.folds} of 5, {args.epochs} epochs; test: the synthetic distorted split\n")
    print(table(rows))


if __name__ == "__main__":
    main()
