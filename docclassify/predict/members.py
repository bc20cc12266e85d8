"""Step 2, members: every fold model of a run on the test images (and on its own OOF rows where they
are re-predicted), its folds averaged (step 4, predict/averaging.py) into one ensemble member."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from docclassify.models.checkpoint import load_checkpoint
from docclassify.predict.averaging import average_folds
from docclassify.predict.imagestore import ImageStore
from docclassify.predict.oof_rows import OofInputs
from docclassify.predict.run_dirs import Run
from docclassify.predict.testdata import DataSet
from docclassify.predict.views import TtaPredictor

log = logging.getLogger(__name__)


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
    return Member(run, average_folds(fold_preds, average), oof_logits, fold_info, orientations,
                  np.stack(fold_logits))


def predict_members(runs: list[Run], datasets: list[DataSet], store: ImageStore,
                    predictor: TtaPredictor, average: str, oof: OofInputs | None) -> list[Member]:
    """One ensemble member per run (its folds averaged), OOF rows re-predicted where planned."""
    plans = oof.plans if oof is not None else [None] * len(runs)
    view = oof.view if oof is not None else "clean"
    return [predict_run(run, f"run {i + 1}/{len(runs)} ({run.path.name})", ds, store, predictor,
                        average, plan, view)
            for i, (run, ds, plan) in enumerate(zip(runs, datasets, plans))]
