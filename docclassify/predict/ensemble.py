"""Combining ensemble members' predictions, with weights fitted on out-of-fold data."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp, softmax

from docclassify.metrics import macro_f1_of_probs

__all__ = ["AVERAGES", "combine", "fit_oof_weights", "normalize_weights"]

AVERAGES = ("prob", "logit")
_EPS = 1e-12


def _stack(members: Sequence[np.ndarray], average: str) -> np.ndarray:
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    if isinstance(members, np.ndarray) and members.ndim == 2:
        raise TypeError("pass a list of (N, K) arrays, one per member, not a single array")
    members = [np.asarray(m, dtype=np.float64) for m in members]
    if not members:
        raise ValueError("need at least one member")
    for i, m in enumerate(members):
        if m.ndim != 2:
            raise ValueError(f"member {i} must be (N, K), got shape {m.shape}")
        if m.shape != members[0].shape:
            raise ValueError(
                f"shape mismatch: member 0 has {members[0].shape}, member {i} has {m.shape}"
            )
        if not np.all(np.isfinite(m)):
            raise ValueError(f"member {i} has non-finite values")
    stacked = np.stack(members)  # (M, N, K)
    looks_like_probs = bool(
        np.all(stacked >= 0) and np.allclose(stacked.sum(axis=-1), 1.0, atol=1e-3)
    )
    if average == "prob" and not looks_like_probs:
        raise ValueError(
            "average='prob' needs probabilities (non-negative rows summing to 1); "
            "pass logits with average='logit'"
        )
    if average == "logit" and looks_like_probs and stacked.shape[-1] > 1:
        warnings.warn(
            "average='logit' got arrays that look like probabilities; pass logits or "
            "log-probabilities (np.log(probs)) instead",
            stacklevel=3,
        )
    return stacked


def normalize_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """Weights as a float64 vector summing to 1 (``None`` -> equal weights)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"got {w.shape[0]} weights for {n} members")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise ValueError("weights must not all be 0")
    return w / w.sum()


def combine(
    probs_list: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    average: str = "prob",
) -> np.ndarray:
    """Weighted combination of members; returns ``(N, K)`` probabilities (float64).

    * ``average="prob"``: members are probabilities; the result is their weighted mean.
    * ``average="logit"``: members are logits or log-probabilities (equivalent, softmax is
      shift-invariant); the result is ``softmax(weighted mean)``. With log-probabilities
      this is a normalised weighted geometric mean of the members' probabilities.

    Weights must be >= 0 and are normalised to sum to 1 (``None``: equal weights).
    """
    stacked = _stack(probs_list, average)
    w = normalize_weights(weights, stacked.shape[0])
    mixed = np.tensordot(w, stacked, axes=(0, 0))
    if average == "prob":
        return mixed / mixed.sum(axis=1, keepdims=True)
    return softmax(mixed, axis=1)


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], _EPS, None)).mean())


def _optimize_weights(stacked: np.ndarray, y: np.ndarray, average: str) -> np.ndarray:
    """Minimise the NLL of the mixture over ``w = softmax(theta)`` from ``theta = 0``."""
    m, n, _ = stacked.shape
    rows = np.arange(n)
    if average == "prob":
        p_true = np.clip(stacked[:, rows, y], _EPS, None)  # (M, N)

        def fun(theta):
            w = softmax(theta)
            mix = w @ p_true  # (N,)
            loss = -np.log(mix).mean()
            g_w = -(p_true / mix).mean(axis=1)  # dL/dw
            return loss, w * (g_w - w @ g_w)

    else:
        logp = log_softmax(stacked, axis=-1)  # per-member log-probs: shift-free logits

        def fun(theta):
            w = softmax(theta)
            z = np.tensordot(w, logp, axes=(0, 0))  # (N, K)
            lse = logsumexp(z, axis=1)
            loss = float((lse - z[rows, y]).mean())
            p = np.exp(z - lse[:, None])
            # dL/dw_i = mean_n( sum_k p_nk * l_ink - l_in,y )
            g_w = (np.einsum("nk,mnk->mn", p, logp) - logp[:, rows, y]).mean(axis=1)
            return loss, w * (g_w - w @ g_w)

    res = minimize(fun, np.zeros(m), jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "gtol": 1e-9})
    return softmax(res.x)


def fit_oof_weights(
    oof_probs_list: Sequence[np.ndarray],
    y: np.ndarray,
    average: str = "prob",
) -> dict:
    """Fit ensemble weights on out-of-fold predictions.

    Weights are ``softmax(theta)`` (so non-negative and summing to 1), with ``theta``
    found by L-BFGS from ``theta = 0`` (equal weights; deterministic) minimising the NLL of
    :func:`combine` ``(members, w, average)``. If the fitted weights' OOF macro F1 is lower
    than that of equal weights, the equal weights are kept: so the returned ``f1_fitted``
    (the OOF macro F1 of the *returned* weights) is ``>= f1_equal`` by construction.

    Returns a dict: ``weights`` (list of floats, the ones to use), ``f1_equal``,
    ``f1_fitted``, ``nll_equal``, ``nll_fitted`` (NLL of the returned weights),
    ``accepted`` (True when the optimised weights were kept) and ``optimized_weights``
    (what the optimiser found, kept or not). OOF predictions only: weights fitted on
    predictions of training data favour the most over-fitted member.
    """
    stacked = _stack(oof_probs_list, average)
    y = np.asarray(y).astype(np.int64)
    m, n, k = stacked.shape
    if y.shape != (n,):
        raise ValueError(f"y must be ({n},), got shape {y.shape}")
    if n == 0 or y.min() < 0 or y.max() >= k:
        raise ValueError(f"labels must be in [0, {k}) and non-empty")

    equal = normalize_weights(None, m)
    p_equal = combine(list(stacked), equal, average)
    f1_equal, nll_equal = macro_f1_of_probs(p_equal, y), _nll(p_equal, y)
    if m == 1:
        optimized = equal
    else:
        optimized = _optimize_weights(stacked, y, average)
    p_opt = combine(list(stacked), optimized, average)
    f1_opt, nll_opt = macro_f1_of_probs(p_opt, y), _nll(p_opt, y)
    accepted = m > 1 and f1_opt >= f1_equal
    chosen = optimized if accepted else equal
    return {
        "weights": [float(v) for v in chosen],
        "f1_equal": f1_equal,
        "f1_fitted": f1_opt if accepted else f1_equal,
        "nll_equal": nll_equal,
        "nll_fitted": nll_opt if accepted else nll_equal,
        "accepted": bool(accepted),
        "optimized_weights": [float(v) for v in optimized],
    }
