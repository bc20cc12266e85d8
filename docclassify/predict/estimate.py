"""The label-free estimate of the test macro F1 (``estimate=true``, issue 29 item 3): Average
Thresholded Confidence (ATC; Garg et al., "Leveraging Unlabeled Data to Predict Out-of-Distribution
Performance", ICLR 2022) fitted on the robust OOF rows and applied to the test images themselves.

Why not the OOF rows' own F1: they are distorted copies drawn from a validation profile, predicted
by one fold model each. The test images are predicted by the average of the folds (better by 0.04
on the default run) and carry distortions of their own, which a profile may not contain (the phone
split: OOF rows 0.74, test 0.40). The model's confidence on the test images sees both.

ATC: the threshold ``t`` on the OOF rows' top probability at which the share of rows above ``t``
equals their accuracy; the test accuracy is estimated as the share of test images above ``t``. The
OOF probabilities are those the ensemble's are fitted on (scaled to mimic the fold average,
mimic_fold_average), so ``t`` is on the scale of the test's. Macro F1 follows from each test image's
estimated correctness ``q`` (1 above ``t``, else 0): its predicted class gains ``q`` true and ``1-q``
false positives, and the ``1-q`` missed mass goes to the other classes in proportion to their
probabilities (the model's own guess of what it missed).
"""

from __future__ import annotations

import numpy as np


def atc_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """The confidence above which the share of rows equals their accuracy (-inf when all are right)."""
    confidence = np.sort(np.asarray(confidence, dtype=np.float64))
    n_wrong = int(round((1.0 - float(np.mean(correct))) * len(confidence)))
    return float(confidence[n_wrong - 1]) if n_wrong > 0 else float("-inf")


def expected_macro_f1(probs: np.ndarray, q: np.ndarray) -> float:
    """Macro F1 when row i's argmax is right with probability ``q[i]``; a wrong row's true class is
    drawn from its other classes' probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    n, k = probs.shape
    pred = probs.argmax(1)
    q = np.asarray(q, dtype=np.float64)
    tp = np.bincount(pred, weights=q, minlength=k)
    fp = np.bincount(pred, weights=1.0 - q, minlength=k)
    others = probs.copy()
    others[np.arange(n), pred] = 0.0
    others /= np.maximum(others.sum(1, keepdims=True), 1e-12)
    fn = ((1.0 - q)[:, None] * others).sum(0)
    present = (tp + fp + fn) > 0  # labels true or predicted, as sklearn's macro F1 counts them
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12)
    return float(f1[present].mean())


def estimate_test_f1(oof_probs: np.ndarray, y_oof: np.ndarray, test_probs: np.ndarray) -> dict:
    """summary.json's ``estimate``: ATC's test accuracy and macro F1, the threshold and what it was fitted on."""
    oof_probs, test_probs = np.asarray(oof_probs), np.asarray(test_probs)
    correct = oof_probs.argmax(1) == np.asarray(y_oof)
    t = atc_threshold(oof_probs.max(1), correct)
    q = (test_probs.max(1) > t).astype(np.float64)
    return {"method": "atc", "macro_f1": expected_macro_f1(test_probs, q), "accuracy": float(q.mean()),
            "threshold": t if np.isfinite(t) else None,
            "oof_rows": int(len(correct)), "oof_accuracy": float(correct.mean()),
            "n_test": int(len(test_probs))}
