"""`python -m docclassify.aggregate SWEEP_DIR`: merge folds trained as separate jobs into one run.

Each fold can run as its own job (its own GPU, its own SLURM allocation)::

    python -m docclassify.train -m folds.run=[0],[1],[2],[3],[4] hydra.sweep.dir=SWEEP_DIR ...
    python -m docclassify.aggregate SWEEP_DIR

Every job dir (SWEEP_DIR/0, SWEEP_DIR/1, ...) is a complete run dir of the folds it trained.
The merge writes into SWEEP_DIR (or ``--out``) what one K-fold run writes: results.json,
oof.csv, oof_logits.npy (and with a robust view oof_robust.csv, oof_robust_logits.npy),
folds.csv, run_config.yaml, folds/fold{k}.json (+ its validation logits) and the checkpoint each
fold{k}.json names (checkpoints/fold{k}_best.safetensors; hard links to the jobs' files, copies
across file systems), so
``python -m docclassify.infer runs=[SWEEP_DIR]`` and ``resume=SWEEP_DIR`` treat it as one run.

The jobs must share their folds (same data, seed, folds.n): otherwise their out-of-fold rows
would overlap or miss rows, and the merge refuses. A fold trained by two jobs is refused too.
The same merge runs at the end of a multirun with the Hydra callback ``AggregateFolds``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from docclassify import errors
from docclassify.distortion.copies import RobustSpec
from docclassify.engine.kfold import run_results
from docclassify.engine.oof import RESULTS_FILE, pool_oof
from docclassify.utils.io import atomic_write_csv, atomic_write_json, atomic_write_text
from docclassify.utils.prog import prog

log = logging.getLogger("docclassify.aggregate")

RUN_CONFIG, FOLDS_FILE = "run_config.yaml", "folds.csv"
# Keys that decide which rows land in which fold: jobs that differ here cannot be merged.
SPLIT_KEYS = ("seed", "folds.n", "folds.group_duplicates", "folds.duplicate_distance", "folds.duplicate_similarity",
              "data.relabel", "data.exclude")
# Keys that decide what a fold's best epoch and robust OOF rows are: jobs that differ here would pool
# incomparable scores.
VALIDATION_KEYS = ("validation", "trainer.monitor")


class AggregateError(errors.UserError):
    """The job dirs cannot be merged into one run (message says which dir and why)."""


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a multirun: sub-directories holding a run (run_config.yaml), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise AggregateError(f"{sweep_dir}: no such directory")
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / RUN_CONFIG).is_file()]
    if not jobs:
        raise AggregateError(f"{sweep_dir}: no job dirs (sub-directories with {RUN_CONFIG}); "
                             "pass the hydra.sweep.dir of a `docclassify.train -m folds.run=[0],[1],...` run")
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _read_job(job: Path) -> dict[str, Any]:
    results_path = job / RESULTS_FILE
    if not results_path.is_file():
        raise AggregateError(f"{job}: no {RESULTS_FILE}, the job has not finished "
                             f"(finish it with `python -m docclassify.train resume={job}`)")
    folds = pd.read_csv(job / FOLDS_FILE, dtype={"ID": str})
    return {"dir": job, "results": json.loads(results_path.read_text()), "folds": folds,
            "config": OmegaConf.load(job / RUN_CONFIG)}


def check_compatible(jobs: list[dict]) -> None:
    """Refuse jobs whose fold assignments, classes or folds differ (or that repeat a fold)."""
    first = jobs[0]
    for job in jobs[1:]:
        for key in SPLIT_KEYS:
            a, b = OmegaConf.select(first["config"], key), OmegaConf.select(job["config"], key)
            if a != b:
                raise AggregateError(f"cannot merge {first['dir']} and {job['dir']}: {key} differs ({a} vs {b}); "
                                     "the jobs of one K-fold run must share data, seed and folds.n")
        for key in VALIDATION_KEYS:
            a, b = OmegaConf.select(first["config"], key), OmegaConf.select(job["config"], key)
            if a != b:
                raise AggregateError(f"cannot merge {first['dir']} and {job['dir']}: {key} differs; the jobs of "
                                     "one K-fold run must validate alike (same validation option, profile, "
                                     "copies, seed and trainer.monitor)")
        if job["results"].get("pseudo") != first["results"].get("pseudo"):
            raise AggregateError(f"cannot merge {first['dir']} and {job['dir']}: they trained with different "
                                 "pseudo-label selections (pseudo.*); the jobs of one K-fold run must add the same "
                                 "test images")
        if job["results"]["classes"] != first["results"]["classes"]:
            raise AggregateError(f"cannot merge {first['dir']} and {job['dir']}: their classes differ")
        if not job["folds"].equals(first["folds"]):
            raise AggregateError(f"cannot merge {first['dir']} and {job['dir']}: their {FOLDS_FILE} differ "
                                 f"(data {first['results']['data']} vs {job['results']['data']}): the jobs "
                                 "assigned different rows to the folds")
    seen: dict[int, Path] = {}
    for job in jobs:
        for k in job["results"]["folds_run"]:
            if k in seen:
                raise AggregateError(f"fold {k} was trained by two jobs ({seen[k]} and {job['dir']}); "
                                     "keep one of them (e.g. move the other job dir out of the sweep dir)")
            seen[k] = job["dir"]


def _place(src: Path, dst: Path) -> None:
    """dst becomes src's content: a hard link (no copy of the weights), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _fold_outcome(job: Path, k: int, out_dir: Path) -> dict:
    summary, logits = job / "folds" / f"fold{k}.json", job / "folds" / f"fold{k}_val_logits.npy"
    if not summary.is_file() or not logits.is_file():
        raise AggregateError(f"{job}: fold {k} is listed in {RESULTS_FILE} but {summary.name} or {logits.name} "
                             "is missing from its folds/ dir")
    outcome = json.loads(summary.read_text())
    ckpt = job / outcome["checkpoint"]
    if not ckpt.is_file():
        raise AggregateError(f"{job}: checkpoint of fold {k} not found: {ckpt}")
    robust = job / "folds" / f"fold{k}_val_logits_robust.npy"
    for src in (summary, logits, ckpt, *([robust] if robust.is_file() else [])):
        _place(src, out_dir / src.relative_to(job))
    outcome["val_logits"] = np.load(logits)
    outcome["val_logits_robust"] = np.load(robust) if robust.is_file() else None
    return outcome


def merge_jobs(job_dirs: list[Path], out_dir: Path) -> dict:
    """Merge finished fold jobs into ``out_dir`` (a run dir like one K-fold run's). Returns results."""
    out_dir = Path(out_dir)
    jobs = [_read_job(Path(j)) for j in job_dirs]
    check_compatible(jobs)
    first = jobs[0]
    folds_df = first["folds"]
    classes = first["results"]["classes"]
    outcomes = sorted((_fold_outcome(job["dir"], k, out_dir) for job in jobs for k in job["results"]["folds_run"]),
                      key=lambda o: o["fold"])
    cfg = first["config"]
    skipped = sorted({i for job in jobs for i in job["results"].get("skipped_images", [])})
    try:
        pooled = pool_oof(out_dir, folds_df[["ID", "target"]], classes, outcomes)
    except RuntimeError as exc:  # e.g. jobs trained with different validation options
        raise AggregateError(f"cannot merge the jobs of {out_dir}: {exc}") from exc
    validation = first["results"].get("validation") or {}
    robust = RobustSpec.from_dict(validation) if "profile" in validation else None
    results = run_results(pooled, cfg, first["results"]["data"], skipped, outcomes, robust)
    results["pseudo"] = first["results"].get("pseudo")  # the same selection in every job (check_compatible)
    results["seconds"] = round(sum(float(job["results"].get("seconds", 0.0)) for job in jobs), 2)
    if "distributed" in first["results"]:
        results["distributed"] = first["results"]["distributed"]
    for key in ("amp", "channels_last"):  # what each job's trainer settings resolved to on its machine
        values = [job["results"][key] for job in jobs if key in job["results"]]
        if values:
            results[key] = values[0] if all(v == values[0] for v in values) else values
    results["merged_from"] = [os.path.relpath(job["dir"], out_dir) for job in jobs]
    atomic_write_csv(folds_df, out_dir / FOLDS_FILE)
    merged_cfg = OmegaConf.merge(cfg, {"folds": {"run": [o["fold"] for o in outcomes]}})
    atomic_write_text(out_dir / RUN_CONFIG, OmegaConf.to_yaml(merged_cfg))
    atomic_write_json(out_dir / RESULTS_FILE, results)
    log.info("merged %d job(s), folds %s: cv macro F1 %.4f, objective (%s) %.4f over %d OOF rows -> %s", len(jobs),
             results["folds_run"], results["cv_macro_f1"], results["monitor"], results["objective"],
             results["n_oof_rows"], out_dir)
    return results


def aggregate_sweep(sweep_dir: Path, out_dir: Path | None = None) -> dict:
    return merge_jobs(find_job_dirs(Path(sweep_dir)), Path(out_dir) if out_dir else Path(sweep_dir))


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover (hydra < 1.1)
    _HydraCallback = object


class AggregateFolds(_HydraCallback):
    """Hydra callback: merge the fold jobs when the multirun ends, e.g.
    ``+hydra.callbacks.aggregate._target_=docclassify.aggregate.AggregateFolds``."""

    def on_multirun_end(self, config, **kwargs) -> None:
        aggregate_sweep(Path(str(config.hydra.sweep.dir)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog("docclassify.aggregate"), description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="hydra.sweep.dir of the multirun (holds the job dirs)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the merged run (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    try:
        results = aggregate_sweep(args.sweep_dir, args.out)
    except errors.UserError as exc:  # AggregateError, or a damaged file's DataError
        if errors.full_error_requested():
            raise
        print(errors.error_line("docclassify.aggregate", exc), file=sys.stderr)
        return errors.USAGE_EXIT_CODE
    print(json.dumps({k: results[k] for k in ("cv_macro_f1", "cv_macro_f1_robust", "objective", "n_oof_rows",
                                              "folds_run")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
