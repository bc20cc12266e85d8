"""Data sources: turn a data config into a table of labelled training rows (and test rows).

Every source yields the same shape (``DataSource``), so folds, caching and training do not
care where the images came from. All validation happens here, before any training, and
each error names the file, column or key at fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from docclassify.errors import DataError

if TYPE_CHECKING:  # annotations only: the typed settings are built at the entrypoint (engine/kfold.py)
    from omegaconf import DictConfig

    from docclassify.config_schema import DataCommon

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MAX_LISTED = 20


@dataclass
class DataSource:
    name: str
    root: Path
    classes: list[str]            # index = target
    train: pd.DataFrame           # columns: ID, path, target
    test: pd.DataFrame | None     # columns: ID, path (sample_submission order when known)
    sample_submission: pd.DataFrame | None
    test_labels: pd.DataFrame | None  # columns: ID, target
    # data.relabel / data.exclude as applied (apply_decisions): file, sha256, counts, IDs.
    decisions: dict = field(default_factory=dict)

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
        lines = [f"{d} (lines {', '.join(str(i + 2) for i in df.index[df['ID'] == d])})" for d in dups]
        raise DataError(f"{what} {path}: duplicate IDs: {_listing(lines)}")
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


def numbered_classes(n: int) -> list[str]:
    """Class names when nothing names the classes: class_0 .. class_<n-1>."""
    return [f"class_{k}" for k in range(n)]


def _targets_without_meta(train: pd.DataFrame, path: Path) -> int:
    """The class count a train.csv implies (max target + 1), checked like targets against a meta.csv."""
    bad_type = [v for v in train["target"].unique() if not v.isdigit()]
    if bad_type:
        raise DataError(f"{path}: column 'target' must hold class indices 0, 1, ...; got {_listing(bad_type)}")
    return int(train["target"].astype(int).max()) + 1


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
    train = read_csv_checked(root / train_csv, ("ID", "target"), "train.csv")
    if meta_csv and (root / meta_csv).is_file():
        classes = read_meta(root / meta_csv)
    else:  # meta.csv is optional: the classes are then numbered (the submission uses indices anyway)
        classes = numbered_classes(_targets_without_meta(train, root / train_csv))
        why = "data.meta_csv=null" if not meta_csv else f"no {meta_csv} in {root}"
        log.info("%s: class names class_0..class_%d from train.csv's targets (a meta.csv with "
                 "target,class_name names them)", why, len(classes) - 1)
    train["target"] = _parse_targets(train["target"], root / train_csv, set(range(len(classes))))
    train["path"] = resolve_image_paths(train["ID"], root / train_dir, f"train.csv ({root / train_csv})")

    sample = test = labels = None
    if sample_submission and (root / sample_submission).is_file():
        sample = read_csv_checked(root / sample_submission, ("ID", "target"), "sample_submission.csv")
        test = sample[["ID"]].copy()
        test["path"] = resolve_image_paths(test["ID"], root / test_dir,
                                           f"sample_submission.csv ({root / sample_submission})")
    if test_labels:
        labels_path = Path(test_labels) if Path(test_labels).is_absolute() else root / test_labels
        labels = read_csv_checked(labels_path, ("ID", "target"), "test labels")
        labels["target"] = _parse_targets(labels["target"], labels_path, set(range(len(classes))))
    return DataSource(name, root, classes, train[["ID", "path", "target"]], test, sample, labels)


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def imagefolder_layout(root: Path, train_dir: str = "train") -> tuple[Path, str]:
    """(folder of the class sub-folders, layout name) of an ImageFolder tree.

    ``root/<train_dir>/<class>/`` (a split tree, test images optionally in ``root/<test_dir>/``)
    when ``root/<train_dir>`` has sub-folders, else torchvision's ``root/<class>/`` (no test
    folder: every sub-folder of root is a class)."""
    train_root = root / train_dir
    if train_root.is_dir() and _subfolders(train_root):
        return train_root, f"{train_dir}/<class>/"
    return root, "<class>/ (torchvision ImageFolder)"


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p))


def loose_test_set(folder: Path, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(test rows, submission template) of a loose folder of images: every image file in it,
    in sorted order, its file name the ID (the template's targets 0)."""
    if not folder.is_dir():
        raise DataError(f"{what}: folder not found: {folder}")
    files = list_images(folder)
    if not files:
        raise DataError(f"{what}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    test = pd.DataFrame({"ID": [p.name for p in files], "path": files})
    return test, test[["ID"]].assign(target=0)


def load_imagefolder(root: str | Path, train_dir: str = "train", test_dir: str = "test",
                     test_labels: str | None = None) -> DataSource:
    root = _check_root(root)
    train_root, layout = imagefolder_layout(root, train_dir)
    classes = _subfolders(train_root)
    if len(classes) < 2:
        raise DataError(f"data=imagefolder: {train_root} needs at least 2 class sub-folders, found {classes} "
                        f"(expected {root}/<class>/*.jpg or {root}/{train_dir}/<class>/*.jpg)")
    rows = []
    for target, cls in enumerate(classes):
        for p in list_images(train_root / cls):
            rows.append((f"{cls}/{p.name}", p, target))
    train = pd.DataFrame(rows, columns=["ID", "path", "target"])
    test = sample = None
    if train_root != root and (root / test_dir).is_dir():
        test = pd.DataFrame({"ID": [p.name for p in list_images(root / test_dir)],
                             "path": list_images(root / test_dir)})
        sample = test[["ID"]].assign(target=0)
    log.info("data=imagefolder: layout %s in %s: %d classes from the folder names, %d images%s", layout, root,
             len(classes), len(train), f", {len(test)} test images in {test_dir}/" if test is not None else
             " (no test folder: infer inputs=FOLDER predicts any folder of images)")
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


def load_source(data: DataCommon | DictConfig, cache_dir: str | Path) -> DataSource:
    """Build the DataSource a ``data`` config group option describes: its typed settings (training), or
    the data node of a run's saved config (infer, audit, export), read the same way."""
    name = data.name
    if name == "synthetic":
        from docclassify.data.synthetic import SyntheticSpec, ensure_synthetic

        spec = SyntheticSpec(
            n_train_per_class=int(data.n_train_per_class),
            n_test_per_class=int(data.n_test_per_class),
            long_side=int(data.long_side),
            seed=int(data.generator_seed),
        )
        root = ensure_synthetic(Path(cache_dir).expanduser(), spec)
        # Which test split: test/ by default; infer's data.test_dir / test_labels / sample_submission
        # pick another (test_phone/, test_phone_labels.csv, test_phone_sample_submission.csv).
        return load_competition(root, sample_submission=getattr(data, "sample_submission", None)
                                or "sample_submission.csv", test_dir=getattr(data, "test_dir", None) or "test",
                                test_labels=getattr(data, "test_labels", None) or "test_labels.csv", name="synthetic")
    from omegaconf import DictConfig, OmegaConf

    root = None if isinstance(data, DictConfig) and OmegaConf.is_missing(data, "root") else data.root
    if name == "competition":
        return load_competition(
            root, data.train_csv, data.meta_csv, data.sample_submission,
            data.train_dir, data.test_dir, getattr(data, "test_labels", None),
        )
    if name == "imagefolder":
        return load_imagefolder(root, data.train_dir, data.test_dir, getattr(data, "test_labels", None))
    raise DataError(f"data.name={name!r}: unknown source (competition, imagefolder, synthetic)")


# ---------------------------------------------------------------------------------------------
# Decisions of a label audit (docs/data-audit.md): data.relabel=FILE (ID,target), data.exclude=FILE (ID)
# ---------------------------------------------------------------------------------------------

def _decision_file(value, key: str) -> Path:
    """The file a ``data.relabel`` / ``data.exclude`` value names (relative: to the working directory)."""
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    if not path.is_file():
        raise DataError(f"data.{key}={value}: file not found ({path}); give the path of the decisions CSV "
                        f"(relative paths are read from the directory the command runs in), or data.{key}=null")
    return path.resolve()


def _line_listing(df: pd.DataFrame, mask, column: str) -> str:
    """``line 3: 'x', line 7: 'y'`` for the rows of ``df`` where ``mask`` holds (header = line 1)."""
    return _listing([f"line {i + 2}: {df.at[i, column]!r}" for i in df.index[mask]])


def read_decisions(value, key: str, train: pd.DataFrame, num_classes: int) -> tuple[pd.DataFrame, dict]:
    """Read and check a decisions file against the training rows: every ID known, listed once,
    and (relabel) every target a class index. Returns the rows and {file, sha256}."""
    path = _decision_file(value, key)
    columns = ("ID", "target") if key == "relabel" else ("ID",)
    what = f"data.{key}"
    df = read_csv_checked(path, columns, what)
    unknown = ~df["ID"].isin(set(train["ID"]))
    if unknown.any():
        example = ", ".join(repr(i) for i in train["ID"].head(2))
        raise DataError(f"{what} {path}: {int(unknown.sum())} ID(s) not in the training set: "
                        f"{_line_listing(df, unknown, 'ID')}; write IDs as the training table does (e.g. {example})")
    if key == "relabel":
        valid = df["target"].str.fullmatch(r"\d+") & (pd.to_numeric(df["target"], errors="coerce") < num_classes)
        if not valid.all():
            raise DataError(f"{what} {path}: column 'target' must hold class indices 0..{num_classes - 1} "
                            f"(meta.csv order); bad values: {_line_listing(df, ~valid, 'target')}")
        df["target"] = df["target"].astype(int)
    return df, {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def apply_decisions(source: DataSource, relabel=None, exclude=None) -> DataSource:
    """``data.relabel`` (ID,target: new label) and ``data.exclude`` (ID: row left out of training,
    folds and OOF) applied to the training rows; ``source.decisions`` records what was applied."""
    if not relabel and not exclude:
        return source
    train, decisions, relabelled = source.train.copy(), {}, set()
    if relabel:
        df, info = read_decisions(relabel, "relabel", train, source.num_classes)
        relabelled = set(df["ID"])
        new = train["ID"].map(dict(zip(df["ID"], df["target"])))
        changed = new.notna() & (new != train["target"])
        decisions["relabel"] = {**info, "n_rows": len(df), "n_changed": int(changed.sum()),
                                "changed": [{"ID": i, "from": int(a), "to": int(b)} for i, a, b in
                                            zip(train["ID"][changed], train["target"][changed], new[changed])]}
        train.loc[changed, "target"] = new[changed].astype(int)
        train["target"] = train["target"].astype(int)
    if exclude:
        df, info = read_decisions(exclude, "exclude", train, source.num_classes)
        both = sorted(set(df["ID"]) & relabelled)
        if both:
            raise DataError(f"data.exclude {info['file']} and data.relabel {decisions['relabel']['file']} both "
                            f"list {_listing(both)}: decide once (relabel or exclude) per ID")
        decisions["exclude"] = {**info, "n_rows": len(df), "ids": sorted(df["ID"])}
        train = train[~train["ID"].isin(set(df["ID"]))].reset_index(drop=True)
    for key, info in decisions.items():
        count = info.get("n_changed", info["n_rows"])
        log.info("data.%s: %d row(s) %s (%s, sha256 %s)", key, count,
                 "relabelled" if key == "relabel" else "excluded", info["file"], info["sha256"][:12])
    return dataclasses.replace(source, train=train, decisions=decisions)
