"""The torch Dataset: rows of a (cached or lazily decoded) image array + labels."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

# The element index of a row whose orientation is unknown (a pseudo-labelled test image: already
# turned by an unknown element before the augmentation's own turn); the orientation head's loss
# leaves such rows out (engine/epoch.py).
UNKNOWN_ELEMENT = -1


class ImageDataset(Dataset):
    """Returns (uint8 CHW tensor, target) — normalisation happens on the device, in the
    engine, so host->device copies stay 4x smaller than float32.

    ``orientation_labels``: (tensor, target, element index), the dihedral element the augmentation
    turned the image by (data/dihedral.py; 0, the identity, without a transform).

    ``weights`` (one per row of ``images``; pseudo-labels, data/pseudo.py): (tensor, target, element
    index, weight), the element always present then. ``target_rows`` ((rows, K) probabilities, soft
    pseudo-labels): the target is that float row instead of the class index.

    ``unknown_orientation`` (one bool per row of ``images``): rows whose starting orientation is not
    known (pseudo-labelled test pages, turned and mirrored before anyone saw them) report
    :data:`UNKNOWN_ELEMENT` instead of the augmentation's element, which would name only what the
    augmentation did on top."""

    def __init__(self, images, indices: np.ndarray, targets: np.ndarray | None, transform=None,
                 orientation_labels: bool = False, target_rows: np.ndarray | None = None,
                 weights: np.ndarray | None = None, unknown_orientation: np.ndarray | None = None):
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.targets = None if targets is None else np.asarray(targets, dtype=np.int64)
        self.transform = transform
        self.orientation_labels = bool(orientation_labels)
        self.target_rows = None if target_rows is None else np.asarray(target_rows, dtype=np.float32)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self.unknown_orientation = None if unknown_orientation is None else np.asarray(unknown_orientation, bool)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        img = np.asarray(self.images[row])
        element = 0
        if self.transform is not None:
            out = self.transform.augment(img, row)
            img, element = out.image, out.element.index
        if self.unknown_orientation is not None and self.unknown_orientation[row]:
            element = UNKNOWN_ELEMENT
        tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        target = -1 if self.targets is None else int(self.targets[row])
        if self.target_rows is not None:
            target = torch.from_numpy(self.target_rows[row])
        if self.weights is not None:
            return tensor, target, element, float(self.weights[row])
        return (tensor, target, element) if self.orientation_labels else (tensor, target)
