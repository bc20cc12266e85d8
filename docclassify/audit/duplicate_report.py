"""duplicates.csv: near-duplicate pairs within the training images and between training and test
images (data.duplicates finds them), with both labels and whether they conflict."""

from __future__ import annotations

import numpy as np
import pandas as pd

from docclassify.data.duplicates import duplicate_groups, find_duplicates, fingerprints
from docclassify.data.sources import DataSource

DUPLICATES_CSV = "duplicates.csv"
COLUMNS = ["ID_a", "ID_b", "split", "distance", "similarity", "orientation", "label_a", "label_b",
           "label_conflict", "group"]


def _orientation_names() -> list[str]:
    from docclassify.predict.tta import get_views

    return [v.name for v in get_views("dihedral")]


def _frame(pairs: pd.DataFrame, ids_a, ids_b, labels_a, labels_b, split: str, groups) -> pd.DataFrame:
    a, b = pairs["a"].to_numpy(dtype=np.int64), pairs["b"].to_numpy(dtype=np.int64)
    la, lb = pd.array(labels_a, dtype="Int64")[a], pd.array(labels_b, dtype="Int64")[b]
    names = _orientation_names()
    return pd.DataFrame({
        "ID_a": np.asarray(ids_a)[a], "ID_b": np.asarray(ids_b)[b], "split": split,
        "distance": pairs["distance"].to_numpy(), "similarity": pairs["similarity"].to_numpy(),
        "orientation": [names[int(v)] for v in pairs["view"]], "label_a": la, "label_b": lb,
        "label_conflict": np.asarray((la != lb).fillna(False), dtype=bool), "group": groups[a],
    }, columns=COLUMNS)


def duplicate_report(source: DataSource, train_labels: pd.Series, cache_dir: str, max_distance: int,
                     min_similarity: float, with_test: bool = True) -> pd.DataFrame:
    """Pairs (train/train, then train/test), label conflicts first, most similar first.

    ``train_labels``: ID -> the label training used (folds.csv); train.csv's label where absent.
    ``group`` numbers the training image's near-duplicate group (what folds.group_duplicates keeps
    in one fold)."""
    train = source.train
    labels = train["ID"].map(train_labels).fillna(train["target"]).astype(np.int64).to_numpy()
    train_fp = fingerprints(list(train["path"]), cache_dir)
    within = find_duplicates(train_fp, None, max_distance, min_similarity, cache_dir)
    groups = duplicate_groups(len(train), within)
    parts = [_frame(within, train["ID"], train["ID"], labels, labels, "train/train", groups)]
    if with_test and source.test is not None and len(source.test):
        test = source.test
        known = source.test_labels.set_index("ID")["target"] if source.test_labels is not None else pd.Series()
        test_labels = test["ID"].map(known).to_numpy()
        test_fp = fingerprints(list(test["path"]), cache_dir)
        cross = find_duplicates(train_fp, test_fp, max_distance, min_similarity, cache_dir)
        parts.append(_frame(cross, train["ID"], test["ID"], labels, test_labels, "train/test", groups))
    report = pd.concat(parts, ignore_index=True)
    order = np.lexsort((-report["similarity"].to_numpy(), report["split"].to_numpy(),
                       ~report["label_conflict"].to_numpy()))
    return report.iloc[order].reset_index(drop=True)
