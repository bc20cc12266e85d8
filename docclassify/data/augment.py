"""Augmentation (albumentations): the basic and advanced transform sets and the schedule that
mixes them.

Keys of the ``augment`` group: the unprefixed strengths (``rotate_limit``, ``shift_limit``,
``scale_limit``, ``crop_*``, ``color_jitter``) are read by the basic set only, the
``advanced_*`` strengths by the advanced set only, and ``hflip`` / ``vflip`` (whether the data's
orientation allows mirror images) by both. ``advanced_p_start`` / ``advanced_p_end`` decide
which set a sample takes; ``mixup_*`` / ``cutmix_alpha`` are read by engine/mixup.py;
``match_validation`` / ``match_p_*`` by docclassify/distortion/match.py (a step before the set, given
to TrainTransform).

``orientation`` / ``orientation_p`` act after either set, in every option: with that probability
an exact element of the group (``rot90``: quarter turns, ``dihedral``: turns and mirror images;
data/dihedral.py) other than the identity. The small-angle rotations stay the sets' own keys
(``rotate_limit``, ``advanced_rotate_limit``). Each sample also reports the dihedral element its
pixels went through in all (the match step's turn or mirror image, the sets' own flips and quarter
turns and the orientation step, composed): the orientation head's label. A free rotation counts as
its nearest quarter turn beyond 45 degrees (distortion/draw.py ``quarter_turns``) in the match
step; the sets' small rotations (``rotate_limit``, ``advanced_rotate_limit``) count as none.

Images arrive already resized/padded to the working size (uint8 HxWx3). Each sample is
augmented with a generator seeded from (seed, epoch, index), so runs are reproducible
whatever the number of DataLoader workers, and a resumed run draws what an uninterrupted
one would have. The current epoch lives in shared memory: persistent workers see
``set_epoch`` without the DataLoader being rebuilt.
"""

from __future__ import annotations

import multiprocessing as mp
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import albumentations as A
import cv2
import numpy as np

from docclassify.data import dihedral
from docclassify.data.dihedral import Element, OrientationAugment
from docclassify.utils.schedule import linear_ramp

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from docclassify.config_schema import AugmentConfig


def _flips(cfg) -> list:
    out = []
    if cfg.hflip:
        out.append(A.HorizontalFlip(p=0.5))
    if cfg.vflip:
        out.append(A.VerticalFlip(p=0.5))
    return out


def build_basic(cfg, size: int, pad_value: int = 0) -> A.Compose:
    """Light transforms: small affine jitter, occasional crop, light colour, flips if asked."""
    return A.Compose([
        A.Affine(scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
                 translate_percent=(-cfg.shift_limit, cfg.shift_limit),
                 rotate=(-cfg.rotate_limit, cfg.rotate_limit),
                 border_mode=cv2.BORDER_CONSTANT, fill=pad_value, p=0.7),
        A.RandomResizedCrop(size=(size, size), scale=(cfg.crop_scale, 1.0), ratio=(0.8, 1.25), p=cfg.crop_p),
        A.RandomBrightnessContrast(brightness_limit=cfg.color_jitter, contrast_limit=cfg.color_jitter,
                                   p=0.5 if cfg.color_jitter > 0 else 0.0),
        *_flips(cfg),
    ])


def _pair(values) -> tuple:
    """A [low, high] config list as the tuple albumentations expects."""
    low, high = values
    return low, high


def build_advanced(cfg, size: int, pad_value: int = 0) -> A.Compose:
    """Aggressive transforms shaped like the competition's test set: exact 90-degree turns,
    flips, perspective, paper warp, blur, noise, JPEG artefacts, lighting, shadows, dropout.

    Every strength and probability is an ``augment.advanced_*`` key (the flips are shared with
    the basic set). Each transform keeps its place even at p=0: ``seed_transforms`` seeds by
    position, so switching one off leaves the other transforms' draws unchanged."""
    fill = dict(border_mode=cv2.BORDER_CONSTANT, fill=pad_value)
    rotate, scale, shift = cfg.advanced_rotate_limit, cfg.advanced_scale_limit, cfg.advanced_shift_limit
    return A.Compose([
        A.RandomRotate90(p=cfg.advanced_rot90_p),
        *_flips(cfg),
        A.OneOf([
            A.Perspective(scale=_pair(cfg.advanced_perspective_scale), fill=pad_value, p=1.0),
            # translate_percent=None and (0, 0) draw differently: None keeps the shipped outputs.
            A.Affine(rotate=(-rotate, rotate), scale=(1 - scale, 1 + scale),
                     translate_percent=(-shift, shift) if shift > 0 else None, **fill, p=1.0),
            A.ElasticTransform(alpha=cfg.advanced_elastic_alpha, sigma=cfg.advanced_elastic_sigma, **fill, p=1.0),
            A.GridDistortion(num_steps=cfg.advanced_grid_steps, distort_limit=cfg.advanced_grid_distort, **fill,
                             p=1.0),
        ], p=cfg.advanced_warp_p),
        A.RandomResizedCrop(size=(size, size), scale=(cfg.advanced_crop_scale, 1.0), ratio=(0.75, 1.33),
                            p=cfg.advanced_crop_p),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, cfg.advanced_blur_limit), p=1.0),
            A.MotionBlur(blur_limit=(3, cfg.advanced_blur_limit), p=1.0),
            A.Downscale(scale_range=_pair(cfg.advanced_downscale), p=1.0),
        ], p=cfg.advanced_blur_p),
        A.GaussNoise(std_range=_pair(cfg.advanced_noise_std), p=cfg.advanced_noise_p),
        A.ImageCompression(quality_range=_pair(cfg.advanced_jpeg_quality), p=cfg.advanced_jpeg_p),
        A.OneOf([
            A.RandomBrightnessContrast(brightness_limit=cfg.advanced_color_jitter,
                                       contrast_limit=cfg.advanced_color_jitter, p=1.0),
            A.RandomGamma(gamma_limit=_pair(cfg.advanced_gamma), p=1.0),
            A.RandomShadow(shadow_intensity_range=_pair(cfg.advanced_shadow_intensity), p=1.0),
        ], p=cfg.advanced_light_p),
        A.CoarseDropout(num_holes_range=_pair(cfg.advanced_dropout_holes),
                        hole_height_range=_pair(cfg.advanced_dropout_size),
                        hole_width_range=_pair(cfg.advanced_dropout_size), fill=pad_value, p=cfg.advanced_dropout_p),
    ])


def seed_transforms(transforms, seed: int) -> None:
    """Seed a Compose so that each transform draws from its own stream.

    albumentations' Compose.set_random_seed hands the same seed to every transform, so their
    first draws coincide: all p=0.5 transforms fire together or not at all (rot90 only with
    both flips, noise only with JPEG, ...). Here the compose and each transform, recursively,
    get their own seed, derived from (seed, position)."""
    # What BaseCompose.set_random_seed sets on the compose itself, without its propagation.
    transforms.seed = seed
    transforms.random_generator = np.random.default_rng(seed)
    transforms.py_random = random.Random(seed)
    for j, transform in enumerate(transforms.transforms):
        child = hash((seed, j)) & 0x7FFFFFFF  # ints hash deterministically (no PYTHONHASHSEED)
        if isinstance(transform, A.BaseCompose):
            seed_transforms(transform, child)
        else:
            transform.set_random_seed(child)


@dataclass(frozen=True)
class Augmented:
    """One augmented sample: its pixels, whether it took the advanced set, and the dihedral element
    its pixels went through (the sets' flips/turns and the orientation step composed)."""

    image: np.ndarray
    advanced: bool
    element: Element


class TrainTransform:
    """Picks the advanced transforms with the scheduled probability, else the basic ones, then the
    orientation step (augment.orientation); ``match`` (augment.match_validation,
    docclassify/distortion/match.py) distorts the sample like a robust copy first."""

    def __init__(self, cfg: AugmentConfig, size: int, epochs: int, seed: int, pad_value: int = 0, match=None):
        self.match = match
        self.basic = build_basic(cfg, size, pad_value)
        self.advanced = build_advanced(cfg, size, pad_value)
        for transforms in (self.basic, self.advanced):  # which flips/turns fired: the head's labels
            transforms.save_applied_params = True
        self.orientation = OrientationAugment(str(cfg.orientation), float(cfg.orientation_p))
        self.p_start, self.p_end = float(cfg.advanced_p_start), float(cfg.advanced_p_end)
        self.epochs, self.seed = int(epochs), int(seed)
        self._epoch = mp.Value("i", 0, lock=False)  # shared with DataLoader workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def p_advanced(self, epoch: int | None = None) -> float:
        return linear_ramp(self.epoch if epoch is None else epoch, self.epochs, self.p_start, self.p_end)

    def __call__(self, image: np.ndarray, index: int) -> tuple[np.ndarray, bool]:
        """(augmented pixels, whether the advanced set was taken)."""
        out = self.augment(image, index)
        return out.image, out.advanced

    def augment(self, image: np.ndarray, index: int) -> Augmented:
        """Sample ``index`` at the current epoch: a pure function of (seed, epoch, index)."""
        epoch = self.epoch
        rng = np.random.default_rng((self.seed, epoch, int(index)))
        use_advanced = bool(rng.random() < self.p_advanced(epoch))
        transforms = self.advanced if use_advanced else self.basic
        seed_transforms(transforms, int(rng.integers(2**31 - 1)))
        matched = dihedral.IDENTITY
        if self.match is not None:  # its own generator: the set's draws stay as they were
            drawn = self.match.draw(image, index, epoch)
            image, matched = drawn.image, drawn.element
        result = transforms(image=np.ascontiguousarray(image))
        # Drawn after the sets' draws: orientation=none leaves every earlier draw (and pixel) unchanged.
        turn = self.orientation.draw(rng)
        pixels = dihedral.apply_numpy(result["image"], turn) if turn != dihedral.IDENTITY else result["image"]
        # The head's label: every turn and mirror image the pixels went through, in the order applied
        # (the match draw's, then the set's flips and quarter turns, then the orientation step's).
        done = dihedral.compose(turn, dihedral.compose(
            dihedral.from_albumentations(result["applied_transforms"]), matched))
        return Augmented(pixels, use_advanced, done)
