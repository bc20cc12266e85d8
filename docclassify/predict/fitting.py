"""Step 5, fitting on the OOF rows: the runs' weights (or a stacker), the temperature and the decision
rule, from the members' out-of-fold predictions only (no row a model trained on)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax

from docclassify.metrics import macro_f1_of_probs, safe_log, softmax
from docclassify.predict.calibration import apply_temperature, averaging_factor, calibration_report
from docclassify.predict.decision import DecisionFit, fit_decision
from docclassify.predict.ensemble import (
    STACKER_FILE,
    Stacker,
    combine,
    fit_greedy_weights,
    fit_oof_weights,
    fit_stacker,
    members_of,
)
from docclassify.predict.members import Member
from docclassify.predict.oof_rows import OofInputs, align_oof, check_same_oof_rows, image_groups
from docclassify.predict.settings import SELECTION_MODES
from docclassify.predict.stage import OofRows

log = logging.getLogger(__name__)


def fit_weights(oof_members: list[np.ndarray] | None, y, mode: str, average: str, n_runs: int,
                groups: np.ndarray | None = None):
    """(weights, fit report or None). ``oof``: non-negative weights fitted on OOF, kept only if their
    cross-fitted OOF F1 beats equal weights'; ``greedy``: forward selection with a held-out check
    (predict.ensemble). ``groups``: the image of each row (copies of one image on one side of a split)."""
    if mode == "equal" or n_runs == 1:
        if mode != "equal":
            log.info("ensemble.weights=%s with one run: its weight is 1", mode)
        return [1.0 / n_runs] * n_runs, None
    if mode == "greedy":
        fit = fit_greedy_weights(oof_members, y, average, groups)
        held = fit["held_out"]
        log.info("greedy selection on %d OOF rows: picks %s (OOF macro F1 %.4f; equal weights %.4f, best single run "
                 "%.4f); held-out check (selected on half the rows, scored on the other): %.4f vs equal %.4f%s",
                 len(y), fit["counts"], fit["f1_fitted"], fit["f1_equal"], fit["f1_best_single"], held["greedy"],
                 held["equal"], "" if fit["accepted"] else " -> equal weights kept")
        return fit["weights"], fit
    fit = fit_oof_weights(oof_members, y, average, groups)
    log.info("ensemble weights fitted on %d OOF rows: %s; %d-fold cross-fitted OOF macro F1 %.4f vs equal weights "
             "%.4f%s", len(y), [round(w, 4) for w in fit["optimized_weights"]], fit["folds"], fit["f1_cross_fitted"],
             fit["f1_equal"], "" if fit["accepted"] else " -> equal weights kept")
    return fit["weights"], fit


def fit_temperature_on_oof(oof_probs: np.ndarray, y: np.ndarray) -> dict:
    """calibration_report of the ensemble's OOF probabilities (``temperature``: the fitted T)."""
    calib = calibration_report(safe_log(oof_probs), y)
    log.info("temperature %.3f fitted on %d OOF rows: NLL %.4f -> %.4f, ECE %.4f -> %.4f",
             calib["temperature"], len(y), calib["nll_before"], calib["nll_after"],
             calib["ece_before"], calib["ece_after"])
    return calib


@dataclass
class OofFit:
    """What the out-of-fold rows decide: the runs' weights and the temperature (and reports)."""

    weights: list[float]
    weights_fit: dict | None = None  # fit_oof_weights' report (ensemble.weights=oof, 2+ runs)
    summary: dict | None = None  # summary.json's "oof": rows, predictions (tta/saved), macro F1
    calibration: dict | None = None  # calibration_report (calibrate=true)
    temperature: float = 1.0
    stacker: Stacker | None = None  # ensemble.weights=stack (when it beat equal weights on the OOF rows)
    decision: DecisionFit | None = None  # decision=macro_f1: the biases and their cross-fitted gain
    rows: OofRows | None = None  # the aligned OOF rows it was fitted on (the second stage's guards)
    probs: np.ndarray | None = None  # their final probabilities (scaled, combined, temperature): the estimate's


def fit_stack(oof_logits: list[np.ndarray], y: np.ndarray,
              groups: np.ndarray) -> tuple[Stacker | None, dict, np.ndarray]:
    """ensemble.weights=stack: (stacker or None, report, OOF probabilities of what is used). The
    stacker is used when its cross-fitted OOF macro F1 is >= equal weights'; its cross-fitted OOF
    probabilities (each row predicted by a stacker not fitted on it) then stand for the ensemble."""
    probs = [softmax(z) for z in oof_logits]
    stacker, report = fit_stacker(probs, y, groups)
    crossed = report.pop("oof_probs")
    log.info("stacking on %d OOF rows: C=%.3g chosen by %d-fold cross-validation; cross-fitted OOF macro F1 %.4f vs "
             "equal weights %.4f%s", len(y), report["C"], report["folds"], report["f1_cross_fitted"],
             report["f1_equal"], "" if report["accepted"] else " -> equal weights kept")
    if not report["accepted"]:
        return None, report, combine(probs, None, "prob")
    return stacker, {**report, "file": STACKER_FILE}, crossed


def fit_decision_on_oof(oof_probs: np.ndarray, y: np.ndarray, rule: str, groups: np.ndarray) -> DecisionFit:
    """The decision rule fitted on the ensemble's final OOF probabilities (after the temperature,
    as it is applied to the test's)."""
    fit = fit_decision(safe_log(oof_probs), y, rule, groups)
    if rule != "argmax":
        log.info("decision=%s on %d OOF rows: %s (in-sample %.4f, %d-fold cross-fitted gain %+.4f)", rule, len(y),
                 fit.message, fit.oof_macro_f1_in_sample, fit.folds, fit.cross_fitted_gain)
    return fit


def mimic_fold_averages(members: list[Member], oof_logits: list[np.ndarray],
                        average: str = "prob") -> tuple[list[np.ndarray], list[float]]:
    """Each run's OOF log-probabilities scaled by its averaging factor (predict.calibration): an OOF
    row is predicted by one fold model, a test row by the average of the run's folds, which is
    less confident; the scaled OOF rows look like that average, so what is fitted on them (weights,
    stacker, temperature, biases) fits what it is applied to. ``average``: how predict_run averages
    the folds (ensemble.average), which the factor measures. Returns (scaled logits, factors)."""
    alphas = [averaging_factor(m.fold_test_logits, average) if m.fold_test_logits is not None else 1.0
              for m in members]
    scaled = [a * log_softmax(np.asarray(z, dtype=np.float64), axis=1) for a, z in zip(alphas, oof_logits)]
    log.info("OOF rows scaled to mimic fold averages: averaging factor per run %s", [round(a, 3) for a in alphas])
    return scaled, alphas


def fit_on_oof(members: list[Member], oof: OofInputs | None, average: str, weights_mode: str,
               calibrate: bool, decision: str = "argmax", mimic: bool = True) -> OofFit:
    """Ensemble weights (or a stacker), temperature and decision rule from the members' OOF
    predictions (without OOF rows: equal weights, T=1, argmax); ``mimic``: on OOF rows scaled like
    fold averages (mimic_fold_average)."""
    if oof is None:
        return OofFit([1.0 / len(members)] * len(members))
    per_run = [(ids, y, m.oof_logits if oof.repredict else z)
               for (ids, y, z), m in zip(oof.saved, members)]
    paths = [m.run.path for m in members]
    if weights_mode in SELECTION_MODES and len(members) > 1:
        check_same_oof_rows(per_run, paths, weights_mode)
    oof_ids, y_oof, oof_logits = align_oof(per_run, paths)
    per_run_logits, alphas = oof_logits, None
    if mimic:
        oof_logits, alphas = mimic_fold_averages(members, oof_logits, average)
    groups = image_groups(oof_ids, oof.view)
    stacker = None
    if weights_mode == "stack" and len(members) > 1:
        weights = [1.0 / len(members)] * len(members)
        stacker, fit, oof_probs = fit_stack(oof_logits, y_oof, groups)
    else:
        oof_members = members_of(oof_logits, average)
        weights, fit = fit_weights(oof_members, y_oof, weights_mode, average, len(members), groups)
        oof_probs = combine(oof_members, weights, average)
    summary = {"fit_on": oof.view, "rows": len(oof_ids), "predictions": "tta" if oof.repredict else "saved",
               "macro_f1": macro_f1_of_probs(oof_probs, y_oof), "averaging_factors": alphas}
    calib, temperature = None, 1.0
    if calibrate:
        calib = fit_temperature_on_oof(oof_probs, y_oof)
        temperature = calib["temperature"]
    final = apply_temperature(safe_log(oof_probs), temperature)
    decided = fit_decision_on_oof(final, y_oof, decision, groups)
    rows = OofRows(oof_ids, y_oof, groups, [np.asarray(z, dtype=np.float64) for z in per_run_logits], oof.view)
    return OofFit(weights, fit, summary, calib, temperature, stacker, decided, rows, final)
