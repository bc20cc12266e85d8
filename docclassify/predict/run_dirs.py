"""Finding and validating the training runs an inference combines.

``runs=[...]`` entries are run dirs of ``docclassify.train`` (a ``results.json`` at the top,
also what ``docclassify.aggregate`` makes of a fold-per-job sweep) or multirun sweep folders
(sub-folders ``0/``, ``1/``, ... each a run; unfinished trials, without ``results.json``, are
skipped with a warning). Everything is checked before any prediction: results and fold
checkpoints present, every checkpoint a docclassify checkpoint with the run's class list, all
runs with one class list. Every problem found is listed in one error.

A run trained with a robust view (``validation=robust|both``) also has ``oof_robust.csv``: the
distorted copies of its OOF rows that chose nothing in training (engine.evaluate.robust_roles).
Inference decides on that view by default (``fit_on``): ``top_k`` ranks runs by
``cv_macro_f1_robust_select`` (the selecting copies', the run's objective), and weights,
temperature and ``tta=auto`` are fitted on the estimating rows of oof_robust.csv
(:func:`load_view_oof`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from docclassify.data.sources import DataError
from docclassify.utils.choices import FIT_ON

log = logging.getLogger(__name__)

RESULTS_FILE, OOF_FILE, OOF_LOGITS_FILE = "results.json", "oof.csv", "oof_logits.npy"
OOF_ROBUST_FILE, OOF_ROBUST_LOGITS_FILE = "oof_robust.csv", "oof_robust_logits.npy"
# The resolved config the run trained with (engine.resume.check_resume_compatible writes it);
# Hydra's copy is the fallback.
CONFIG_FILES = ("run_config.yaml", ".hydra/config.yaml")


class RunError(DataError):
    """A run dir that cannot be used for inference (the message names the dir and the file)."""


@dataclass
class FoldModel:
    fold: int
    checkpoint: Path
    meta: dict  # the checkpoint's self-description (models.checkpoint.model_meta)


@dataclass
class Run:
    path: Path
    results: dict
    config: dict  # the run's resolved config (plain containers)
    folds: list[FoldModel] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return list(self.results["classes"])

    @property
    def cv_macro_f1(self) -> float:
        value = self.results.get("cv_macro_f1")
        return float(value) if value is not None else math.nan

    @property
    def cv_macro_f1_robust(self) -> float:
        value = self.results.get("cv_macro_f1_robust")
        return float(value) if value is not None else math.nan

    @property
    def has_robust(self) -> bool:
        """Trained with a robust view: robust OOF rows and the copies' recipe (results' validation)."""
        return self.results.get("cv_macro_f1_robust") is not None and \
            "profile" in (self.results.get("validation") or {})

    @property
    def cv_macro_f1_robust_select(self) -> float:
        """The robust figure of the copies that picked the run's best epochs (its objective); a run
        from before the select/estimate split has only cv_macro_f1_robust (every copy selected)."""
        value = self.results.get("cv_macro_f1_robust_select", self.results.get("cv_macro_f1_robust"))
        return float(value) if value is not None else math.nan

    def score(self, view: str) -> float:
        """What ``top_k`` ranks the run by on ``view``: the pooled clean OOF macro F1, or for robust the
        selecting copies' (a choice among runs is made on the copies that make choices; the
        estimating copies, oof_robust.csv, stay for what inference fits and reports)."""
        return self.cv_macro_f1_robust_select if view == "robust" else self.cv_macro_f1

    @property
    def data_config(self) -> dict:
        return dict(self.config.get("data") or {})


def read_checkpoint_meta(path: Path) -> dict:
    """The ``meta`` of a best checkpoint, from its safetensors header (no weights are read).
    A pickle checkpoint of an older version is refused with the command that converts it."""
    from docclassify.models.checkpoint import CheckpointError, read_checkpoint

    try:
        return dict(read_checkpoint(path)["meta"])
    except (CheckpointError, OSError) as exc:
        raise RunError(str(exc)) from exc


def _read_config(run_dir: Path) -> dict:
    for name in CONFIG_FILES:
        path = run_dir / name
        if path.is_file():
            try:
                return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            except Exception as exc:
                raise RunError(f"{path}: cannot parse ({exc})") from exc
    raise RunError(f"{run_dir}: neither {' nor '.join(CONFIG_FILES)} found, so the run's data config is unknown")


def load_run(run_dir: str | Path) -> Run:
    """Read and validate one run dir: results.json, its config and every fold's best checkpoint."""
    run_dir = Path(run_dir).expanduser()
    results_path = run_dir / RESULTS_FILE
    if not results_path.is_file():
        raise RunError(f"{run_dir}: no {RESULTS_FILE}; not a finished docclassify.train run "
                       "(finish it with `python -m docclassify.train resume=DIR`)")
    try:
        results = json.loads(results_path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{results_path}: cannot parse ({exc})") from exc
    folds = results.get("folds") if isinstance(results, dict) else None
    if not folds or not results.get("classes"):
        raise RunError(f"{results_path}: no 'folds' or 'classes' (the run trained no fold)")
    from docclassify.models.checkpoint import best_checkpoint_name

    run = Run(run_dir, results, _read_config(run_dir))
    problems = []
    for f in folds:
        ckpt = run_dir / str(f.get("checkpoint") or f"checkpoints/{best_checkpoint_name(f.get('fold'))}")
        if not ckpt.is_file():
            problems.append(f"fold {f.get('fold')}: checkpoint not found: {ckpt}")
            continue
        try:
            meta = read_checkpoint_meta(ckpt)
        except RunError as exc:
            problems.append(str(exc))
            continue
        if list(meta.get("classes", [])) != run.classes:
            problems.append(f"{ckpt}: its class list differs from {results_path}'s")
        run.folds.append(FoldModel(int(f["fold"]), ckpt, meta))
    if problems:
        raise RunError(f"{run_dir}: " + "; ".join(problems))
    return run


def _sweep_children(folder: Path) -> list[Path]:
    kids = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(kids, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def _expand(spec: str) -> tuple[list[Path], list[str]]:
    """A run dir -> [it]; a sweep folder -> its finished runs. Returns (dirs, problems)."""
    path = Path(str(spec)).expanduser()
    if not path.is_dir():
        return [], [f"{spec}: no such directory"]
    if (path / RESULTS_FILE).is_file():
        return [path], []
    kids = _sweep_children(path)
    finished = [p for p in kids if (p / RESULTS_FILE).is_file()]
    if not finished:
        return [], [(f"{path}: no {RESULTS_FILE}, neither here nor in a sub-folder (not a finished run "
                     "dir of docclassify.train, nor a multirun sweep folder of finished runs)")]
    unfinished = [p.name for p in kids if p not in finished and any((p / c).is_file() for c in CONFIG_FILES)]
    if unfinished:
        log.warning("%s: skipping %d unfinished run(s) without %s: %s", path, len(unfinished), RESULTS_FILE,
                    ", ".join(unfinished))
    return finished, []


def resolve_fit_on(runs: list[Run], fit_on: str = "auto") -> str:
    """``fit_on`` resolved for these runs: auto -> robust when every run has a robust view, else
    clean; robust with a run that has none is refused (naming it)."""
    if fit_on not in FIT_ON:
        raise RunError(f"fit_on={fit_on!r}: expected one of {', '.join(FIT_ON)}")
    lacking = [str(r.path) for r in runs if not r.has_robust]
    if fit_on == "auto":
        return "clean" if lacking else "robust"
    if fit_on == "robust" and lacking:
        raise RunError(f"fit_on=robust: {len(lacking)} run(s) have no robust OOF rows (trained with "
                       f"validation=clean): {', '.join(lacking[:5])}; use fit_on=clean or retrain them with "
                       "validation=both")
    return fit_on


def select_top_k(runs: list[Run], top_k: int | None, by: str = "auto") -> list[Run]:
    """The ``top_k`` runs with the best pooled OOF macro F1 on view ``by`` (robust, clean, or auto:
    :func:`resolve_fit_on`); all runs when None; ties keep the given order."""
    if top_k is None:
        return runs
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1:
        raise RunError(f"top_k={top_k!r}: expected a positive integer or null (all runs)")
    view = resolve_fit_on(runs, by)
    ranked = sorted(runs, key=lambda r: -r.score(view) if not math.isnan(r.score(view)) else math.inf)
    return ranked[: int(top_k)]


def discover_runs(specs, top_k: int | None = None, by: str = "auto") -> list[Run]:
    """Expand, load and validate ``runs=[...]``; keep the best ``top_k`` by pooled OOF macro F1 on
    view ``by`` (auto: robust when every run has a robust view, else clean).

    Raises RunError listing every bad entry (missing dir, no results, missing or foreign
    checkpoints) and when the runs' class lists differ.
    """
    if specs is None or isinstance(specs, str):
        specs = [] if specs is None else [specs]
    specs = list(specs)
    if not specs:
        raise RunError("runs=[] is empty: pass the training run dir(s), e.g. runs=[outputs/train/RUN] "
                       "(a multirun sweep folder takes all its runs, or the best top_k)")
    dirs, problems = [], []
    for spec in specs:
        found, bad = _expand(spec)
        dirs.extend(found)
        problems.extend(bad)
    unique: dict[Path, Path] = {}
    for d in dirs:  # a run named twice counts once (kept as first named)
        unique.setdefault(d.resolve(), d)
    runs = []
    for d in unique.values():
        try:
            runs.append(load_run(d))
        except RunError as exc:
            problems.append(str(exc))
    if problems:
        raise RunError("cannot use these runs:\n  " + "\n  ".join(problems))
    check_same_classes(runs)
    return select_top_k(runs, top_k, by)


def check_same_classes(runs: list[Run]) -> list[str]:
    first = runs[0]
    for run in runs[1:]:
        if run.classes != first.classes:
            diff = sorted(set(run.classes) ^ set(first.classes)) or "same names, another order"
            raise RunError(f"the runs predict different class lists: {first.path} ({len(first.classes)} classes) "
                           f"vs {run.path} ({len(run.classes)} classes); differing: {diff}")
    return first.classes


def load_oof(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's saved out-of-fold predictions: (IDs, targets, logits (N, K) float64), oof.csv row order."""
    csv_path, npy_path = run.path / OOF_FILE, run.path / OOF_LOGITS_FILE
    for p in (csv_path, npy_path):
        if not p.is_file():
            raise RunError(f"{run.path}: {p.name} not found (needed to fit ensemble weights or the temperature; "
                           "use ensemble.weights=equal calibrate=false without it)")
    oof = pd.read_csv(csv_path, dtype={"ID": str})
    if not {"ID", "target"} <= set(oof.columns):
        raise RunError(f"{csv_path}: needs columns ID and target, found {list(oof.columns)}")
    logits = np.load(npy_path).astype(np.float64)
    if logits.shape != (len(oof), len(run.classes)):
        raise RunError(f"{npy_path}: shape {logits.shape}, expected ({len(oof)}, {len(run.classes)}) "
                       f"(rows of {OOF_FILE} x classes)")
    if not np.all(np.isfinite(logits)):
        raise RunError(f"{npy_path}: holds non-finite logits")
    return oof["ID"].to_numpy(dtype=str), oof["target"].to_numpy(dtype=np.int64), logits


def load_oof_robust(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A run's saved robust OOF rows: (IDs, copy indices, targets, logits (N, K) float64)."""
    csv_path, npy_path = run.path / OOF_ROBUST_FILE, run.path / OOF_ROBUST_LOGITS_FILE
    for p in (csv_path, npy_path):
        if not p.is_file():
            raise RunError(f"{run.path}: {p.name} not found (its results.json promises robust OOF rows); "
                           "use fit_on=clean")
    oof = pd.read_csv(csv_path, dtype={"ID": str})
    if not {"ID", "copy", "target"} <= set(oof.columns):
        raise RunError(f"{csv_path}: needs columns ID, copy and target, found {list(oof.columns)}")
    logits = np.load(npy_path).astype(np.float64)
    if logits.shape != (len(oof), len(run.classes)) or not np.all(np.isfinite(logits)):
        raise RunError(f"{npy_path}: shape {logits.shape} (expected ({len(oof)}, {len(run.classes)})) or "
                       "non-finite logits")
    return (oof["ID"].to_numpy(dtype=str), oof["copy"].to_numpy(dtype=np.int64),
            oof["target"].to_numpy(dtype=np.int64), logits)


def copies_recipe_of(run: Run) -> dict:
    """What made ``run``'s robust copies (engine.oof.copies_recipe): as results.json records it, or,
    for a run from before that record existed, derived from its ``validation`` entry (seed, copies,
    profile, with the keys added since at their off values) and its folds' image sizes; the code's
    format version of those copies is then unknown (None) and not compared."""
    from docclassify.distortion.copies import RobustSpec
    from docclassify.engine.oof import copies_recipe

    validation = run.results.get("validation") or {}
    if validation.get("copies_recipe"):
        return dict(validation["copies_recipe"])
    sizes = [f.get("img_size") for f in run.results.get("folds", []) if f.get("img_size") is not None]
    return copies_recipe(RobustSpec.from_dict(validation), sizes, recorded=False)


def check_same_robust_copies(runs: list[Run]) -> None:
    """Runs whose robust OOF rows are paired by ``ID#copy`` (anything fitted on them jointly) must hold
    the same copies behind each key: the same validation.seed, the same resolved profile and, where
    both runs record it, the same copies format. Otherwise one clear error, naming both runs."""
    first, base = runs[0], copies_recipe_of(runs[0])
    for run in runs[1:]:
        other = copies_recipe_of(run)
        differ = [k for k in ("seed", "profile_sha256", "format")
                  if base.get(k) is not None and other.get(k) is not None and base[k] != other[k]]
        if not differ:
            continue
        what = {"seed": f"validation.seed {base['seed']} vs {other['seed']}",
                "profile_sha256": "other validation.distort profiles",
                "format": f"copies format {base['format']} vs {other['format']} (made by another docclassify version)"}
        raise RunError(f"fit_on=robust: {first.path} and {run.path} were validated on different robust copies "
                       f"({'; '.join(what[k] for k in differ)}), so their oof_robust.csv rows ID#copy hold different "
                       f"pixels; retrain one with the other's validation settings (validation.seed={base['seed']} and "
                       "the same validation.distort), or infer with fit_on=clean")


def robust_key(ids, copies) -> np.ndarray:
    """Row keys of robust OOF rows, ``ID#copy``: what aligns the rows of several runs (runs checked by
    :func:`check_same_robust_copies` first: the same key is then the same copy)."""
    return np.asarray([f"{i}#{int(c)}" for i, c in zip(ids, copies)], dtype=str)


def split_robust_key(keys) -> tuple[np.ndarray, np.ndarray]:
    parts = [str(k).rsplit("#", 1) for k in keys]
    return np.asarray([p[0] for p in parts], dtype=str), np.asarray([int(p[1]) for p in parts], dtype=np.int64)


def load_view_oof(run: Run, view: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row keys, targets, logits) of a run's saved OOF rows on ``view``: the IDs of oof.csv
    (clean), or ``ID#copy`` keys of oof_robust.csv (robust)."""
    if view == "clean":
        return load_oof(run)
    ids, copies, y, logits = load_oof_robust(run)
    return robust_key(ids, copies), y, logits


def fold_of_ids(run: Run, ids: np.ndarray) -> np.ndarray:
    """Validation fold of each OOF ID (folds.csv of the run)."""
    path = run.path / "folds.csv"
    if not path.is_file():
        raise RunError(f"{run.path}: folds.csv not found (needed to re-predict the OOF rows with TTA; "
                       "set oof_tta=false to use the saved OOF predictions)")
    folds = pd.read_csv(path, dtype={"ID": str}).set_index("ID")["fold"]
    missing = [i for i in ids if i not in folds.index]
    if missing:
        raise RunError(f"{path}: {len(missing)} OOF ID(s) have no fold, e.g. {missing[:5]}")
    return folds.loc[list(ids)].to_numpy(dtype=np.int64)
