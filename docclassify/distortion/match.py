"""``augment.match_validation``: training samples distorted like the robust validation copies.

The robust copies (copies.py) show what a distorted test set will look like; this step trains for
it. A training sample, with the scheduled probability (``match_p_start`` at the first epoch,
linearly to ``match_p_end`` at the last), goes through :func:`docclassify.distortion.distort`
with the run's resolved profile (``validation.distort``, or the fitted one with ``distort=auto``;
the default profile under ``validation=clean``): the same functions and the same profile family
as the copies, only drawn fresh for every (seed, epoch, row) instead of once per (validation seed,
image ID, copy), so training never sees a validation copy's draw.

Where it sits in TrainTransform (data/augment.py): first, before the option's basic/advanced set.
The profile's geometry needs the page itself: the step takes the row's page out of the working
image (the pad bars of ``data.resize=pad`` cut away, or the stretch undone, from the image's own
size), distorts it and puts it back at the working size with the run's resize policy, the same
route a copy takes (distort, then resize). The set's light jitter then varies the photo's framing
and exposure as it does for clean pages. After the set, its affine jitter and crops would have
moved the page inside the padded square, so the page could no longer be cut out exactly.

A draw reports the exact turn or mirror image it put the page through (:class:`MatchDraw`
``element``, draw.py's ``element_of``): the orientation head's label composes it with what the
set and the orientation step did after it.

Images are already at the working size here, so each step costs little (OpenCV/numpy at 64-384
px); ``scale`` (working size / the image's own size, as the copies' working image has it) makes
the noise and JPEG steps act as they would at the image's own size, where the copies get theirs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from docclassify.data.dihedral import IDENTITY, Element
from docclassify.data.images import resize_image
from docclassify.distortion.copies import working_side
from docclassify.distortion.draw import Params, distort, element_of
from docclassify.utils.schedule import linear_ramp

# Part of every training draw's seed: no other generator of a run uses a 4-entry seed ending in it.
MATCH_STREAM = 0x6D61746368  # "match"

OwnSize = tuple[int, int] | None  # (height, width) of a row's image file as decoded; None: unknown


@dataclass(frozen=True)
class MatchDraw:
    """One training sample after the match step: its pixels, the drawn values (None: the step did
    not fire) and the dihedral element they turned or mirrored the page by."""

    image: np.ndarray
    params: Params | None
    element: Element = IDENTITY


class MatchValidation:
    """The match step of one fold: :meth:`draw` distorts a working-size training image."""

    def __init__(self, profile: Mapping[str, Any], size: int, epochs: int, seed: int, p_start: float,
                 p_end: float, resize: str = "pad", pad_value: int = 0, own_sizes: Sequence[OwnSize] | None = None):
        self.profile = dict(profile)
        self.size, self.epochs, self.seed = int(size), int(epochs), int(seed) & 0xFFFFFFFFFFFFFFFF
        self.p_start, self.p_end = float(p_start), float(p_end)
        self.resize, self.pad_value = resize, int(pad_value)
        self.own_sizes = own_sizes

    def probability(self, epoch: int) -> float:
        return linear_ramp(epoch, self.epochs, self.p_start, self.p_end)

    def rng(self, row: int, epoch: int) -> np.random.Generator:
        """The generator of row ``row``'s draw at ``epoch``: a pure function of (seed, epoch, row)."""
        return np.random.default_rng([self.seed, int(epoch), int(row), MATCH_STREAM])

    def page(self, image: np.ndarray, row: int) -> tuple[np.ndarray, float]:
        """(the row's page at the working size without padding or stretch, its scale: working size /
        the size its copies are distorted at)."""
        own = self.own_sizes[row] if self.own_sizes is not None else None
        if own is None:
            return image, 1.0
        h, w = own
        side = image.shape[0]
        s = side / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))  # as images.resize_image rounds
        if self.resize == "pad":
            top, left = (side - nh) // 2, (side - nw) // 2
            page = image[top:top + nh, left:left + nw]
        else:  # stretch: back to the page's own aspect
            page = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(page), min(1.0, max(nh, nw) / min(max(h, w), working_side(side)))

    def draw(self, image: np.ndarray, row: int, epoch: int) -> MatchDraw:
        """The sample after the step (unchanged, with no params, when the step did not fire)."""
        rng = self.rng(row, epoch)
        if not rng.random() < self.probability(epoch):
            return MatchDraw(image, None)
        page, scale = self.page(image, row)
        out, params = distort(page, self.profile, rng, scale)
        return MatchDraw(resize_image(out, self.size, self.resize, self.pad_value), params, element_of(params))


def build_match(augment_cfg, profile: Mapping[str, Any], size: int, epochs: int, seed: int, resize: str = "pad",
                pad_value: int = 0, own_sizes: Sequence[OwnSize] | None = None) -> MatchValidation | None:
    """The fold's match step, or None when ``augment.match_validation`` is off."""
    if not augment_cfg.match_validation:
        return None
    return MatchValidation(profile, size, epochs, seed, augment_cfg.match_p_start, augment_cfg.match_p_end, resize,
                           pad_value, own_sizes)
