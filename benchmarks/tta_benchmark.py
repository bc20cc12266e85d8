"""Macro F1 on the synthetic data's distorted test split for TTA view sets (none, rot90, dihedral).

Trains one run with `python -m docclassify.train` on the default synthetic data (upright,
unmirrored training images; the test split is turned by 90/180/270 degrees, mirrored,
tilted, cropped, blurred...), or takes ``--run DIR``, then runs docclassify's inference
pipeline once per view set and prints macro F1 and accuracy on the labelled test split,
overall and by the test image's orientation distortion (test_distortions.csv).

    python benchmarks/tta_benchmark.py                       # train (folds 0,1 of 5), then compare
    python benchmarks/tta_benchmark.py --run outputs/train/RUN --tta none flip rot90 dihedral
    python benchmarks/tta_benchmark.py --train-override model=convnext_atto trainer.epochs=10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, machine_line

TRAIN_DEFAULTS = ["logger=none", "trainer.deterministic=true"]


def train(run_dir: Path, folds: list[int], overrides: list[str], defaults: list[str] = TRAIN_DEFAULTS) -> Path:
    """``python -m docclassify.train`` on ``folds`` into ``run_dir`` (reused when it has finished)."""
    if (run_dir / "results.json").is_file():
        print(f"reusing the trained run {run_dir}", flush=True)
        return run_dir
    cmd = [sys.executable, "-m", "docclassify.train", *defaults, f"folds.run=[{','.join(map(str, folds))}]",
           *overrides, f"hydra.run.dir={run_dir}"]
    print("training:", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"trained in {time.time() - t0:.0f}s", flush=True)
    return run_dir


def orientation_groups(root: Path, ids: list[str]) -> dict[str, list[bool]]:
    """Test IDs by orientation distortion: upright, quarter-turned (not mirrored), mirrored."""
    import pandas as pd

    path = root / "test_distortions.csv"
    if not path.is_file():
        return {}
    d = pd.read_csv(path, dtype={"ID": str, "flip": str}).set_index("ID").loc[ids]
    mirrored = (d["flip"].fillna("none") != "none").to_numpy()
    turned = (d["rot90_k"] % 4 != 0).to_numpy()
    return {"upright": list(~turned & ~mirrored), "turned": list(turned & ~mirrored), "mirrored": list(mirrored)}


def compare(run_dir: Path, view_sets: list[str], work: Path, batch_size: int) -> list[dict]:
    import numpy as np
    import pandas as pd
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR
    from docclassify.predict.pipeline import run_inference

    rows = []
    for name in view_sets:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("infer", overrides=[f"runs=[{run_dir}]", f"tta={name}", "calibrate=false",
                                              f"batch_size={batch_size}",
                                              "reuse_logits=false"])  # timed: predict, never read stored logits
        out_dir = work / f"infer-{name}"
        t0 = time.time()
        summary = run_inference(cfg, out_dir)
        seconds = time.time() - t0
        metrics = summary["test_metrics"]
        if metrics is None:
            raise SystemExit("the run's data has no test labels (use the synthetic data or data.test_labels)")
        # accuracy by orientation group, from the written submission and the data's labels
        root = Path(json.loads((run_dir / "results.json").read_text())["data"]["root"])
        sub = pd.read_csv(out_dir / "submission.csv", dtype={"ID": str})
        labels = pd.read_csv(root / "test_labels.csv", dtype={"ID": str}).set_index("ID").loc[sub["ID"], "target"]
        correct = sub["target"].to_numpy() == labels.to_numpy()
        groups = {g: float(correct[np.array(mask)].mean()) if any(mask) else float("nan")
                  for g, mask in orientation_groups(root, sub["ID"].tolist()).items()}
        n_models = sum(len(r["folds"]) for r in summary["runs"])
        rows.append({"tta": name, "views": len(summary["tta"]["views"]), "macro_f1": metrics["macro_f1"],
                     "accuracy": metrics["accuracy"], "by_orientation": groups, "seconds": round(seconds, 1),
                     "img_per_s": round(summary["n_test"] * n_models / seconds, 1), "n_test": summary["n_test"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a trained run dir (default: train one)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "tta", help="where the run and outputs go")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1], help="folds to train (of folds.n)")
    parser.add_argument("--train-override", nargs="*", default=[], help="extra docclassify.train overrides")
    parser.add_argument("--tta", nargs="+", default=["none", "rot90", "dihedral"], help="view sets to compare")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    print(machine_line(), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    run_dir = args.run or train(args.work / "run", args.folds, args.train_override)
    results = json.loads((run_dir / "results.json").read_text())
    print(f"run {run_dir}: cv macro F1 {results['cv_macro_f1']:.4f} on folds {results['folds_run']} "
          f"({', '.join(sorted({f['model'] for f in results['folds']}))})", flush=True)
    rows = compare(run_dir, args.tta, args.work, args.batch_size)
    print(f"\n{'tta':<14}{'views':>6}{'macro F1':>10}{'accuracy':>10}{'upright':>9}{'turned':>8}{'mirrored':>9}"
          f"{'img/s':>8}")
    for r in rows:
        g = r["by_orientation"]
        print(f"{r['tta']:<14}{r['views']:>6}{r['macro_f1']:>10.4f}{r['accuracy']:>10.4f}"
              f"{g.get('upright', float('nan')):>9.3f}{g.get('turned', float('nan')):>8.3f}"
              f"{g.get('mirrored', float('nan')):>9.3f}{r['img_per_s']:>8.0f}")
    print(f"({rows[0]['n_test']} test images; img/s = test images x fold models / inference seconds, "
          "decode included on first use)")


if __name__ == "__main__":
    main()
