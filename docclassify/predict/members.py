"""Step 2, members: every fold model of a run on the test images (and on its own OOF rows where they
are re-predicted), its folds averaged (step 4, predict/averaging.py) into one ensemble member."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from docclassify.predict.averaging import average_folds
from docclassify.predict.imagestore import ImageStore
from docclassify.predict.logit_store import LazyModel, LogitStore
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


def predict_fold_test(model: LazyModel, meta: dict, ds: DataSet, store: ImageStore,
                      predictor: TtaPredictor, label: str,
                      logits: LogitStore) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(probabilities, logits, test images per second: None when read from ``logits``) of one fold model
    on the whole test set (tta=orient*: ``predictor.last_estimates`` holds each image's estimated
    orientation)."""
    n_test = len(ds.source.test)
    images = store.get(ds, "test", meta)
    t0 = time.time()
    probs, test_logits = logits.predict(model, predictor, images, np.arange(n_test), meta)
    seconds = time.time() - t0
    if logits.last_read:
        log.info("%s: %d test images x %d views read from the logit store", label, n_test, len(predictor.views))
        return probs, test_logits, None
    img_per_s = n_test / max(seconds, 1e-9)
    log.info("%s: %s at %d px, %d test images x %d views in %.1fs (%.0f img/s)", label,
             meta["timm_name"], meta["img_size"], n_test, len(predictor.views), seconds, img_per_s)
    return probs, test_logits, img_per_s


def repredict_fold_oof(model: LazyModel, meta: dict, images: np.ndarray,
                       predictor: TtaPredictor, rows: np.ndarray, label: str, logits: LogitStore) -> np.ndarray:
    """TTA logits of ``images[rows]``: the fold's OOF rows (the ones it did not train on) or
    their robust copies."""
    t0 = time.time()
    _, oof_logits = logits.predict(model, predictor, images, rows, meta)
    log.info("%s: %d OOF rows %s with %d views in %.1fs", label, len(rows),
             "read from the logit store" if logits.last_read else "re-predicted", len(predictor.views),
             time.time() - t0)
    return oof_logits


def predict_run(run: Run, label: str, ds: DataSet, store: ImageStore, predictor: TtaPredictor,
                average: str, oof: tuple[np.ndarray, np.ndarray] | None, view: str = "clean",
                logits: LogitStore | None = None) -> Member:
    """Every fold of ``run`` on the test set, averaged by ``average`` (and on its own OOF rows of
    ``view`` when ``oof=(image rows, folds)``, see :func:`plan_view_oof`); each prediction read from
    ``logits`` when stored there (None: always predicted)."""
    logits = logits if logits is not None else LogitStore(None, False)
    fold_preds, fold_info, orientations, fold_logits = [], [], [], []
    oof_logits = None
    if oof is not None:
        oof_logits = np.zeros((len(oof[0]), len(run.classes)), dtype=np.float64)
    for fm in run.folds:
        model = LazyModel(fm.checkpoint, predictor.device)  # loaded only if a prediction is not stored
        meta = fm.meta  # the checkpoint's header, as load_checkpoint reads it
        fold_label = f"{label} fold {fm.fold}"
        probs, test_logits, img_per_s = predict_fold_test(model, meta, ds, store, predictor, fold_label, logits)
        if predictor.last_estimates is not None:
            orientations.append(predictor.last_estimates)
        fold_preds.append(probs if average == "prob" else test_logits)
        fold_logits.append(np.asarray(test_logits, dtype=np.float32))
        fold_info.append({"fold": fm.fold, "model": meta["timm_name"],
                          "model_option": meta.get("model_option"),
                          "img_size": int(meta["img_size"]),
                          "checkpoint": str(fm.checkpoint.relative_to(run.path)),
                          "test_img_per_s": None if img_per_s is None else round(img_per_s, 1)})
        if oof is not None:
            train_rows, oof_folds = oof
            mask = oof_folds == fm.fold
            oof_logits[mask] = repredict_fold_oof(model, meta, store.oof_images(ds, meta, run, view),
                                                  predictor, train_rows[mask], fold_label, logits)
        del model
    return Member(run, average_folds(fold_preds, average), oof_logits, fold_info, orientations,
                  np.stack(fold_logits))


def predict_members(runs: list[Run], datasets: list[DataSet], store: ImageStore,
                    predictor: TtaPredictor, average: str, oof: OofInputs | None,
                    logits: LogitStore | None = None) -> list[Member]:
    """One ensemble member per run (its folds averaged), OOF rows re-predicted where planned (each
    prediction read from ``logits`` when stored there)."""
    plans = oof.plans if oof is not None else [None] * len(runs)
    view = oof.view if oof is not None else "clean"
    return [predict_run(run, f"run {i + 1}/{len(runs)} ({run.path.name})", ds, store, predictor,
                        average, plan, view, logits)
            for i, (run, ds, plan) in enumerate(zip(runs, datasets, plans))]
