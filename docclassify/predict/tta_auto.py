"""``tta=auto``: choose the TTA view set on out-of-fold rows instead of trusting one.

Naive TTA can lower a score (the reference competition's write-ups report it, and a model
trained on upright pages gets worse with dihedral views of them). ``docclassify.infer tta=auto``
predicts every run's OOF rows (on the ``fit_on`` view: the robust copies by default, the test's
look-alikes) once per distinct view of all the view sets (:data:`predict.tta.VIEW_SETS`), then
scores each set by the macro F1 of the ensemble's OOF predictions averaged over that set's
views, and keeps the best; a tie goes to the set with fewer views (cheaper, and no evidence for
more). summary.json records every set's score and the choice (``tta.auto``).

This module holds the pure part (view bookkeeping, combining, choosing); the predictions are
made by :func:`choose_tta` (step 3 of predict/pipeline.py).

``tta.per_class=true`` extends the choice to a policy: after the set above (the base), each
predicted class may take another set (the images the base predicts as that class are predicted
with it), chosen class by class for the macro F1 of the same OOF rows; so that the choice is not
the noise of fitting, the policy is fitted on part of the rows and scored on the rest
(cross-fitted, image groups kept together, as decision=macro_f1) and used for the test set only
when that cross-fitted macro F1 beats the base set's (:func:`run_per_class`). The test images then
go through every view the policy's sets use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from docclassify.metrics import macro_f1, macro_f1_of_probs
from docclassify.predict.ensemble import combine, members_of
from docclassify.predict.logit_store import LazyModel, LogitStore
from docclassify.predict.oof_rows import align_oof, plan_view_oof
from docclassify.predict.run_dirs import Run, load_view_oof
from docclassify.predict.tta import (
    VIEW_SETS,
    View,
    combine_views,
    normalised_batches,
    predict_tta_batches,
)
from docclassify.predict.views import TtaPredictor

if TYPE_CHECKING:
    from docclassify.predict.imagestore import ImageStore
    from docclassify.predict.settings import Settings
    from docclassify.predict.testdata import DataSet

log = logging.getLogger(__name__)
POLICY_PASSES = 2  # passes over the classes when a policy is fitted


def candidate_views() -> list[View]:
    """Every distinct view of every set (by transform, first name kept), in a fixed order."""
    seen: dict[tuple, View] = {}
    for views in VIEW_SETS.values():
        for v in views:
            seen.setdefault(v.key, v)
    return list(seen.values())


def set_logits(view_logits: np.ndarray, views: list[View], set_name: str, average: str) -> np.ndarray:
    """Logits of view set ``set_name`` from per-view logits ``view_logits`` (V, N, K) of ``views``,
    averaged like predict_tta (``average``: prob or logit)."""
    index = {v.key: i for i, v in enumerate(views)}
    rows = [index[v.key] for v in VIEW_SETS[set_name]]
    _, logits = combine_views(torch.from_numpy(np.asarray(view_logits[rows], dtype=np.float32)), average)
    return logits.double().numpy()


def pick_best(scores: dict[str, float]) -> str:
    """The best-scoring set; ties (to 1e-12) go to the set with fewer views, then to the first listed."""
    order = list(scores)
    return max(order, key=lambda n: (round(scores[n], 12), -len(VIEW_SETS[n]), -order.index(n)))


@dataclass
class TtaChoice:
    """What tta=auto chose, on which rows, with every set's score; and the chosen set's OOF logits
    per run (reused as the re-predicted OOF rows for weights and temperature)."""

    name: str
    fit_on: str
    rows: int
    scores: dict[str, float]
    oof_logits: list[np.ndarray] = field(default_factory=list)
    # every candidate view's OOF logits (V, N, K) per run, their views and row keys (tta.per_class)
    view_logits: list[np.ndarray] = field(default_factory=list)
    candidates: list[View] = field(default_factory=list)
    keys: list[np.ndarray] = field(default_factory=list)

    @property
    def views(self) -> list[View]:
        return list(VIEW_SETS[self.name])

    def summary(self) -> dict:
        return {"chosen": self.name, "auto": {"fit_on": self.fit_on, "rows": self.rows,
                                              "macro_f1": {k: float(v) for k, v in self.scores.items()}}}


# ------------------------------------------------------------------------------------ tta.per_class
def fit_policy(base: np.ndarray, preds: dict[str, np.ndarray], y: np.ndarray, rows: np.ndarray,
               base_name: str) -> dict[int, str]:
    """Per predicted class (by ``base``), the view set whose predictions ``preds[set]`` give the best
    macro F1 on ``rows``, class by class (the others held), POLICY_PASSES passes; a class keeps the
    base set unless another scores strictly higher. Returns {class: set} of the classes that changed."""
    y_r, base_r = y[rows], base[rows]
    current = base_r.copy()
    policy: dict[int, str] = {}
    best = macro_f1(y_r, current)
    for _ in range(POLICY_PASSES):
        start = best
        for c in np.unique(base_r):
            mine = base_r == c
            for name, pred in preds.items():
                trial = current.copy()
                trial[mine] = pred[rows][mine]
                score = macro_f1(y_r, trial)
                if score > best + 1e-12:
                    best, current = score, trial
                    policy[int(c)] = name
        if not best > start + 1e-12:
            break
    return {c: n for c, n in policy.items() if n != base_name}


def apply_policy(policy: dict[int, str], base: np.ndarray, preds: dict[str, np.ndarray],
                 rows: np.ndarray) -> np.ndarray:
    """The classes of ``rows`` under ``policy`` (rows whose base class has no entry keep the base)."""
    out = base[rows].copy()
    for c, name in policy.items():
        mine = base[rows] == c
        out[mine] = preds[name][rows][mine]
    return out


def policy_guard(base: np.ndarray, preds: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray | None,
                 base_name: str):
    """A per-class policy fitted on every OOF row (``choice``) and its cross-fitted guard (GuardFit)."""
    from docclassify.predict.stage import cross_fit

    return cross_fit(lambda rows: fit_policy(base, preds, y, rows, base_name),
                     lambda policy, rows: apply_policy(policy, base, preds, rows), y, groups, base)


def _aligned(keys: np.ndarray, aligned: np.ndarray) -> np.ndarray:
    index = {k: i for i, k in enumerate(np.asarray(keys).tolist())}
    return np.asarray([index[k] for k in np.asarray(aligned).tolist()], dtype=np.int64)


def policy_test_logits(stage, views: list[View], sets: list[str], tta_average: str) -> dict[str, list[np.ndarray]]:
    """Per view set of ``sets``: each run's test logits (folds averaged like the first pass), every view
    they need predicted once per fold model."""
    from docclassify.predict.stage import fold_average

    needed = list({v.key: v for name in sets for v in VIEW_SETS[name]}.values())
    per_set: dict[str, list[list[np.ndarray]]] = {n: [[] for _ in range(stage.members.n_members)] for n in sets}
    for f in stage.members.folds:
        model, test = f.ready(f.load(), "test"), f.get_test()
        per_view = np.stack([predict_tta_batches(model, normalised_batches(test, np.arange(len(test)), f.meta,
                                                                           stage.batch_size, stage.device),
                                                 [v], "logit", stage.device)[1] for v in needed])
        for name in sets:
            per_set[name][f.member].append(set_logits(per_view, needed, name, tta_average))
        del model
    return {n: [fold_average(z, stage.members.average) for z in zs] for n, zs in per_set.items()}


def run_per_class(stage, choice: TtaChoice, tta_average: str, adapted: bool = False) -> dict:
    """``tta.per_class``: fit, guard and (when it helps) apply a view set per predicted class; updates
    ``stage.test_probs`` / ``stage.oof_probs``. Returns summary.json's entry. ``adapted``: adapt changed
    the models after the views were scored, so the policy is not fitted (it would mix the two)."""
    if adapted:
        log.info("tta.per_class: not fitted: adapt changed the models after tta=auto scored the views")
        return {"enabled": True, "applied": False, "note": "adapt changed the models: not fitted"}
    t0 = time.time()
    y, base = stage.oof.y, stage.oof_pred
    positions = [_aligned(k, stage.oof.keys) for k in choice.keys]
    oof_probs = {name: stage.combiner.oof([set_logits(z, choice.candidates, name, tta_average)[p]
                                           for z, p in zip(choice.view_logits, positions)])
                 for name in VIEW_SETS}
    guard = policy_guard(base, {name: p.argmax(axis=1) for name, p in oof_probs.items()}, y, stage.oof.groups,
                         choice.name)
    policy = guard.choice
    applied = guard.applied and bool(policy)
    names = stage.runs[0].classes if stage.runs else None
    report = {"enabled": True, "base": choice.name, **guard.as_dict(), "applied": applied,
              "policy": {(names[c] if names else str(c)): n for c, n in sorted(policy.items())}}
    if applied:
        from docclassify.predict.stage import change_report

        test_base = stage.test_probs.argmax(axis=1)
        test_logits = policy_test_logits(stage, choice.candidates, sorted(set(policy.values())), tta_average)
        before = stage.test_probs.copy()
        touched = np.zeros(len(before), dtype=bool)
        for c, name in policy.items():
            mine = test_base == c
            stage.test_probs[mine] = stage.combiner.test(test_logits[name])[mine]
            touched |= mine
            stage.oof_probs[base == c] = oof_probs[name][base == c]
        stage.changed = True
        report.update(change_report(before, stage.test_probs, touched))
    report["seconds"] = round(time.time() - t0, 2)
    log.info("tta.per_class: a view set per predicted class on %d OOF rows, cross-fitted macro F1 %.4f (%s for "
             "every class) -> %.4f%s", len(y), guard.base_f1, choice.name, guard.crossed_f1,
             f": applied {report['policy']}, {report['test_changed']} test predictions changed" if applied
             else ": not applied")
    return report


def predict_oof_views(run: Run, ds: DataSet, store: ImageStore, keys: np.ndarray, view: str,
                      views: list[View], batch_size: int, device: torch.device,
                      logits: LogitStore | None = None) -> np.ndarray:
    """Logits (V, N, K) of a run's OOF rows ``keys`` on ``view``, each row predicted by its own
    fold's model, once per view of ``views`` (each read from ``logits`` when stored there)."""
    logits = logits if logits is not None else LogitStore(None, False)
    rows, folds = plan_view_oof(run, ds, keys, view)
    out = np.zeros((len(views), len(keys), len(run.classes)), dtype=np.float64)
    for fm in run.folds:
        mask = folds == fm.fold
        if not mask.any():
            continue
        model = LazyModel(fm.checkpoint, device)  # loaded only if a view's prediction is not stored
        images = store.oof_images(ds, fm.meta, run, view)
        for i, v in enumerate(views):
            out[i, mask] = logits.predict(model, TtaPredictor([v], "logit", batch_size, device), images, rows[mask],
                                          fm.meta)[1]
        del model
    return out


def choose_tta(runs: list[Run], datasets: list[DataSet], store: ImageStore, settings: Settings,
               tta_average: str, device: torch.device, logits: LogitStore | None = None) -> TtaChoice:
    """tta=auto: every view set scored by the (equal-weight) ensemble's macro F1 on the runs' OOF rows
    of settings.fit_on; the best set (ties: fewer views) is kept (see predict.tta_auto). Each fold's
    view predictions are read from ``logits`` when stored there."""
    views, view_logits, t0 = candidate_views(), [], time.time()
    saved = [load_view_oof(run, settings.fit_on) for run in runs]
    for run, ds, (keys, _, _) in zip(runs, datasets, saved):
        view_logits.append(predict_oof_views(run, ds, store, keys, settings.fit_on, views, settings.batch_size,
                                             device, logits))
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
