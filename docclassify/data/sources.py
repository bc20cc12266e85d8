"""Data sources: turn a data config into a table of labelled training rows (and test rows).

Every source yields the same shape (``DataSource``), so folds, caching and training do not
care where the images came from. All validation happens here, before any training, and
each error names the file, column or key at fault.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from docclassify.errors import UserError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MAX_LISTED = 20


class DataError(UserError):
    """Bad input data: the message names the file/column/key and what to do."""


@dataclass
class DataSource:
    name: str
    root: Path
    classes: list[str]            # index = target
    train: pd.DataFrame           # columns: ID, path, target
    test: pd.DataFrame | None     # columns: ID, path (sample_submission order when known)
    sample_submission: pd.DataFrame | None
    test_labels: pd.DataFrame | None  # columns: ID, target

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _listing(items, limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:limit])
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{shown}{more} ({len(items)} in all)"


def read_csv_checked(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    """Read a CSV tolerant of a BOM, surrounding spaces and extra columns; insist on ``required``."""
    if not path.is_file():
        raise DataError(f"{what}: file not found: {path}")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype=str, skipinitialspace=True)
    except Exception as exc:  # pandas raises many kinds
        raise DataError(f"{what}: cannot parse CSV {path}: {exc}") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{what} {path}: missing column(s) {missing}; found columns {list(df.columns)}"
        )
    df = df[list(required)].copy()
    for col in required:
        df[col] = df[col].astype(str).str.strip()
    empty = df.index[(df[list(required)] == "").any(axis=1) | df[list(required)].isna().any(axis=1)]
    if len(empty):
        raise DataError(f"{what} {path}: empty values in rows {_listing((empty + 2).tolist())} "
                        "(row numbers count the header as line 1)")
    dups = df["ID"][df["ID"].duplicated(keep=False)].unique() if "ID" in required else []
    if len(dups):
        raise DataError(f"{what} {path}: duplicate IDs: {_listing(dups)}")
    return df.reset_index(drop=True)


def _parse_targets(values: pd.Series, path: Path, valid: set[int]) -> pd.Series:
    bad_type = [v for v in values.unique() if not v.lstrip("-").isdigit()]
    if bad_type:
        raise DataError(f"{path}: column 'target' must hold integer class indices; got {_listing(bad_type)}")
    targets = values.astype(int)
    outside = sorted(int(t) for t in set(targets.unique()) - valid)
    if outside:
        raise DataError(
            f"{path}: column 'target' has labels not in meta.csv: {outside} "
            f"(meta.csv defines {min(valid)}..{max(valid)})"
        )
    return targets


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _index_folder(folder: Path) -> dict[str, list[Path]]:
    """Map lower-cased file names and (for image files) lower-cased stems to the files, for ID lookup."""
    index: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file():
            keys = {p.name.lower()} | ({p.stem.lower()} if _is_image(p) else set())
            for key in keys:
                index.setdefault(key, []).append(p)
    return index


def _candidates(image_id: str, index: dict[str, list[Path]]) -> list[Path]:
    """Files an ID can mean, by the first rule that matches: exact file name, file name in any
    case, then the ID without its image extension as the stem of an image file (exact case, any
    case). More than one file means the ID is ambiguous (e.g. ``a`` with a.jpg and a.png)."""
    stem = Path(image_id).stem if Path(image_id).suffix.lower() in IMAGE_EXTENSIONS else image_id
    rules = (
        (image_id.lower(), lambda p: p.name == image_id),
        (image_id.lower(), lambda p: p.name.lower() == image_id.lower()),
        (stem.lower(), lambda p: _is_image(p) and p.stem == stem),
        (stem.lower(), lambda p: _is_image(p) and p.stem.lower() == stem.lower()),
    )
    for key, match in rules:
        found = [p for p in index.get(key, []) if match(p)]
        if found:
            return found
    return []


def resolve_image_paths(ids: pd.Series, folder: Path, what: str) -> list[Path]:
    """Find each ID's file in ``folder``: exact name, then case-insensitive, then ID without
    extension + any image extension. Lists every missing, ambiguous or shared file in one error."""
    if not folder.is_dir():
        raise DataError(f"{what}: image folder not found: {folder}")
    index = _index_folder(folder)
    paths, missing, ambiguous = [], [], []
    for image_id in ids:
        found = _candidates(image_id, index)
        if not found:
            missing.append(image_id)
        elif len(found) > 1:
            ambiguous.append(f"{image_id} ({' / '.join(p.name for p in found)})")
        paths.append(found[0] if len(found) == 1 else None)
    if missing:
        raise DataError(f"{what}: {len(missing)} image(s) listed but not found in {folder}: {_listing(missing)}")
    if ambiguous:
        raise DataError(f"{what}: {len(ambiguous)} ID(s) match several files in {folder}: {_listing(ambiguous)}; "
                        "write the IDs with their extension")
    by_path: dict[Path, list[str]] = {}
    for image_id, p in zip(ids, paths):
        by_path.setdefault(p, []).append(image_id)
    shared = [f"{' and '.join(i)} -> {p.name}" for p, i in by_path.items() if len(i) > 1]
    if shared:
        raise DataError(f"{what}: {len(shared)} file(s) listed under several IDs (duplicate rows): {_listing(shared)}")
    return paths


def read_meta(path: Path) -> list[str]:
    meta = read_csv_checked(path, ("target", "class_name"), "meta.csv")
    ids = _parse_targets(meta["target"], path, set(range(10**6)))
    if sorted(ids) != list(range(len(ids))):
        raise DataError(f"{path}: 'target' must be 0..{len(ids) - 1} without gaps; got {sorted(ids)}")
    names = dict(zip(ids, meta["class_name"]))
    classes = [names[i] for i in range(len(ids))]
    reserved = {"ID", "target", "pred", "fold"} & set(classes)
    if reserved:
        raise DataError(f"{path}: class names {sorted(reserved)} clash with output column names")
    return classes


def load_competition(
    root: str | Path,
    train_csv: str = "train.csv",
    meta_csv: str = "meta.csv",
    sample_submission: str | None = "sample_submission.csv",
    train_dir: str = "train",
    test_dir: str = "test",
    test_labels: str | None = None,
    name: str = "competition",
) -> DataSource:
    root = _check_root(root)
    classes = read_meta(root / meta_csv)
    train = read_csv_checked(root / train_csv, ("ID", "target"), "train.csv")
    train["target"] = _parse_targets(train["target"], root / train_csv, set(range(len(classes))))
    train["path"] = resolve_image_paths(train["ID"], root / train_dir, f"train.csv ({root / train_csv})")

    sample = test = labels = None
    if sample_submission and (root / sample_submission).is_file():
        sample = read_csv_checked(root / sample_submission, ("ID", "target"), "sample_submission.csv")
        test = sample[["ID"]].copy()
        test["path"] = resolve_image_paths(test["ID"], root / test_dir, f"sample_submission.csv ({root / sample_submission})")
    if test_labels:
        labels_path = Path(test_labels) if Path(test_labels).is_absolute() else root / test_labels
        labels = read_csv_checked(labels_path, ("ID", "target"), "test labels")
        labels["target"] = _parse_targets(labels["target"], labels_path, set(range(len(classes))))
    return DataSource(name, root, classes, train[["ID", "path", "target"]], test, sample, labels)


def load_imagefolder(root: str | Path, train_dir: str = "train", test_dir: str = "test",
                     test_labels: str | None = None) -> DataSource:
    root = _check_root(root)
    train_root = root / train_dir
    if not train_root.is_dir():
        raise DataError(f"data=imagefolder: folder {train_root} not found (expected {train_dir}/<class_name>/*.jpg)")
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"data=imagefolder: {train_root} needs at least 2 class sub-folders, found {classes}")
    rows = []
    for target, cls in enumerate(classes):
        for p in sorted((train_root / cls).iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                rows.append((f"{cls}/{p.name}", p, target))
    train = pd.DataFrame(rows, columns=["ID", "path", "target"])
    test = None
    if (root / test_dir).is_dir():
        files = sorted(p for p in (root / test_dir).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        test = pd.DataFrame({"ID": [p.name for p in files], "path": files})
    sample = test[["ID"]].assign(target=0) if test is not None else None
    labels = None
    if test_labels:
        labels_path = Path(test_labels) if Path(test_labels).is_absolute() else root / test_labels
        labels = read_csv_checked(labels_path, ("ID", "target"), "test labels")
        labels["target"] = _parse_targets(labels["target"], labels_path, set(range(len(classes))))
    return DataSource("imagefolder", root, classes, train, test, sample, labels)


def _check_root(root) -> Path:
    if root in (None, "", "???"):
        raise DataError("data.root is not set: pass data.root=/path/to/data")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise DataError(f"data.root={root}: directory not found")
    return path


def load_source(data_cfg, cache_dir: str | Path) -> DataSource:
    """Build the DataSource a ``data`` config group option describes."""
    name = data_cfg.name
    if name == "synthetic":
        from docclassify.data.synthetic import SyntheticSpec, ensure_synthetic

        spec = SyntheticSpec(
            n_train_per_class=int(data_cfg.n_train_per_class),
            n_test_per_class=int(data_cfg.n_test_per_class),
            long_side=int(data_cfg.long_side),
            seed=int(data_cfg.generator_seed),
        )
        root = ensure_synthetic(Path(cache_dir).expanduser(), spec)
        return load_competition(root, test_labels="test_labels.csv", name="synthetic")
    from omegaconf import OmegaConf

    root = None if OmegaConf.is_missing(data_cfg, "root") else data_cfg.root
    if name == "competition":
        return load_competition(
            root, data_cfg.train_csv, data_cfg.meta_csv, data_cfg.sample_submission,
            data_cfg.train_dir, data_cfg.test_dir, data_cfg.get("test_labels"),
        )
    if name == "imagefolder":
        return load_imagefolder(root, data_cfg.train_dir, data_cfg.test_dir, data_cfg.get("test_labels"))
    raise DataError(f"data.name={name!r}: unknown source (competition, imagefolder, synthetic)")
