"""What the second-stage options of inference share (docs/second-stage.md).

After the first pass (every fold model on the test set, the ensemble fitted on the out-of-fold
rows), four options may change predictions: ``adapt`` (predict/adapt.py), ``tta.per_class``
(predict/tta_auto.py), ``second_pass`` (predict/second_pass.py) and ``specialists``
(predict/specialists.py). Each is fitted and guarded on the OOF rows decisions are fitted on
(``fit_on``: the robust copies by default) and never on test labels. This module holds what
they share:

    FoldInput / FoldSet  one fold model, its test images and the OOF rows it did not train on
                         (image rows of the training images or their robust copies, by the aligned
                         OOF order); predict_both runs a function of (model, images, rows) over
                         every fold and averages the folds of a run like the first pass does
    OofRows              the aligned OOF rows of the first pass (keys, targets, image groups, each
                         run's logits before the fold-average scaling)
    Combiner             per-run logits -> the ensemble's final probabilities, with the fitted
                         weights (or stacker), averaging factors and temperature: the same
                         arithmetic as the first pass, for test rows and for OOF rows
    cross_fit            the guard: a choice fitted on part of the OOF rows and scored on the rest
                         (image groups kept together), pooled; applied only when that cross-fitted
                         macro F1 beats the first pass's (as predict/decision.py's decision=macro_f1)
    StageData            all of it for one inference, built by build_stage

The options never write to a run dir: models are loaded from the checkpoints into memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.special import log_softmax

from docclassify.metrics import macro_f1, safe_log, softmax
from docclassify.predict.averaging import average_folds
from docclassify.predict.calibration import apply_temperature
from docclassify.predict.decision import fit_decision, split_rows
from docclassify.predict.ensemble import combine

log = logging.getLogger(__name__)

GUARD_FOLDS = 5  # parts of the OOF rows a guard is cross-fitted on (as decision=macro_f1)
Predict = Callable[[torch.nn.Module, np.ndarray, np.ndarray, dict], np.ndarray]


def member_scores(logits: np.ndarray, average: str) -> np.ndarray:
    """What ``ensemble.combine`` takes for one member: probabilities (prob) or log-probabilities (logit)."""
    return softmax(logits) if average == "prob" else log_softmax(np.asarray(logits, dtype=np.float64), axis=1)


def fold_average(fold_logits: list[np.ndarray], average: str) -> np.ndarray:
    """A run's folds averaged as predict_run averages them: log of the combined probabilities. A row
    that is NaN in any fold (an option had nothing to predict for it) is NaN."""
    z = [np.asarray(x, dtype=np.float64) for x in fold_logits]
    ok = np.all([np.isfinite(x).all(axis=1) for x in z], axis=0)
    out = np.full(z[0].shape, np.nan)
    if ok.any():
        parts = [softmax(x[ok]) if average == "prob" else x[ok] for x in z]
        out[ok] = average_folds(parts, average)
    return out


# ------------------------------------------------------------------------------------ fold models
@dataclass
class FoldInput:
    """One fold model and the images it predicts: the test set and the OOF rows it did not train on."""

    member: int                      # which member (run) of its FoldSet the predictions belong to
    fold: int
    meta: dict                       # the checkpoint's meta (size, normalisation, classes)
    load: Callable[[], torch.nn.Module]   # a fresh copy of the model, in memory
    get_test: Callable[[], np.ndarray]    # (N_test, S, S, 3) uint8 at this model's size
    get_oof: Callable[[], np.ndarray]     # the training images or their robust copies at this size
    get_clean: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None  # clean training images, their classes
    label: str = ""
    # adapt kept for this fold: its norm layers' state adapted to the test images ("test") and to the OOF rows' ("oof")
    states: dict[str, dict] | None = None

    def ready(self, model: torch.nn.Module, kind: str) -> torch.nn.Module:
        """``model`` as it predicts ``kind`` (test or oof) images: with its adapted norm layers, if any."""
        if self.states and self.states.get(kind):
            model.load_state_dict(self.states[kind], strict=False)
        return model


@dataclass
class FoldSet:
    """Fold models of ``n_members`` members and where each aligned OOF row is: per member, the image
    row (in get_oof's array) and the validation fold of every aligned OOF row."""

    folds: list[FoldInput]
    n_members: int
    average: str
    oof_image_rows: list[np.ndarray]
    oof_fold_of: list[np.ndarray]

    def oof_rows_of(self, f: FoldInput, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the positions of ``pos`` fold ``f`` predicts, their rows in f.get_oof())."""
        pos = np.asarray(pos, dtype=np.int64)
        mine = pos[self.oof_fold_of[f.member][pos] == f.fold]
        return mine, self.oof_image_rows[f.member][mine]


# (fold, model, images, image rows, "test" or "oof", the rows' test rows or aligned OOF positions) -> logits
FoldFn = Callable[[FoldInput, torch.nn.Module, np.ndarray, np.ndarray, str, np.ndarray], np.ndarray]


def predict_both(fs: FoldSet, test_rows: np.ndarray, oof_pos: np.ndarray, fn: FoldFn,
                 num_classes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``fn(fold, model, images, rows, kind, pos) -> logits`` over every fold model (loaded once): per member,
    the test rows ``test_rows`` averaged over its folds, and the OOF positions ``oof_pos``, each
    predicted by the fold that did not train on it."""
    test_rows, oof_pos = np.asarray(test_rows, dtype=np.int64), np.asarray(oof_pos, dtype=np.int64)
    test_parts: list[list[np.ndarray]] = [[] for _ in range(fs.n_members)]
    oof = [np.full((len(oof_pos), num_classes), np.nan) for _ in range(fs.n_members)]
    covered = np.zeros((fs.n_members, len(oof_pos)), dtype=bool)
    index = {int(p): i for i, p in enumerate(oof_pos)}
    for f in fs.folds:
        mine, rows = fs.oof_rows_of(f, oof_pos)
        if not len(test_rows) and not len(mine):
            continue
        model = f.load()
        if len(test_rows):
            test_parts[f.member].append(fn(f, f.ready(model, "test"), f.get_test(), test_rows, "test", test_rows))
        if len(mine):
            at = [index[int(p)] for p in mine]
            oof[f.member][at] = fn(f, f.ready(model, "oof"), f.get_oof(), rows, "oof", mine)
            covered[f.member, at] = True
        del model
    for m in range(fs.n_members):
        if not covered[m].all():
            raise RuntimeError(f"member {m}: {int((~covered[m]).sum())} OOF rows without a fold model that "
                               "predicts them")
    empty = np.zeros((0, num_classes))
    return [fold_average(p, fs.average) if len(test_rows) else empty for p in test_parts], oof


def predictor_fn(predict: Predict) -> FoldFn:
    """A FoldFn that predicts the images as they are, with the first pass's predictor (its TTA views)."""
    return lambda f, model, images, rows, kind, pos: predict(model, images, rows, f.meta)


# ------------------------------------------------------------------------------------ the ensemble
@dataclass
class OofRows:
    """The first pass's aligned OOF rows (fit_on_oof's): what every guard is fitted on."""

    keys: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    logits: list[np.ndarray]  # per run, before the fold-average scaling (mimic_fold_average)
    view: str


@dataclass
class Combiner:
    """Per-run logits -> final probabilities, as the first pass combines them: OOF rows scaled by the
    runs' averaging factors, the members' weights (or the stacker), the temperature. (With a stacker
    the first pass stands for its OOF rows with the stacker's cross-fitted probabilities; here the
    stacker fitted on every row predicts them, for the first pass and an option alike.)"""

    weights: list[float]
    average: str
    temperature: float = 1.0
    alphas: list[float] | None = None
    stacker: Any = None

    def _final(self, per_run: list[np.ndarray]) -> np.ndarray:
        if self.stacker is not None:
            probs = self.stacker.predict_proba([softmax(z) for z in per_run])
        else:
            probs = combine([member_scores(z, self.average) for z in per_run], self.weights, self.average)
        return apply_temperature(safe_log(probs), self.temperature) if self.temperature != 1.0 else probs

    def test(self, per_run: list[np.ndarray]) -> np.ndarray:
        return self._final(per_run)

    def oof(self, per_run: list[np.ndarray]) -> np.ndarray:
        if self.alphas is not None:
            per_run = [a * log_softmax(np.asarray(z, dtype=np.float64), axis=1) for a, z in zip(self.alphas, per_run)]
        return self._final(per_run)


# ------------------------------------------------------------------------------------ the guard
@dataclass
class GuardFit:
    """A guard's verdict: the choice fitted on every OOF row, the cross-fitted macro F1 against the
    first pass's on the same rows, and whether the choice is applied (gain > 0)."""

    choice: Any
    base_f1: float
    crossed_f1: float
    folds: int

    @property
    def gain(self) -> float:
        return self.crossed_f1 - self.base_f1

    @property
    def applied(self) -> bool:
        return self.gain > 0

    def as_dict(self) -> dict:
        return {"oof_macro_f1_first_pass": self.base_f1, "oof_macro_f1_cross_fitted": self.crossed_f1,
                "cross_fitted_gain": self.gain, "folds": self.folds, "applied": self.applied}


def cross_fit(fit: Callable[[np.ndarray], Any], predict: Callable[[Any, np.ndarray], np.ndarray], y: np.ndarray,
              groups: np.ndarray | None, base_pred: np.ndarray, folds: int = GUARD_FOLDS, seed: int = 0) -> GuardFit:
    """``fit(rows) -> choice`` on each part's complement, ``predict(choice, rows) -> classes`` on the
    part; the pooled macro F1 of those predictions vs ``base_pred``'s. The choice for the test set
    is ``fit`` on every row."""
    y = np.asarray(y, dtype=np.int64)
    crossed = np.empty(len(y), dtype=np.int64)
    splits = split_rows(y, folds, groups, seed)
    for train, held in splits:
        crossed[held] = predict(fit(train), held)
    return GuardFit(fit(np.arange(len(y))), macro_f1(y, base_pred), macro_f1(y, crossed), len(splits))


def best_candidate(candidates: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], int]:
    """``fit`` for :func:`cross_fit` over fixed candidate predictions ``(C, N)``: the candidate with the
    best macro F1 on the rows (ties: the lowest index, the least change when candidate 0 is none)."""
    def fit(rows: np.ndarray) -> int:
        scores = [round(macro_f1(y[rows], c[rows]), 12) for c in candidates]
        return int(np.argmax(scores))
    return fit


# ------------------------------------------------------------------------------------ one inference
@dataclass
class StageData:
    """The first pass, as the second-stage options see it; each option updates ``test_probs`` /
    ``oof_probs`` (the ensemble's final probabilities) and adds its entry to ``summary``."""

    members: FoldSet
    predict: Predict                 # the first pass's predictor: (model, images, rows, meta) -> logits
    combiner: Combiner
    oof: OofRows
    test_logits: list[np.ndarray]    # per run: its fold average (log-probabilities)
    test_probs: np.ndarray
    oof_probs: np.ndarray
    num_classes: int
    batch_size: int
    device: torch.device
    summary: dict = field(default_factory=dict)
    changed: bool = False            # an option changed the OOF probabilities (the decision rule is refitted)
    runs: list = field(default_factory=list)  # the member runs (predict/run_dirs.py Run)
    # FoldInputs of a run's (or a specialist's) models on member r's data: (models_run, r, member, label)
    folds_for: Callable[..., list[FoldInput]] | None = None

    @property
    def oof_pred(self) -> np.ndarray:
        return self.oof_probs.argmax(axis=1)


def fold_inputs(models_run, ds, store, data_run, view: str, device, member: int, label: str,
                states: dict[int, dict] | None = None) -> list[FoldInput]:
    """FoldInputs of ``models_run``'s fold models (a run, or a specialist of one) on ``data_run``'s data
    (predict/testdata.py's DataSet ``ds``, predict/imagestore.py's ImageStore ``store``): its test images,
    and the images its OOF rows of ``view`` index (the training images or their robust copies), at each model's size;
    ``states``: adapt's norm states per fold (predict/adapt.py)."""
    from docclassify.models.checkpoint import load_checkpoint

    return [FoldInput(member, fm.fold, fm.meta, lambda p=fm.checkpoint: load_checkpoint(p, device)[0],
                      lambda meta=fm.meta: store.get(ds, "test", meta),
                      lambda meta=fm.meta: store.oof_images(ds, meta, data_run, view),
                      lambda meta=fm.meta: (store.get(ds, "train", meta), ds.source.train["target"].to_numpy()),
                      f"{label} fold {fm.fold}", (states or {}).get(fm.fold))
            for fm in models_run.folds]


def build_stage(runs, datasets, store, members, oof_fit, settings, predictor, device,
                adapted: dict[int, dict] | None = None) -> StageData | None:
    """StageData of one inference (predict/pipeline.py's objects: runs, their DataSets, the ImageStore,
    the Members, the OofFit, Settings and the predictor; ``adapted``: adapt's kept norm states per run
    and fold); None without OOF rows."""
    from docclassify.predict.oof_rows import plan_view_oof

    rows = getattr(oof_fit, "rows", None)
    if rows is None:
        return None
    folds, image_rows, fold_of = [], [], []
    for r, (run, ds) in enumerate(zip(runs, datasets)):
        rr, ff = plan_view_oof(run, ds, rows.keys, rows.view)
        image_rows.append(rr)
        fold_of.append(ff)
        folds += fold_inputs(run, ds, store, run, rows.view, device, r, f"run {r + 1} ({run.path.name})",
                             (adapted or {}).get(r))
    fs = FoldSet(folds, len(runs), settings.average, image_rows, fold_of)
    alphas = (oof_fit.summary or {}).get("averaging_factors")
    combiner = Combiner(list(oof_fit.weights), settings.average, float(oof_fit.temperature) if settings.calibrate
                        else 1.0, alphas, oof_fit.stacker)
    test_logits = [m.test_logits for m in members]
    stage = StageData(fs, lambda model, images, r, meta: predictor.predict(model, images, r, meta)[1], combiner,
                      rows, test_logits, combiner.test(test_logits), combiner.oof(rows.logits),
                      len(runs[0].classes), settings.batch_size, device)
    stage.runs = list(runs)
    stage.folds_for = lambda models_run, r, member, label: fold_inputs(
        models_run, datasets[r], store, runs[r], rows.view, device, member, label)
    return stage


def refit_decision(stage: StageData, oof_fit, rule: str) -> None:
    """The decision rule refitted on the OOF probabilities the second stage left (when it changed
    them), so its biases fit what they are applied to."""
    if not stage.changed or rule == "argmax":
        return
    oof_fit.decision = fit_decision(safe_log(stage.oof_probs), stage.oof.y, rule, stage.oof.groups)
    log.info("decision=%s refitted on the second stage's OOF probabilities: %s", rule, oof_fit.decision.message)


def change_report(before: np.ndarray, after: np.ndarray, touched: np.ndarray) -> dict:
    """How many test rows an option touched and how many predictions it changed."""
    b, a = before.argmax(axis=1), after.argmax(axis=1)
    return {"test_touched": int(np.asarray(touched, dtype=bool).sum()), "test_share_touched":
            float(np.mean(touched)) if len(b) else 0.0, "test_changed": int((a != b).sum())}
