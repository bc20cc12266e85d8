"""Building, checking and writing a competition submission.

The submission keeps the sample submission's columns and row order exactly; each row's
target is looked up by ID (never by position), and the finished frame is re-validated
against the sample before it is written (atomically) so that a misaligned file is caught.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from docclassify.errors import format_ids  # re-exported: its home is errors.py (below engine)
from docclassify.utils.io import atomic_write_csv

__all__ = [
    "build_probability_frame",
    "build_submission",
    "check_submission",
    "format_ids",
    "write_outputs",
    "write_probability_frame",
    "write_submission",
]

ID_COL = "ID"
TARGET_COL = "target"


def _duplicates(values: Sequence) -> list:
    s = pd.Series(list(values), dtype=object)
    return list(pd.unique(s[s.duplicated(keep="first")]))


def _class_indices(preds: np.ndarray, num_classes: int | None) -> np.ndarray:
    preds = np.asarray(preds)
    if preds.ndim == 2:
        if num_classes is not None and preds.shape[1] != num_classes:
            raise ValueError(f"preds have {preds.shape[1]} columns, expected {num_classes}")
        return preds.argmax(axis=1).astype(np.int64)
    if preds.ndim != 1:
        raise ValueError(f"preds must be (N,) class indices or (N, K) scores, got {preds.shape}")
    if (
        preds.size
        and not np.issubdtype(preds.dtype, np.integer)
        and (preds.dtype == bool or not np.all(np.isfinite(preds)) or np.any(np.mod(preds, 1)))
    ):
        raise ValueError("class-index preds must be whole numbers")
    out = preds.astype(np.int64)
    if out.size and (out.min() < 0 or (num_classes is not None and out.max() >= num_classes)):
        hi = "" if num_classes is None else f", {num_classes}"
        raise ValueError(f"class indices out of range [0{hi}): min {out.min()}, max {out.max()}")
    return out


def build_submission(
    sample: pd.DataFrame,
    ids: Sequence[str],
    preds: np.ndarray,
    num_classes: int | None = None,
    id_col: str = ID_COL,
    target_col: str = TARGET_COL,
) -> pd.DataFrame:
    """The submission: ``sample``'s columns and row order, ``target`` looked up by ID.

    ``preds`` are class indices ``(N,)`` or scores/probabilities ``(N, K)`` (argmax taken),
    aligned with ``ids``. Raises ``ValueError`` naming the offending IDs when ``sample`` or
    ``ids`` hold duplicates, when sample IDs have no prediction, or when predictions hold
    IDs not in the sample.
    """
    for col in (id_col, target_col):
        if col not in sample.columns:
            raise ValueError(f"sample has no {col!r} column (columns: {list(sample.columns)})")
    ids = [str(i) for i in ids]
    classes = _class_indices(preds, num_classes)
    if len(ids) != len(classes):
        raise ValueError(f"{len(ids)} IDs but {len(classes)} predictions")

    sample_ids = sample[id_col].astype(str).tolist()
    dup_sample = _duplicates(sample_ids)
    if dup_sample:
        raise ValueError(f"sample has duplicate IDs: {format_ids(dup_sample)}")
    dup_pred = _duplicates(ids)
    if dup_pred:
        raise ValueError(f"predictions have duplicate IDs: {format_ids(dup_pred)}")
    pred_set, sample_set = set(ids), set(sample_ids)
    missing = [i for i in sample_ids if i not in pred_set]
    if missing:
        raise ValueError(f"sample IDs missing from the predictions: {format_ids(missing)}")
    extra = [i for i in ids if i not in sample_set]
    if extra:
        raise ValueError(f"predictions include IDs not in the sample: {format_ids(extra)}")

    lookup = pd.Series(classes, index=pd.Index(ids, dtype=object))
    sub = sample.copy()
    sub[target_col] = lookup.loc[sample_ids].to_numpy().astype(np.int64)
    check_submission(sample, sub, num_classes=num_classes, id_col=id_col, target_col=target_col)
    return sub


def check_submission(
    sample: pd.DataFrame,
    submission: pd.DataFrame,
    num_classes: int | None = None,
    id_col: str = ID_COL,
    target_col: str = TARGET_COL,
) -> None:
    """Raise ``ValueError`` unless ``submission`` matches ``sample``: the same columns in the
    same order, the same IDs in the same order, and integer targets in ``[0, num_classes)``
    (``>= 0`` when ``num_classes`` is None)."""
    if list(submission.columns) != list(sample.columns):
        raise ValueError(
            f"submission columns {list(submission.columns)} != sample columns "
            f"{list(sample.columns)}"
        )
    if len(submission) != len(sample):
        raise ValueError(f"submission has {len(submission)} rows, sample has {len(sample)}")
    got = submission[id_col].astype(str).to_numpy()
    want = sample[id_col].astype(str).to_numpy()
    bad = np.flatnonzero(got != want)
    if bad.size:
        pairs = [f"row {r}: {got[r]!r} (expected {want[r]!r})" for r in bad[:10]]
        more = f", and {bad.size - 10} more" if bad.size > 10 else ""
        raise ValueError(
            f"submission IDs are not in the sample's order at {bad.size} row(s): "
            + "; ".join(pairs) + more
        )
    target = submission[target_col]
    missing = target.isna().to_numpy()
    if missing.any():
        raise ValueError(f"submission has missing targets for {format_ids(got[missing])}")
    values = target.to_numpy()
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"submission targets must be integers, got dtype {values.dtype}")
    out_of_range = (values < 0) if num_classes is None else ((values < 0) | (values >= num_classes))
    if out_of_range.any():
        hi = "" if num_classes is None else f", {num_classes}"
        raise ValueError(
            f"targets out of range [0{hi}) for {format_ids(got[out_of_range])}"
        )


def build_probability_frame(
    ids: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    id_col: str = ID_COL,
) -> pd.DataFrame:
    """``ID`` plus one column per class name (in the given order), one row per ID."""
    probs = np.asarray(probs, dtype=np.float64)
    class_names = [str(c) for c in class_names]
    ids = [str(i) for i in ids]
    if probs.ndim != 2 or probs.shape != (len(ids), len(class_names)):
        raise ValueError(
            f"probs must be ({len(ids)}, {len(class_names)}) for the given ids/class_names, "
            f"got {probs.shape}"
        )
    dup_names = _duplicates(class_names)
    if dup_names or id_col in class_names:
        raise ValueError(f"class names must be unique and not {id_col!r}: {dup_names}")
    dup_ids = _duplicates(ids)
    if dup_ids:
        raise ValueError(f"duplicate IDs: {format_ids(dup_ids)}")
    frame = pd.DataFrame(probs, columns=class_names)
    frame.insert(0, id_col, ids)
    return frame


def write_submission(
    path: str | os.PathLike,
    sample: pd.DataFrame,
    submission: pd.DataFrame,
    num_classes: int | None = None,
    id_col: str = ID_COL,
    target_col: str = TARGET_COL,
) -> Path:
    """Re-check ``submission`` against ``sample``, then write it atomically (no index)."""
    check_submission(sample, submission, num_classes=num_classes, id_col=id_col,
                     target_col=target_col)
    atomic_write_csv(submission, path, index=False)
    return Path(path)


def write_probability_frame(path: str | os.PathLike, frame: pd.DataFrame) -> Path:
    """Write a probability frame atomically (no index, full float precision)."""
    atomic_write_csv(frame, path, index=False, float_format="%.8g")
    return Path(path)


def write_outputs(
    out_dir: str | os.PathLike,
    sample: pd.DataFrame,
    ids: Sequence[str],
    probs: np.ndarray,
    class_names: Sequence[str],
    submission_name: str = "submission.csv",
    probs_name: str | None = "test_probs.csv",
    id_col: str = ID_COL,
    target_col: str = TARGET_COL,
) -> dict[str, Path]:
    """Build, check and atomically write the submission (argmax of ``probs``) and, unless
    ``probs_name`` is None, the probability frame. Returns ``{"submission", "probs"}`` paths.
    Both frames are built and validated before either file is written."""
    out_dir = Path(out_dir)
    num_classes = len(class_names)
    sub = build_submission(sample, ids, np.asarray(probs), num_classes=num_classes,
                           id_col=id_col, target_col=target_col)
    frame = None
    if probs_name is not None:
        frame = build_probability_frame(ids, probs, class_names, id_col=id_col)
    paths = {"submission": write_submission(out_dir / submission_name, sample, sub,
                                            num_classes, id_col, target_col)}
    if frame is not None:
        paths["probs"] = write_probability_frame(out_dir / probs_name, frame)
    return paths
