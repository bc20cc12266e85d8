"""``second_pass.enabled``: the images the ensemble is unsure of, predicted again after restoration.

An image is unsure when its margin (the ensemble's top-1 minus top-2 probability) is below a
threshold. Each unsure image is measured (distortion/restore.py: brightness, contrast, sharpness,
noise, skew, the page's share of the frame) against clean training images at the same size, and
what is out of their range names its restorations (dark -> gamma, blurred -> sharpen, noisy ->
denoise, skewed -> deskew, low contrast -> CLAHE, a page on a background -> crop to the page).
Every fold model predicts each restoration alone and, with two or more, the whole chain (its
TTA views on top); their probabilities averaged replace the first answer of that image.

The threshold and whether to do it at all are fitted on the OOF rows decisions are fitted on
(the robust copies by default): the same measurement and restoration of the copies of the rows a
fold did not train on, predicted by that fold's model. Candidate thresholds are margin quantiles
of those rows (shares up to ``max_share`` of them, and 0: no second pass); the best candidate is
chosen on part of the rows and scored on the rest (cross-fitted, image groups kept together), and
the second pass changes the test predictions only when that cross-fitted macro F1 beats the first
pass's. summary.json's ``second_stage.second_pass`` says how many test images took it, which
restorations they got and how many predictions it changed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from docclassify.distortion.restore import Plan, Reference, diagnose, measure, restore, views_of
from docclassify.metrics import softmax
from docclassify.predict.stage import (
    FoldInput,
    StageData,
    best_candidate,
    change_report,
    cross_fit,
    predict_both,
    safe_log,
)

log = logging.getLogger(__name__)

SHARES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # candidate shares of the OOF rows (up to max_share)


@dataclass(frozen=True)
class SecondPassSettings:
    enabled: bool = False
    max_share: float = 0.5   # the largest share of (OOF and test) images a threshold may touch
    tail: float = 0.05       # a statistic outside the clean images' [tail, 1 - tail] range names its restoration

    @classmethod
    def of(cls, node) -> SecondPassSettings:
        """From the second_pass group's typed settings (SecondPassConfig) or a node / mapping of its keys."""
        if node is None:
            return cls()
        if not hasattr(node, "get"):  # SecondPassConfig
            return cls(bool(node.enabled), float(node.max_share), float(node.tail))
        return cls(bool(node.get("enabled", False)), float(node.get("max_share", 0.5)), float(node.get("tail", 0.05)))


def margins(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row."""
    top = np.sort(np.asarray(probs, dtype=np.float64), axis=1)
    return top[:, -1] - top[:, -2]


class Restorer:
    """Plans (diagnose) and restored images per fold model's image arrays, each array measured once."""

    def __init__(self, tail: float):
        self.tail = tail
        self._refs: dict[tuple, Reference] = {}
        self._plans: dict[tuple[int, int], Plan] = {}
        self.counts: Counter = Counter()

    def reference(self, f: FoldInput) -> Reference:
        key = (int(f.meta["img_size"]), str(f.meta.get("resize", "pad")), int(f.meta.get("pad_value", 0)))
        if key not in self._refs:
            images, labels = f.get_clean()
            self._refs[key] = Reference.of(images, labels, key[2], self.tail)
        return self._refs[key]

    def plans(self, f: FoldInput, images: np.ndarray, rows: np.ndarray, classes: np.ndarray,
              count: bool = False) -> list[Plan]:
        """Each row's plan (judged against clean pages of its class ``classes``), measured once per image
        array (``count``: new plans counted in ``counts``, once per image and image size)."""
        ref, pad = self.reference(f), int(f.meta.get("pad_value", 0))
        out = []
        for r, c in zip(rows, classes):
            key = (id(images), int(r))
            if key not in self._plans:
                self._plans[key] = diagnose(measure(images[int(r)], pad), ref, int(c))
                if count:
                    self.counts.update(step for step, _ in self._plans[key])
            out.append(self._plans[key])
        return out

    def fold_fn(self, predict, test_classes: np.ndarray, oof_classes: np.ndarray, count: bool = False):
        """A FoldFn: each row's restoration views predicted and averaged (probabilities); NaN rows have
        no restoration (nothing measured out of range for a page of its predicted class)."""
        def fn(f: FoldInput, model, images: np.ndarray, rows: np.ndarray, kind: str, pos: np.ndarray) -> np.ndarray:
            classes = (test_classes if kind == "test" else oof_classes)[pos]
            plans = self.plans(f, images, rows, classes, count)
            resize, pad = str(f.meta.get("resize", "pad")), int(f.meta.get("pad_value", 0))
            batch, owner = [], []
            for i, (r, plan) in enumerate(zip(rows, plans)):
                for view in views_of(plan):
                    batch.append(restore(images[int(r)], view, resize, pad))
                    owner.append(i)
            out = np.full((len(rows), int(len(f.meta["classes"]))), np.nan)
            if not batch:
                return out
            logits = predict(model, np.stack(batch), np.arange(len(batch)), f.meta)
            probs = softmax(logits)
            owner = np.asarray(owner)
            total = np.zeros((len(rows), probs.shape[1]))
            np.add.at(total, owner, probs)
            n = np.bincount(owner, minlength=len(rows))
            has = n > 0
            out[has] = safe_log(total[has] / n[has, None])
            return out
        return fn


def _with_first(restored: list[np.ndarray], first: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per member: restored logits, its first-pass logits where it had nothing to restore; and which
    rows any member restored."""
    any_restored = np.zeros(len(first[0]), dtype=bool)
    out = []
    for z, z0 in zip(restored, first):
        has = ~np.isnan(z).any(axis=1)
        any_restored |= has
        out.append(np.where(has[:, None], z, z0))
    return out, any_restored


def run_second_pass(stage: StageData, settings: SecondPassSettings) -> dict:
    """Fit the threshold on the OOF rows, guard it, and re-predict the unsure test images (updates
    ``stage.test_probs`` / ``stage.oof_probs`` when applied). Returns summary.json's entry."""
    t0 = time.time()
    restorer = Restorer(settings.tail)
    test_classes, oof_classes = stage.test_probs.argmax(axis=1), stage.oof_pred
    fn = restorer.fold_fn(stage.predict, test_classes, oof_classes)
    y = stage.oof.y
    base = stage.oof_pred
    m_oof = margins(stage.oof_probs)
    shares = [s for s in SHARES if s <= settings.max_share + 1e-12]
    thresholds = [-np.inf] + [float(np.quantile(m_oof, s)) if s < 1 else np.inf for s in shares]
    pos = np.flatnonzero(m_oof < thresholds[-1]) if np.isfinite(thresholds[-1]) else np.arange(len(y))
    _, oof_z = predict_both(stage.members, np.zeros(0, np.int64), pos, fn, stage.num_classes)
    oof_z, restorable = _with_first(oof_z, [z[pos] for z in stage.oof.logits])
    second = base.copy()
    second_probs = stage.combiner.oof(oof_z)
    second[pos] = np.where(restorable, second_probs.argmax(axis=1), base[pos])
    candidates = np.stack([np.where(m_oof < t, second, base) for t in thresholds])
    guard = cross_fit(best_candidate(candidates, y), lambda j, rows: candidates[j][rows], y, stage.oof.groups, base)
    chosen = int(guard.choice)
    applied = guard.applied and chosen > 0
    threshold = thresholds[chosen]
    report = {"enabled": True, **guard.as_dict(), "applied": applied, "tail": settings.tail,
              "max_share": settings.max_share,
              "fitted_threshold": float(threshold) if np.isfinite(threshold) else None,
              "fitted_share": ([0.0] + shares)[chosen], "oof_rows_restorable": int(restorable.sum()),
              "oof_rows_considered": int(len(pos))}
    if applied:
        rows = np.flatnonzero(margins(stage.test_probs) < threshold)
        test_z, _ = predict_both(stage.members, rows, np.zeros(0, np.int64),
                                 restorer.fold_fn(stage.predict, test_classes, oof_classes, True), stage.num_classes)
        test_z, took = _with_first(test_z, [z[rows] for z in stage.test_logits])
        before = stage.test_probs.copy()
        stage.test_probs[rows[took]] = stage.combiner.test(test_z)[took]
        touched = np.zeros(len(before), dtype=bool)
        touched[rows[took]] = True
        oof_take = pos[restorable & (m_oof[pos] < threshold)]
        stage.oof_probs[oof_take] = second_probs[np.isin(pos, oof_take)]
        stage.changed = True
        report.update(change_report(before, stage.test_probs, touched),
                      restorations=dict(sorted(restorer.counts.items())))
    report["seconds"] = round(time.time() - t0, 2)
    log.info("second_pass: %d OOF rows below the largest candidate threshold, %d restorable; cross-fitted OOF macro "
             "F1 %.4f -> %.4f (share %.2f)%s", len(pos), int(restorable.sum()), guard.base_f1, guard.crossed_f1,
             report["fitted_share"], f": {report['test_touched']} test images re-predicted, {report['test_changed']} "
             f"predictions changed ({report['restorations']})" if applied else ": not applied")
    return report
