"""Step 7, outputs: submission.csv, test_probs.csv and summary.json, built and checked before any is
written, then written together; the test report when test labels are known."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from docclassify.data.deskew import skew_summary
from docclassify.data.sources import DataSource
from docclassify.metrics import accuracy, macro_f1
from docclassify.predict.ensemble import STACKER_FILE, Stacker
from docclassify.predict.upright import orientation_summary
from docclassify.predict.submission import (
    build_probability_frame,
    build_submission,
    write_probability_frame,
    write_submission,
)
from docclassify.utils.io import atomic_group, atomic_write_json

if TYPE_CHECKING:
    import torch

    from docclassify.predict.fitting import OofFit
    from docclassify.predict.members import Member
    from docclassify.predict.settings import Settings

log = logging.getLogger(__name__)

SUBMISSION_FILE, PROBS_FILE, SUMMARY_FILE = "submission.csv", "test_probs.csv", "summary.json"


def score_predictions(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """Macro F1 (sklearn's label set, like training's cv figure), accuracy and a per-class table."""
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(len(classes))),
                                                 zero_division=0)
    counts = np.bincount(pred, minlength=len(classes))
    return {
        "macro_f1": macro_f1(y, pred),
        "accuracy": accuracy(y, pred),
        "per_class": [{"class": c, "precision": float(p[i]), "recall": float(r[i]),
                       "f1": float(f[i]), "support": int(s[i]), "predicted": int(counts[i])}
                      for i, c in enumerate(classes)],
    }


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


@dataclass
class Outputs:
    """Every output, built and checked before any file is written."""

    sample: pd.DataFrame  # the sample submission the submission is checked against
    submission: pd.DataFrame
    probabilities: pd.DataFrame
    num_classes: int
    summary: dict = field(default_factory=dict)
    stacker: Stacker | None = None  # ensemble.weights=stack: saved as stacker.npz


def build_frames(source: DataSource, probs: np.ndarray, pred: np.ndarray,
                 classes: list[str]) -> Outputs:
    """submission.csv (``pred`` in the sample submission's layout) and test_probs.csv, checked."""
    ids = source.test["ID"].tolist()
    sample = source.sample_submission
    submission = build_submission(sample, ids, pred, num_classes=len(classes))
    return Outputs(sample, submission, build_probability_frame(ids, probs, classes), len(classes))


def build_summary(members: list[Member], oof_fit: OofFit, settings: Settings, tta: dict,
                  classes: list[str], pred: np.ndarray, y_test: np.ndarray | None,
                  image_sets: list[dict], device: torch.device) -> dict:
    """summary.json (all but ``seconds``): runs and their weights, TTA, ensemble and OOF fits,
    prediction counts, test scores (when test labels are known), the decoded image sets."""
    counts = np.bincount(pred, minlength=len(classes))
    return {
        "runs": [{"dir": str(m.run.path), "cv_macro_f1": _json_float(m.run.cv_macro_f1),
                  "cv_macro_f1_robust": _json_float(m.run.cv_macro_f1_robust),
                  "cv_macro_f1_robust_select": _json_float(m.run.cv_macro_f1_robust_select),
                  "weight": float(w), "folds": m.folds}
                 for m, w in zip(members, oof_fit.weights)],
        "models": sorted({f["model"] for m in members for f in m.folds}),
        "tta": tta,
        "fit_on": settings.fit_on,
        "ensemble": {"average": settings.average, "weights_mode": settings.weights,
                     "weights": [float(w) for w in oof_fit.weights],
                     "stacked": oof_fit.stacker is not None,
                     "oof_fit": oof_fit.weights_fit},
        "decision": oof_fit.decision.as_dict() if oof_fit.decision is not None else {"rule": "argmax"},
        "oof": oof_fit.summary,
        "calibration": oof_fit.calibration,
        "temperature": float(oof_fit.temperature),
        "n_test": len(pred),
        "prediction_counts": {c: int(n) for c, n in zip(classes, counts)},
        "test_metrics": score_predictions(y_test, pred, classes) if y_test is not None else None,
        "image_sets": image_sets,
        "device": str(device),
        "files": {"submission": SUBMISSION_FILE, "probabilities": PROBS_FILE,
                  "output": str(settings.output) if settings.output else None},
    }


def write_output_files(outputs: Outputs, out_dir: Path, output: Path | None) -> None:
    """submission.csv, test_probs.csv and summary.json into ``out_dir``; the submission also to
    ``output`` when given. Logs the test score (when known) and where the submission went. The
    files appear together (atomic_group): an interrupt or a failed write leaves none of them new."""
    with atomic_group():
        write_submission(out_dir / SUBMISSION_FILE, outputs.sample, outputs.submission,
                         outputs.num_classes)
        write_probability_frame(out_dir / PROBS_FILE, outputs.probabilities)
        if outputs.stacker is not None:
            outputs.stacker.save(out_dir / STACKER_FILE)
        atomic_write_json(out_dir / SUMMARY_FILE, outputs.summary)
        if output is not None:
            write_submission(output, outputs.sample, outputs.submission, outputs.num_classes)
    n_test, metrics = outputs.summary["n_test"], outputs.summary["test_metrics"]
    oof, estimate = outputs.summary.get("oof"), outputs.summary.get("estimate")
    if estimate:
        log.info("estimate of the test macro F1: %.4f (no labels: %.0f%% of the %d test images are above the "
                 "confidence at which the %d %s OOF rows' share equals their accuracy %.3f; those rows' own "
                 "macro F1: %.4f, %s predictions)", estimate["macro_f1"], 100 * estimate["accuracy"],
                 estimate["n_test"], estimate["oof_rows"], oof["fit_on"], estimate["oof_accuracy"],
                 oof["macro_f1"], oof["predictions"])
    elif oof:
        log.info("estimate of the test macro F1: %.4f (%d %s OOF rows, %s predictions)", oof["macro_f1"],
                 oof["rows"], oof["fit_on"], oof["predictions"])
    if metrics is not None:
        log.info("test macro F1 %.4f, accuracy %.4f (%d labelled test images)", metrics["macro_f1"],
                 metrics["accuracy"], n_test)
    log.info("submission (%d rows) -> %s%s", n_test, out_dir / SUBMISSION_FILE,
             f" and {output}" if output else "")


def write_test_report(out_dir: Path, y_test: np.ndarray, probs: np.ndarray, pred: np.ndarray,
                      classes: list[str], ids: list[str], images: np.ndarray, title: str,
                      orientation: dict | None = None) -> None:
    """Labelled test data: the report a training run gets (report.md, confusion_matrix.png,
    per_class.csv, misclassified.png) in the infer dir, with accuracy by orientation (summary.json's
    ``orientation``). A failure is logged, not raised: the submission and summary.json are written
    already."""
    from docclassify.tracking.reports import (
        Misclassified,
        infer_orientation_section,
        write_classification_report,
    )

    try:
        paths = write_classification_report(out_dir, y_test, pred, classes, title, Misclassified(probs, images, ids),
                                            infer_orientation_section(orientation))
        log.info("test report: %s", paths["report"])
    except Exception:
        log.exception("writing the test report failed (submission.csv and summary.json are complete)")


def build_outputs(source: DataSource, members: list[Member], oof_fit: OofFit, settings: Settings, tta: dict,
                  choice, probs: np.ndarray, pred: np.ndarray, y_test: np.ndarray | None, store,
                  device: torch.device, second: dict, estimator=None) -> Outputs:
    """Every output of one inference, checked, with summary.json (all but ``seconds``): ``tta`` gets the
    deskew summary and tta=auto's ``choice``; ``second``: the second stage's entries (None: off)."""
    classes = members[0].run.classes
    outputs = build_frames(source, probs, pred, classes)
    outputs.stacker = oof_fit.stacker
    tta = {**tta, "deskew": skew_summary(store.skews) if store.skews is not None else None,
           **(choice.summary() if choice is not None else {})}
    outputs.summary = build_summary(members, oof_fit, settings, tta, classes, pred, y_test, store.loaded, device)
    outputs.summary["second_stage"] = {k: v for k, v in second.items() if v is not None} or None
    outputs.summary["orientation"] = orientation_summary(source, [m.orientations for m in members], pred, y_test,
                                                         estimator)
    return outputs
