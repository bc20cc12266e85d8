"""``tta=auto``: choose the TTA view set on out-of-fold rows instead of trusting one.

Naive TTA can lower a score (the reference competition's write-ups report it, and a model
trained on upright pages gets worse with dihedral views of them). ``docclassify.infer tta=auto``
predicts every run's OOF rows (on the ``fit_on`` view: the robust copies by default, the test's
look-alikes) once per distinct view of all the view sets (:data:`predict.tta.VIEW_SETS`), then
scores each set by the macro F1 of the ensemble's OOF predictions averaged over that set's
views, and keeps the best; a tie goes to the set with fewer views (cheaper, and no evidence for
more). summary.json records every set's score and the choice (``tta.auto``).

This module holds the pure part (view bookkeeping, combining, choosing); the predictions are
made by :func:`docclassify.predict.inference.choose_tta`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from docclassify.predict.tta import VIEW_SETS, View, combine_views


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

    @property
    def views(self) -> list[View]:
        return list(VIEW_SETS[self.name])

    def summary(self) -> dict:
        return {"chosen": self.name, "auto": {"fit_on": self.fit_on, "rows": self.rows,
                                              "macro_f1": {k: float(v) for k, v in self.scores.items()}}}
