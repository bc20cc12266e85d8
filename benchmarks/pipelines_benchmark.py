"""pipeline=basic vs pipeline=highperf at equal epochs: macro F1 on the distorted synthetic test split.

Each pipeline trains with `python -m docclassify.train` on the default synthetic data set
(upright, unmirrored training images; the test split is turned by 90/180/270 degrees,
mirrored, tilted, cropped, blurred, noisier), same model, image size, epochs and folds; every
other setting is the preset's own (conf/pipeline/*.yaml: batch size, lr, augmentation,
mixup, label smoothing, EMA, weight decay, drop-path, warmup, grad clip). Then the labelled
test split is predicted with the fold checkpoints (softmax averaged over folds, no TTA) and
macro F1 / accuracy are printed, overall and by the test image's orientation distortion.

    python benchmarks/pipelines_benchmark.py                            # resnet18, 96 px, 20 epochs, fold 0
    python benchmarks/pipelines_benchmark.py --epochs 60 --folds 0 1 2 3 4
    python benchmarks/pipelines_benchmark.py --train-override trainer.lr=1e-3   # applied to both
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


def train(pipeline: str, run_dir: Path, args) -> tuple[Path, float]:
    if (run_dir / "results.json").is_file():
        print(f"{pipeline}: reusing the trained run {run_dir}", flush=True)
        return run_dir, float(json.loads((run_dir / "results.json").read_text()).get("seconds", "nan"))
    cmd = [sys.executable, "-m", "docclassify.train", f"pipeline={pipeline}", f"model={args.model}",
           "model.pretrained=false", f"data.img_size={args.img_size}", f"trainer.epochs={args.epochs}",
           f"folds.run=[{','.join(map(str, args.folds))}]", f"seed={args.seed}", "logger=none",
           *args.train_override, f"hydra.run.dir={run_dir}"]
    print("training:", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    return run_dir, time.time() - t0


def load_test_split(root: Path) -> tuple[list[str], list[Path], object]:
    """IDs, image paths and labels of the synthetic data's test split (test_labels.csv)."""
    import pandas as pd

    labels = pd.read_csv(root / "test_labels.csv", dtype={"ID": str})
    return labels["ID"].tolist(), [root / "test" / i for i in labels["ID"]], labels["target"].to_numpy()


def predict_probs(run_dir: Path, paths: list[Path], batch_size: int = 64):
    """Softmax of every fold's best checkpoint on the test images, averaged over folds."""
    import numpy as np
    import torch

    from docclassify.data.images import load_image
    from docclassify.models.checkpoint import load_checkpoint

    results = json.loads((run_dir / "results.json").read_text())
    total, decoded = None, {}
    for fold in results["folds"]:
        model, ckpt = load_checkpoint(run_dir / fold["checkpoint"])
        meta = ckpt["meta"]
        key = (meta["img_size"], meta["resize"], meta["pad_value"])
        if key not in decoded:  # decode once per image size
            decoded[key] = np.stack([load_image(p, *key) for p in paths])
        images = decoded[key]
        mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
        out = []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                x = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float().div(255)
                out.append(torch.softmax(model((x - mean) / std), 1))
        probs = torch.cat(out).numpy()
        total = probs if total is None else total + probs
    return total / len(results["folds"]), results


def orientation_masks(root: Path, ids: list[str]) -> dict:
    import pandas as pd

    d = pd.read_csv(root / "test_distortions.csv", dtype={"ID": str, "flip": str}).set_index("ID").loc[ids]
    mirrored = (d["flip"].fillna("none") != "none").to_numpy()
    turned = (d["rot90_k"] % 4 != 0).to_numpy()
    return {"upright": ~turned & ~mirrored, "turned": turned & ~mirrored, "mirrored": mirrored}


def evaluate(pipeline: str, run_dir: Path, seconds: float) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    results = json.loads((run_dir / "results.json").read_text())
    root = Path(results["data"]["root"])
    ids, paths, labels = load_test_split(root)
    probs, results = predict_probs(run_dir, paths)
    preds = probs.argmax(1)
    correct = preds == labels
    row = {
        "pipeline": pipeline, "epochs": max(f["epochs_run"] for f in results["folds"]),
        "folds": results["folds_run"], "weights": sorted({f["weights"] for f in results["folds"]}),
        "train_s": round(seconds, 1), "cv_macro_f1": results["cv_macro_f1"],
        "test_macro_f1": float(f1_score(labels, preds, average="macro")),
        "test_accuracy": float(accuracy_score(labels, preds)), "n_test": len(ids),
        "by_orientation": {g: float(correct[m].mean()) for g, m in orientation_masks(root, ids).items() if m.any()},
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", nargs="+", default=["basic", "highperf"])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--folds", type=int, nargs="+", default=[0], help="folds to train (of the preset's 5)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-override", nargs="*", default=[], help="extra docclassify.train overrides (both)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "pipelines", help="where the runs go")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    print(machine_line(), flush=True)
    tag = f"{args.model}-{args.img_size}px-{args.epochs}ep-f{''.join(map(str, args.folds))}-s{args.seed}"
    rows = []
    for pipeline in args.pipelines:
        run_dir, seconds = train(pipeline, args.work / f"{pipeline}-{tag}", args)
        rows.append(evaluate(pipeline, run_dir, seconds))
    print(f"\n{args.model} at {args.img_size} px, {args.epochs} epochs, folds {args.folds}; load avg now "
          f"{machine_line().split('load avg ')[1].split(' |')[0]}")
    print(f"{'pipeline':<10}{'train s':>9}{'cv F1':>8}{'test F1':>9}{'test acc':>10}{'upright':>9}{'turned':>8}"
          f"{'mirrored':>9}  weights")
    for r in rows:
        g = r["by_orientation"]
        print(f"{r['pipeline']:<10}{r['train_s']:>9.0f}{r['cv_macro_f1']:>8.4f}{r['test_macro_f1']:>9.4f}"
              f"{r['test_accuracy']:>10.4f}{g.get('upright', float('nan')):>9.3f}{g.get('turned', float('nan')):>8.3f}"
              f"{g.get('mirrored', float('nan')):>9.3f}  {','.join(r['weights'])}")
    print(f"({rows[0]['n_test']} labelled test images; accuracy by orientation distortion of the test image)")


if __name__ == "__main__":
    main()
