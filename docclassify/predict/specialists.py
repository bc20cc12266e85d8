"""``specialists.enabled``: images whose top-2 classes fall in a confused class group, decided by the
ensemble and the group's specialist (trained by ``docclassify.train specialists=auto``,
docclassify/specialists/).

Each run of the ensemble may have specialists in ``<run dir>/specialists/<group>/`` (normal run
dirs, one per class group, trained on the group's classes only with the run's folds). A test image
is gated to a group when both of the ensemble's two most probable classes are in it (the first such
group, most confused first). Its probabilities over the group become ``(1 - w) x`` the ensemble's
(renormalised over the group) ``+ w x`` the specialist's (its fold average, the group's columns,
softmax), times the ensemble's probability mass on the group; nothing else changes.

The mixing weight ``w`` (0, 0.1, ..., 1) is fitted on the OOF rows decisions are fitted on (the
robust copies by default): the rows gated the same way, each predicted by the specialist's fold
that did not train on it (a specialist's fold k trained on none of its run's fold-k rows, and on
no row of another class at all). Chosen on part of the rows and scored on the rest (cross-fitted,
image groups together), a group's specialist changes test predictions only when that cross-fitted
macro F1 beats the ensemble's alone.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from docclassify.metrics import softmax
from docclassify.predict.stage import (
    FoldSet,
    GuardFit,
    StageData,
    best_candidate,
    change_report,
    cross_fit,
    predict_both,
    predictor_fn,
)

log = logging.getLogger(__name__)

WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # candidate mixing weights of the specialist


@dataclass
class GroupSpecialists:
    """The specialists of one class group (one per run that trained it) and which member each belongs to."""

    classes: tuple[int, ...]
    runs: list = field(default_factory=list)      # predict/run_dirs.py Run of each specialist dir
    parents: list[int] = field(default_factory=list)  # the member run each was trained from
    rate: float = 0.0                              # its confusion rate in its run's OOF rows


def discover(runs) -> list[GroupSpecialists]:
    """Every run's specialists (``<run>/specialists/*/specialist.json`` + a finished run dir), grouped by
    class set, most confused first. A specialist whose class list differs from its run's is refused."""
    from docclassify.predict.run_dirs import RunError, load_run
    from docclassify.specialists import SPECIALIST_FILE, SPECIALISTS_DIR

    found: dict[tuple[int, ...], GroupSpecialists] = {}
    for r, run in enumerate(runs):
        folder = run.path / SPECIALISTS_DIR
        if not folder.is_dir():
            continue
        for d in sorted(p for p in folder.iterdir() if (p / SPECIALIST_FILE).is_file()):
            info = json.loads((d / SPECIALIST_FILE).read_text())
            spec = load_run(d)
            if spec.classes != run.classes:
                raise RunError(f"{d}: its class list differs from its run {run.path}'s")
            group = found.setdefault(tuple(int(c) for c in info["classes"]), GroupSpecialists(
                tuple(int(c) for c in info["classes"])))
            group.runs.append(spec)
            group.parents.append(r)
            group.rate = max(group.rate, float(info.get("rate", 0.0)))
    return sorted(found.values(), key=lambda g: (-g.rate, g.classes))


def gate(probs: np.ndarray, groups: list[tuple[int, ...]]) -> np.ndarray:
    """Per row, the index of the first group holding both of its top-2 classes (-1: none)."""
    top2 = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :2]
    out = np.full(len(probs), -1, dtype=np.int64)
    for i, g in enumerate(groups):
        inside = np.isin(top2, list(g)).all(axis=1) & (out < 0)
        out[inside] = i
    return out


def mix(probs: np.ndarray, spec: np.ndarray, classes: tuple[int, ...], w: float) -> np.ndarray:
    """``probs`` with the group's columns replaced by the mixture of the ensemble's (renormalised over
    the group) and the specialist's ``spec`` (rows x group), times the ensemble's mass on the group."""
    cls = list(classes)
    out = np.array(probs, dtype=np.float64, copy=True)
    mass = out[:, cls].sum(axis=1, keepdims=True)
    inside = out[:, cls] / np.maximum(mass, 1e-300)
    out[:, cls] = mass * ((1.0 - w) * inside + w * spec)
    return out


def specialist_folds(stage: StageData, group: GroupSpecialists) -> FoldSet:
    """The group's specialists' fold models on their parents' data (test images, the parents' OOF rows)."""
    folds = []
    for s, (spec, parent) in enumerate(zip(group.runs, group.parents)):
        folds += stage.folds_for(spec, parent, s, f"specialist {spec.path.name} of run {parent + 1}")
    m = stage.members
    return FoldSet(folds, len(group.runs), m.average, [m.oof_image_rows[p] for p in group.parents],
                   [m.oof_fold_of[p] for p in group.parents])


def group_probs(stage: StageData, group: GroupSpecialists, test_rows: np.ndarray,
                oof_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The group's specialists' probabilities over its classes (their average): test rows, OOF rows."""
    from docclassify.predict.run_dirs import RunError

    try:
        test_z, oof_z = predict_both(specialist_folds(stage, group), test_rows, oof_pos, predictor_fn(stage.predict),
                                     stage.num_classes)
    except RuntimeError as exc:
        raise RunError(f"specialists of group {list(group.classes)} ({', '.join(str(r.path) for r in group.runs)}): "
                       "a fold of their run has no specialist fold model (train every fold with specialists=auto)"
                       ) from exc
    cls = list(group.classes)

    def over_group(zs: list[np.ndarray]) -> np.ndarray:
        return np.mean([softmax(z[:, cls]) for z in zs], axis=0)

    return (over_group(test_z) if len(test_rows) else np.zeros((0, len(cls))),
            over_group(oof_z) if len(oof_pos) else np.zeros((0, len(cls))))


def fit_weight(oof_probs: np.ndarray, pos: np.ndarray, spec: np.ndarray, classes: tuple[int, ...], y: np.ndarray,
               groups: np.ndarray | None) -> tuple[GuardFit, float]:
    """The specialist's mixing weight for the gated OOF rows ``pos`` (their specialist probabilities
    ``spec``), chosen from WEIGHTS for the macro F1 of every OOF row, and its cross-fitted guard."""
    base = oof_probs.argmax(axis=1)
    candidates = np.stack([base] * len(WEIGHTS))
    for j, w in enumerate(WEIGHTS):
        candidates[j, pos] = mix(oof_probs[pos], spec, classes, w).argmax(axis=1)
    guard = cross_fit(best_candidate(candidates, y), lambda j, rows: candidates[j][rows], y, groups, base)
    return guard, WEIGHTS[int(guard.choice)]


def run_specialists(stage: StageData) -> dict:
    """Gate, fit and guard each group's mixing weight, update the gated rows where it helps. Returns
    summary.json's entry."""
    t0 = time.time()
    groups = discover(stage.runs)
    if not groups:
        log.warning("specialists.enabled=true, but no run has specialists (train them with "
                    "`python -m docclassify.train resume=RUN_DIR specialists=auto`): nothing changes")
        return {"enabled": True, "groups": [], "seconds": round(time.time() - t0, 2)}
    names = stage.runs[0].classes
    test_gate, oof_gate = gate(stage.test_probs, [g.classes for g in groups]), gate(stage.oof_probs,
                                                                                    [g.classes for g in groups])
    y, reports = stage.oof.y, []
    for i, group in enumerate(groups):
        test_rows, oof_pos = np.flatnonzero(test_gate == i), np.flatnonzero(oof_gate == i)
        report = {"classes": list(group.classes), "class_names": [names[c] for c in group.classes],
                  "specialists": [str(r.path) for r in group.runs], "oof_rows_gated": int(len(oof_pos)),
                  "test_rows_gated": int(len(test_rows)), "applied": False}
        reports.append(report)
        if not len(oof_pos):
            log.info("specialists %s: no OOF row has both top-2 classes in the group: not applied", group.classes)
            continue
        _, oof_spec = group_probs(stage, group, np.zeros(0, np.int64), oof_pos)
        guard, w = fit_weight(stage.oof_probs, oof_pos, oof_spec, group.classes, y, stage.oof.groups)
        applied = guard.applied and w > 0
        report.update(guard.as_dict(), weight=w, applied=applied)
        if applied:
            test_spec, _ = group_probs(stage, group, test_rows, np.zeros(0, np.int64))
            before = stage.test_probs.copy()
            stage.test_probs[test_rows] = mix(stage.test_probs[test_rows], test_spec, group.classes, w)
            stage.oof_probs[oof_pos] = mix(stage.oof_probs[oof_pos], oof_spec, group.classes, w)
            stage.changed = True
            report.update(change_report(before, stage.test_probs, test_gate == i))
        log.info("specialists %s (%s): %d OOF / %d test rows gated; weight %.1f, cross-fitted OOF macro F1 %.4f -> "
                 "%.4f: %s", group.classes, ", ".join(report["class_names"]), len(oof_pos), len(test_rows), w,
                 guard.base_f1, guard.crossed_f1, f"applied, {report['test_changed']} test predictions changed"
                 if applied else "not applied")
    return {"enabled": True, "groups": reports, "seconds": round(time.time() - t0, 2)}
