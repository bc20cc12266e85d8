"""Plant known near-duplicates into a competition-layout data set, to check the audit finds them.

Each copy is one of ``KINDS`` of an existing training image, written as a new JPEG into
``train/`` (a row appended to train.csv: same label, or another one with ``conflict=True``)
or ``test/`` (appended to sample_submission.csv, and to test_labels.csv when there is one).
Used by the tests and by ``benchmarks/duplicates.py``; it modifies the folder in place, so
run it on a copy of your data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(img: Image.Image, rng: np.random.Generator, most: float) -> Image.Image:
    w, h = img.size
    left, top, right, bottom = rng.uniform(0.005, most, 4)
    return img.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))


# name -> how a copy is made (PIL image, rng) -> PIL image
KINDS = {
    "resized": lambda img, rng: img.resize((round(img.width * 0.6), round(img.height * 0.6)), Image.BILINEAR),
    "reencoded": lambda img, rng: _jpeg(img, 40),
    "cropped": lambda img, rng: _crop(img, rng, 0.03),  # 0.5-3% off each side
    "turned": lambda img, rng: img.transpose(Image.Transpose.ROTATE_90 if rng.random() < 0.5 else
                                             Image.Transpose.TRANSVERSE),
    "combined": lambda img, rng: _jpeg(_crop(img, rng, 0.02).resize((round(img.width * 0.7),
                                                                     round(img.height * 0.7))), 50),
}


def _append_csv(path: Path, rows: pd.DataFrame) -> None:
    table = pd.read_csv(path, dtype=str)
    pd.concat([table, rows.astype(str)], ignore_index=True).to_csv(path, index=False)


def plant_copies(root: str | Path, n_per_kind: int, kinds=tuple(KINDS), split: str = "train",
                 conflict: bool = False, seed: int = 0) -> pd.DataFrame:
    """Add ``n_per_kind`` copies of each kind of distinct random training images to ``split``.
    Returns (ID, source, kind, split): the pairs the audit should find."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    train = pd.read_csv(root / "train.csv", dtype=str)
    num_classes = len(pd.read_csv(root / "meta.csv"))
    picks = rng.choice(len(train), size=n_per_kind * len(kinds), replace=False)
    rows = []
    for n, i in enumerate(picks):
        kind, source = kinds[n // n_per_kind], train.iloc[i]
        copy_id = f"copy_{split}_{kind}_{n:03d}.jpg"
        with Image.open(root / "train" / source["ID"]) as img:
            KINDS[kind](img.convert("RGB"), rng).save(root / split / copy_id, "JPEG", quality=92)
        target = int(source["target"])
        target = (target + int(rng.integers(1, num_classes))) % num_classes if conflict else target
        rows.append({"ID": copy_id, "source": source["ID"], "kind": kind, "split": split, "target": target})
    planted = pd.DataFrame(rows)
    if split == "train":
        _append_csv(root / "train.csv", planted[["ID", "target"]])
    else:
        _append_csv(root / "sample_submission.csv", planted[["ID"]].assign(target=0))
        if (root / "test_labels.csv").is_file():
            _append_csv(root / "test_labels.csv", planted[["ID", "target"]])
    return planted
