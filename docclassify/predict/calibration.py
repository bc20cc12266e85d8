"""Temperature scaling, fitted on out-of-fold (OOF) logits only.

Fit the temperature on predictions the models did not train on (the OOF predictions of a
K-fold run); fitting it on training predictions makes over-confident models look
calibrated.

Log-probabilities work as logits everywhere in this module: softmax is shift-invariant
(``softmax(z + c) == softmax(z)`` for a per-row constant ``c``), and
``log_softmax(z) = z - logsumexp(z)`` is such a shift. So the ``log(mean probs)`` that
:func:`docclassify.predict.tta.predict_tta` returns for ``average="prob"`` (or the log of
an ensemble's probabilities) can be passed here directly. Inputs must be finite.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from docclassify.utils.choices import AVERAGES

__all__ = [
    "T_MAX",
    "T_MIN",
    "apply_temperature",
    "calibration_report",
    "ece",
    "fit_temperature",
    "nll",
]

T_MIN = 0.05
T_MAX = 20.0


def _check_logits_labels(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {logits.shape}")
    if y.ndim != 1 or y.shape[0] != logits.shape[0]:
        raise ValueError(f"y must be (N,) with N={logits.shape[0]}, got shape {y.shape}")
    if logits.shape[0] == 0:
        raise ValueError("need at least one sample")
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits must be finite (use log_softmax / clipped log-probs)")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y must hold integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got [{y.min()}, {y.max()}]")
    return logits, y


def nll(logits: np.ndarray, y: np.ndarray, T: float = 1.0) -> float:
    """Mean negative log-likelihood of ``softmax(logits / T)`` at the true labels."""
    logits, y = _check_logits_labels(logits, y)
    if not T > 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    logp = log_softmax(logits / T, axis=1)
    return float(-logp[np.arange(len(y)), y].mean())


def apply_temperature(logits: np.ndarray, T: float) -> np.ndarray:
    """``softmax(logits / T)`` row-wise (float64)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {logits.shape}")
    if not T > 0:
        raise ValueError(f"temperature must be > 0, got {T}")
    return softmax(logits / T, axis=1)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature ``T`` in ``[0.05, 20]`` minimising :func:`nll` (deterministic).

    Bounded Brent search on ``log T`` (the NLL is smooth and unimodal in practice).
    ``T > 1`` softens over-confident predictions, ``T < 1`` sharpens under-confident ones.
    Pass out-of-fold logits only.
    """
    logits, y = _check_logits_labels(logits, y)
    rows = np.arange(len(y))

    def objective(log_t: float) -> float:
        logp = log_softmax(logits / math.exp(log_t), axis=1)
        return float(-logp[rows, y].mean())

    res = minimize_scalar(
        objective,
        bounds=(math.log(T_MIN), math.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-6, "maxiter": 500},
    )
    log_t = float(res.x)
    # Brent never evaluates the exact identity; keep T=1 if it is at least as good.
    if objective(0.0) <= objective(log_t):
        return 1.0
    return float(math.exp(log_t))


def ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins on [0, 1].

    Confidence is the top probability and a sample is correct when its argmax is ``y``;
    bin ``b`` holds confidences in ``(b / n_bins, (b + 1) / n_bins]`` (the first bin also
    holds 0). ``ECE = sum_b |acc_b - conf_b| * n_b / N``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {probs.shape}")
    if y.ndim != 1 or y.shape[0] != probs.shape[0] or probs.shape[0] == 0:
        raise ValueError(f"y must be (N,) with N={probs.shape[0]} > 0, got shape {y.shape}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    # ceil(conf * n_bins) - 1 puts conf in (b/n, (b+1)/n] into bin b.
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        n_b = int(mask.sum())
        if n_b:
            total += abs(correct[mask].mean() - conf[mask].mean()) * n_b
    return float(total / len(y))


def calibration_report(logits: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict:
    """Fit ``T`` on ``(logits, y)`` and report NLL and ECE before/after.

    Returns ``{"temperature", "nll_before", "nll_after", "ece_before", "ece_after"}``
    (plain floats, JSON-ready). ``nll_after <= nll_before`` always holds (T=1 is a
    candidate); ECE usually drops but is not what is optimised.
    """
    logits, y = _check_logits_labels(logits, y)
    T = fit_temperature(logits, y)
    return {
        "temperature": float(T),
        "nll_before": nll(logits, y, 1.0),
        "nll_after": nll(logits, y, T),
        "ece_before": ece(apply_temperature(logits, 1.0), y, n_bins),
        "ece_after": ece(apply_temperature(logits, T), y, n_bins),
    }


# ---------------------------------------------------------------------------------------------
# Calibration that matches what it is applied to: fold averages
# ---------------------------------------------------------------------------------------------

def averaging_factor(fold_logits: np.ndarray, average: str = "prob") -> float:
    """How much averaging the folds softens them, measured without labels.

    ``fold_logits``: (F, N, K), each fold model's logits (or log-probabilities) of the same rows
    (test rows: every fold predicts them). ``average``: how the folds are averaged, as the
    ensemble averages them (``ensemble.average``): ``prob`` = the mean of the folds' probabilities,
    ``logit`` = the softmax of the mean of their logits (a normalised geometric mean of the
    probabilities, which softens less when one fold is unsure). Returns the scale ``alpha`` for
    which ``softmax(alpha * z_f)`` is closest (mean KL divergence) to that fold average: a fold
    average behaves like one fold's logits scaled by ``alpha`` (< 1: less confident).

    An out-of-fold row is predicted by one fold, a test row by the average of all of them; OOF
    logits scaled by ``alpha`` mimic that average, and a temperature fitted on them is ``alpha``
    times the one fitted on the plain OOF logits (``softmax(alpha * z / T') == softmax(z / T)``
    for ``T' = alpha * T``)."""
    if average not in AVERAGES:
        raise ValueError(f"average must be {' or '.join(AVERAGES)}, got {average!r}")
    logp = log_softmax(np.asarray(fold_logits, dtype=np.float64), axis=-1)
    if logp.ndim != 3 or logp.shape[0] < 2:
        return 1.0
    if average == "prob":
        mean = softmax(logp, axis=-1).mean(axis=0)
        log_mean = np.log(np.clip(mean, np.finfo(np.float64).tiny, None))
    else:
        log_mean = log_softmax(logp.mean(axis=0), axis=-1)
        mean = np.exp(log_mean)

    def kl(log_alpha: float) -> float:
        logq = log_softmax(math.exp(log_alpha) * logp, axis=-1)
        return float((mean * (log_mean - logq)).sum(-1).mean())

    res = minimize_scalar(kl, bounds=(math.log(0.05), math.log(2.0)), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))
