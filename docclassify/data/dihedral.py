"""Orientation as a symmetry: the 8 exact turns and mirror images of a page (the dihedral group),
in one place, for training augmentation, the orientation head's labels, validation copies and
test-time orientation alike.

An :class:`Element` is ``mirror`` (a left-right mirror, ``np.fliplr``) applied first, then ``k``
exact counter-clockwise quarter turns (``np.rot90``): every turn/mirror of a page is exactly one
of the 8 elements, and :func:`compose` / :func:`inverse` stay inside the group. The TTA views of
``predict/tta.py`` and the distortions of validation copies apply these same elements.

Index of an element (the dihedral8 head's label): ``k + 4 * mirror``, so ``DIHEDRAL[:4]`` are the
four turns (the rot4 head's labels are ``k``).

Groups (``augment.orientation``): ``none`` (the identity only: data whose orientation carries
meaning, a turned 6 is a 9), ``rot90`` (the 4 turns), ``dihedral`` (turns x mirror).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from docclassify.utils.choices import ORIENTATION_HEADS

if TYPE_CHECKING:  # torch is imported where tensors are turned: the torch-free Predictor imports this module
    import torch

# model.orientation_head -> number of labels (rot4: the quarter turns k; dihedral8: the element)
HEADS = dict(zip(ORIENTATION_HEADS, (0, 4, 8)))
# What accuracy by orientation groups elements into (reports, infer summary).
CATEGORIES = ("upright", "turned", "mirrored")


@dataclass(frozen=True)
class Element:
    """``mirror`` left-right first, then ``k`` counter-clockwise quarter turns."""

    k: int = 0
    mirror: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)):
            raise TypeError(f"Element: k must be an int, got {self.k!r}")
        object.__setattr__(self, "k", int(self.k) % 4)
        object.__setattr__(self, "mirror", bool(self.mirror))

    @property
    def index(self) -> int:
        return self.k + 4 * int(self.mirror)

    @property
    def name(self) -> str:
        """``identity``, ``rot90`` ... ``hflip``, ``hflip_rot90`` ... (the TTA views' names)."""
        if not self.mirror:
            return "identity" if self.k == 0 else f"rot{90 * self.k}"
        return "hflip" if self.k == 0 else f"hflip_rot{90 * self.k}"

    @property
    def category(self) -> str:
        """upright (identity), turned (a quarter turn, not mirrored) or mirrored (any mirror image)."""
        return "mirrored" if self.mirror else ("upright" if self.k == 0 else "turned")


IDENTITY = Element()
DIHEDRAL: tuple[Element, ...] = tuple(Element(k, m) for m in (False, True) for k in range(4))
GROUPS: dict[str, tuple[Element, ...]] = {"none": (IDENTITY,), "rot90": DIHEDRAL[:4], "dihedral": DIHEDRAL}


def element(index: int) -> Element:
    """The element with :attr:`Element.index` ``index`` (0-7)."""
    return DIHEDRAL[int(index)]


def compose(a: Element, b: Element) -> Element:
    """``a`` after ``b`` (apply ``b`` first, then ``a``).

    With R a turn and F the mirror, ``F R^k = R^-k F``, so R^ka F^ma R^kb F^mb = R^(ka +- kb) F^(ma xor mb)."""
    return Element(a.k + (-b.k if a.mirror else b.k), a.mirror != b.mirror)


def inverse(g: Element) -> Element:
    """The element that undoes ``g``: ``compose(inverse(g), g) == IDENTITY``. Turns go back the
    other way; mirror images (reflections) are their own inverse."""
    return g if g.mirror else Element(-g.k)


def apply_numpy(image: np.ndarray, g: Element) -> np.ndarray:
    """``g`` applied to an ``(H, W, ...)`` array (exact: a permutation of the pixels)."""
    out = np.fliplr(image) if g.mirror else image
    return np.ascontiguousarray(np.rot90(out, k=g.k, axes=(0, 1)))


def apply_torch(x: torch.Tensor, g: Element) -> torch.Tensor:
    """``g`` applied to a ``(..., C, H, W)`` tensor (the same pixels as :func:`apply_numpy`)."""
    import torch

    out = torch.flip(x, dims=[-1]) if g.mirror else x
    return torch.rot90(out, k=g.k, dims=(-2, -1)) if g.k else out


def apply_per_sample(x: torch.Tensor, indices: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Each image of a square ``(N, C, H, W)`` batch turned by its own element (``indices``: element
    indices, one per image)."""
    import torch

    indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    out = x.clone()
    for i in torch.unique(indices).tolist():
        mask = (indices == i).to(x.device)
        out[mask] = apply_torch(x[mask], element(i))
    return out


def from_record(rot90_k: int, flip: str) -> Element:
    """The element of a synthetic test image (``test_distortions.csv``): ``rot90_k`` counter-clockwise
    turns, then ``flip`` ``none`` / ``h`` (left-right) / ``v`` (top-bottom).

    ``F_h R^k = R^-k F_h`` and ``F_v = R^2 F_h``."""
    turn = Element(int(rot90_k))
    flip = "none" if flip is None or (isinstance(flip, float) and np.isnan(flip)) else str(flip)
    if flip == "none":
        return turn
    if flip not in ("h", "v"):
        raise ValueError(f"flip={flip!r}: expected none, h or v")
    mirror = Element(0, True) if flip == "h" else Element(2, True)
    return compose(mirror, turn)


def from_albumentations(applied: list) -> Element:
    """The dihedral element an albumentations pipeline applied (``Compose(save_applied_params=True)``'s
    ``applied_transforms``: HorizontalFlip, VerticalFlip, RandomRotate90 and its ``factor``, in order).
    Other transforms (small rotations, warps) are not group elements and are ignored."""
    g = IDENTITY
    for name, params in applied:
        if name == "HorizontalFlip":
            g = compose(Element(0, True), g)
        elif name == "VerticalFlip":
            g = compose(Element(2, True), g)
        elif name == "RandomRotate90":
            g = compose(Element(int(params["factor"])), g)
    return g


# ------------------------------------------------------------------------------------------ heads
def head_size(head: str) -> int:
    """Number of labels of ``model.orientation_head`` (0 for none)."""
    if head not in HEADS:
        raise ValueError(f"model.orientation_head={head!r}: expected one of {', '.join(HEADS)}")
    return HEADS[head]


def head_label(g: Element, head: str) -> int:
    """The label a head learns for an image turned by ``g``: rot4 -> the quarter turns ``k`` (a mirror
    image counts by its turns: undoing them leaves a left-right mirror), dihedral8 -> the element."""
    return g.k if head == "rot4" else g.index


def head_element(label: int, head: str) -> Element:
    """The element a head's label stands for (rot4: the turn, not mirrored)."""
    return Element(int(label)) if head == "rot4" else element(label)


def head_group(head: str) -> tuple[Element, ...]:
    return GROUPS["rot90"] if head == "rot4" else DIHEDRAL


# ------------------------------------------------------------------------------------------ augmentation
class OrientationAugment:
    """``augment.orientation`` / ``augment.orientation_p``: with probability ``p`` an element drawn
    uniformly from the group's non-identity elements, else the identity. So ``p`` is the share of
    training images turned or mirrored (``p = 1 - 1/n`` draws every element alike)."""

    def __init__(self, group: str, p: float):
        if group not in GROUPS:
            raise ValueError(f"augment.orientation={group!r}: expected one of {', '.join(GROUPS)}")
        self.group, self.p = group, float(p)
        self.others = GROUPS[group][1:]

    @property
    def active(self) -> bool:
        return bool(self.others) and self.p > 0

    def draw(self, rng: np.random.Generator) -> Element:
        """One element; takes exactly two draws from ``rng`` whatever the outcome (so a change of
        ``p`` does not shift later draws)."""
        u, pick = rng.random(), rng.random()
        if not self.active or u >= self.p:
            return IDENTITY
        return self.others[min(int(pick * len(self.others)), len(self.others) - 1)]


def validation_elements(n: int, group: tuple[Element, ...]) -> np.ndarray:
    """Element indices of the turned validation copies: row ``i`` takes ``group[i % len(group)]``
    (every element equally often, the same rows in every epoch)."""
    return np.asarray([group[i % len(group)].index for i in range(int(n))], dtype=np.int64)


def category_counts(correct: np.ndarray, indices: np.ndarray) -> dict[str, list[int]]:
    """``{category: [correct, total]}`` of predictions on images turned by element ``indices``
    (counts, so folds pool exactly)."""
    cats = np.asarray([element(i).category for i in np.asarray(indices, dtype=np.int64)])
    correct = np.asarray(correct, dtype=bool)
    return {c: [int(correct[cats == c].sum()), int((cats == c).sum())] for c in CATEGORIES if (cats == c).any()}


def accuracy_of_counts(counts: dict[str, list[int]]) -> dict[str, float]:
    return {c: (ok / n if n else float("nan")) for c, (ok, n) in counts.items()}


def pool_counts(parts: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for part in parts:
        for c, (ok, n) in (part or {}).items():
            acc = out.setdefault(c, [0, 0])
            acc[0] += int(ok)
            acc[1] += int(n)
    return {c: out[c] for c in CATEGORIES if c in out}
