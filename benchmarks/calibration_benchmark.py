"""Does the out-of-fold temperature (`calibrate=true`) help the test probabilities? Test NLL and ECE
with and without it, on a clean and on a distorted labelled test set, over several seeds.

Each seed trains the default command (`python -m docclassify.train seed=S`: ResNet-18 from scratch,
64 px, 5 folds, 6 epochs, `validation=both`) on the built-in synthetic data. Then, in this process,
every fold checkpoint predicts two labelled test sets once (no TTA):

- **distorted**: the synthetic data's own test split (turned, mirrored, tilted, cropped, blurred,
  noisier, re-lit: 340 images, 20 per class);
- **clean**: undistorted pages drawn like the training images but from another generator seed
  (`--clean-per-class` per class), a stand-in for a test set that looks like the training set.

The run's fold average is calibrated as `python -m docclassify.infer` does (its own functions:
`fitting.fit_on_oof` and `ensemble.ensemble_test_probs`, equal weights, `average=prob`, `mimic_fold_average=true`,
the temperature fitted on the OOF rows of `--fit-on`, robust by default as `fit_on=auto` picks
for these runs) and scored against T=1 (`calibrate=false`). Argmax and macro F1 of a single run do
not depend on T; test_probs.csv, the decision rule's biases and ensemble weights do.

    python benchmarks/calibration_benchmark.py                        # seeds 42 43 44
    python benchmarks/calibration_benchmark.py --seeds 42 --fit-on clean
    python benchmarks/calibration_benchmark.py --work BENCH_DIR      # runs under BENCH_DIR/calibration/seed<S>

Trained runs are reused when their results.json exists (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, machine_line
from macro_f1_benchmark import fold_test_logits, oof_inputs


def train(seed: int, run_dir: Path, args) -> Path:
    if (run_dir / "results.json").is_file():
        print(f"seed {seed}: reusing {run_dir}", flush=True)
        return run_dir
    cmd = [sys.executable, "-m", "docclassify.train", f"model={args.model}", "model.pretrained=false",
           f"data.img_size={args.img_size}", f"trainer.epochs={args.epochs}", f"folds.n={args.folds}",
           f"seed={seed}", "logger=none", *args.train_override, f"hydra.run.dir={run_dir}"]
    print("training:", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"seed {seed}: trained in {time.time() - t0:.0f}s", flush=True)
    return run_dir


def clean_test_set(work: Path, per_class: int) -> Path:
    """A competition-layout folder whose test/ holds clean synthetic pages of another generator seed
    (their labels in test_labels.csv); its train/ is the generator's own (unused here)."""
    import pandas as pd

    from docclassify.data.synthetic import SyntheticSpec, generate

    out = work / f"clean-test-{per_class}"
    if (out / "test_labels.csv").is_file():
        return out
    tmp = work / f"clean-test-{per_class}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    generate(tmp, SyntheticSpec(n_train_per_class=per_class, n_test_per_class=1, seed=1, imbalance=False),
             progress=False)
    train = pd.read_csv(tmp / "train.csv", dtype={"ID": str})
    shutil.rmtree(tmp / "test")
    shutil.copytree(tmp / "train", tmp / "test")
    train.to_csv(tmp / "test_labels.csv", index=False)
    train.assign(target=0).to_csv(tmp / "sample_submission.csv", index=False)
    tmp.rename(out)
    return out


def scores(member, oof, calibrate: bool, y_test) -> tuple[float, float, float]:
    """(temperature, test NLL, test ECE) of one run's fold average as infer calibrates it."""
    import numpy as np

    from docclassify.metrics import safe_log
    from docclassify.predict.calibration import ece
    from docclassify.predict.ensemble import ensemble_test_probs
    from docclassify.predict.fitting import fit_on_oof

    fit = fit_on_oof([member], oof, "prob", "equal", calibrate, "argmax", True)
    probs = ensemble_test_probs([member.test_logits], fit.weights, "prob", fit.stacker,
                                fit.temperature if calibrate else None)
    nll = float(-safe_log(probs)[np.arange(len(y_test)), y_test].mean())
    return fit.temperature, nll, ece(probs, y_test)


def evaluate(run_dirs: dict[int, Path], clean_root: Path, args) -> None:
    import numpy as np

    from docclassify.metrics import macro_f1, safe_log, softmax
    from docclassify.predict.imagestore import ImageStore
    from docclassify.predict.members import Member
    from docclassify.predict.run_dirs import load_run
    from docclassify.predict.testdata import load_data, load_test_labels

    cache = os.environ.get("DOCCLASSIFY_CACHE", str(Path.home() / ".cache" / "docclassify"))
    store = ImageStore(cache)
    test_sets = {"distorted": {}, "clean": {"root": str(clean_root), "test_labels": "test_labels.csv"}}
    header = ("| seed | test set | test macro F1 | T (fitted) | NLL, T=1 (calibrate=false) | NLL, fitted T "
              "(calibrate=true) | ECE, T=1 | ECE, fitted T |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    table: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in test_sets}
    for seed, run_dir in run_dirs.items():
        run = load_run(run_dir)
        oof = oof_inputs([run], args.fit_on)
        for name, overrides in test_sets.items():
            (ds,) = load_data([run], overrides, cache)
            y = load_test_labels(ds.source)
            f = fold_test_logits(run, ds, store, args.batch_size)
            member = Member(run, safe_log(softmax(f.reshape(-1, f.shape[-1])).reshape(f.shape).mean(0)),
                            fold_test_logits=f)
            _, nll_off, ece_off = scores(member, oof, False, y)
            t, nll_on, ece_on = scores(member, oof, True, y)
            table[name].append((nll_off, nll_on, ece_off, ece_on))
            lines.append(f"| {seed} | {name} ({len(y)}) | {macro_f1(y, member.test_logits.argmax(1)):.4f} | {t:.3f} | "
                         f"{nll_off:.4f} | {nll_on:.4f} | {ece_off:.4f} | {ece_on:.4f} |")
    for name, rows in table.items():
        a = np.asarray(rows)
        wins = int((a[:, 1] < a[:, 0]).sum()), int((a[:, 3] < a[:, 2]).sum())
        lines.append(f"| mean of {len(rows)} | {name} | | | {a[:, 0].mean():.4f} | {a[:, 1].mean():.4f} | "
                     f"{a[:, 2].mean():.4f} | {a[:, 3].mean():.4f} |")
        print(f"{name}: calibrate=true lowers NLL in {wins[0]}/{len(rows)} seeds, ECE in {wins[1]}/{len(rows)}")
    print(f"\ntemperature fitted on the {args.fit_on} OOF rows (equal weights, average=prob, "
          "mimic_fold_average=true)\n")
    print("\n".join(lines), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fit-on", default="robust", choices=["robust", "clean"])
    ap.add_argument("--clean-per-class", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    ap.add_argument("--train-override", nargs="*", default=[], help="extra overrides for every run")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(machine_line(), flush=True)
    work = args.work / "calibration"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    dirs = {s: train(s, work / f"seed{s}", args) for s in args.seeds}
    evaluate(dirs, clean_test_set(work, args.clean_per_class), args)
    print(f"total {time.time() - t0:.0f}s; {machine_line()}")


if __name__ == "__main__":
    main()
