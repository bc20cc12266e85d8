"""The class groups a run confuses most, from its pooled out-of-fold confusion matrix.

The confusion rate of two classes is the number of rows of either predicted as the other, over the
rows of both. Pairs at ``min_rate`` or above are taken from the most confused down: a pair of two
classes in no group starts a group (while there are fewer than ``max_groups``), a pair with one
class in a group that has room (under ``max_size`` classes) adds the other class to it (a clique
of near-twins, e.g. the synthetic data's 3/4/7/12/14), a pair across two groups is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix


@dataclass(frozen=True)
class Group:
    classes: tuple[int, ...]   # sorted class indices
    confused: int              # OOF rows of the group's classes predicted as another class of the group
    rows: int                  # OOF rows of the group's classes

    @property
    def name(self) -> str:
        return "g" + "-".join(str(c) for c in self.classes)

    @property
    def rate(self) -> float:
        return self.confused / max(self.rows, 1)

    def as_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "confused": self.confused, "rows": self.rows,
                "rate": self.rate}


def pair_rates(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) symmetric confusion rates: (C[i, j] + C[j, i]) / (n_i + n_j), 0 on the diagonal."""
    c = confusion_matrix(y, pred, labels=list(range(num_classes))).astype(np.float64)
    n = c.sum(axis=1)
    both = n[:, None] + n[None, :]
    rates = np.divide(c + c.T, both, out=np.zeros_like(c), where=both > 0)
    np.fill_diagonal(rates, 0.0)
    return rates


def find_groups(y: np.ndarray, pred: np.ndarray, num_classes: int, max_groups: int = 3, max_size: int = 3,
                min_rate: float = 0.05) -> list[Group]:
    """The most confused class groups (see the module doc), most confused first."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    rates = pair_rates(y, pred, num_classes)
    i, j = np.triu_indices(num_classes, k=1)
    order = np.argsort(-rates[i, j], kind="stable")
    groups: list[set[int]] = []
    for a, b in zip(i[order], j[order]):
        if rates[a, b] < min_rate or rates[a, b] <= 0:
            break
        ga = next((g for g in groups if a in g), None)
        gb = next((g for g in groups if b in g), None)
        if ga is None and gb is None:
            if len(groups) < max_groups:
                groups.append({int(a), int(b)})
        elif ga is None or gb is None:
            g = ga if ga is not None else gb
            if len(g) < max_size:
                g.add(int(b) if ga is not None else int(a))
    c = confusion_matrix(y, pred, labels=list(range(num_classes)))
    out = []
    for g in groups:
        cls = sorted(g)
        inside = c[np.ix_(cls, cls)]
        out.append(Group(tuple(cls), int(inside.sum() - np.trace(inside)), int(c[cls].sum())))
    return sorted(out, key=lambda g: (-g.rate, g.classes))
