"""Combining ensemble members' predictions, with weights fitted on out-of-fold data.

``ensemble.weights`` of inference: ``equal``; ``oof`` (non-negative weights minimising the OOF
NLL, :func:`fit_oof_weights`); ``greedy`` (forward selection with replacement on the OOF rows,
Caruana et al. 2004, with a held-out check, :func:`fit_greedy_weights`); ``stack`` (a logistic
regression on the members' concatenated OOF probabilities, predict/stacking.py).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, logsumexp, softmax

from docclassify import metrics
from docclassify.metrics import macro_f1, macro_f1_of_probs, safe_log
from docclassify.predict.calibration import apply_temperature
from docclassify.utils.choices import AVERAGES

__all__ = ["AVERAGES", "STACKER_FILE", "Stacker", "combine", "ensemble_test_probs", "fit_greedy_weights",
           "fit_oof_weights", "fit_stacker", "greedy_counts", "members_of", "normalize_weights"]

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
    groups: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
) -> dict:
    """Fit ensemble weights on out-of-fold predictions, kept only when they beat equal weights on
    rows they were not fitted on.

    Weights are ``softmax(theta)`` (so non-negative and summing to 1), with ``theta``
    found by L-BFGS from ``theta = 0`` (equal weights; deterministic) minimising the NLL of
    :func:`combine` ``(members, w, average)`` on every OOF row. Whether to use them is decided by
    **cross-fitting**, as ``decision=macro_f1`` decides on its biases (predict/decision.py): the
    rows are split into ``folds`` parts (stratified; ``groups``, the robust copies of one image,
    on one side), each part predicted with weights fitted on the others, and the pooled macro F1
    of those predictions (``f1_cross_fitted``) is compared with equal weights' on the same rows.
    The fitted weights are kept only when it is higher; otherwise equal weights are used
    (``accepted`` False). Comparing on the rows the weights were fitted on would favour them by
    construction.

    Returns a dict: ``weights`` (list of floats, the ones to use), ``f1_equal``,
    ``f1_cross_fitted``, ``folds``, ``f1_in_sample`` (the optimised weights on the rows they were
    fitted on: optimistic), ``f1_fitted`` (in-sample OOF macro F1 of the *returned* weights),
    ``nll_equal``, ``nll_fitted`` (NLL of the returned weights), ``accepted`` and
    ``optimized_weights`` (what the optimiser found on every row, kept or not). OOF predictions
    only: weights fitted on predictions of training data favour the most over-fitted member.
    """
    from docclassify.predict.decision import split_rows

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
        optimized, f1_crossed, splits = equal, f1_equal, []
    else:
        optimized = _optimize_weights(stacked, y, average)
        splits = split_rows(y, folds, groups, seed)
        pred = np.empty(n, dtype=np.int64)
        for train, held in splits:
            w = _optimize_weights(stacked[:, train], y[train], average)
            pred[held] = combine(list(stacked[:, held]), w, average).argmax(1)
        f1_crossed = macro_f1(y, pred)
    p_opt = combine(list(stacked), optimized, average)
    f1_opt, nll_opt = macro_f1_of_probs(p_opt, y), _nll(p_opt, y)
    accepted = m > 1 and f1_crossed > f1_equal
    chosen = optimized if accepted else equal
    return {
        "weights": [float(v) for v in chosen],
        "f1_equal": f1_equal,
        "f1_cross_fitted": float(f1_crossed),
        "folds": len(splits),
        "f1_in_sample": f1_opt,
        "f1_fitted": f1_opt if accepted else f1_equal,
        "nll_equal": nll_equal,
        "nll_fitted": nll_opt if accepted else nll_equal,
        "accepted": bool(accepted),
        "optimized_weights": [float(v) for v in optimized],
    }


# ---------------------------------------------------------------------------------------------
# Greedy ensemble selection (Caruana et al. 2004)
# ---------------------------------------------------------------------------------------------

def _score(mixed: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(macro F1, -NLL) of combined probabilities: macro F1 first, NLL breaks its many ties."""
    return macro_f1_of_probs(mixed, y), -_nll(mixed, y)


def _mix(total: np.ndarray, count: float, average: str) -> np.ndarray:
    """Probabilities of the weighted sum ``total`` of ``count`` members (as :func:`combine`)."""
    mean = total / count
    return mean / mean.sum(axis=1, keepdims=True) if average == "prob" else softmax(mean, axis=1)


def greedy_counts(stacked: np.ndarray, y: np.ndarray, average: str = "prob", rounds: int | None = None) -> np.ndarray:
    """How many times each member is picked by forward selection with replacement (Caruana et al.
    2004) on ``(stacked (M, N, K), y)``.

    Starts from the better of the best single member and every member once (equal weights), then
    adds, ``rounds`` times, the member whose addition scores best (even when no addition helps, to
    climb past plateaus), and returns the best ensemble seen; so its score (macro F1, then NLL) is
    >= the best single member's and >= equal weights'."""
    m = stacked.shape[0]
    rounds = int(rounds if rounds is not None else max(10, 3 * m))
    singles = [_score(_mix(stacked[j], 1.0, average), y) for j in range(m)]
    start = np.eye(m, dtype=np.int64)[int(max(range(m), key=lambda j: singles[j]))]
    if _score(_mix(stacked.sum(0), m, average), y) > singles[int(np.argmax(start))]:
        start = np.ones(m, dtype=np.int64)
    counts = start.copy()
    total = np.tensordot(counts.astype(np.float64), stacked, axes=(0, 0))
    best_counts, best_score = counts.copy(), _score(_mix(total, counts.sum(), average), y)
    for _ in range(rounds):
        scores = [_score(_mix(total + stacked[j], counts.sum() + 1, average), y) for j in range(m)]
        j = int(max(range(m), key=lambda i: scores[i]))
        counts[j] += 1
        total += stacked[j]
        if scores[j] > best_score:
            best_counts, best_score = counts.copy(), scores[j]
    return best_counts


def _cross_selection(stacked: np.ndarray, y: np.ndarray, average: str, groups, seed: int) -> dict:
    """The held-out check: select on one half of the rows, predict the other, both ways round.
    Returns pooled held-out macro F1 of greedy selection, of the best single member (chosen on
    the other half) and of equal weights."""
    from docclassify.predict.decision import split_rows

    m, n, _ = stacked.shape
    pred = {"greedy": np.empty(n, dtype=np.int64), "best_single": np.empty(n, dtype=np.int64)}
    for train, held in split_rows(y, 2, groups, seed):
        counts = greedy_counts(stacked[:, train], y[train], average)
        pred["greedy"][held] = combine(list(stacked[:, held]), counts, average).argmax(1)
        single = max(range(m), key=lambda j: _score(_mix(stacked[j, train], 1.0, average), y[train]))
        pred["best_single"][held] = stacked[single, held].argmax(1)
    equal = combine(list(stacked), None, average).argmax(1)
    return {"rows": int(n), "greedy": macro_f1(y, pred["greedy"]), "best_single": macro_f1(y, pred["best_single"]),
            "equal": macro_f1(y, equal)}


def fit_greedy_weights(oof_members: Sequence[np.ndarray], y: np.ndarray, average: str = "prob",
                       groups: np.ndarray | None = None, seed: int = 0) -> dict:
    """Greedy ensemble selection on out-of-fold predictions, with a held-out check.

    The weights are :func:`greedy_counts` on every OOF row, normalised. The held-out check
    selects on half of the rows and scores the other half (both ways round, stratified; copies
    of one image, ``groups``, on one side): the selected weights are kept when that held-out
    macro F1 is >= equal weights' on the same rows, else equal weights are used (``accepted``
    False). Returns ``weights``, ``counts``, ``f1_equal``, ``f1_best_single``, ``f1_fitted``
    (in-sample OOF macro F1 of the returned weights), ``held_out`` and ``accepted``."""
    stacked = _stack(oof_members, average)
    y = np.asarray(y, dtype=np.int64)
    m = stacked.shape[0]
    counts = greedy_counts(stacked, y, average)
    f1_equal = macro_f1_of_probs(combine(list(stacked), None, average), y)
    f1_single = max(macro_f1_of_probs(stacked[j], y) for j in range(m))
    held_out = _cross_selection(stacked, y, average, groups, seed) if m > 1 else None
    accepted = m > 1 and held_out["greedy"] >= held_out["equal"]
    weights = counts / counts.sum() if accepted else normalize_weights(None, m)
    return {"weights": [float(w) for w in weights], "counts": [int(c) for c in counts],
            "selected_weights": [float(w) for w in counts / counts.sum()],
            "f1_equal": f1_equal, "f1_best_single": f1_single,
            "f1_fitted": macro_f1_of_probs(combine(list(stacked), weights, average), y),
            "held_out": held_out, "accepted": bool(accepted)}


# ---------------------------------------------------------------------------------------------
# Stacking: a logistic regression on the members' concatenated OOF probabilities
# ---------------------------------------------------------------------------------------------

STACKER_FILE = "stacker.npz"
STACK_CS = tuple(float(c) for c in np.logspace(-3, 3, 13))


@dataclass
class Stacker:
    """A fitted multinomial logistic regression over ``M`` members' (N, K) probabilities (features:
    the members' probabilities side by side). Plain arrays, saved as ``.npz`` (no pickle)."""

    coef: np.ndarray        # (K', M * K), K' = classes seen in the OOF rows (one row when K' = 2)
    intercept: np.ndarray   # (K',)
    classes: np.ndarray     # (K',) class indices the rows of coef stand for
    num_classes: int
    n_members: int
    C: float

    def predict_proba(self, members: Sequence[np.ndarray]) -> np.ndarray:
        """(N, K) probabilities of the stacked model (columns of classes never seen: 0)."""
        features = _stack_features(members, self.n_members, self.num_classes)
        z = features @ self.coef.T + self.intercept
        if len(self.classes) == 2:  # sklearn's binary model: one row, p(second class) = sigmoid(z)
            z = np.hstack([np.zeros_like(z), z])
        seen = softmax(z, axis=1)
        probs = np.zeros((len(features), self.num_classes))
        probs[:, self.classes] = seen
        return probs

    def save(self, path: Path) -> None:
        from docclassify.utils.io import atomic_write

        with atomic_write(path, "wb") as fh:
            np.savez(fh, coef=self.coef, intercept=self.intercept, classes=self.classes,
                     num_classes=self.num_classes, n_members=self.n_members, C=self.C)

    @classmethod
    def load(cls, path: Path) -> Stacker:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["coef"], z["intercept"], z["classes"], int(z["num_classes"]), int(z["n_members"]),
                       float(z["C"]))


def _stack_features(members: Sequence[np.ndarray], n_members: int, num_classes: int) -> np.ndarray:
    members = [np.asarray(m, dtype=np.float64) for m in members]
    if len(members) != n_members or any(m.ndim != 2 or m.shape[1] != num_classes for m in members):
        raise ValueError(f"the stacker takes {n_members} members of (N, {num_classes}) probabilities, got "
                         f"{[m.shape for m in members]}")
    return np.hstack(members)


def _logistic_cv(splits: list, seed: int):
    from sklearn.linear_model import LogisticRegressionCV

    extra = {}
    if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:  # sklearn >= 1.8
        extra = {"l1_ratios": (0.0,), "use_legacy_attributes": False}
    return LogisticRegressionCV(Cs=list(STACK_CS), cv=splits, scoring="neg_log_loss", max_iter=2000,
                                random_state=seed, **extra)


def fit_stacker(oof_probs: Sequence[np.ndarray], y: np.ndarray, groups: np.ndarray | None = None,
                folds: int = 5, seed: int = 0) -> tuple[Stacker, dict]:
    """A logistic regression on the members' concatenated OOF probabilities, its C chosen by
    ``folds``-fold cross-validation (LogisticRegressionCV, log loss; stratified, copies of one
    image together), refitted on every row.

    Also cross-fits it (each part predicted by a model with that C fitted on the others), which
    gives the honest OOF probabilities ``report["oof_probs"]`` and the macro F1 compared with
    equal weights'; ``report["accepted"]`` is False when stacking scores below equal weights."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from docclassify.predict.decision import split_rows

    stacked = _stack(oof_probs, "prob")
    m, n, k = stacked.shape
    y = np.asarray(y, dtype=np.int64)
    features = np.hstack(list(stacked))
    splits = split_rows(y, folds, groups, seed)
    # One BLAS thread: small matrices, and a second thread spinning on a busy machine made these
    # fits 100x slower (measured: 217 s vs 0.8 s for 3 members x 1,000 rows on 2 loaded cores).
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", category=ConvergenceWarning)  # lbfgs notes on the largest C values
        model = _logistic_cv(splits, seed).fit(features, y)
        c_best = float(np.ravel(model.C_)[0])
        stacker = Stacker(np.asarray(model.coef_, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64),
                          np.asarray(model.classes_, dtype=np.int64), k, m, c_best)
        crossed = np.zeros((n, k))
        for train, held in splits:
            part = LogisticRegression(C=c_best, max_iter=2000).fit(features[train], y[train])
            crossed[np.ix_(held, part.classes_)] = part.predict_proba(features[held])
    f1_equal = macro_f1_of_probs(combine(list(stacked), None, "prob"), y)
    f1_stack = macro_f1_of_probs(crossed, y)
    report = {"C": c_best, "Cs": list(STACK_CS), "folds": len(splits), "f1_equal": f1_equal,
              "f1_cross_fitted": f1_stack, "f1_in_sample": macro_f1_of_probs(stacker.predict_proba(list(stacked)), y),
              "accepted": bool(f1_stack >= f1_equal), "oof_probs": crossed}
    return stacker, report


def members_of(logits: list[np.ndarray], average: str) -> list[np.ndarray]:
    """What ``combine`` takes: probabilities (average=prob) or log-probabilities (logit)."""
    return [metrics.softmax(z) if average == "prob" else log_softmax(z, axis=1) for z in logits]


def ensemble_test_probs(test_logits: list[np.ndarray], weights: Sequence[float], average: str,
                        stacker: Stacker | None = None, temperature: float | None = None) -> np.ndarray:
    """Step 6 of predict/pipeline.py (and the deployment's RunRunner): the members' test log-probabilities
    combined with the fitted weights (or the stacker), then the temperature applied (None: calibrate=false)."""
    if stacker is not None:
        probs = stacker.predict_proba([metrics.softmax(z) for z in test_logits])
    else:
        probs = combine(members_of(test_logits, average), weights, average)
    if temperature is not None:
        probs = apply_temperature(safe_log(probs), temperature)
    return probs
