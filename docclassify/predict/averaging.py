"""Step 4, fold averaging: a run's fold predictions averaged into one ensemble member's test
log-probabilities. The one home of that arithmetic: predict/members.py, the second stage
(predict/stage.py fold_average) and the deployment's RunRunner (deploy/runs.py) all call it."""

from __future__ import annotations

import numpy as np

from docclassify.metrics import safe_log
from docclassify.predict.ensemble import combine


def average_folds(fold_preds: list[np.ndarray], average: str) -> np.ndarray:
    """log of the folds' combined predictions: ``fold_preds`` are probabilities (average=prob) or
    logits (average=logit), combined with equal weights (predict/ensemble.py combine)."""
    return safe_log(combine([np.asarray(p, dtype=np.float64) for p in fold_preds], None, average))
