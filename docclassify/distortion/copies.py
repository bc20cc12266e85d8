"""Drawing robust validation copies: what a set of copies is, and each copy's generator.

A copy is a pure function of (``validation.seed``, image ID, copy index) (and of the image and the
profile): its generator is seeded from a stable hash of the ID, so the same pixels come out in
every epoch, fold, run, sweep trial, process and thread count. An image is distorted at its own
decoded resolution, the long side bounded by :func:`working_side` (data/validation.py decodes,
resizes and caches the copies of a data set).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from docclassify.data.dihedral import Element
from docclassify.distortion.draw import Params, distort, element_of, sample_params
from docclassify.distortion.profile import ADDED_LATER_OFF, normalise_profile

# Images are distorted at their own resolution, long side at most max(MIN_WORKING_SIDE, 2 x img_size):
# huge scans are shrunk first (cost), test-photo-sized images are not (fidelity).
MIN_WORKING_SIDE = 1024


@dataclass(frozen=True)
class RobustSpec:
    """What the copies are: the resolved distortion profile, the number of copies and their seed."""

    profile: Mapping[str, Any]
    copies: int
    seed: int

    def as_dict(self) -> dict:
        return {"copies": int(self.copies), "seed": int(self.seed), "profile": dict(self.profile)}

    @classmethod
    def from_dict(cls, d: Mapping) -> RobustSpec:
        """A stored spec (results.json): keys its profile lacks were steps that did not exist yet, off."""
        return cls(normalise_profile({**ADDED_LATER_OFF, **d["profile"]}), int(d["copies"]), int(d["seed"]))


def id_hash(image_id: str) -> int:
    """A stable 64-bit hash of an image ID (Python's ``hash`` of a str changes per process)."""
    return int.from_bytes(hashlib.blake2b(str(image_id).encode("utf-8"), digest_size=8).digest(), "little")


def copy_rng(seed: int, image_id: str, copy: int) -> np.random.Generator:
    """The generator of one copy: a pure function of (seed, image ID, copy index)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, id_hash(image_id), int(copy)])


def copy_rows(rows: Sequence[int], copies: int) -> np.ndarray:
    """Indices into the copies array of ``rows`` (each row's copies together, in ``rows`` order)."""
    rows = np.asarray(rows, dtype=np.int64)
    return (rows[:, None] * int(copies) + np.arange(int(copies))[None, :]).reshape(-1)


def working_side(img_size: int) -> int:
    """The longest side a copy is distorted at (images larger than this are shrunk to it first)."""
    return max(MIN_WORKING_SIDE, 2 * int(img_size))


def draw_copy(image: np.ndarray, spec: RobustSpec, image_id: str, copy: int) -> tuple[np.ndarray, Params]:
    """Copy ``copy`` of ``image`` (at its working resolution): (distorted pixels, the drawn values)."""
    return distort(image, spec.profile, copy_rng(spec.seed, image_id, copy))


def copy_element(spec: RobustSpec, image_id: str, copy: int) -> Element:
    """The exact turn / mirror image copy ``copy`` of ``image_id`` went through (no pixels needed:
    the draws do not depend on the image)."""
    return element_of(sample_params(spec.profile, copy_rng(spec.seed, image_id, copy)))
