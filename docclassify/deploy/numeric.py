"""The prediction arithmetic of a bundle in numpy: what ``predict/tta.py``, ``predict/upright.py``,
``predict/ensemble.py``, ``predict/calibration.py`` and ``predict/decision.py`` compute with torch and
scipy, for an install without either (``docclassify[serve]``).

The dihedral elements themselves are ``data/dihedral.py``'s (the one home of the group); this
module applies them to NCHW batches. tests/deploy/test_numeric.py holds each function against the
torch / scipy code infer runs (same inputs, same outputs within float32 rounding), and
tests/deploy/test_export.py holds a whole bundle against ``python -m docclassify.infer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from docclassify.data.dihedral import DIHEDRAL, Element, compose, head_element, inverse

# forward(x NCHW float32) -> (class logits (N, K) float32, orientation logits or None)
Forward = Callable[[np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]
TINY32 = np.finfo(np.float32).tiny
TINY64 = np.finfo(np.float64).tiny


def normalise(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW ``(x / 255 - mean) / std`` (predict/tta.py normalised_batches' arithmetic,
    in the same float32 operations)."""
    x = np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2)).astype(np.float32)
    x /= np.float32(255.0)
    x -= np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return x


def apply_nchw(x: np.ndarray, g: Element) -> np.ndarray:
    """``g`` on a (..., C, H, W) array: the pixels of data/dihedral.py apply_torch."""
    out = x[..., ::-1] if g.mirror else x
    return np.ascontiguousarray(np.rot90(out, k=g.k, axes=(-2, -1)) if g.k else out)


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.asarray(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(z, axis))


def logsumexp(z: np.ndarray, axis: int = 0) -> np.ndarray:
    top = z.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(z - top).sum(axis=axis))


def combine_views(stacked: np.ndarray, average: str) -> tuple[np.ndarray, np.ndarray]:
    """(probs, logits) of per-view logits (V, N, K), as predict/tta.py combine_views."""
    stacked = stacked.astype(np.float32)
    if average == "prob":
        logits = logsumexp(log_softmax(stacked), axis=0) - np.float32(np.log(stacked.shape[0]))
        return softmax(stacked).mean(axis=0), logits
    logits = stacked.mean(axis=0)
    return softmax(logits), logits


def weighted_views(stacked: np.ndarray, weights: np.ndarray, average: str) -> tuple[np.ndarray, np.ndarray]:
    """(probs, logits) of (V, N, K) logits averaged with per-image view weights (V, N) (predict/upright.py _mean)."""
    w = weights[..., None].astype(np.float32)
    if average == "prob":
        probs = (softmax(stacked) * w).sum(0)
        return probs, np.log(np.maximum(probs, TINY32))
    logits = (stacked * w).sum(0)
    return softmax(logits), logits


def predict_views(forward: Forward, x: np.ndarray, views: Sequence[Element], average: str):
    """A batch under every view (one forward per view): (probs, logits), as predict_tta."""
    return combine_views(np.stack([forward(apply_nchw(x, g))[0] for g in views]), average)


def orient(forward: Forward, x: np.ndarray, head: str, upright_flip: bool, average: str):
    """``tta=orient`` on a batch: (probs, logits, estimated element per image), as orient_batch."""
    if head != "none":
        estimates = [head_element(int(i), head) for i in forward(x)[1].argmax(1)]
        upright = np.stack([apply_nchw(x[i], inverse(g)) for i, g in enumerate(estimates)])
        views = [upright] + ([apply_nchw(upright, Element(0, True))] if upright_flip else [])
        stacked = np.stack([forward(v)[0] for v in views])
    else:
        per_view = np.stack([forward(apply_nchw(x, g))[0] for g in DIHEDRAL])
        best = softmax(per_view).max(-1).argmax(0)
        estimates = [inverse(DIHEDRAL[int(v)]) for v in best]
        rows = np.arange(x.shape[0])
        stacked = per_view[best, rows][None]
        if upright_flip:
            mirrored = np.array([compose(Element(0, True), DIHEDRAL[int(v)]).index for v in best])
            stacked = np.concatenate([stacked, per_view[mirrored, rows][None]])
    weights = np.full(stacked.shape[:2], 1.0 / stacked.shape[0], dtype=np.float32)
    probs, logits = weighted_views(stacked, weights, average)
    return probs, logits, estimates


def orient_soft(forward: Forward, x: np.ndarray, head: str, average: str):
    """``tta=orient_soft``: the 8 views weighted by their probability of being upright (orient_soft_batch)."""
    logits, scores = [], []
    for g in DIHEDRAL:
        z, h = forward(apply_nchw(x, g))
        logits.append(z)
        if h is not None:
            scores.append(softmax(h)[:, 0])
        else:
            top = softmax(z).max(-1)
            scores.append(top / np.maximum(1.0 - top, np.float32(1e-6)))
    stacked, score = np.stack(logits), np.stack(scores)
    weights = score / np.maximum(score.sum(0, keepdims=True), np.float32(1e-12))
    probs, out = weighted_views(stacked, weights, average)
    return probs, out, [inverse(DIHEDRAL[int(v)]) for v in weights.argmax(0)]


# ------------------------------------------------------------------ folds, runs, temperature, decision
def safe_log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), TINY64, None))


def combine(members: Sequence[np.ndarray], weights: Sequence[float] | None, average: str) -> np.ndarray:
    """Weighted mean of probabilities (prob) or softmax of the weighted mean of log-probabilities
    (logit), as predict/ensemble.py combine; (N, K) float64 probabilities."""
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in members])
    w = np.full(len(members), 1.0 / len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mixed = np.tensordot(w, stacked, axes=(0, 0))
    if average == "prob":
        return mixed / mixed.sum(axis=1, keepdims=True)
    return softmax(mixed, axis=1)


def members_of(log_probs: Sequence[np.ndarray], average: str) -> list[np.ndarray]:
    return [softmax(z, 1) if average == "prob" else log_softmax(z, 1) for z in log_probs]


def apply_temperature(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.asarray(log_probs, dtype=np.float64) / float(temperature), axis=1)


def apply_biases(log_probs: np.ndarray, biases: Sequence[float] | None) -> np.ndarray:
    scores = np.asarray(log_probs, dtype=np.float64)
    return (scores if biases is None else scores + np.asarray(biases, dtype=np.float64)).argmax(axis=1)
