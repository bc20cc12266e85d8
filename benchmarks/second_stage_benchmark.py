"""Test macro F1 of the second stage (adapt, tta.per_class, second_pass, specialists), each alone and all
together, over the first pass, on both distorted test splits of the synthetic data (docs/second-stage.md).

For each recipe (the default run and a highperf run) and seed, one run is trained with
`python -m docclassify.train` on the built-in synthetic data, with its class-group specialists
(`specialists=auto`); then docclassify's inference runs once per variant and test split
(`test/` and `test_phone/`): the first pass (tta=auto: the best view set on the robust OOF rows),
each option alone, and all four. Printed per recipe and split: the test macro F1 (mean over seeds)
with a 95% bootstrap interval over test images (the same resampled images for every seed), the
gain over the first pass with its paired interval, how many options' guards turned on, the share
of test images the options touched, and the extra inference seconds per test image the options
took.

    python benchmarks/second_stage_benchmark.py                          # full size (hours on a CPU)
    python benchmarks/second_stage_benchmark.py --small                  # a minutes-long check of the script
    python benchmarks/second_stage_benchmark.py --seeds 0 1 2 --recipes default highperf --epochs 30
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

import numpy as np
from _common import DEFAULT_WORK, REPO, load_average, machine_line

RECIPES = {"default": [], "highperf": ["pipeline=highperf"]}
PROFILES = {"test": [], "test_phone": ["data.test_dir=test_phone", "data.test_labels=test_phone_labels.csv",
                                       "data.sample_submission=test_phone_sample_submission.csv"]}
FIRST_PASS = ["tta=auto"]
VARIANTS = {
    "first pass": [],
    "adapt": ["adapt={adapt}"],
    "tta.per_class": ["tta.per_class=true"],
    "second_pass": ["second_pass.enabled=true"],
    "specialists": ["specialists.enabled=true"],
    "all four": ["adapt={adapt}", "tta.per_class=true", "second_pass.enabled=true", "specialists.enabled=true"],
}
OPTION_KEYS = ("adapt", "tta_per_class", "second_pass", "specialists")


def train(run_dir: Path, recipe: str, seed: int, args) -> Path:
    """A run of ``recipe`` with its specialists (reused when finished)."""
    if (run_dir / "results.json").is_file() and (run_dir / "specialists" / "groups.json").is_file():
        print(f"reusing {run_dir}", flush=True)
        return run_dir
    epochs = [f"trainer.epochs={args.epochs}"] if args.epochs else []
    if args.epochs and recipe == "highperf":  # its 10 warm-up epochs, cut to a fifth of a short run
        epochs.append(f"schedule.warmup_epochs={min(10, args.epochs // 5)}")
    cmd = [sys.executable, "-m", "docclassify.train", *RECIPES[recipe], f"seed={seed}", "logger=none",
           "specialists=auto", *args.train_override, *epochs, f"hydra.run.dir={run_dir}"]
    print("training:", " ".join(cmd[2:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"trained in {time.time() - t0:.0f}s", flush=True)
    return run_dir


def infer(run_dir: Path, overrides: list[str], out_dir: Path) -> dict:
    """The inference's summary.json (an out_dir with one already is reused: --work keeps what ran)."""
    if (out_dir / "summary.json").is_file():
        return json.loads((out_dir / "summary.json").read_text())
    from hydra import compose, initialize_config_dir

    from docclassify.config import CONF_DIR
    from docclassify.predict.pipeline import run_inference

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("infer", overrides=[f"runs=[{run_dir}]", *overrides])
    return run_inference(cfg, out_dir)


def touched_and_seconds(summary: dict) -> tuple[int, int, float]:
    """(options applied, test images any applied option touched (upper bound: the sum), option seconds)."""
    stage = summary.get("second_stage") or {}
    applied, touched, seconds = 0, 0, 0.0
    for key in OPTION_KEYS:
        entry = stage.get(key)
        if not entry:
            continue
        seconds += float(entry.get("seconds", 0.0))
        if key == "adapt":
            applied += int(entry["applied"])
            touched += summary["n_test"] if entry["applied"] else 0
        elif key == "specialists":
            for g in entry["groups"]:
                applied += int(g["applied"])
                touched += g.get("test_touched", 0) if g["applied"] else 0
        else:
            applied += int(entry["applied"])
            touched += entry.get("test_touched", 0) if entry["applied"] else 0
    return applied, min(touched, summary["n_test"]), seconds


def bootstrap(y: np.ndarray, preds: list[np.ndarray], base: list[np.ndarray], reps: int, seed: int = 0):
    """Mean over seeds of the macro F1 and its gain over ``base``, each with a 95% interval from ``reps``
    resamples of the test images (one resample for every seed)."""
    from docclassify.metrics import macro_f1

    rng = np.random.default_rng(seed)
    f1 = np.mean([macro_f1(y, p) for p in preds])
    gain = f1 - np.mean([macro_f1(y, p) for p in base])
    draws_f1, draws_gain = [], []
    for _ in range(reps):
        idx = rng.integers(0, len(y), len(y))
        a = np.mean([macro_f1(y[idx], p[idx]) for p in preds])
        b = np.mean([macro_f1(y[idx], p[idx]) for p in base])
        draws_f1.append(a)
        draws_gain.append(a - b)
    return f1, np.percentile(draws_f1, [2.5, 97.5]), gain, np.percentile(draws_gain, [2.5, 97.5])


def labels_of(run_dir: Path, profile: str, ids: list[str]) -> np.ndarray:
    import pandas as pd

    root = Path(json.loads((run_dir / "results.json").read_text())["data"]["root"])
    name = "test_labels.csv" if profile == "test" else "test_phone_labels.csv"
    return pd.read_csv(root / name, dtype={"ID": str}).set_index("ID").loc[ids, "target"].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "second_stage")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (--small: 0)")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--adapt", default="bn", choices=("bn", "tent"), help="the adapt option of the variants")
    parser.add_argument("--epochs", type=int, default=None, help="trainer.epochs of every run (default: the recipe's)")
    parser.add_argument("--train-override", nargs="*", default=[], help="extra docclassify.train overrides")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--small", action="store_true",
                        help="a quick check: small synthetic data, 48 px, 3 folds, 3 epochs, 1 seed")
    args = parser.parse_args()
    if args.small:
        args.train_override = ["data.n_train_per_class=12", "data.n_test_per_class=6", "data.long_side=128",
                               "data.img_size=48", "folds.n=3", "specialists.max_groups=2", *args.train_override]
        args.epochs = args.epochs or 3
    args.seeds = args.seeds or ([0] if args.small else [0, 1, 2])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import pandas as pd
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    print(machine_line(), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    results = {}
    for recipe in args.recipes:
        for seed in args.seeds:
            run_dir = train(args.work / f"{recipe}-seed{seed}", recipe, seed, args)
            for profile in args.profiles:
                for name, extra in VARIANTS.items():
                    overrides = [*FIRST_PASS, *PROFILES[profile], *(o.format(adapt=args.adapt) for o in extra)]
                    out = args.work / "infer" / f"{recipe}-seed{seed}-{profile}-{name.replace(' ', '_')}"
                    summary = infer(run_dir, overrides, out)
                    sub = pd.read_csv(out / "submission.csv", dtype={"ID": str})
                    applied, touched, seconds = touched_and_seconds(summary)
                    results[(recipe, profile, name, seed)] = {
                        "pred": sub["target"].to_numpy(), "y": labels_of(run_dir, profile, sub["ID"].tolist()),
                        "applied": applied, "touched": touched / summary["n_test"],
                        "ms_per_image": 1000.0 * seconds / summary["n_test"], "n_test": summary["n_test"],
                        "macro_f1": summary["test_metrics"]["macro_f1"]}
                    print(json.dumps({"recipe": recipe, "seed": seed, "profile": profile, "variant": name,
                                      "macro_f1": round(results[(recipe, profile, name, seed)]["macro_f1"], 4),
                                      "applied": applied, "touched": touched}), flush=True)
    rows = []
    for recipe in args.recipes:
        for profile in args.profiles:
            y = results[(recipe, profile, "first pass", args.seeds[0])]["y"]
            base = [results[(recipe, profile, "first pass", s)]["pred"] for s in args.seeds]
            for name in VARIANTS:
                rs = [results[(recipe, profile, name, s)] for s in args.seeds]
                f1, f1_ci, gain, gain_ci = bootstrap(y, [r["pred"] for r in rs], base, args.bootstrap)
                rows.append({"recipe": recipe, "profile": profile, "variant": name, "macro_f1": f1,
                             "ci": f1_ci.tolist(), "gain": gain, "gain_ci": gain_ci.tolist(),
                             "applied": float(np.mean([r["applied"] for r in rs])),
                             "touched": float(np.mean([r["touched"] for r in rs])),
                             "ms_per_image": float(np.mean([r["ms_per_image"] for r in rs])),
                             "n_test": rs[0]["n_test"], "seeds": len(rs)})
    print(f"\nload average at the end: {load_average()}; seeds {args.seeds}; {args.bootstrap} bootstrap resamples\n")
    print("| recipe | test split | variant | test macro F1 [95% CI] | gain over first pass [95% CI] | guards on "
          "| test images touched | extra ms / image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['recipe']} | {r['profile']} ({r['n_test']}) | {r['variant']} | {r['macro_f1']:.4f} "
              f"[{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | {r['gain']:+.4f} [{r['gain_ci'][0]:+.4f}, "
              f"{r['gain_ci'][1]:+.4f}] | {r['applied']:.1f} | {100 * r['touched']:.1f}% | {r['ms_per_image']:.1f} |")
    (args.work / "second_stage.json").write_text(json.dumps(rows, indent=1))
    print(f"\n(rows also in {args.work / 'second_stage.json'})")


if __name__ == "__main__":
    main()
