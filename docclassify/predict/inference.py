"""The inference flow of ``python -m docclassify.infer``: training runs -> a submission.

runs -> validated checkpoints -> test data (the runs' own data config, plus overrides) ->
decoded test images, once per (img_size, resize, pad) -> per fold: batched exact TTA ->
per run: fold average -> ensemble of runs (equal weights, OOF-fitted weights, greedy selection
or a stacked logistic regression) -> temperature fitted on out-of-fold predictions -> decision
rule (argmax, or per-class biases fitted for macro F1) -> submission.csv, test_probs.csv,
summary.json (and stacker.npz with ensemble.weights=stack).

Everything that can be wrong with the input (runs, checkpoints, classes, test images,
sample submission, test labels, settings) is checked before the first prediction, and
nothing is written until every prediction is made: a bad input stops the run with a clear
error and no output files.

One ensemble member is one run: its folds' test predictions are averaged, and its
out-of-fold (OOF) predictions, each row predicted by the fold that did not train on it,
stand for it when weights and the temperature are fitted (so no row a model trained on is
used). With ``oof_tta=true`` and TTA views beyond the identity, the OOF rows are
re-predicted with the same views, so the fitted temperature matches TTA-averaged test
probabilities (TTA averaging makes predictions less confident than the saved single-view
OOF logits).

``fit_on`` picks the OOF rows every decision is fitted on: ``robust`` (the distorted copies of
the OOF rows, oof_robust.csv: what the test looks like; the default when every run has them),
or ``clean`` (oof.csv). ``top_k``, the ensemble weights, the temperature and ``tta=auto`` (every
view set scored on those rows, the best kept: predict.tta_auto) all follow it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from scipy.special import log_softmax
from sklearn.metrics import precision_recall_fscore_support

from docclassify.config_schema import CompetitionData
from docclassify.data.cache import cached_images, decode_all
from docclassify.data.deskew import deskew_all, skew_summary
from docclassify.data.sources import DataError, DataSource, load_source
from docclassify.data.validation import robust_copies
from docclassify.distortion.copies import RobustSpec, copy_rows
from docclassify.engine.setup import resolve_device
from docclassify.metrics import accuracy, macro_f1, macro_f1_of_probs, softmax
from docclassify.models.checkpoint import load_checkpoint
from docclassify.predict.adapt import run_adapt
from docclassify.predict.calibration import apply_temperature, averaging_factor, calibration_report
from docclassify.predict.decision import DECISIONS, DecisionFit, fit_decision
from docclassify.predict.ensemble import (
    STACKER_FILE,
    Stacker,
    combine,
    fit_greedy_weights,
    fit_oof_weights,
    fit_stacker,
)
from docclassify.predict.runs import (
    Run,
    RunError,
    check_same_robust_copies,
    discover_runs,
    fold_of_ids,
    load_view_oof,
    resolve_fit_on,
    select_top_k,
    split_robust_key,
)
from docclassify.predict.second_pass import SecondPassSettings, run_second_pass
from docclassify.predict.specialists import run_specialists
from docclassify.predict.stage import OofRows, build_stage, refit_decision
from docclassify.predict.submission import (
    build_probability_frame,
    build_submission,
    format_ids,
    write_probability_frame,
    write_submission,
)
from docclassify.predict.tta import (
    VIEW_SETS,
    View,
    normalised_batches,
    predict_tta_batches,
    resolve_tta,
)
from docclassify.predict.tta_auto import (
    TtaChoice,
    candidate_views,
    pick_best,
    run_per_class,
    set_logits,
)
from docclassify.predict.upright import ORIENT_MODES, OrientPredictor, orientation_summary
from docclassify.utils.io import atomic_group, atomic_write_json

log = logging.getLogger(__name__)

SUBMISSION_FILE, PROBS_FILE, SUMMARY_FILE = "submission.csv", "test_probs.csv", "summary.json"
WEIGHT_MODES = ("equal", "oof", "greedy", "stack")
# Weight modes that need every run's OOF rows to be the same rows (they learn from them jointly).
SELECTION_MODES = ("greedy", "stack")
AVERAGES = ("prob", "logit")
# data.* keys infer may override; null keeps the training run's value.
DATA_OVERRIDES = ("root", "sample_submission", "test_dir", "test_labels", "cache")


@dataclass
class Settings:
    weights: str
    average: str
    calibrate: bool
    oof_tta: bool
    batch_size: int
    output: Path | None
    fit_on: str = "auto"  # auto, robust or clean: resolved against the runs in run_inference
    decision: str = "argmax"  # argmax or macro_f1 (predict/decision.py)
    mimic_fold_average: bool = True  # fit on OOF rows scaled like fold averages (mimic_fold_averages)
    second_stage: bool = False  # adapt, tta.per_class, second_pass or specialists on (they need OOF rows)
    estimate: bool = True  # one run: its OOF rows predicted as the test is, their F1 in summary.json's "oof"


def read_settings(cfg: DictConfig) -> Settings:
    """The top-level inference keys, checked (each error names the key)."""
    weights, average = str(cfg.ensemble.weights), str(cfg.ensemble.average)
    if weights not in WEIGHT_MODES:
        raise DataError(f"ensemble.weights={weights!r}: expected one of {', '.join(WEIGHT_MODES)}")
    if average not in AVERAGES:
        raise DataError(f"ensemble.average={average!r}: expected one of {', '.join(AVERAGES)}")
    decision = str(cfg.get("decision", "argmax"))
    if decision not in DECISIONS:
        raise DataError(f"decision={decision!r}: expected one of {', '.join(DECISIONS)}")
    batch_size = cfg.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size={batch_size!r}: expected a positive integer")
    output = Path(str(cfg.output)).expanduser() if cfg.output else None
    if output is not None and output.is_dir():
        output = output / SUBMISSION_FILE
    return Settings(weights, average, bool(cfg.calibrate), bool(cfg.oof_tta), batch_size, output,
                    str(cfg.get("fit_on", "auto")), decision, bool(cfg.get("mimic_fold_average", True)),
                    second_stage_on(cfg), bool(cfg.get("estimate", True)))


def second_stage_on(cfg: DictConfig) -> bool:
    """Whether any second-stage option is on (docs/second-stage.md)."""
    adapt = cfg.get("adapt")
    return bool((adapt is not None and str(adapt.get("name", "none")) != "none")
                or SecondPassSettings.of(cfg.get("second_pass")).enabled
                or bool((cfg.get("specialists") or {}).get("enabled", False))
                or (str(cfg.tta.name) == "auto" and bool(cfg.tta.get("per_class", False))))


def _plain(value):
    """A config list as a plain list (other values as they are)."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


# ---------------------------------------------------------------------------------------------
# Data: the runs' own data config, overridden by infer's data.* keys
# ---------------------------------------------------------------------------------------------

@dataclass
class DataSet:
    source: DataSource
    cache: bool
    has_train: bool = True  # False: a loose input folder, the training images not found here


def run_data_config(run: Run, overrides: dict) -> dict:
    """The run's data config with infer's non-null ``data.*`` overrides applied.

    A ``data.root`` given for a run trained on the built-in synthetic data means "this
    folder, competition layout" (the layout the synthetic data set has).
    """
    data = run.data_config
    if not data.get("name"):
        raise RunError(f"{run.path}: its config has no data.name")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "root" in given and data["name"] == "synthetic":
        data = {**asdict(CompetitionData()), "cache": data.get("cache", True)}
    data.update(given)
    return data


def loose_folder(data: dict, overrides: dict, inputs) -> Path | None:
    """The folder of images to predict as it is (every image file in it, sorted), or None for the
    run's own test set: ``inputs=FOLDER``; ``data.test_dir=FOLDER`` when no sample submission
    lists the test IDs (an imagefolder run, or a competition root without sample_submission.csv;
    a relative one is looked up in the data root first, then in the working dir); or
    ``data.root=FOLDER`` of image files without a sample submission (not a data set's root)."""
    from docclassify.data.sources import list_images

    if inputs:
        return Path(str(inputs)).expanduser()
    if data.get("name") == "synthetic":  # data.test_dir picks one of the generated splits (test, test_phone)
        return None
    test_dir = overrides.get("test_dir")
    root, sample = data.get("root"), data.get("sample_submission")
    if not test_dir:
        folder = Path(str(overrides["root"])).expanduser() if overrides.get("root") else None
        if folder is not None and folder.is_dir() and not (folder / str(sample or "sample_submission.csv")).is_file() \
                and list_images(folder):
            return folder
        return None
    if data.get("name") != "imagefolder" and root and sample and (Path(str(root)) / sample).is_file():
        return None
    if data.get("name") == "synthetic" and not Path(str(test_dir)).expanduser().is_dir():
        return None  # a split of the generated data set (test_phone): data/sources.py finds it there
    in_root = Path(str(root)).expanduser() / test_dir if root and root != "???" else None
    return in_root if in_root is not None and in_root.is_dir() else Path(str(test_dir)).expanduser()


def loose_source(data: dict, run: Run, folder: Path, what: str, cache_dir: str) -> tuple[DataSource, bool]:
    """A test set of the images in ``folder`` for ``run``, and whether the run's training rows were
    found too (they are re-predicted with the TTA views; without them the saved OOF predictions
    are used)."""
    from docclassify.data.sources import loose_test_set, read_csv_checked

    test, sample = loose_test_set(folder, what)
    train, has_train = pd.DataFrame(columns=["ID", "path", "target"]), False
    # The training rows: where the run had them, or in data.root when that is not the folder itself.
    train_cfg = run.data_config if data.get("root") and Path(str(data["root"])).expanduser() == folder else \
        {**data, "test_dir": run.data_config.get("test_dir") or "test"}
    try:
        train, has_train = load_source(OmegaConf.create(train_cfg), cache_dir).train, True
    except DataError as exc:
        log.info("%s: the training images of %s are not here (%s): its saved OOF predictions are used as they "
                 "are", what, run.path, str(exc).splitlines()[0])
    labels = None
    if data.get("test_labels"):
        path = Path(str(data["test_labels"])).expanduser()
        path = path if path.is_absolute() or path.is_file() else folder / path
        labels = read_csv_checked(path, ("ID", "target"), "test labels")
        labels["target"] = labels["target"].astype(int)
    log.info("%s: predicting the %d image(s) in %s (sorted by file name)", what, len(test), folder)
    return DataSource(str(data.get("name")), folder, run.classes, train, test, sample, labels), has_train


def load_data(runs: list[Run], overrides: dict, cache_dir: str, inputs=None) -> list[DataSet]:
    """One DataSet per run (runs with equal data configs share it); all must share one test set."""
    by_key: dict[str, DataSet] = {}
    per_run = []
    for run in runs:
        data = run_data_config(run, overrides)
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in by_key:
            folder = loose_folder(data, overrides, inputs)
            if folder is not None:
                what = "inputs" if inputs else "data.test_dir" if overrides.get("test_dir") else "data.root"
                source, has_train = loose_source(data, run, folder, what, cache_dir)
                by_key[key] = DataSet(source, bool(data.get("cache", True)), has_train)
                per_run.append(by_key[key])
                continue
            source = load_source(OmegaConf.create(data), cache_dir)
            if source.test is None or source.sample_submission is None:
                raise DataError(f"data {data.get('name')} at {source.root} (from {run.path}) has "
                                "no test set: no sample_submission.csv / test/ folder; point "
                                "data.root (or data.test_dir, data.sample_submission) at the test "
                                "data, or predict a folder of images with inputs=FOLDER")
            by_key[key] = DataSet(source, bool(data.get("cache", True)))
        ds = by_key[key]
        if ds.source.classes != run.classes:
            raise RunError(f"{run.path} predicts {len(run.classes)} classes {run.classes[:3]}..., "
                           f"but the data's meta ({ds.source.root}) lists "
                           f"{len(ds.source.classes)}: {ds.source.classes[:3]}...")
        per_run.append(ds)
    first = per_run[0].source
    for ds, run in zip(per_run, runs):
        if ds.source.test["ID"].tolist() != first.test["ID"].tolist():
            raise DataError(f"the runs' test sets differ: {runs[0].path} uses {first.root} "
                            f"({len(first.test)} test IDs), {run.path} uses {ds.source.root} "
                            f"({len(ds.source.test)}); pass data.root=... to use one test set for "
                            "all")
    return per_run


def load_test_labels(source: DataSource) -> np.ndarray | None:
    """True test labels in test order (data.test_labels / the synthetic test_labels.csv) or None."""
    if source.test_labels is None:
        return None
    labels = source.test_labels.set_index("ID")["target"]
    ids = source.test["ID"]
    missing = ids[~ids.isin(labels.index)].tolist()
    if missing:
        raise DataError(f"test labels: no label for {format_ids(missing)} of the test set")
    return labels.loc[ids.tolist()].to_numpy(dtype=np.int64)


class ImageStore:
    """Decoded images, loaded once per (data, split, img_size, resize, pad), shared by all folds."""

    def __init__(self, cache_dir: str, deskew: bool = False):
        self.cache_dir = cache_dir
        self.deskew = deskew  # tta.deskew: test images deskewed at full resolution (data/deskew.py)
        self.skews: np.ndarray | None = None
        self._arrays: dict[tuple, np.ndarray] = {}
        self.loaded: list[dict] = []

    def get(self, ds: DataSet, split: str, meta: dict) -> np.ndarray:
        size, resize, pad = int(meta["img_size"]), str(meta["resize"]), int(meta["pad_value"])
        key = (id(ds.source), split, size, resize, pad)
        if key in self._arrays:
            return self._arrays[key]
        frame = ds.source.test if split == "test" else ds.source.train
        paths = list(frame["path"])
        t0 = time.time()
        if self.deskew and split == "test":
            images, self.skews, bad = deskew_all(paths, size, resize, pad)
        elif ds.cache:
            images, bad = cached_images(paths, size, resize, pad, self.cache_dir)
        else:
            images = np.empty((len(paths), size, size, 3), dtype=np.uint8)
            bad = decode_all(paths, size, resize, pad, images, progress=False)
        if bad and split == "test":
            ids = frame["ID"].iloc[bad].tolist()
            raise DataError(f"{len(ids)} test image(s) cannot be decoded: "
                            f"{format_ids(ids, limit=50)}")
        log.info("%s images: %d at %d px (%s, pad %d) ready in %.1fs", split, len(paths), size,
                 resize, pad, time.time() - t0)
        self._arrays[key] = images
        self.loaded.append({"split": split, "img_size": size, "resize": resize, "pad_value": pad,
                            "n": len(paths)})
        return images

    def get_robust(self, ds: DataSet, meta: dict, spec: RobustSpec) -> np.ndarray:
        """The training rows' robust copies as the run validated on them (the same cache entry
        training built when data, profile, copies, seed, size and resize policy are the same)."""
        size, resize, pad = int(meta["img_size"]), str(meta["resize"]), int(meta["pad_value"])
        key = (id(ds.source), "robust", size, resize, pad, json.dumps(spec.as_dict(), sort_keys=True))
        if key not in self._arrays:
            train = ds.source.train
            t0 = time.time()
            self._arrays[key] = robust_copies(list(train["path"]), list(train["ID"]), spec, size, resize, pad,
                                              self.cache_dir if ds.cache else None)
            log.info("robust copies: %d x %d at %d px ready in %.1fs", len(train), spec.copies, size,
                     time.time() - t0)
            self.loaded.append({"split": "robust", "img_size": size, "resize": resize, "pad_value": pad,
                                "n": len(train) * spec.copies})
        return self._arrays[key]

    def oof_images(self, ds: DataSet, meta: dict, run: Run, view: str) -> np.ndarray:
        """The images a run's OOF rows on ``view`` index: training images, or their robust copies."""
        if view == "clean":
            return self.get(ds, "train", meta)
        return self.get_robust(ds, meta, RobustSpec.from_dict(run.results["validation"]))


def decode_test_images(runs: list[Run], datasets: list[DataSet], cache_dir: str,
                       deskew: bool = False) -> ImageStore:
    """Every test image set the checkpoints need, decoded up front (``deskew``: deskewed): a bad image
    stops the run before any model runs."""
    store = ImageStore(cache_dir, deskew)
    for run, ds in zip(runs, datasets):
        for fm in run.folds:
            store.get(ds, "test", fm.meta)
    return store


# ---------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------

def safe_log(probs: np.ndarray) -> np.ndarray:
    """log of probabilities, finite (underflowed zeros become log(tiny))."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny, None))


def members_of(logits: list[np.ndarray], average: str) -> list[np.ndarray]:
    """What ``combine`` takes: probabilities (average=prob) or log-probabilities (logit)."""
    return [softmax(z) if average == "prob" else log_softmax(z, axis=1) for z in logits]


def predict_rows(model: torch.nn.Module, images: np.ndarray, rows: np.ndarray, meta: dict,
                 views: list[View], average: str, batch_size: int,
                 device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """TTA predictions of ``images[rows]`` normalised like training: one forward per view per
    batch."""
    from docclassify.tracking.progress import logged_batches

    batches = normalised_batches(images, rows, meta, batch_size, device)
    batches = logged_batches(batches, len(rows), f"  {meta.get('model_option', 'model')} x {len(views)} view(s)")
    return predict_tta_batches(model, batches, views, average, device)


@dataclass
class TtaPredictor:
    """How every fold model predicts: the TTA views, how they are averaged, batch size, device."""

    views: list[View]
    average: str
    batch_size: int
    device: torch.device
    last_estimates = None  # no orientation estimates (predict.orientation.OrientPredictor has them)

    def predict(self, model: torch.nn.Module, images: np.ndarray, rows: np.ndarray,
                meta: dict) -> tuple[np.ndarray, np.ndarray]:
        """:func:`predict_rows` with these settings: (probabilities, logits) of ``images[rows]``."""
        return predict_rows(model, images, rows, meta, self.views, self.average, self.batch_size,
                            self.device)


def plan_view_oof(run: Run, ds: DataSet, keys: np.ndarray, view: str) -> tuple[np.ndarray, np.ndarray]:
    """(row of :meth:`ImageStore.oof_images`, validation fold) of each OOF row key on ``view``."""
    if view == "clean":
        return plan_oof(run, ds, keys)
    ids, copy = split_robust_key(keys)
    rows, folds = plan_oof(run, ds, ids)
    n = int(run.results["validation"]["copies"])
    return copy_rows(rows, n).reshape(-1, n)[np.arange(len(rows)), copy], folds


def plan_oof(run: Run, ds: DataSet, oof_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training-data row, validation fold) of each OOF ID, to re-predict it with its own fold's
    model."""
    folds = fold_of_ids(run, oof_ids)
    uncovered = sorted(set(folds.tolist()) - {fm.fold for fm in run.folds})
    if uncovered:
        raise RunError(f"{run.path}: OOF rows of fold(s) {uncovered} but no checkpoint for them")
    train_ids = ds.source.train["ID"].to_numpy(dtype=str)
    row_of = pd.Series(np.arange(len(ds.source.train)), index=train_ids)
    missing = [i for i in oof_ids if i not in row_of.index]
    if missing:
        raise RunError(f"{run.path}: {format_ids(missing)} of its OOF rows are not in the training "
                       f"data of {ds.source.root}; set oof_tta=false to use the saved OOF "
                       "predictions")
    return row_of.loc[list(oof_ids)].to_numpy(), folds


def needs_oof(settings: Settings, n_runs: int) -> bool:
    """Whether anything is fitted on OOF rows: weights other than equal (2+ runs), the temperature
    (calibrate) or the decision rule (decision=macro_f1); or, for one run, the estimate of the test
    figure (estimate=true: its OOF rows predicted with the test's TTA, issue 29 item 3)."""
    return (settings.calibrate or settings.decision != "argmax" or settings.second_stage
            or (settings.weights != "equal" and n_runs > 1) or (settings.estimate and n_runs == 1))


@dataclass
class OofInputs:
    """The runs' saved out-of-fold predictions on the ``view`` decisions are fitted on (fit_on), and
    whether they are re-predicted with TTA."""

    saved: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # per run: load_view_oof's (keys, y, logits)
    repredict: bool
    # per run: plan_view_oof's (image rows, folds) when re-predicted here, else None
    plans: list[tuple[np.ndarray, np.ndarray] | None]
    view: str = "clean"


def prepare_oof(runs: list[Run], datasets: list[DataSet], settings: Settings,
                views: list[View], view: str = "clean", predicted: bool = False) -> OofInputs | None:
    """The OOF rows (on ``view``) that weights (2+ runs), the temperature (calibrate) and the decision
    rule (decision=macro_f1) are fitted on; None when none is. Re-predicted (oof_tta) only with views
    beyond the identity; ``predicted``: tta=auto already re-predicted them (no plans needed)."""
    if not needs_oof(settings, len(runs)):
        return None
    saved = [load_view_oof(run, view) for run in runs]
    repredict = settings.oof_tta and any(v.key != View("identity").key for v in views)
    plans = [plan_view_oof(run, ds, oof[0], view) for run, ds, oof in zip(runs, datasets, saved)] \
        if repredict and not predicted else [None] * len(runs)
    return OofInputs(saved, repredict, plans, view)


@dataclass
class Member:
    """One run's predictions: test logits (fold average) and, when re-predicted, OOF logits."""

    run: Run
    test_logits: np.ndarray
    oof_logits: np.ndarray | None = None
    folds: list[dict] = field(default_factory=list)
    orientations: list[np.ndarray] = field(default_factory=list)  # per fold: tta=orient*'s test estimates
    fold_test_logits: np.ndarray | None = None  # (folds, N, K): what the fold average is made of


def predict_fold_test(model: torch.nn.Module, meta: dict, ds: DataSet, store: ImageStore,
                      predictor: TtaPredictor, label: str) -> tuple[np.ndarray, np.ndarray, float]:
    """(probabilities, logits, test images per second) of one fold model on the whole test set
    (tta=orient*: ``predictor.last_estimates`` holds each image's estimated orientation)."""
    n_test = len(ds.source.test)
    images = store.get(ds, "test", meta)
    t0 = time.time()
    probs, logits = predictor.predict(model, images, np.arange(n_test), meta)
    seconds = time.time() - t0
    img_per_s = n_test / max(seconds, 1e-9)
    log.info("%s: %s at %d px, %d test images x %d views in %.1fs (%.0f img/s)", label,
             meta["timm_name"], meta["img_size"], n_test, len(predictor.views), seconds, img_per_s)
    return probs, logits, img_per_s


def repredict_fold_oof(model: torch.nn.Module, meta: dict, images: np.ndarray,
                       predictor: TtaPredictor, rows: np.ndarray, label: str) -> np.ndarray:
    """TTA logits of ``images[rows]``: the fold's OOF rows (the ones it did not train on) or
    their robust copies."""
    t0 = time.time()
    _, logits = predictor.predict(model, images, rows, meta)
    log.info("%s: %d OOF rows re-predicted with %d views in %.1fs", label, len(rows),
             len(predictor.views), time.time() - t0)
    return logits


def predict_run(run: Run, label: str, ds: DataSet, store: ImageStore, predictor: TtaPredictor,
                average: str, oof: tuple[np.ndarray, np.ndarray] | None, view: str = "clean") -> Member:
    """Every fold of ``run`` on the test set, averaged by ``average`` (and on its own OOF rows of
    ``view`` when ``oof=(image rows, folds)``, see :func:`plan_view_oof`)."""
    fold_preds, fold_info, orientations, fold_logits = [], [], [], []
    oof_logits = None
    if oof is not None:
        oof_logits = np.zeros((len(oof[0]), len(run.classes)), dtype=np.float64)
    for fm in run.folds:
        model, ckpt = load_checkpoint(fm.checkpoint, predictor.device)
        meta = ckpt["meta"]
        fold_label = f"{label} fold {fm.fold}"
        probs, logits, img_per_s = predict_fold_test(model, meta, ds, store, predictor, fold_label)
        if predictor.last_estimates is not None:
            orientations.append(predictor.last_estimates)
        fold_preds.append(probs if average == "prob" else logits)
        fold_logits.append(np.asarray(logits, dtype=np.float32))
        fold_info.append({"fold": fm.fold, "model": meta["timm_name"],
                          "model_option": meta.get("model_option"),
                          "img_size": int(meta["img_size"]),
                          "checkpoint": str(fm.checkpoint.relative_to(run.path)),
                          "test_img_per_s": round(img_per_s, 1)})
        if oof is not None:
            train_rows, oof_folds = oof
            mask = oof_folds == fm.fold
            oof_logits[mask] = repredict_fold_oof(model, meta, store.oof_images(ds, meta, run, view),
                                                  predictor, train_rows[mask], fold_label)
        del model, ckpt
    test_probs = combine([np.asarray(p, dtype=np.float64) for p in fold_preds], None, average)
    return Member(run, safe_log(test_probs), oof_logits, fold_info, orientations, np.stack(fold_logits))


def predict_members(runs: list[Run], datasets: list[DataSet], store: ImageStore,
                    predictor: TtaPredictor, average: str, oof: OofInputs | None) -> list[Member]:
    """One ensemble member per run (its folds averaged), OOF rows re-predicted where planned."""
    plans = oof.plans if oof is not None else [None] * len(runs)
    view = oof.view if oof is not None else "clean"
    return [predict_run(run, f"run {i + 1}/{len(runs)} ({run.path.name})", ds, store, predictor,
                        average, plan, view)
            for i, (run, ds, plan) in enumerate(zip(runs, datasets, plans))]


def make_predictor(tta_cfg, views: list[View], average: str, batch_size: int, device: torch.device):
    """TtaPredictor for view sets; OrientPredictor for tta=orient / orient_soft (predict/orientation.py)."""
    if str(tta_cfg.name) in ORIENT_MODES:
        return OrientPredictor(str(tta_cfg.name), average, batch_size, device, tta_cfg.get("upright_flip"))
    return TtaPredictor(views, average, batch_size, device)


# ---------------------------------------------------------------------------------------------
# Out-of-fold predictions: ensemble weights and the temperature
# ---------------------------------------------------------------------------------------------

def check_same_oof_rows(per_run: list[tuple[np.ndarray, np.ndarray, np.ndarray]], paths: list[Path],
                        mode: str) -> None:
    """ensemble.weights=greedy|stack learn from every run's prediction of the same rows: runs whose
    OOF rows differ are refused (naming them), not silently cut to the rows they share."""
    first = set(per_run[0][0].tolist())
    for (ids, _, _), path in zip(per_run[1:], paths[1:]):
        other = set(ids.tolist())
        if other != first:
            diff = sorted(first ^ other)
            raise RunError(f"ensemble.weights={mode}: the runs' out-of-fold rows differ: {paths[0]} has {len(first)}, "
                           f"{path} has {len(other)} ({len(diff)} rows not in both, e.g. {format_ids(diff)}). "
                           "Selection and stacking need every run to predict the same rows: ensemble runs "
                           "trained on the same data with every fold run (folds.run=null), or use "
                           "ensemble.weights=oof|equal (fitted on the rows the runs share)")


def align_oof(per_run: list[tuple[np.ndarray, np.ndarray, np.ndarray]], paths: list[Path]):
    """Rows present in every run's OOF, in the first run's order: (ids, y, [logits per run])."""
    id_sets = [set(ids.tolist()) for ids, _, _ in per_run]
    common_set = set.intersection(*id_sets)
    ids0 = per_run[0][0]
    common = np.array([i for i in ids0 if i in common_set], dtype=str)
    if not len(common):
        raise RunError("the runs' out-of-fold predictions share no row (different data or folds): "
                       "ensemble.weights=oof and calibrate=true need common OOF rows; "
                       "use ensemble.weights=equal calibrate=false")
    aligned, y = [], None
    for (ids, targets, logits), path in zip(per_run, paths):
        pos = pd.Series(np.arange(len(ids)), index=ids).loc[list(common)].to_numpy()
        if y is None:
            y = targets[pos]
        elif not np.array_equal(targets[pos], y):
            bad = common[targets[pos] != y]
            raise RunError(f"{path}: its OOF targets differ from {paths[0]}'s for "
                           f"{format_ids(bad)} (trained on other labels)")
        aligned.append(logits[pos])
    dropped = max(len(ids) for ids, _, _ in per_run) - len(common)
    if dropped:
        log.info("OOF: %d rows common to all %d runs (%d rows not predicted by every run left out)",
                 len(common), len(per_run), dropped)
    return common, y, aligned


def predict_oof_views(run: Run, ds: DataSet, store: ImageStore, keys: np.ndarray, view: str,
                      views: list[View], batch_size: int, device: torch.device) -> np.ndarray:
    """Logits (V, N, K) of a run's OOF rows ``keys`` on ``view``, each row predicted by its own
    fold's model, once per view of ``views``."""
    rows, folds = plan_view_oof(run, ds, keys, view)
    out = np.zeros((len(views), len(keys), len(run.classes)), dtype=np.float64)
    for fm in run.folds:
        mask = folds == fm.fold
        if not mask.any():
            continue
        model, ckpt = load_checkpoint(fm.checkpoint, device)
        images = store.oof_images(ds, ckpt["meta"], run, view)
        for i, v in enumerate(views):
            out[i, mask] = predict_rows(model, images, rows[mask], ckpt["meta"], [v], "logit", batch_size, device)[1]
        del model, ckpt
    return out


def choose_tta(runs: list[Run], datasets: list[DataSet], store: ImageStore, settings: Settings,
               tta_average: str, device: torch.device) -> TtaChoice:
    """tta=auto: every view set scored by the (equal-weight) ensemble's macro F1 on the runs' OOF rows
    of settings.fit_on; the best set (ties: fewer views) is kept (see predict.tta_auto)."""
    views, view_logits, t0 = candidate_views(), [], time.time()
    saved = [load_view_oof(run, settings.fit_on) for run in runs]
    for run, ds, (keys, _, _) in zip(runs, datasets, saved):
        view_logits.append(predict_oof_views(run, ds, store, keys, settings.fit_on, views, settings.batch_size,
                                             device))
    scores, by_set, y = {}, {}, None
    for name in VIEW_SETS:
        by_set[name] = [set_logits(z, views, name, tta_average) for z in view_logits]
        _, y, aligned = align_oof([(keys, yy, z) for (keys, yy, _), z in zip(saved, by_set[name])],
                                  [r.path for r in runs])
        scores[name] = macro_f1_of_probs(combine(members_of(aligned, settings.average), None, settings.average), y)
    best = pick_best(scores)
    log.info("tta=auto: %s OOF macro F1 per view set (%d rows, %d distinct views, %.1fs): %s -> %s",
             settings.fit_on, len(y), len(views), time.time() - t0,
             ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), best)
    return TtaChoice(best, settings.fit_on, len(y), scores, by_set[best], view_logits, views,
                     [keys for keys, _, _ in saved])


def fit_weights(oof_members: list[np.ndarray] | None, y, mode: str, average: str, n_runs: int,
                groups: np.ndarray | None = None):
    """(weights, fit report or None). ``oof``: non-negative weights fitted on OOF, kept only if their
    cross-fitted OOF F1 beats equal weights'; ``greedy``: forward selection with a held-out check
    (predict.ensemble). ``groups``: the image of each row (copies of one image on one side of a split)."""
    if mode == "equal" or n_runs == 1:
        if mode != "equal":
            log.info("ensemble.weights=%s with one run: its weight is 1", mode)
        return [1.0 / n_runs] * n_runs, None
    if mode == "greedy":
        fit = fit_greedy_weights(oof_members, y, average, groups)
        held = fit["held_out"]
        log.info("greedy selection on %d OOF rows: picks %s (OOF macro F1 %.4f; equal weights %.4f, best single run "
                 "%.4f); held-out check (selected on half the rows, scored on the other): %.4f vs equal %.4f%s",
                 len(y), fit["counts"], fit["f1_fitted"], fit["f1_equal"], fit["f1_best_single"], held["greedy"],
                 held["equal"], "" if fit["accepted"] else " -> equal weights kept")
        return fit["weights"], fit
    fit = fit_oof_weights(oof_members, y, average, groups)
    log.info("ensemble weights fitted on %d OOF rows: %s; %d-fold cross-fitted OOF macro F1 %.4f vs equal weights "
             "%.4f%s", len(y), [round(w, 4) for w in fit["optimized_weights"]], fit["folds"], fit["f1_cross_fitted"],
             fit["f1_equal"], "" if fit["accepted"] else " -> equal weights kept")
    return fit["weights"], fit


def fit_temperature_on_oof(oof_probs: np.ndarray, y: np.ndarray) -> dict:
    """calibration_report of the ensemble's OOF probabilities (``temperature``: the fitted T)."""
    calib = calibration_report(safe_log(oof_probs), y)
    log.info("temperature %.3f fitted on %d OOF rows: NLL %.4f -> %.4f, ECE %.4f -> %.4f",
             calib["temperature"], len(y), calib["nll_before"], calib["nll_after"],
             calib["ece_before"], calib["ece_after"])
    return calib


@dataclass
class OofFit:
    """What the out-of-fold rows decide: the runs' weights and the temperature (and reports)."""

    weights: list[float]
    weights_fit: dict | None = None  # fit_oof_weights' report (ensemble.weights=oof, 2+ runs)
    summary: dict | None = None  # summary.json's "oof": rows, predictions (tta/saved), macro F1
    calibration: dict | None = None  # calibration_report (calibrate=true)
    temperature: float = 1.0
    stacker: Stacker | None = None  # ensemble.weights=stack (when it beat equal weights on the OOF rows)
    decision: DecisionFit | None = None  # decision=macro_f1: the biases and their cross-fitted gain
    rows: OofRows | None = None  # the aligned OOF rows it was fitted on (the second stage's guards)


def fit_stack(oof_logits: list[np.ndarray], y: np.ndarray,
              groups: np.ndarray) -> tuple[Stacker | None, dict, np.ndarray]:
    """ensemble.weights=stack: (stacker or None, report, OOF probabilities of what is used). The
    stacker is used when its cross-fitted OOF macro F1 is >= equal weights'; its cross-fitted OOF
    probabilities (each row predicted by a stacker not fitted on it) then stand for the ensemble."""
    probs = [softmax(z) for z in oof_logits]
    stacker, report = fit_stacker(probs, y, groups)
    crossed = report.pop("oof_probs")
    log.info("stacking on %d OOF rows: C=%.3g chosen by %d-fold cross-validation; cross-fitted OOF macro F1 %.4f vs "
             "equal weights %.4f%s", len(y), report["C"], report["folds"], report["f1_cross_fitted"],
             report["f1_equal"], "" if report["accepted"] else " -> equal weights kept")
    if not report["accepted"]:
        return None, report, combine(probs, None, "prob")
    return stacker, {**report, "file": STACKER_FILE}, crossed


def fit_decision_on_oof(oof_probs: np.ndarray, y: np.ndarray, rule: str, groups: np.ndarray) -> DecisionFit:
    """The decision rule fitted on the ensemble's final OOF probabilities (after the temperature,
    as it is applied to the test's)."""
    fit = fit_decision(safe_log(oof_probs), y, rule, groups)
    if rule != "argmax":
        log.info("decision=%s on %d OOF rows: %s (in-sample %.4f, %d-fold cross-fitted gain %+.4f)", rule, len(y),
                 fit.message, fit.oof_macro_f1_in_sample, fit.folds, fit.cross_fitted_gain)
    return fit


def mimic_fold_averages(members: list[Member], oof_logits: list[np.ndarray],
                        average: str = "prob") -> tuple[list[np.ndarray], list[float]]:
    """Each run's OOF log-probabilities scaled by its averaging factor (predict.calibration): an OOF
    row is predicted by one fold model, a test row by the average of the run's folds, which is
    less confident; the scaled OOF rows look like that average, so what is fitted on them (weights,
    stacker, temperature, biases) fits what it is applied to. ``average``: how predict_run averages
    the folds (ensemble.average), which the factor measures. Returns (scaled logits, factors)."""
    alphas = [averaging_factor(m.fold_test_logits, average) if m.fold_test_logits is not None else 1.0
              for m in members]
    scaled = [a * log_softmax(np.asarray(z, dtype=np.float64), axis=1) for a, z in zip(alphas, oof_logits)]
    log.info("OOF rows scaled to mimic fold averages: averaging factor per run %s", [round(a, 3) for a in alphas])
    return scaled, alphas


def fit_on_oof(members: list[Member], oof: OofInputs | None, average: str, weights_mode: str,
               calibrate: bool, decision: str = "argmax", mimic: bool = True) -> OofFit:
    """Ensemble weights (or a stacker), temperature and decision rule from the members' OOF
    predictions (without OOF rows: equal weights, T=1, argmax); ``mimic``: on OOF rows scaled like
    fold averages (mimic_fold_average)."""
    if oof is None:
        return OofFit([1.0 / len(members)] * len(members))
    per_run = [(ids, y, m.oof_logits if oof.repredict else z)
               for (ids, y, z), m in zip(oof.saved, members)]
    paths = [m.run.path for m in members]
    if weights_mode in SELECTION_MODES and len(members) > 1:
        check_same_oof_rows(per_run, paths, weights_mode)
    oof_ids, y_oof, oof_logits = align_oof(per_run, paths)
    per_run_logits, alphas = oof_logits, None
    if mimic:
        oof_logits, alphas = mimic_fold_averages(members, oof_logits, average)
    groups = image_groups(oof_ids, oof.view)
    stacker = None
    if weights_mode == "stack" and len(members) > 1:
        weights = [1.0 / len(members)] * len(members)
        stacker, fit, oof_probs = fit_stack(oof_logits, y_oof, groups)
    else:
        oof_members = members_of(oof_logits, average)
        weights, fit = fit_weights(oof_members, y_oof, weights_mode, average, len(members), groups)
        oof_probs = combine(oof_members, weights, average)
    summary = {"fit_on": oof.view, "rows": len(oof_ids), "predictions": "tta" if oof.repredict else "saved",
               "macro_f1": macro_f1_of_probs(oof_probs, y_oof), "averaging_factors": alphas}
    calib, temperature = None, 1.0
    if calibrate:
        calib = fit_temperature_on_oof(oof_probs, y_oof)
        temperature = calib["temperature"]
    decided = fit_decision_on_oof(apply_temperature(safe_log(oof_probs), temperature), y_oof, decision, groups)
    rows = OofRows(oof_ids, y_oof, groups, [np.asarray(z, dtype=np.float64) for z in per_run_logits], oof.view)
    return OofFit(weights, fit, summary, calib, temperature, stacker, decided, rows)


def image_groups(oof_keys: np.ndarray, view: str = "clean") -> np.ndarray:
    """The image of each OOF row (its ID; robust rows ``ID#copy``: the ID), so that the copies of one
    image stay on one side of a split (decision rule, greedy selection, stacking)."""
    return split_robust_key(oof_keys)[0] if view == "robust" else np.asarray(oof_keys, dtype=str)


def ensemble_test_probs(members: list[Member], oof_fit: OofFit, average: str,
                        calibrate: bool) -> np.ndarray:
    """The members' test predictions combined with the fitted weights (or the stacker), then the
    temperature applied."""
    if oof_fit.stacker is not None:
        probs = oof_fit.stacker.predict_proba([softmax(m.test_logits) for m in members])
    else:
        probs = combine(members_of([m.test_logits for m in members], average), oof_fit.weights, average)
    if calibrate:
        probs = apply_temperature(safe_log(probs), oof_fit.temperature)
    return probs


# ---------------------------------------------------------------------------------------------
# Outputs: submission.csv, test_probs.csv, summary.json
# ---------------------------------------------------------------------------------------------

def score_predictions(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """Macro F1 (sklearn's label set, like training's cv figure), accuracy and a per-class table."""
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(len(classes))),
                                                 zero_division=0)
    counts = np.bincount(pred, minlength=len(classes))
    return {
        "macro_f1": macro_f1(y, pred),
        "accuracy": accuracy(y, pred),
        "per_class": [{"class": c, "precision": float(p[i]), "recall": float(r[i]),
                       "f1": float(f[i]), "support": int(s[i]), "predicted": int(counts[i])}
                      for i, c in enumerate(classes)],
    }


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass
class Outputs:
    """Every output, built and checked before any file is written."""

    sample: pd.DataFrame  # the sample submission the submission is checked against
    submission: pd.DataFrame
    probabilities: pd.DataFrame
    num_classes: int
    summary: dict = field(default_factory=dict)
    stacker: Stacker | None = None  # ensemble.weights=stack: saved as stacker.npz


def build_frames(source: DataSource, probs: np.ndarray, pred: np.ndarray,
                 classes: list[str]) -> Outputs:
    """submission.csv (``pred`` in the sample submission's layout) and test_probs.csv, checked."""
    ids = source.test["ID"].tolist()
    sample = source.sample_submission
    submission = build_submission(sample, ids, pred, num_classes=len(classes))
    return Outputs(sample, submission, build_probability_frame(ids, probs, classes), len(classes))


def build_summary(members: list[Member], oof_fit: OofFit, settings: Settings, tta: dict,
                  classes: list[str], pred: np.ndarray, y_test: np.ndarray | None,
                  image_sets: list[dict], device: torch.device) -> dict:
    """summary.json (all but ``seconds``): runs and their weights, TTA, ensemble and OOF fits,
    prediction counts, test scores (when test labels are known), the decoded image sets."""
    counts = np.bincount(pred, minlength=len(classes))
    return {
        "runs": [{"dir": str(m.run.path), "cv_macro_f1": _json_float(m.run.cv_macro_f1),
                  "cv_macro_f1_robust": _json_float(m.run.cv_macro_f1_robust),
                  "cv_macro_f1_robust_select": _json_float(m.run.cv_macro_f1_robust_select),
                  "weight": float(w), "folds": m.folds}
                 for m, w in zip(members, oof_fit.weights)],
        "models": sorted({f["model"] for m in members for f in m.folds}),
        "tta": tta,
        "fit_on": settings.fit_on,
        "ensemble": {"average": settings.average, "weights_mode": settings.weights,
                     "weights": [float(w) for w in oof_fit.weights],
                     "stacked": oof_fit.stacker is not None,
                     "oof_fit": oof_fit.weights_fit},
        "decision": oof_fit.decision.as_dict() if oof_fit.decision is not None else {"rule": "argmax"},
        "oof": oof_fit.summary,
        "calibration": oof_fit.calibration,
        "temperature": float(oof_fit.temperature),
        "n_test": len(pred),
        "prediction_counts": {c: int(n) for c, n in zip(classes, counts)},
        "test_metrics": score_predictions(y_test, pred, classes) if y_test is not None else None,
        "image_sets": image_sets,
        "device": str(device),
        "files": {"submission": SUBMISSION_FILE, "probabilities": PROBS_FILE,
                  "output": str(settings.output) if settings.output else None},
    }


def write_output_files(outputs: Outputs, out_dir: Path, output: Path | None) -> None:
    """submission.csv, test_probs.csv and summary.json into ``out_dir``; the submission also to
    ``output`` when given. Logs the test score (when known) and where the submission went. The
    files appear together (atomic_group): an interrupt or a failed write leaves none of them new."""
    with atomic_group():
        write_submission(out_dir / SUBMISSION_FILE, outputs.sample, outputs.submission,
                         outputs.num_classes)
        write_probability_frame(out_dir / PROBS_FILE, outputs.probabilities)
        if outputs.stacker is not None:
            outputs.stacker.save(out_dir / STACKER_FILE)
        atomic_write_json(out_dir / SUMMARY_FILE, outputs.summary)
        if output is not None:
            write_submission(output, outputs.sample, outputs.submission, outputs.num_classes)
    n_test, metrics = outputs.summary["n_test"], outputs.summary["test_metrics"]
    oof = outputs.summary.get("oof")
    if oof:
        log.info("estimate of the test macro F1: %.4f (%d %s OOF rows, %s predictions)", oof["macro_f1"],
                 oof["rows"], oof["fit_on"], oof["predictions"])
    if metrics is not None:
        log.info("test macro F1 %.4f, accuracy %.4f (%d labelled test images)", metrics["macro_f1"],
                 metrics["accuracy"], n_test)
    log.info("submission (%d rows) -> %s%s", n_test, out_dir / SUBMISSION_FILE,
             f" and {output}" if output else "")


def write_test_report(out_dir: Path, y_test: np.ndarray, probs: np.ndarray, pred: np.ndarray,
                      classes: list[str], ids: list[str], images: np.ndarray, title: str,
                      orientation: dict | None = None) -> None:
    """Labelled test data: the report a training run gets (report.md, confusion_matrix.png,
    per_class.csv, misclassified.png) in the infer dir, with accuracy by orientation (summary.json's
    ``orientation``). A failure is logged, not raised: the submission and summary.json are written
    already."""
    from docclassify.tracking.reports import (
        Misclassified,
        infer_orientation_section,
        write_classification_report,
    )

    try:
        paths = write_classification_report(out_dir, y_test, pred, classes, title, Misclassified(probs, images, ids),
                                            infer_orientation_section(orientation))
        log.info("test report: %s", paths["report"])
    except Exception:  # noqa: BLE001 - a report must never cost the outputs
        log.exception("writing the test report failed (submission.csv and summary.json are complete)")


# ---------------------------------------------------------------------------------------------
# The whole flow
# ---------------------------------------------------------------------------------------------

def run_inference(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Predict the test set with the runs of ``cfg.runs`` and write the outputs into ``out_dir``.

    Returns the summary dict (also written as summary.json).
    """
    t_start = time.time()
    settings = read_settings(cfg)
    auto_tta = str(cfg.tta.name) == "auto"
    views, tta_average = resolve_tta({"name": "none" if auto_tta else cfg.tta.name, "average": cfg.tta.average})
    runs = discover_runs(_plain(cfg.runs))
    settings.fit_on = resolve_fit_on(runs, settings.fit_on)
    runs = select_top_k(runs, cfg.top_k, settings.fit_on)
    if settings.fit_on == "robust" and len(runs) > 1 and (needs_oof(settings, len(runs)) or auto_tta):
        check_same_robust_copies(runs)  # their robust rows are paired by ID#copy below
    cache_dir = str(cfg.paths.cache_dir)
    datasets = load_data(runs, {k: cfg.data.get(k) for k in DATA_OVERRIDES}, cache_dir, cfg.get("inputs"))
    if not all(ds.has_train for ds in datasets):  # a loose folder without the training images
        if auto_tta:
            raise DataError("tta=auto chooses the views on the runs' OOF rows, re-predicted from their training "
                            "images, which are not found here: give data.root=<the training data> or a tta name")
        if settings.second_stage:  # issue 32: every second-stage guard re-predicts the OOF rows
            raise DataError("adapt, second_pass and specialists are fitted on the runs' OOF rows, re-predicted from "
                            "their training images, which are not found here: give data.root=<the training data> or "
                            "leave them off")
        settings.oof_tta = False
    source = datasets[0].source
    y_test = load_test_labels(source)
    device = resolve_device(cfg.device)
    log.info("%d run(s), %d fold model(s), %d test images, TTA %s (%s average), decisions fitted on the %s "
             "OOF rows, device %s", len(runs), sum(len(r.folds) for r in runs), len(source.test),
             cfg.tta.name, tta_average, settings.fit_on, device)
    store = decode_test_images(runs, datasets, cache_dir, bool(cfg.tta.get("deskew", False)))
    choice = None
    if auto_tta:
        choice = choose_tta(runs, datasets, store, settings, tta_average, device)
        views = choice.views
    oof = prepare_oof(runs, datasets, settings, views, settings.fit_on, predicted=choice is not None)

    predictor = make_predictor(cfg.tta, views, tta_average, settings.batch_size, device)
    members = predict_members(runs, datasets, store, predictor, settings.average, oof)
    if choice is not None and oof is not None and oof.repredict:  # the chosen set's OOF predictions
        for member, logits in zip(members, choice.oof_logits):
            member.oof_logits = logits
    second = {}  # --- issue 32, the second stage (docs/second-stage.md): each option guarded on the OOF rows ---
    # [second stage 1/4] adapt=bn|tent: the fold models adapted to the test images (before the ensemble is fitted)
    second["adapt"], adapted = run_adapt(cfg.get("adapt"), runs, datasets, store, members, oof,
                                         lambda m, im, r, meta: predictor.predict(m, im, r, meta)[1], settings.average,
                                         settings.batch_size, device) if settings.second_stage else (None, {})
    oof_fit = fit_on_oof(members, oof, settings.average, settings.weights, settings.calibrate, settings.decision,
                         settings.mimic_fold_average)
    probs = ensemble_test_probs(members, oof_fit, settings.average, settings.calibrate)
    stage = build_stage(runs, datasets, store, members, oof_fit, settings, predictor, device, adapted) \
        if settings.second_stage else None
    if stage is not None:
        # [second stage 2/4] tta=auto tta.per_class=true: a view set per predicted class
        if choice is not None and cfg.tta.get("per_class"):
            second["tta_per_class"] = run_per_class(stage, choice, tta_average, (second["adapt"] or {}).get("applied"))
        # [second stage 3/4] second_pass.enabled: unsure images re-predicted through restoration views
        if SecondPassSettings.of(cfg.get("second_pass")).enabled:
            second["second_pass"] = run_second_pass(stage, SecondPassSettings.of(cfg.second_pass))
        # [second stage 4/4] specialists.enabled: top-2 in a confused class group -> the group's specialist
        if (cfg.get("specialists") or {}).get("enabled"):
            second["specialists"] = run_specialists(stage)
        probs = stage.test_probs
        refit_decision(stage, oof_fit, settings.decision)
    # test_probs.csv keeps the probabilities; the decision rule (biases) only moves the submission's argmax
    pred = oof_fit.decision.predict(safe_log(probs)) if oof_fit.decision is not None else probs.argmax(axis=1)

    classes = runs[0].classes
    outputs = build_frames(source, probs, pred, classes)  # built and checked before any is written
    outputs.stacker = oof_fit.stacker
    tta_info = {"name": str(cfg.tta.name), "views": [v.name for v in views], "average": tta_average,
                "deskew": skew_summary(store.skews) if store.skews is not None else None,
                **(choice.summary() if choice is not None else {})}
    outputs.summary = build_summary(members, oof_fit, settings, tta_info, classes, pred, y_test,
                                    store.loaded, device)
    outputs.summary["second_stage"] = {k: v for k, v in second.items() if v is not None} or None
    outputs.summary["orientation"] = orientation_summary(source, [m.orientations for m in members], pred, y_test,
                                                         getattr(predictor, "estimator", None))
    outputs.summary["seconds"] = round(time.time() - t_start, 2)
    write_output_files(outputs, Path(out_dir), settings.output)
    if y_test is not None:
        write_test_report(Path(out_dir), y_test, probs, pred, classes, source.test["ID"].tolist(),
                          store.get(datasets[0], "test", runs[0].folds[0].meta),
                          f"Test set: {len(runs)} run(s), TTA {cfg.tta.name}", outputs.summary["orientation"])
    return outputs.summary
