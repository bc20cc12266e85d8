"""Step 3, views: how a fold model predicts images, the TTA views averaged (TtaPredictor), or the
orientation-aware TTA of tta=orient / orient_soft (predict/upright.py). The deployment's RunRunner
(deploy/runs.py) predicts with the same predictors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from docclassify.predict.upright import OrientPredictor
from docclassify.predict.tta import ORIENT_MODES, View, normalised_batches, predict_tta_batches


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
    last_estimates = None  # no orientation estimates (predict.upright.OrientPredictor has them)

    def predict(self, model: torch.nn.Module, images: np.ndarray, rows: np.ndarray,
                meta: dict) -> tuple[np.ndarray, np.ndarray]:
        """:func:`predict_rows` with these settings: (probabilities, logits) of ``images[rows]``."""
        return predict_rows(model, images, rows, meta, self.views, self.average, self.batch_size,
                            self.device)


def make_predictor(mode: str, views: list[View], average: str, batch_size: int, device: torch.device,
                   upright_flip=None):
    """TtaPredictor for view sets; OrientPredictor for tta=orient / orient_soft (predict/upright.py,
    ``upright_flip``: its tta.upright_flip)."""
    if mode in ORIENT_MODES:
        return OrientPredictor(mode, average, batch_size, device, upright_flip)
    return TtaPredictor(views, average, batch_size, device)
