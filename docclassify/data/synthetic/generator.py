"""Writing a data set: label layout, per-sample random generators, images and CSVs."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from docclassify.data.synthetic.distortions import _DISTORTION_FIELDS, _TRAIN_JPEG_QUALITY, distort
from docclassify.data.synthetic.spec import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    SyntheticSpec,
    spec_hash,
    train_counts,
)
from docclassify.data.synthetic.templates import render_clean

#: File written last into a generated folder; a folder without it is incomplete.
COMPLETE_MARKER = ".complete"

_SPLIT_CODE = {"train": 1, "test": 2}
_LAYOUT_STREAM = 0


def _layout(spec: SyntheticSpec):
    """(train labels, test labels, submission order) with IDs numbered from 1."""
    rng = np.random.default_rng([spec.seed, _LAYOUT_STREAM])
    train = np.repeat(np.arange(len(CLASS_NAMES)), train_counts(spec))
    train = train[rng.permutation(len(train))]
    test = np.repeat(np.arange(len(CLASS_NAMES)), spec.n_test_per_class)
    test = test[rng.permutation(len(test))]
    order = rng.permutation(len(test))
    if len(order) > 1 and np.all(np.diff(order) > 0):  # never hand out the sorted order
        order = order[::-1].copy()
    return train.tolist(), test.tolist(), order.tolist()


def _sample_rng(spec: SyntheticSpec, split: str, index: int, stream: int):
    return np.random.default_rng([spec.seed, _SPLIT_CODE[split], index, stream])


def make_image(spec: SyntheticSpec, split: str, index: int, target: int):
    """The image for (spec, split, index) and, for test, its distortion record."""
    img = render_clean(target, _sample_rng(spec, split, index, 0), spec.long_side)
    if split == "train":
        return img, None
    return distort(img, _sample_rng(spec, split, index, 1), spec.long_side)


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def generate(out_dir: str | Path, spec: SyntheticSpec, progress: bool = True) -> Path:
    """Write the whole data set into ``out_dir`` (created if needed); returns its path."""
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(parents=True, exist_ok=True)
    marker = out / COMPLETE_MARKER
    if marker.exists():
        marker.unlink()
    train, test, order = _layout(spec)
    train_ids = [f"train_{i + 1:05d}.jpg" for i in range(len(train))]
    test_ids = [f"test_{i + 1:05d}.jpg" for i in range(len(test))]
    jobs = [("train", i, t) for i, t in enumerate(train)] + [("test", i, t)
                                                             for i, t in enumerate(test)]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="synthetic images", unit="img", leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    distortions = []
    for split, i, t in jobs:
        img, rec = make_image(spec, split, i + 1, t)
        if split == "train":
            img.save(out / "train" / train_ids[i], quality=_TRAIN_JPEG_QUALITY)
        else:
            img.save(out / "test" / test_ids[i], quality=rec["jpeg_quality"])
            distortions.append([test_ids[i]] + [rec[k] for k in _DISTORTION_FIELDS[1:]])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    _write_csv(out / "train.csv", ["ID", "target"], zip(train_ids, train, strict=True))
    _write_csv(out / "meta.csv", ["target", "class_name"], enumerate(CLASS_NAMES))
    _write_csv(out / "sample_submission.csv", ["ID", "target"],
               [(test_ids[j], 0) for j in order])
    _write_csv(out / "test_labels.csv", ["ID", "target"], zip(test_ids, test, strict=True))
    _write_csv(out / "test_distortions.csv", list(_DISTORTION_FIELDS), distortions)
    info = {
        "spec": asdict(spec),
        "generator_version": GENERATOR_VERSION,
        "hash": spec_hash(spec),
        "class_names": list(CLASS_NAMES),
        "train_counts": train_counts(spec),
        "n_train": len(train),
        "n_test": len(test),
    }
    (out / "synthetic_spec.json").write_text(json.dumps(info, indent=2) + "\n",
                                             encoding="utf-8")
    marker.write_text(spec_hash(spec) + "\n", encoding="utf-8")
    return out
