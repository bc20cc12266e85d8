"""Test-time orientation: turn each test image back to upright, then classify it.

``tta=orient``
    Estimate the dihedral element each image was turned by (data/dihedral.py), undo it, and
    classify the upright view. The estimate comes from the checkpoint's orientation head when it
    has one (``model.orientation_head``; one forward of the image as it is), otherwise from the
    classifier: the most confident of the 8 dihedral views is taken as the upright one. The upright
    view may be averaged with its left-right mirror (``tta.upright_flip``; null: when training
    showed the model mirror images).
``tta=orient_soft``
    The 8 dihedral views, each weighted by the probability that it is the upright one: the head's
    probability of the identity on that view (rot4 heads: of no quarter turn); without a head,
    by the classifier's confidence on the view, as odds (:func:`confidence_odds`).

Either way the estimate of each image (the element it is turned back from) is kept, for
summary.json's share of images turned back per element and the accuracy by orientation when
the true orientation is unknown.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from docclassify.data import dihedral
from docclassify.data.dihedral import DIHEDRAL, Element, head_element, inverse
from docclassify.models.heads import orientation_head_of
from docclassify.predict.tta import ORIENT_MODES, View, normalised_batches

__all__ = ["ORIENT_MODES", "OrientPredictor", "accuracy_by_orientation", "consensus", "orientation_summary",
           "turned_back_shares"]


def orientation_views() -> list[View]:
    """The candidate views of the orientation modes (the 8 dihedral elements)."""
    return [View.of(g) for g in DIHEDRAL]


def upright_flip_for(setting: bool | None, meta: dict) -> bool:
    """``tta.upright_flip``: an explicit true/false, or (null) whether training showed mirror images
    (checkpoint meta ``trained_orientations.mirrors``; False for checkpoints that do not say)."""
    if setting is not None:
        return bool(setting)
    return bool((meta.get("trained_orientations") or {}).get("mirrors", False))


def _mean(stacked: torch.Tensor, weights: torch.Tensor, average: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, logits) of per-view logits ``stacked`` (V, N, K) averaged with per-image view weights
    ``weights`` (V, N) summing to 1: probabilities (prob) or logits (logit)."""
    w = weights.unsqueeze(-1)
    if average == "prob":
        probs = (torch.softmax(stacked, dim=-1) * w).sum(0)
        return probs, torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
    logits = (stacked * w).sum(0)
    return torch.softmax(logits, dim=-1), logits


def _forward(model, x: torch.Tensor, head: str):
    """(class logits, orientation logits or None) in float32."""
    if head == "none":
        return model(x).float(), None
    logits, head_logits = model(x, orientation=True)
    return logits.float(), head_logits.float()


def upright_probability(head_logits: torch.Tensor, head: str) -> torch.Tensor:
    """P(the view is upright) from the head: the identity (dihedral8) or no quarter turn (rot4)."""
    return torch.softmax(head_logits, dim=-1)[:, 0]


def confidence_odds(logits: torch.Tensor) -> torch.Tensor:
    """Without a head: the classifier's top probability p on a view as odds p / (1 - p). Plain p would
    let seven half-sure wrong views outvote one sure upright view; odds grow without bound as the
    classifier becomes sure."""
    top = torch.softmax(logits, dim=-1).amax(-1)
    return top / (1.0 - top).clamp_min(1e-6)


@torch.inference_mode()
def estimate_with_head(model, x: torch.Tensor, head: str) -> list[Element]:
    """The element each image was turned by, as the head names it (one forward of the images)."""
    _, head_logits = _forward(model, x, head)
    return [head_element(int(i), head) for i in head_logits.argmax(1).tolist()]


@torch.inference_mode()
def orient_batch(model, x: torch.Tensor, head: str, upright_flip: bool,
                 average: str) -> tuple[torch.Tensor, torch.Tensor, list[Element]]:
    """``tta=orient`` on a batch: (probs, logits, estimated element per image)."""
    if head != "none":
        estimates = estimate_with_head(model, x, head)
        upright = torch.stack([dihedral.apply_torch(x[i], inverse(g)) for i, g in enumerate(estimates)])
        views = [upright] + ([dihedral.apply_torch(upright, Element(0, True))] if upright_flip else [])
        stacked = torch.stack([_forward(model, v, "none")[0] for v in views])
    else:
        per_view = torch.stack([_forward(model, dihedral.apply_torch(x, g), "none")[0] for g in DIHEDRAL])
        best = torch.softmax(per_view, dim=-1).amax(-1).argmax(0)  # (N,) the most confident view
        estimates = [inverse(DIHEDRAL[int(v)]) for v in best.tolist()]
        rows = torch.arange(x.shape[0])
        stacked = per_view[best, rows][None]
        if upright_flip:  # the chosen view's mirror: the view of element mirror * chosen
            mirrored = torch.tensor([dihedral.compose(Element(0, True), DIHEDRAL[int(v)]).index for v in best])
            stacked = torch.cat([stacked, per_view[mirrored, rows][None]])
    weights = torch.full(stacked.shape[:2], 1.0 / stacked.shape[0])
    probs, logits = _mean(stacked, weights, average)
    return probs, logits, estimates


@torch.inference_mode()
def orient_soft_batch(model, x: torch.Tensor, head: str, average: str) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``tta=orient_soft`` on a batch: the 8 views weighted by their probability of being upright."""
    logits, scores = [], []
    for g in DIHEDRAL:
        view_logits, head_logits = _forward(model, dihedral.apply_torch(x, g), head)
        logits.append(view_logits)
        scores.append(upright_probability(head_logits, head) if head_logits is not None
                      else confidence_odds(view_logits))
    stacked, score = torch.stack(logits), torch.stack(scores)  # (V, N, K), (V, N)
    weights = score / score.sum(0, keepdim=True).clamp_min(1e-12)
    probs, out_logits = _mean(stacked, weights, average)
    estimates = [inverse(DIHEDRAL[int(v)]) for v in weights.argmax(0).tolist()]
    return probs, out_logits, estimates


@dataclass
class OrientPredictor:
    """How every fold model predicts under ``tta=orient`` / ``orient_soft`` (the same interface as
    predict.views.TtaPredictor). ``last_estimates``: the element index each image of the last
    :meth:`predict` call was turned back from."""

    mode: str
    average: str
    batch_size: int
    device: torch.device
    upright_flip: bool | None = None
    views: list[View] = field(default_factory=orientation_views)
    last_estimates: np.ndarray | None = None
    estimator: str | None = None  # head or classifier, of the last call

    def predict(self, model: torch.nn.Module, images: np.ndarray, rows: np.ndarray,
                meta: dict) -> tuple[np.ndarray, np.ndarray]:
        head = orientation_head_of(model)
        flip = upright_flip_for(self.upright_flip, meta)
        was_training = model.training
        model.eval()
        probs, logits, estimates = [], [], []
        try:
            for x in normalised_batches(images, rows, meta, self.batch_size, self.device):
                if self.mode == "orient":
                    p, z, e = orient_batch(model, x, head, flip, self.average)
                else:
                    p, z, e = orient_soft_batch(model, x, head, self.average)
                probs.append(p.cpu().numpy())
                logits.append(z.cpu().numpy())
                estimates += [g.index for g in e]
        finally:
            model.train(was_training)
        self.last_estimates = np.asarray(estimates, dtype=np.int64)
        self.estimator = "head" if head != "none" else "classifier"
        return np.concatenate(probs), np.concatenate(logits)


# ------------------------------------------------------------------------------------------ summary
def turned_back_shares(estimates: np.ndarray) -> dict[str, float]:
    """Share of images turned back from each element (names as the TTA views: identity, rot90 ...)."""
    counts = Counter(int(i) for i in np.asarray(estimates).ravel())
    n = max(1, sum(counts.values()))
    return {g.name: counts.get(g.index, 0) / n for g in DIHEDRAL}


def consensus(per_fold: list[np.ndarray]) -> np.ndarray:
    """Each image's estimate agreed by most fold models (ties: the smallest element index)."""
    stacked = np.stack([np.asarray(e, dtype=np.int64) for e in per_fold])  # (F, N)
    counts = np.stack([(stacked == i).sum(0) for i in range(len(DIHEDRAL))])  # (8, N)
    return counts.argmax(0)


def accuracy_by_orientation(correct: np.ndarray, elements: np.ndarray) -> dict:
    """{category: {accuracy, n}} of test predictions by the test images' orientation."""
    counts = dihedral.category_counts(correct, elements)
    return {c: {"accuracy": ok / n if n else math.nan, "n": n} for c, (ok, n) in counts.items()}


DISTORTIONS_FILE = "test_distortions.csv"  # ID, rot90_k, flip: the synthetic data's record of each test image


def known_orientations(source) -> np.ndarray | None:
    """Element index of every test image (test order) from ``test_distortions.csv`` in the data root
    (the synthetic data writes one; any data set may), None when there is none or it misses an ID."""
    import pandas as pd

    path = Path(source.root) / DISTORTIONS_FILE
    if source.test is None or not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"ID": str, "flip": str})
    if not {"ID", "rot90_k", "flip"} <= set(table.columns):
        return None
    table = table.set_index("ID")
    ids = source.test["ID"].astype(str)
    if not ids.isin(table.index).all():
        return None
    rows = table.loc[ids.tolist()]
    return np.asarray([dihedral.from_record(int(k), f).index for k, f in zip(rows["rot90_k"], rows["flip"])],
                      dtype=np.int64)


def orientation_summary(source, per_member: list[list[np.ndarray]], pred: np.ndarray, y_test: np.ndarray | None,
                        estimator: str | None) -> dict | None:
    """summary.json's ``orientation``: the share of test images turned back per element (tta=orient*,
    over every fold model's estimates), how often the estimate matched the known orientation, and the
    accuracy by orientation (upright / turned / mirrored) when test labels exist: by the known
    orientation (test_distortions.csv) or else by the folds' consensus estimate."""
    estimates = [e for member in per_member for e in member]
    truth = known_orientations(source)
    out: dict = {}
    agreed = None
    if estimates:
        agreed = consensus(estimates)
        out.update(estimator=estimator, turned_back=turned_back_shares(np.stack(estimates)))
        if truth is not None:
            out["estimate_matches_known"] = float(np.mean(agreed == truth))
            out["turns_match_known"] = float(np.mean(agreed % 4 == truth % 4))
    elements = truth if truth is not None else agreed
    if y_test is not None and elements is not None:
        out["by"] = DISTORTIONS_FILE if truth is not None else "estimate"
        out["accuracy"] = accuracy_by_orientation(np.asarray(pred) == np.asarray(y_test), elements)
    return out or None
