"""The decision rule of inference (``decision: argmax | macro_f1``).

``argmax`` predicts the most probable class. ``macro_f1`` adds one bias per class to the
log-probabilities before the argmax, fitted on out-of-fold (OOF) rows to maximise macro F1: with
imbalanced or near-twin classes the argmax under-predicts the classes whose errors cost macro F1
the most, and a bias per class (a per-class threshold) moves the boundary.

The biases are fitted by coordinate ascent: for one class at a time, every value of its bias
that changes a decision is scored exactly (the rows' switching points, sorted, with the
confusion counts updated row by row), the best one kept when it raises macro F1, until a pass
over all classes gains nothing.

So that the gain it reports is not the optimism of fitting, the fit is **cross-fitted**: the OOF
rows are split into ``folds`` parts (stratified by class; copies of one image kept together),
each part predicted with biases fitted on the others, and the pooled macro F1 of those
predictions is compared with the argmax's on the same rows. The biases fitted on every row are
applied to the test set only when that cross-fitted gain is positive; otherwise the rule stays
the argmax (zero biases) and the report says so, so the OOF macro F1 it reports is never below
the argmax's.

Everything here takes (scores, targets): log-probabilities (or logits) of any OOF view, clean or
robust, and the class indices.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from docclassify.metrics import class_counts_of, macro_f1, macro_f1_from_counts, safe_log
from docclassify.utils.choices import DECISIONS

log = logging.getLogger(__name__)

__all__ = ["DECISIONS", "DecisionFit", "apply_biases", "cross_fit_biases", "fit_biases", "fit_decision",
           "split_rows"]

MAX_PASSES = 10
END_MARGIN = 1.0  # a bias past every switching point sits this far beyond the last one


def apply_biases(scores: np.ndarray, biases: np.ndarray | None) -> np.ndarray:
    """Class predictions ``argmax(scores + biases)`` (plain argmax when ``biases`` is None)."""
    scores = np.asarray(scores, dtype=np.float64)
    return (scores if biases is None else scores + np.asarray(biases, dtype=np.float64)).argmax(axis=1)


def _best_bias_for_class(scores: np.ndarray, y: np.ndarray, biases: np.ndarray, k: int) -> tuple[float, float]:
    """(bias of class ``k``, macro F1) maximising macro F1 with the other biases fixed; the current
    bias is kept unless another value scores strictly higher."""
    n, num_classes = scores.shape
    adjusted = scores + biases
    others = adjusted.copy()
    others[:, k] = -np.inf
    runner_up = others.argmax(axis=1)          # each row's prediction while k is not chosen
    switch = others[np.arange(n), runner_up] - scores[:, k]  # the row predicts k once b_k > switch
    order = np.argsort(switch, kind="stable")
    t, o, yy = switch[order], runner_up[order], y[order]
    # Confusion counts after the first p sorted rows switched to k, for p = 0..n.
    d_pred = -np.eye(num_classes)[o]
    d_tp = d_pred * (yy == o)[:, None]
    d_pred[:, k] += 1.0
    d_tp[:, k] += (yy == k)
    tp0, pred0, n_true = class_counts_of(y, runner_up, num_classes)
    tp = np.vstack([tp0, tp0 + np.cumsum(d_tp, axis=0)])
    pred = np.vstack([pred0, pred0 + np.cumsum(d_pred, axis=0)])
    f1 = macro_f1_from_counts(tp, pred, n_true[None, :])
    # Only the positions between distinct switching points are reachable.
    reachable = np.ones(n + 1, dtype=bool)
    reachable[1:n] = t[:-1] < t[1:]
    current = int(np.searchsorted(t, biases[k], side="left"))  # rows with switch < b_k predict k now
    candidates = np.where(reachable, f1, -np.inf)
    best = int(np.argmax(candidates))
    if not candidates[best] > f1[current] + 1e-12:
        return float(biases[k]), float(f1[current])
    if best == 0:
        value = t[0] - END_MARGIN
    elif best == n:
        value = t[-1] + END_MARGIN
    else:
        value = 0.5 * (t[best - 1] + t[best])
    return float(value), float(candidates[best])


def fit_biases(scores: np.ndarray, y: np.ndarray, max_passes: int = MAX_PASSES) -> np.ndarray:
    """Per-class additive biases maximising the macro F1 of ``argmax(scores + biases)`` on ``(scores,
    y)`` (coordinate ascent from zero; never lower than the argmax's macro F1). Centred to mean 0."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=np.int64)
    biases = np.zeros(scores.shape[1])
    best = macro_f1(y, apply_biases(scores, biases))
    for _ in range(max_passes):
        start = best
        for k in range(scores.shape[1]):
            biases[k], best = _best_bias_for_class(scores, y, biases, k)
        if not best > start + 1e-12:
            break
    return biases - biases.mean()


def split_rows(y: np.ndarray, n_splits: int, groups: np.ndarray | None = None, seed: int = 0) -> list:
    """``n_splits`` (train, held-out) index pairs, stratified by class, rows of one group (the copies
    of one image) on the same side; fewer splits when the rows (or the largest class's rows) are too
    few."""
    y = np.asarray(y)
    n_groups = len(np.unique(groups)) if groups is not None else len(y)
    largest = int(np.unique(y, return_counts=True)[1].max()) if len(y) else 0  # splitters refuse more splits
    n_splits = int(max(2, min(n_splits, n_groups, largest)))
    with warnings.catch_warnings():  # a class with fewer rows than splits: still split, no warning
        warnings.simplefilter("ignore", UserWarning)
        if groups is None:
            splitter = StratifiedKFold(n_splits, shuffle=True, random_state=seed)
            return list(splitter.split(np.zeros(len(y)), y))
        splitter = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(y)), y, groups))


def cross_fit_biases(scores: np.ndarray, y: np.ndarray, folds: int = 5, groups: np.ndarray | None = None,
                     seed: int = 0) -> np.ndarray:
    """Cross-fitted predictions: each part of the rows predicted with biases fitted on the others."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=np.int64)
    pred = np.empty(len(y), dtype=np.int64)
    for train, held in split_rows(y, folds, groups, seed):
        pred[held] = apply_biases(scores[held], fit_biases(scores[train], y[train]))
    return pred


@dataclass
class DecisionFit:
    """What the decision rule decided on the OOF rows (summary.json's ``decision``)."""

    rule: str
    applied: bool = False
    biases: list[float] | None = None        # added to the test log-probabilities (None: argmax)
    fitted_biases: list[float] | None = None  # fitted on every OOF row (applied only if the gain is > 0)
    rows: int = 0
    folds: int = 0
    oof_macro_f1_argmax: float | None = None
    oof_macro_f1_cross_fitted: float | None = None
    cross_fitted_gain: float | None = None
    oof_macro_f1_in_sample: float | None = None  # the fitted biases on the rows they were fitted on (optimistic)
    oof_macro_f1: float | None = None            # what the rule in use scores: cross-fitted, or argmax
    message: str = ""
    extra: dict = field(default_factory=dict)

    def predict(self, scores: np.ndarray) -> np.ndarray:
        return apply_biases(scores, self.biases if self.applied else None)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "extra"} | self.extra


def fit_decision(scores: np.ndarray, y: np.ndarray, rule: str = "macro_f1", groups: np.ndarray | None = None,
                 folds: int = 5, seed: int = 0) -> DecisionFit:
    """The decision rule ``rule`` fitted on OOF ``(scores, y)``: for macro_f1, biases fitted on every
    row, kept only when their cross-fitted macro F1 beats the argmax's on the same rows."""
    if rule not in DECISIONS:
        raise ValueError(f"decision={rule!r}: expected one of {', '.join(DECISIONS)}")
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y, dtype=np.int64)
    base = macro_f1(y, apply_biases(scores, None))
    if rule == "argmax":
        return DecisionFit("argmax", rows=len(y), oof_macro_f1_argmax=base, oof_macro_f1=base)
    n_splits = len(split_rows(y, folds, groups, seed))
    crossed = macro_f1(y, cross_fit_biases(scores, y, folds, groups, seed))
    biases = fit_biases(scores, y)
    gain = crossed - base
    applied = gain > 0
    message = (f"per-class biases raise the cross-fitted OOF macro F1 {base:.4f} -> {crossed:.4f}: applied"
               if applied else
               f"per-class biases do not raise the cross-fitted OOF macro F1 ({base:.4f} -> {crossed:.4f}): "
               "argmax kept")
    return DecisionFit("macro_f1", applied, [float(b) for b in biases] if applied else None,
                       [float(b) for b in biases], len(y), n_splits, base, crossed, gain,
                       macro_f1(y, apply_biases(scores, biases)), crossed if applied else base, message)


def decide(probs: np.ndarray, fit: DecisionFit | None) -> np.ndarray:
    """Step 6 of predict/pipeline.py: the class of each row. The fitted rule's biases move only this
    argmax (test_probs.csv keeps the probabilities); without a fit, the plain argmax."""
    return fit.predict(safe_log(probs)) if fit is not None else probs.argmax(axis=1)
