"""Augmentation (albumentations): the basic and advanced transform sets and the schedule that
mixes them.

Images arrive already resized/padded to the working size (uint8 HxWx3). Each sample is
augmented with a generator seeded from (seed, epoch, index), so runs are reproducible
whatever the number of DataLoader workers, and a resumed run draws what an uninterrupted
one would have. The current epoch lives in shared memory: persistent workers see
``set_epoch`` without the DataLoader being rebuilt.
"""

from __future__ import annotations

import multiprocessing as mp
import random

import albumentations as A
import cv2
import numpy as np


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


def build_advanced(cfg, size: int, pad_value: int = 0) -> A.Compose:
    """Aggressive transforms shaped like the competition's test set: exact 90-degree turns,
    flips, perspective, paper warp, blur, noise, JPEG artefacts, lighting, shadows, dropout."""
    return A.Compose([
        A.RandomRotate90(p=0.5),
        *_flips(cfg),
        A.OneOf([
            A.Perspective(scale=(0.03, 0.08), fill=pad_value, p=1.0),
            A.Affine(rotate=(-max(cfg.rotate_limit, 15), max(cfg.rotate_limit, 15)),
                     scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit),
                     border_mode=cv2.BORDER_CONSTANT, fill=pad_value, p=1.0),
            A.ElasticTransform(alpha=20, sigma=6, border_mode=cv2.BORDER_CONSTANT, fill=pad_value, p=1.0),
            A.GridDistortion(num_steps=5, distort_limit=0.2, border_mode=cv2.BORDER_CONSTANT, fill=pad_value, p=1.0),
        ], p=0.7),
        A.RandomResizedCrop(size=(size, size), scale=(cfg.crop_scale, 1.0), ratio=(0.75, 1.33), p=cfg.crop_p),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 7), p=1.0),
            A.MotionBlur(blur_limit=(3, 7), p=1.0),
            A.Downscale(scale_range=(0.4, 0.8), p=1.0),
        ], p=0.4),
        A.GaussNoise(std_range=(0.02, 0.12), p=0.4),
        A.ImageCompression(quality_range=(30, 90), p=0.4),
        A.OneOf([
            A.RandomBrightnessContrast(brightness_limit=max(cfg.color_jitter, 0.3),
                                       contrast_limit=max(cfg.color_jitter, 0.3), p=1.0),
            A.RandomGamma(gamma_limit=(60, 160), p=1.0),
            A.RandomShadow(p=1.0),
        ], p=0.6),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15),
                        hole_width_range=(0.05, 0.15), fill=pad_value, p=0.3),
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


def advanced_probability(epoch: int, epochs: int, p_start: float, p_end: float) -> float:
    """Linear ramp from p_start (first epoch) to p_end (last epoch)."""
    if epochs <= 1:
        return float(p_end)
    t = min(max(epoch, 0), epochs - 1) / (epochs - 1)
    return float(p_start + (p_end - p_start) * t)


class TrainTransform:
    """Picks the advanced transforms with the scheduled probability, else the basic ones."""

    def __init__(self, cfg, size: int, epochs: int, seed: int, pad_value: int = 0):
        self.basic = build_basic(cfg, size, pad_value)
        self.advanced = build_advanced(cfg, size, pad_value)
        self.p_start, self.p_end = float(cfg.advanced_p_start), float(cfg.advanced_p_end)
        self.epochs, self.seed = int(epochs), int(seed)
        self._epoch = mp.Value("i", 0, lock=False)  # shared with DataLoader workers

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def p_advanced(self, epoch: int | None = None) -> float:
        return advanced_probability(self.epoch if epoch is None else epoch, self.epochs, self.p_start, self.p_end)

    def __call__(self, image: np.ndarray, index: int) -> tuple[np.ndarray, bool]:
        epoch = self.epoch
        rng = np.random.default_rng((self.seed, epoch, int(index)))
        use_advanced = bool(rng.random() < self.p_advanced(epoch))
        transforms = self.advanced if use_advanced else self.basic
        seed_transforms(transforms, int(rng.integers(2**31 - 1)))
        return transforms(image=np.ascontiguousarray(image))["image"], use_advanced
