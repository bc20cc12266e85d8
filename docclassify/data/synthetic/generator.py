"""Writing a data set: label layout, per-sample random generators, images and CSVs."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from docclassify.data.synthetic.spec import (
    CLASS_NAMES,
    GENERATOR_VERSION,
    SyntheticSpec,
    spec_hash,
    train_counts,
)
from docclassify.data.synthetic.templates import render_clean
from docclassify.distortion.synthetic import (
    TEST_RECORD_FIELDS,
    TRAIN_JPEG_QUALITY,
    draw_phone_image,
    draw_test_image,
)

#: File written last into a generated folder; a folder without it is incomplete.
COMPLETE_MARKER = ".complete"

_SPLIT_CODE = {"train": 1, "test": 2, "test_phone": 3}
_LAYOUT_STREAM, _PHONE_LAYOUT_STREAM = 0, 1
#: The second test split (phone photos, distortion/profiles/phone_photo.yaml): its folder and files.
PHONE_SPLIT = "test_phone"
PHONE_LABELS, PHONE_SUBMISSION, PHONE_RECORD = (f"{PHONE_SPLIT}_labels.csv", f"{PHONE_SPLIT}_sample_submission.csv",
                                                f"{PHONE_SPLIT}_distortions.csv")


def _shuffled(rng: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels in a random order, a submission order that is never the sorted one)."""
    labels = labels[rng.permutation(len(labels))]
    order = rng.permutation(len(labels))
    if len(order) > 1 and np.all(np.diff(order) > 0):  # never hand out the sorted order
        order = order[::-1].copy()
    return labels, order


def _layout(spec: SyntheticSpec):
    """(train labels, test labels, submission order) with IDs numbered from 1."""
    rng = np.random.default_rng([spec.seed, _LAYOUT_STREAM])
    train = np.repeat(np.arange(len(CLASS_NAMES)), train_counts(spec))
    train = train[rng.permutation(len(train))]
    test, order = _shuffled(rng, np.repeat(np.arange(len(CLASS_NAMES)), spec.n_test_per_class))
    return train.tolist(), test.tolist(), order.tolist()


def _phone_layout(spec: SyntheticSpec):
    """(test_phone labels, its submission order): as many pages per class as test/, other pages."""
    rng = np.random.default_rng([spec.seed, _PHONE_LAYOUT_STREAM])
    labels, order = _shuffled(rng, np.repeat(np.arange(len(CLASS_NAMES)), spec.n_test_per_class))
    return labels.tolist(), order.tolist()


def _sample_rng(spec: SyntheticSpec, split: str, index: int, stream: int):
    return np.random.default_rng([spec.seed, _SPLIT_CODE[split], index, stream])


def make_image(spec: SyntheticSpec, split: str, index: int, target: int):
    """The image for (spec, split, index) and, for a test split, its distortion record (``jpeg_quality``:
    the quality the file is saved at)."""
    img = render_clean(target, _sample_rng(spec, split, index, 0), spec.long_side)
    if split == "train":
        return img, None
    if split == PHONE_SPLIT:
        img, params = draw_phone_image(img, _sample_rng(spec, split, index, 1))
        return img, {"jpeg_quality": params["jpeg"], "params": params}
    return draw_test_image(img, _sample_rng(spec, split, index, 1), spec.long_side)


def _write_csv(path: Path, header, rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _write_images(out: Path, spec: SyntheticSpec, jobs: list, progress: bool) -> dict[str, list]:
    """Every (split, ID, target) image of ``jobs`` into ``out/<split>/``; the test splits' records."""
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="synthetic images", unit="img", leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    records: dict[str, list] = {"test": [], PHONE_SPLIT: []}
    for split, i, image_id, t in jobs:
        img, rec = make_image(spec, split, i + 1, t)
        img.save(out / split / image_id, quality=TRAIN_JPEG_QUALITY if rec is None else rec["jpeg_quality"])
        if split == "test":
            records[split].append([image_id] + [rec[k] for k in TEST_RECORD_FIELDS[1:]])
        elif split == PHONE_SPLIT:
            records[split].append([image_id, json.dumps(rec["params"], sort_keys=True)])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return records


def _write_split_csvs(out: Path, ids: list[str], labels: list[int], order: list[int], submission: str,
                      labels_file: str) -> None:
    _write_csv(out / submission, ["ID", "target"], [(ids[j], 0) for j in order])
    _write_csv(out / labels_file, ["ID", "target"], zip(ids, labels, strict=True))


def generate(out_dir: str | Path, spec: SyntheticSpec, progress: bool = True) -> Path:
    """Write the whole data set into ``out_dir`` (created if needed); returns its path."""
    out = Path(out_dir)
    for split in ("train", "test", PHONE_SPLIT):
        (out / split).mkdir(parents=True, exist_ok=True)
    marker = out / COMPLETE_MARKER
    if marker.exists():
        marker.unlink()
    train, test, order = _layout(spec)
    phone, phone_order = _phone_layout(spec)
    ids = {"train": [f"train_{i + 1:05d}.jpg" for i in range(len(train))],
           "test": [f"test_{i + 1:05d}.jpg" for i in range(len(test))],
           PHONE_SPLIT: [f"{PHONE_SPLIT}_{i + 1:05d}.jpg" for i in range(len(phone))]}
    jobs = [(split, i, ids[split][i], t) for split, labels in (("train", train), ("test", test), (PHONE_SPLIT, phone))
            for i, t in enumerate(labels)]
    records = _write_images(out, spec, jobs, progress)
    _write_csv(out / "train.csv", ["ID", "target"], zip(ids["train"], train, strict=True))
    _write_csv(out / "meta.csv", ["target", "class_name"], enumerate(CLASS_NAMES))
    _write_split_csvs(out, ids["test"], test, order, "sample_submission.csv", "test_labels.csv")
    _write_csv(out / "test_distortions.csv", list(TEST_RECORD_FIELDS), records["test"])
    _write_split_csvs(out, ids[PHONE_SPLIT], phone, phone_order, PHONE_SUBMISSION, PHONE_LABELS)
    _write_csv(out / PHONE_RECORD, ["ID", "params"], records[PHONE_SPLIT])
    info = {
        "spec": asdict(spec),
        "generator_version": GENERATOR_VERSION,
        "hash": spec_hash(spec),
        "class_names": list(CLASS_NAMES),
        "train_counts": train_counts(spec),
        "n_train": len(train),
        "n_test": len(test),
        "n_test_phone": len(phone),
    }
    (out / "synthetic_spec.json").write_text(json.dumps(info, indent=2) + "\n",
                                             encoding="utf-8")
    marker.write_text(spec_hash(spec) + "\n", encoding="utf-8")
    return out
