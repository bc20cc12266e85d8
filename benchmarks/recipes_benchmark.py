"""The recipe benchmark (issue 29): which combination of docclassify's parts scores best on a
distorted test set, over seeds and two test profiles, and does robust cv rank the recipes as the
test does?

A recipe is a training command (`python -m docclassify.train` overrides), an inference command
(`python -m docclassify.infer` overrides) and, for two of them, a second stage: soft pseudo-labels
from the first stage's infer run, or an ensemble of two trained recipes (greedy / stack). Every
recipe runs with every seed on the built-in synthetic data (471 clean training images, 17
classes) and is scored on both of its labelled distorted test splits:

  test      test/: the competition-like split (quarter turns, mirrors, skew, crops, blur,
            exposure, noise, low JPEG quality; docs/synthetic-data.md)
  phone     test_phone/: phone photos (perspective, desk, shadow, glare, defocus, motion blur, low
            light, colour cast, moire), which no validation profile was written for

Per recipe: clean cv and robust cv (results.json: `cv_macro_f1`, `cv_macro_f1_robust`, the
estimate that chose nothing; for an ensemble, infer's OOF estimate), test macro F1 on each split
(mean over seeds, the per-seed spread max - min, and a 95% bootstrap interval over test images:
images resampled jointly for every seed, the seeds' F1 averaged), wall seconds of the training
and inference commands (medians over seeds). The table is sorted by the first split's test F1; a
recipe marked `~` is within the noise of the best (the best does not beat it in >= 97.5% of paired
bootstrap resamples), unmarked rows are worse beyond the noise. Below the table: |robust cv - test|
per recipe and the Spearman rank correlation of robust cv with the test over the recipes.

    python benchmarks/recipes_benchmark.py                          # every recipe, seeds 42 43 44
    python benchmarks/recipes_benchmark.py --recipes quick_v1 quick --seeds 42
    python benchmarks/recipes_benchmark.py --jobs 2                 # two commands side by side
    python benchmarks/recipes_benchmark.py --list                   # the recipes and their commands

Runs already made under --work are reused (a training run by its overrides and seed, an infer
run by its runs, overrides and split): delete a folder to redo it. Wall seconds of runs made
side by side (--jobs 2) are not those of a run alone: the table says which.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import DEFAULT_WORK, REPO, machine_line

# ----------------------------------------------------------------------------------- the recipes
# Knobs pinned in every recipe, so that a recipe means the same after a default changes.
COMMON = ["model.pretrained=false", "logger=none", "data.img_size=64"]
# Today's quick preset before issue 29 (the README's first command until then), spelled out.
QUICK_V1 = ["pipeline=quick", "model=resnet18", "folds.n=5", "trainer.epochs=6", "trainer.lr=2e-3",
            "augment.orientation=none", "model.orientation_head=none", "augment.match_validation=false",
            "validation.distort=competition", "folds.group_duplicates=false", "loss=ce"]
# Orientation augmentation (turns and mirrors) and the orientation head, in the quick budget.
ORIENT = ["augment.orientation=dihedral", "model.orientation_head=dihedral8"]
BUDGET = ["model=resnet18", "folds.n=3", "trainer.epochs=12", "trainer.lr=2e-3"]
HEAD = ["pipeline=quick", *BUDGET, *ORIENT, "loss=ce", "augment.match_validation=false",
        "validation.distort=competition"]
HEAD_ANY_LOSS = [a for a in HEAD if a != "loss=ce"]  # a recipe that picks its own loss
INFER_V1 = ["tta=none", "calibrate=false", "decision=argmax"]
ORIENT_DESKEW = ["tta=orient", "tta.deskew=true", "calibrate=false", "decision=argmax"]
SPLITS = {
    "test": [],
    "phone": ["data.test_dir=test_phone", "data.test_labels=test_phone_labels.csv",
              "data.sample_submission=test_phone_sample_submission.csv"],
}
LABELS = {"test": "test_labels.csv", "phone": "test_phone_labels.csv"}


@dataclass
class Recipe:
    name: str
    train: list[str] = field(default_factory=list)
    infer: list[str] = field(default_factory=lambda: list(INFER_V1))
    pseudo_from: str | None = None       # stage 2: soft pseudo-labels from this recipe's infer run
    members: tuple[str, ...] = ()         # an ensemble: these recipes' runs, one infer over them
    note: str = ""


RECIPES = [
    Recipe("quick_v1", QUICK_V1, note="the quick preset before issue 29"),
    Recipe("head", HEAD, note="+ orientation augmentation (dihedral) and head, 3 folds x 12 epochs"),
    Recipe("head_orient", HEAD, ["tta=orient", "tta.deskew=false", "calibrate=false"], note="+ tta=orient"),
    Recipe("head_orient_deskew", HEAD, ORIENT_DESKEW, note="+ tta=orient tta.deskew=true"),
    Recipe("head_orient_soft", HEAD, ["tta=orient_soft", "tta.deskew=true", "calibrate=false"],
           note="+ tta=orient_soft, deskew"),
    Recipe("head_decision", HEAD, [*ORIENT_DESKEW[:-1], "decision=macro_f1"], note="+ decision=macro_f1"),
    Recipe("match_auto", [*HEAD[:-1], "augment.match_validation=true", "validation.distort=auto"],
           ORIENT_DESKEW, note="+ augment.match_validation with validation.distort=auto"),
    Recipe("balanced", [*HEAD, "data.sampler=balanced"], ORIENT_DESKEW, note="+ data.sampler=balanced"),
    Recipe("focal", [*HEAD_ANY_LOSS, "loss=focal"], ORIENT_DESKEW, note="+ loss=focal"),
    Recipe("logit_adjusted", [*HEAD_ANY_LOSS, "loss=logit_adjusted"], ORIENT_DESKEW, note="+ loss=logit_adjusted"),
    Recipe("pseudo_soft", HEAD, ORIENT_DESKEW, pseudo_from="head_orient_deskew",
           note="+ a round of soft pseudo-labels (threshold off, top half, <= 12 per class)"),
    Recipe("arch2", [*HEAD[:1], "model=resnet10t", *HEAD[2:]], ORIENT_DESKEW,
           note="a second architecture (timm resnet10t), same recipe"),
    Recipe("greedy2", infer=[*ORIENT_DESKEW, "ensemble.weights=greedy"], members=("head_orient_deskew", "arch2"),
           note="greedy ensemble of head + arch2"),
    Recipe("stack2", infer=[*ORIENT_DESKEW, "ensemble.weights=stack"], members=("head_orient_deskew", "arch2"),
           note="stacked ensemble of head + arch2"),
    Recipe("highperf", ["pipeline=highperf", "model=resnet18", "folds.n=3", "trainer.epochs=30", *ORIENT,
                        "validation.distort=competition"], ORIENT_DESKEW,
           note="pipeline=highperf from scratch (lr, warmup from model.pretrained), 30 epochs"),
    Recipe("robust_recipe", ["experiment=robust_recipe_synthetic", "model=resnet18", "folds.n=3", "folds.run=null",
                             "validation.distort=competition"], INFER_V1,
           note="the robust_recipe search's best (conf/experiment/robust_recipe_synthetic.yaml)"),
    Recipe("quick", [], ORIENT_DESKEW, note="the shipped default: python -m docclassify.train (its own infer.*)"),
    Recipe("quick_bf16", ["trainer.amp=bf16"], ORIENT_DESKEW,
           note="the default with bf16 autocast (a CPU with AVX512-BF16 or AMX; issue 30)"),
    Recipe("quick_bf16_e16", ["trainer.amp=bf16", "trainer.epochs=16"], ORIENT_DESKEW,
           note="bf16 autocast, the time it saves spent on 16 epochs instead of 12"),
    Recipe("quick_bf16_e20", ["trainer.amp=bf16", "trainer.epochs=20"], ORIENT_DESKEW,
           note="bf16 autocast, 20 epochs"),
]
PSEUDO = ["pseudo.threshold=null", "pseudo.top_fraction=0.5", "pseudo.per_class_max=12", "pseudo.soft=true"]
BY_NAME = {r.name: r for r in RECIPES}


# ------------------------------------------------------------------------------------ running
def slug(parts: list[str]) -> str:
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=5).hexdigest()


def run_cmd(cmd: list[str], log_path: Path) -> float:
    t0 = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:4])} ... failed ({proc.returncode}), see {log_path}")
    return time.time() - t0


class Bench:
    def __init__(self, args):
        self.work, self.args = args.work, args
        self.work.mkdir(parents=True, exist_ok=True)
        self.redone: set[Path] = set()  # --redo-infer: each infer run predicted again once

    def train_dir(self, recipe: Recipe, seed: int) -> Path:
        extra = [] if recipe.pseudo_from is None else ["pseudo_from", recipe.pseudo_from]
        key = slug([*COMMON, *recipe.train, *self.args.extra_train, *extra])
        return self.work / f"train-s{seed}-{key}"  # by overrides alone: recipes that differ at infer share it

    def train(self, recipe: Recipe, seed: int) -> Path:
        run = self.train_dir(recipe, seed)
        if (run / "results.json").is_file():
            return run
        overrides = [*COMMON, *recipe.train, *self.args.extra_train, f"seed={seed}"]
        if recipe.pseudo_from is not None:
            teacher = self.infer(BY_NAME[recipe.pseudo_from], seed, "test")
            overrides += [f"pseudo.source={teacher}", *PSEUDO]
        seconds = run_cmd([sys.executable, "-m", "docclassify.train", *overrides, f"hydra.run.dir={run}"],
                          self.work / f"{run.name}.log")
        (run / "bench_seconds.json").write_text(json.dumps({"train": seconds, "jobs": self.args.jobs}))
        return run

    def runs_of(self, recipe: Recipe, seed: int) -> list[Path]:
        if recipe.members:
            return [self.train(BY_NAME[m], seed) for m in recipe.members]
        return [self.train(recipe, seed)]

    def infer(self, recipe: Recipe, seed: int, split: str) -> Path:
        runs = self.runs_of(recipe, seed)
        out = runs[0] / f"infer-{recipe.name}-{split}-{slug([*map(str, runs), *recipe.infer])}"
        if (out / "summary.json").is_file() and not (self.args.redo_infer and out not in self.redone):
            return out
        self.redone.add(out)
        seconds = run_cmd([sys.executable, "-m", "docclassify.infer", f"runs=[{','.join(map(str, runs))}]",
                           *recipe.infer, *SPLITS[split], f"hydra.run.dir={out}"], self.work / f"{out.name}.log")
        (out / "bench_seconds.json").write_text(json.dumps({"infer": seconds, "jobs": self.args.jobs}))
        return out


def measure(bench: Bench, recipe: Recipe, seed: int) -> dict:
    """One (recipe, seed): its figures and the submission's predictions on every split."""
    runs = bench.runs_of(recipe, seed)
    results = [json.loads((r / "results.json").read_text()) for r in runs]
    row = {"recipe": recipe.name, "seed": seed, "runs": [str(r) for r in runs],
           "clean_cv": float(np.mean([r["cv_macro_f1"] for r in results])),
           "train_s": sum(json.loads((r / "bench_seconds.json").read_text())["train"] for r in runs
                          if (r / "bench_seconds.json").is_file())}
    robust = [r.get("cv_macro_f1_robust") for r in results]
    row["robust_cv"] = float(np.mean(robust)) if all(v is not None for v in robust) else None
    for split in SPLITS:
        out = bench.infer(recipe, seed, split)
        summary = json.loads((out / "summary.json").read_text())
        row[f"{split}_f1"] = summary["test_metrics"]["macro_f1"]
        # infer's estimate (estimate=true): ATC, the test images' confidence thresholded as on the robust OOF
        # rows (predict/estimate.py); and those rows' own F1, predicted as this split's test images are
        row[f"{split}_estimate"] = (summary.get("estimate") or {}).get("macro_f1")
        row[f"{split}_oof_estimate"] = (summary.get("oof") or {}).get("macro_f1")
        row[f"{split}_infer_s"] = summary.get("seconds")
        row[f"{split}_pred"] = pred_vector(out)
    return row


def pred_vector(out: Path) -> list[int]:
    """The submission's classes in the order of the split's labels file (sorted by ID)."""
    import pandas as pd

    sub = pd.read_csv(out / "submission.csv").sort_values("ID")
    return [int(t) for t in sub["target"]]


def labels_of(split: str) -> np.ndarray:
    """The split's true classes, sorted by ID (as pred_vector's)."""
    import pandas as pd

    return pd.read_csv(synthetic_root() / LABELS[split]).sort_values("ID")["target"].to_numpy()


def synthetic_root() -> Path:
    from omegaconf import OmegaConf

    from docclassify.data.sources import load_source

    cfg = OmegaConf.create({"name": "synthetic", "n_train_per_class": 30, "n_test_per_class": 20,
                            "long_side": 256, "generator_seed": 0})
    return Path(load_source(cfg, os.environ.get("DOCCLASSIFY_CACHE",
                                                str(Path.home() / ".cache" / "docclassify"))).root)


# ---------------------------------------------------------------------------------- statistics
def f1_many(y: np.ndarray, pred: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Macro F1 of ``pred`` on every resample ``idx`` (B x N indices) at once."""
    from docclassify.metrics import macro_f1_from_counts

    yy, pp = y[idx], pred[idx]                            # (B, N)
    onehot_t = np.eye(k, dtype=np.int32)[yy]              # (B, N, K)
    onehot_p = np.eye(k, dtype=np.int32)[pp]
    return macro_f1_from_counts((onehot_t * onehot_p).sum(1), onehot_p.sum(1), onehot_t.sum(1))


def summarise(rows: list[dict], names: list[str], splits: list[str], n_boot: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for split in splits:
        y = labels_of(split)
        k = int(y.max()) + 1
        idx = rng.integers(0, len(y), size=(n_boot, len(y)))
        boot = {}
        for name in names:
            preds = [np.asarray(r[f"{split}_pred"]) for r in rows if r["recipe"] == name]
            boot[name] = np.mean([f1_many(y, p, idx, k) for p in preds], axis=0)
        best = max(names, key=lambda n: float(np.mean([r[f"{split}_f1"] for r in rows if r["recipe"] == n])))
        for name in names:
            mine = [r for r in rows if r["recipe"] == name]
            f1s = [r[f"{split}_f1"] for r in mine]
            entry = next((e for e in out if e["recipe"] == name), None)
            if entry is None:
                entry = {"recipe": name, "seeds": len(mine),
                         "clean_cv": float(np.mean([r["clean_cv"] for r in mine])),
                         "robust_cv": _mean([r["robust_cv"] for r in mine]),
                         "train_s": statistics.median(r["train_s"] for r in mine)}
                out.append(entry)
            entry[f"{split}_f1"] = float(np.mean(f1s))
            entry[f"{split}_spread"] = float(max(f1s) - min(f1s))
            entry[f"{split}_ci"] = [float(np.quantile(boot[name], 0.025)), float(np.quantile(boot[name], 0.975))]
            entry[f"{split}_estimate"] = _mean([r[f"{split}_estimate"] for r in mine])
            entry[f"{split}_oof_estimate"] = _mean([r.get(f"{split}_oof_estimate") for r in mine])
            entry[f"{split}_infer_s"] = _median([r[f"{split}_infer_s"] for r in mine])
            entry[f"{split}_noise"] = name == best or float(np.mean(boot[best] - boot[name] > 0)) < 0.975
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _median(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _f(v, digits=3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def robust_figure(entry: dict, split: str):
    """The robust cv a recipe is judged by: the training run's (copies drawn from its own validation
    profile; the same figure for every split), else (an ensemble) its OOF rows' F1 in infer."""
    return entry["robust_cv"] if entry["robust_cv"] is not None else entry.get(f"{split}_oof_estimate")


def print_table(entries: list[dict], splits: list[str], args) -> str:
    lines = [f"recipes benchmark: seeds {' '.join(map(str, args.seeds))}; {machine_line()}; "
             f"commands side by side: {args.jobs}", ""]
    head = "| recipe | clean cv | robust cv |"
    rule = "|---|---|---|"
    for split in splits:
        head += f" {split} F1 [95% CI] | {split} spread | {split} estimate |"
        rule += "---|---|---|"
    head += " train s | infer s |"
    rule += "---|---|"
    lines += [head, rule]
    for e in sorted(entries, key=lambda e: -e[f"{splits[0]}_f1"]):
        cells = [f"{'~ ' if e[f'{splits[0]}_noise'] else ''}{e['recipe']}", _f(e["clean_cv"]), _f(e["robust_cv"])]
        for split in splits:
            lo, hi = e[f"{split}_ci"]
            cells += [f"{e[f'{split}_f1']:.3f} [{lo:.3f}, {hi:.3f}]", _f(e[f"{split}_spread"]),
                      _f(e[f"{split}_estimate"])]
        cells += [f"{e['train_s']:.0f}", _f(e[f"{splits[0]}_infer_s"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    from scipy.stats import spearmanr

    lines.append("")
    for split in splits:
        for label, figure in (("robust cv (training)", robust_figure),
                              ("OOF rows as the test (infer)", lambda e, sp: e.get(f"{sp}_oof_estimate")),
                              ("infer estimate (ATC)", lambda e, sp: e.get(f"{sp}_estimate"))):
            pairs = [(figure(e, split), e[f"{split}_f1"]) for e in entries if figure(e, split) is not None]
            if len(pairs) < 3:
                continue
            gaps = [abs(r - t) for r, t in pairs]
            limit = 0.05 if split == "test" else 0.08
            rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).correlation
            lines.append(f"{split}, {label}: |figure - test| mean {np.mean(gaps):.3f}, max {max(gaps):.3f} "
                         f"({sum(g <= limit for g in gaps)}/{len(gaps)} within {limit}); "
                         f"Spearman(figure, test) {rho:.2f} over {len(pairs)} recipes")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=[r.name for r in RECIPES], choices=list(BY_NAME))
    parser.add_argument("--seeds", nargs="*", type=int, default=[42, 43, 44])
    parser.add_argument("--splits", nargs="*", default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument("--jobs", type=int, default=1, help="commands run side by side")
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "recipes")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--redo-infer", action="store_true",
                        help="predict every infer run again (after a change to infer); trained runs are kept")
    parser.add_argument("--extra-train", nargs="*", default=[],
                        help="overrides added to every training (a smoke run: trainer.epochs=1 folds.n=2)")
    args = parser.parse_args()
    if args.list:
        for r in RECIPES:
            print(f"{r.name}: {r.note}\n  train {' '.join([*COMMON, *r.train]) if not r.members else '-'}\n"
                  f"  infer {' '.join(r.infer)}" + (f"\n  members {', '.join(r.members)}" if r.members else "")
                  + (f"\n  pseudo-labels from {r.pseudo_from}: {' '.join(PSEUDO)}" if r.pseudo_from else ""))
        return
    os.environ.setdefault("WANDB_MODE", "disabled")
    bench = Bench(args)
    recipes = [BY_NAME[n] for n in args.recipes]
    todo = [(r, s) for r in recipes for s in args.seeds]
    # Trainings first (in parallel when --jobs > 1), then every (recipe, seed)'s infers and figures.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda rs: bench.runs_of(*rs), [(r, s) for r, s in todo if r.pseudo_from is None]))
        rows = list(pool.map(lambda rs: measure(bench, *rs), todo))
    with open(args.work / "rows.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    entries = summarise(rows, [r.name for r in recipes], args.splits, args.bootstrap)
    (args.work / "table.md").write_text(print_table(entries, args.splits, args) + "\n")


if __name__ == "__main__":
    main()
