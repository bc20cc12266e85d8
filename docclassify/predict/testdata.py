"""Step 1, test data: each run's own data config with infer's ``data.*`` overrides (or a loose folder of
images), one test set shared by every run, and its labels when known."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from docclassify.config_schema import CompetitionData
from docclassify.data.sources import DataError, DataSource, load_source
from docclassify.predict.run_dirs import Run, RunError
from docclassify.predict.submission import format_ids

log = logging.getLogger(__name__)

# data.* keys infer may override; null keeps the training run's value.
DATA_OVERRIDES = ("root", "sample_submission", "test_dir", "test_labels", "cache")


@dataclass
class DataSet:
    source: DataSource
    cache: bool
    has_train: bool = True  # False: a loose input folder, the training images not found here


def run_data_config(run: Run, overrides: dict) -> dict:
    """The run's data config with infer's non-null ``data.*`` overrides applied.

    A ``data.root`` given for a run trained on the built-in synthetic data means "this
    folder, competition layout" (the layout the synthetic data set has).
    """
    data = run.data_config
    if not data.get("name"):
        raise RunError(f"{run.path}: its config has no data.name")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "root" in given and data["name"] == "synthetic":
        data = {**asdict(CompetitionData()), "cache": data.get("cache", True)}
    data.update(given)
    return data


def loose_folder(data: dict, overrides: dict, inputs) -> Path | None:
    """The folder of images to predict as it is (every image file in it, sorted), or None for the
    run's own test set: ``inputs=FOLDER``; ``data.test_dir=FOLDER`` when no sample submission
    lists the test IDs (an imagefolder run, or a competition root without sample_submission.csv;
    a relative one is looked up in the data root first, then in the working dir); or
    ``data.root=FOLDER`` of image files without a sample submission (not a data set's root)."""
    from docclassify.data.sources import list_images

    if inputs:
        return Path(str(inputs)).expanduser()
    if data.get("name") == "synthetic":  # data.test_dir picks one of the generated splits (test, test_phone)
        return None
    test_dir = overrides.get("test_dir")
    root, sample = data.get("root"), data.get("sample_submission")
    if not test_dir:
        folder = Path(str(overrides["root"])).expanduser() if overrides.get("root") else None
        if folder is not None and folder.is_dir() and not (folder / str(sample or "sample_submission.csv")).is_file() \
                and list_images(folder):
            return folder
        return None
    if data.get("name") != "imagefolder" and root and sample and (Path(str(root)) / sample).is_file():
        return None
    if data.get("name") == "synthetic" and not Path(str(test_dir)).expanduser().is_dir():
        return None  # a split of the generated data set (test_phone): data/sources.py finds it there
    in_root = Path(str(root)).expanduser() / test_dir if root and root != "???" else None
    return in_root if in_root is not None and in_root.is_dir() else Path(str(test_dir)).expanduser()


def loose_source(data: dict, run: Run, folder: Path, what: str, cache_dir: str) -> tuple[DataSource, bool]:
    """A test set of the images in ``folder`` for ``run``, and whether the run's training rows were
    found too (they are re-predicted with the TTA views; without them the saved OOF predictions
    are used)."""
    from docclassify.data.sources import loose_test_set, read_csv_checked

    test, sample = loose_test_set(folder, what)
    train, has_train = pd.DataFrame(columns=["ID", "path", "target"]), False
    # The training rows: where the run had them, or in data.root when that is not the folder itself.
    train_cfg = run.data_config if data.get("root") and Path(str(data["root"])).expanduser() == folder else \
        {**data, "test_dir": run.data_config.get("test_dir") or "test"}
    try:
        train, has_train = load_source(OmegaConf.create(train_cfg), cache_dir).train, True
    except DataError as exc:
        log.info("%s: the training images of %s are not here (%s): its saved OOF predictions are used as they "
                 "are", what, run.path, str(exc).splitlines()[0])
    labels = None
    if data.get("test_labels"):
        path = Path(str(data["test_labels"])).expanduser()
        path = path if path.is_absolute() or path.is_file() else folder / path
        labels = read_csv_checked(path, ("ID", "target"), "test labels")
        labels["target"] = labels["target"].astype(int)
    log.info("%s: predicting the %d image(s) in %s (sorted by file name)", what, len(test), folder)
    return DataSource(str(data.get("name")), folder, run.classes, train, test, sample, labels), has_train


def load_data(runs: list[Run], overrides: dict, cache_dir: str, inputs=None) -> list[DataSet]:
    """One DataSet per run (runs with equal data configs share it); all must share one test set."""
    by_key: dict[str, DataSet] = {}
    per_run = []
    for run in runs:
        data = run_data_config(run, overrides)
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in by_key:
            folder = loose_folder(data, overrides, inputs)
            if folder is not None:
                what = "inputs" if inputs else "data.test_dir" if overrides.get("test_dir") else "data.root"
                source, has_train = loose_source(data, run, folder, what, cache_dir)
                by_key[key] = DataSet(source, bool(data.get("cache", True)), has_train)
                per_run.append(by_key[key])
                continue
            source = load_source(OmegaConf.create(data), cache_dir)
            if source.test is None or source.sample_submission is None:
                raise DataError(f"data {data.get('name')} at {source.root} (from {run.path}) has "
                                "no test set: no sample_submission.csv / test/ folder; point "
                                "data.root (or data.test_dir, data.sample_submission) at the test "
                                "data, or predict a folder of images with inputs=FOLDER")
            by_key[key] = DataSet(source, bool(data.get("cache", True)))
        ds = by_key[key]
        if ds.source.classes != run.classes:
            raise RunError(f"{run.path} predicts {len(run.classes)} classes {run.classes[:3]}..., "
                           f"but the data's meta ({ds.source.root}) lists "
                           f"{len(ds.source.classes)}: {ds.source.classes[:3]}...")
        per_run.append(ds)
    first = per_run[0].source
    for ds, run in zip(per_run, runs):
        if ds.source.test["ID"].tolist() != first.test["ID"].tolist():
            raise DataError(f"the runs' test sets differ: {runs[0].path} uses {first.root} "
                            f"({len(first.test)} test IDs), {run.path} uses {ds.source.root} "
                            f"({len(ds.source.test)}); pass data.root=... to use one test set for "
                            "all")
    return per_run


def load_test_labels(source: DataSource) -> np.ndarray | None:
    """True test labels in test order (data.test_labels / the synthetic test_labels.csv) or None."""
    if source.test_labels is None:
        return None
    labels = source.test_labels.set_index("ID")["target"]
    ids = source.test["ID"]
    missing = ids[~ids.isin(labels.index)].tolist()
    if missing:
        raise DataError(f"test labels: no label for {format_ids(missing)} of the test set")
    return labels.loc[ids.tolist()].to_numpy(dtype=np.int64)


def require_training_rows(datasets: list[DataSet], auto_tta: bool, second_stage: bool) -> bool:
    """Whether the runs' training images are here, so their OOF rows can be re-predicted. A loose folder
    without them is refused by what must re-predict them (tta=auto, the second stage); otherwise the
    saved OOF predictions are used as they are (False)."""
    if all(ds.has_train for ds in datasets):
        return True
    if auto_tta:
        raise DataError("tta=auto chooses the views on the runs' OOF rows, re-predicted from their training "
                        "images, which are not found here: give data.root=<the training data> or a tta name")
    if second_stage:  # issue 32: every second-stage guard re-predicts the OOF rows
        raise DataError("adapt, second_pass and specialists are fitted on the runs' OOF rows, re-predicted from "
                        "their training images, which are not found here: give data.root=<the training data> or "
                        "leave them off")
    return False
