"""Macro F1 all the way (issue 17): losses and samplers at equal budget, the decision rule on and
off, ensemble weights (equal / oof / greedy / stack) over the runs, and the calibration of fold
averages, on the distorted, labelled synthetic test split.

Every recipe trains with `python -m docclassify.train` on the default synthetic data set
(imbalanced: classes 1, 13 and 14 have about half the rows of the others; the test split is
balanced, distorted and labelled), the same model, size, epochs, folds, seed and validation
(robust copies: `oof_robust.csv`); only the recipe's overrides differ. Then, in this process,
each fold checkpoint predicts the test split once (no TTA) and every table is computed from
those predictions and the runs' saved OOF rows, through docclassify's own inference functions.

Noise, to read the differences by: each run's fold-to-fold spread (cv F1 of the folds; test F1 of
the single fold models) stands for training noise (one seed only), and each test comparison carries
a paired-bootstrap 90% interval over the test rows (resampled within each class), which is test
sampling noise only.

    python benchmarks/macro_f1_benchmark.py                       # 6 recipes, resnet18, 64 px, 3 folds, 6 epochs
    python benchmarks/macro_f1_benchmark.py --recipes ce focal --epochs 10
    python benchmarks/macro_f1_benchmark.py --work /tmp/bench     # runs under /tmp/bench/macro_f1/<recipe>

Trained runs are reused when their results.json exists (delete the folder to retrain).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import DEFAULT_WORK, REPO, machine_line

RECIPES = {
    "ce": [],
    "focal": ["loss=focal"],
    "logit_adjusted": ["loss=logit_adjusted"],
    "class_balanced": ["loss=class_balanced"],
    "ce + sampler=balanced": ["data.sampler=balanced"],
    "ce + sampler=sqrt": ["data.sampler=sqrt"],
}
WEIGHTS = ("equal", "oof", "greedy", "stack")
BOOTSTRAP = 2000  # resamples of the test rows behind each paired interval


def train(name: str, run_dir: Path, args) -> Path:
    if (run_dir / "results.json").is_file():
        print(f"{name}: reusing {run_dir}", flush=True)
        return run_dir
    cmd = [sys.executable, "-m", "docclassify.train", f"model={args.model}", "model.pretrained=false",
           f"data.img_size={args.img_size}", f"trainer.epochs={args.epochs}", f"folds.n={args.folds}",
           f"seed={args.seed}", "logger=none", "trainer.enable_reports=false", *RECIPES[name],
           *args.train_override, f"hydra.run.dir={run_dir}"]
    print("training:", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=REPO)
    print(f"{name}: trained in {time.time() - t0:.0f}s", flush=True)
    return run_dir


def fold_test_logits(run, ds, store, batch_size: int):
    """(F, N, K): every fold checkpoint of ``run`` on the whole test split, one view."""
    import numpy as np
    import torch

    from docclassify.models.checkpoint import load_checkpoint
    from docclassify.predict.tta import View
    from docclassify.predict.views import predict_rows

    out = []
    for fm in run.folds:
        model, ckpt = load_checkpoint(fm.checkpoint)
        images = store.get(ds, "test", ckpt["meta"])
        _, logits = predict_rows(model, images, np.arange(len(images)), ckpt["meta"], [View("identity")], "prob",
                                 batch_size, torch.device("cpu"))
        out.append(logits)
    return np.stack(out)


def oof_inputs(runs, view: str):
    from docclassify.predict.oof_rows import OofInputs
    from docclassify.predict.run_dirs import load_view_oof

    return OofInputs([load_view_oof(r, view) for r in runs], False, [None] * len(runs), view)


def scored(members, oof, weights: str, decision: str, y_test, mimic: bool = True):
    """(OOF macro F1 of the rule in use on the fit view, test macro F1, OofFit, test NLL, test
    predictions) of one ensemble setting (prob average, calibrate=true, mimic_fold_average=mimic)."""
    import numpy as np

    from docclassify.metrics import macro_f1, safe_log
    from docclassify.predict.ensemble import ensemble_test_probs
    from docclassify.predict.fitting import fit_on_oof

    fit = fit_on_oof(members, oof, "prob", weights, True, decision, mimic)
    probs = ensemble_test_probs([m.test_logits for m in members], fit.weights, "prob", fit.stacker, fit.temperature)
    pred = fit.decision.predict(safe_log(probs))
    nll = float(-safe_log(probs)[np.arange(len(y_test)), y_test].mean())
    return fit.decision.oof_macro_f1, macro_f1(y_test, pred), fit, nll, pred


def bootstrap_weights(y, n: int = BOOTSTRAP, seed: int = 0):
    """(n, N) multiplicity of each test row in ``n`` resamples drawn within each class (every class
    keeps its 20 rows), shared by every paired comparison so that they see the same resamples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w = np.zeros((n, len(y)))
    rows = np.arange(n)[:, None]
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        np.add.at(w, (rows, idx[rng.integers(0, len(idx), size=(n, len(idx)))]), 1)
    return w


def resampled_f1(w, y, pred):
    """Macro F1 of ``pred`` under each row of resample weights ``w`` (docclassify's count-based F1)."""
    import numpy as np

    from docclassify.metrics import macro_f1_from_counts

    k = int(max(y.max(), pred.max())) + 1
    eye = np.eye(k)
    return macro_f1_from_counts(w @ (eye[y] * (y == pred)[:, None]), w @ eye[pred], w @ eye[y])


def paired_delta(w, y, pred_a, pred_b) -> str:
    """Test macro F1 of ``pred_b`` minus ``pred_a`` with its paired-bootstrap 90% interval."""
    import numpy as np

    from docclassify.metrics import macro_f1

    delta = resampled_f1(w, y, pred_b) - resampled_f1(w, y, pred_a)
    lo, hi = np.percentile(delta, [5, 95])
    return f"{macro_f1(y, pred_b) - macro_f1(y, pred_a):+.4f} [{lo:+.3f}, {hi:+.3f}]"


def fold_spread(run, key: str) -> str:
    """min-max of the folds' figure ``key`` (best_macro_f1 / best_macro_f1_robust): training noise."""
    values = [f[key] for f in run.results["folds"] if f.get(key) is not None]
    return f"{min(values):.3f}-{max(values):.3f}" if values else "-"


def fold_model_spread(member, y_test) -> str:
    """min-max test macro F1 of the run's single fold models (argmax): training noise on the test set."""
    from docclassify.metrics import macro_f1

    values = [macro_f1(y_test, logits.argmax(1)) for logits in member.fold_test_logits]
    return f"{min(values):.3f}-{max(values):.3f}"


def run_table(names, runs, members, views, y_test, w) -> list[str]:
    from docclassify.metrics import macro_f1

    fit_on = "robust" if "robust" in views else "clean"
    lines = [f"| recipe | cv F1 clean (folds) | cv F1 robust (folds) | test F1 (argmax; fold models) "
             f"| test vs {names[0]} [90% CI] | decision=macro_f1: cross-fitted OOF F1 ({fit_on}) | biases applied "
             "| test F1 (decision) | test change [90% CI] |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base_pred = members[0].test_logits.argmax(1)
    for i, (name, run, member) in enumerate(zip(names, runs, members)):
        argmax_pred = member.test_logits.argmax(1)
        _, test, fit, _, pred = scored([member], oof_inputs([run], fit_on), "equal", "macro_f1", y_test)
        d = fit.decision
        robust = (f"{run.results['cv_macro_f1_robust']:.4f} ({fold_spread(run, 'best_macro_f1_robust')})"
                  if run.results.get("cv_macro_f1_robust") else "-")
        versus = paired_delta(w, y_test, base_pred, argmax_pred) if i else "(reference)"
        lines.append(f"| {name} | {run.cv_macro_f1:.4f} ({fold_spread(run, 'best_macro_f1')}) | {robust} | "
                     f"{macro_f1(y_test, argmax_pred):.4f} ({fold_model_spread(member, y_test)}) | {versus} | "
                     f"{d.oof_macro_f1_argmax:.4f} -> {d.oof_macro_f1_cross_fitted:.4f} | "
                     f"{'yes' if d.applied else 'no'} | {test:.4f} | {paired_delta(w, y_test, argmax_pred, pred)} |")
    return lines


def ensemble_table(runs, members, views, y_test, w) -> list[str]:
    lines = ["| ensemble.weights | decision | fit on | mimic_fold_average | OOF F1 (fit view) | test F1 "
             "| test vs equal+argmax [90% CI] | test NLL | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    settings = [(view, weights, decision, True) for view in views for weights in WEIGHTS
                for decision in ("argmax", "macro_f1")]
    settings += [(views[-1], weights, "macro_f1", False) for weights in WEIGHTS]  # the averaging mismatch left alone
    base = None
    for view, weights, decision, mimic in settings:
        oof_f1, test, fit, nll, pred = scored(members, oof_inputs(runs, view), weights, decision, y_test, mimic)
        versus = "(reference)" if base is None else paired_delta(w, y_test, base, pred)
        base = pred if base is None else base  # equal weights, argmax: the first setting
        lines.append(f"| {weights} | {decision} | {view} | {'on' if mimic else 'off'} | {oof_f1:.4f} | {test:.4f} | "
                     f"{versus} | {nll:.4f} | {ensemble_note(weights, fit, decision)} |")
    return lines


def ensemble_note(weights: str, fit, decision: str) -> str:
    rep = fit.weights_fit or {}
    notes = []
    if weights == "oof":
        notes.append(f"weights {[round(w, 2) for w in fit.weights]}" + ("" if rep.get("accepted") else " (equal kept)"))
    elif weights == "greedy":
        h = rep["held_out"]
        notes.append(f"picks {rep['counts']}; held out {h['greedy']:.4f} vs equal {h['equal']:.4f}"
                     + ("" if rep["accepted"] else " (equal kept)"))
    elif weights == "stack":
        notes.append(f"C={rep['C']:.3g}, cross-fitted {rep['f1_cross_fitted']:.4f} vs equal {rep['f1_equal']:.4f}"
                     + ("" if rep["accepted"] else " (equal kept)"))
    if decision == "macro_f1":
        notes.append("biases applied" if fit.decision.applied else "argmax kept")
    return "; ".join(notes)


def calibration_rows(label: str, fold_logits, oof_logits, y_oof, y_test) -> list[str]:
    """Test NLL / ECE of the fold average under each temperature: none, fitted on single-fold OOF
    (what inference does), alpha * that (OOF scaled to mimic averaging), and fitted on the test
    labels themselves (the floor any single temperature can reach)."""
    import numpy as np

    from docclassify.metrics import softmax
    from docclassify.predict.calibration import averaging_factor, ece, fit_temperature, nll

    def fold_mean(logits):
        return softmax(logits.reshape(-1, logits.shape[-1])).reshape(logits.shape).mean(0)

    avg = np.log(fold_mean(fold_logits))
    t_oof = fit_temperature(oof_logits, y_oof)
    alpha = averaging_factor(fold_logits)
    rows = []
    for name, t in (("none (T=1)", 1.0), ("T fitted on the OOF rows as they are (mimic_fold_average=false)", t_oof),
                    (f"T fitted on OOF scaled by alpha={alpha:.3f} (mimic_fold_average=true)", t_oof * alpha),
                    ("oracle: T fitted on the test labels", fit_temperature(avg, y_test))):
        rows.append(f"| {label} | {name} | {t:.3f} | {nll(avg, y_test, t):.4f} | "
                    f"{ece(softmax(avg / t), y_test):.4f} |")
    per_fold = fold_mean(fold_logits / t_oof)  # T on each fold's logits (what it was fitted on), then averaged
    rows.append(f"| {label} | T fitted on single-fold OOF, applied to each fold, then averaged | {t_oof:.3f} | "
                f"{nll(np.log(per_fold), y_test):.4f} | {ece(per_fold, y_test):.4f} |")
    return rows


def calibration_table(names, runs, fold_logits, views, y_test) -> list[str]:
    from docclassify.predict.run_dirs import load_view_oof

    lines = ["| run | temperature | T | test NLL | test ECE |", "| --- | --- | --- | --- | --- |"]
    for view in views:
        for name, run, folds in zip(names, runs, fold_logits):
            _, y_oof, oof_logits = load_view_oof(run, view)
            lines += calibration_rows(f"{name} (fit on {view})", folds, oof_logits, y_oof, y_test)
    return lines


def evaluate(names: list[str], run_dirs: list[Path], args) -> None:
    import numpy as np

    from docclassify.metrics import safe_log, softmax
    from docclassify.predict.imagestore import ImageStore
    from docclassify.predict.members import Member
    from docclassify.predict.run_dirs import load_run
    from docclassify.predict.testdata import load_data, load_test_labels

    runs = [load_run(d) for d in run_dirs]
    cache = os.environ.get("DOCCLASSIFY_CACHE", str(Path.home() / ".cache" / "docclassify"))
    datasets = load_data(runs, {}, cache)
    y_test = load_test_labels(datasets[0].source)
    store = ImageStore(cache)
    fold_logits = [fold_test_logits(r, ds, store, args.batch_size) for r, ds in zip(runs, datasets)]
    members = [Member(r, safe_log(softmax(f.reshape(-1, f.shape[-1])).reshape(f.shape).mean(0)), fold_test_logits=f)
               for r, f in zip(runs, fold_logits)]
    views = ["clean"] + (["robust"] if all(r.results.get("cv_macro_f1_robust") for r in runs) else [])
    w = bootstrap_weights(y_test)
    print(f"\n{len(y_test)} labelled test images; counts per class {np.bincount(y_test).tolist()}; intervals: "
          f"paired bootstrap, {BOOTSTRAP} resamples of the test rows within each class\n")
    for title, lines in (("Runs", run_table(names, runs, members, views, y_test, w)),
                         (f"Ensembles of the {len(runs)} runs", ensemble_table(runs, members, views, y_test, w)),
                         ("Calibration of fold averages", calibration_table(names, runs, fold_logits, views, y_test))):
        print(f"## {title}\n")
        print("\n".join(lines) + "\n", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), metavar="RECIPE")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    ap.add_argument("--train-override", nargs="*", default=[], help="extra overrides for every recipe")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    print(machine_line(), flush=True)
    print(f"{args.model} from scratch, {args.img_size} px, {args.folds} folds, {args.epochs} epochs, seed {args.seed}",
          flush=True)
    t0 = time.time()
    dirs = [train(name, args.work / "macro_f1" / name.replace(" ", "").replace("=", "_").replace("+", "_"), args)
            for name in args.recipes]
    evaluate(args.recipes, dirs, args)
    print(f"total {time.time() - t0:.0f}s; {machine_line()}")


if __name__ == "__main__":
    main()
