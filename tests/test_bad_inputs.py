"""Each kind of bad input stops before training with an error naming the file/column/key."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from conftest import TINY, compose_train, run_cli

from docclassify.data.sources import DataError
from docclassify.engine.kfold import run_kfold
from docclassify.models.factory import ModelConfigError


def train(root, tmp_path, *extra):
    cfg = compose_train(["data=competition", f"data.root={root}", *TINY, "folds.n=2", *extra], tmp_path / "run")
    return run_kfold(cfg)


def edit_csv(path, fn):
    df = pd.read_csv(path, dtype=str)
    fn(df).to_csv(path, index=False)


def test_missing_data_root(tmp_path):
    with pytest.raises(DataError, match="data.root is not set"):
        cfg = compose_train(["data=competition", *TINY], tmp_path / "run")
        run_kfold(cfg)
    with pytest.raises(DataError, match="directory not found"):
        train(tmp_path / "nope", tmp_path)


def test_missing_train_csv_and_image_folder(data, tmp_path):
    shutil.rmtree(data / "train")
    with pytest.raises(DataError, match="image folder not found.*train"):
        train(data, tmp_path)
    (data / "train.csv").unlink()
    with pytest.raises(DataError, match="train.csv: file not found"):
        train(data, tmp_path)


def test_csv_without_required_columns(data, tmp_path):
    edit_csv(data / "train.csv", lambda df: df.rename(columns={"target": "label"}))
    with pytest.raises(DataError, match=r"missing column\(s\) \['target'\]"):
        train(data, tmp_path)


def test_labels_outside_meta(data, tmp_path):
    def bad(df):
        df.loc[0, "target"] = "42"
        return df
    edit_csv(data / "train.csv", bad)
    with pytest.raises(DataError, match=r"labels not in meta.csv: \[42\]"):
        train(data, tmp_path)


def test_missing_images_are_all_listed(data, tmp_path):
    ids = pd.read_csv(data / "train.csv")["ID"].tolist()[:3]
    for i in ids:
        (data / "train" / i).unlink()
    with pytest.raises(DataError) as err:
        train(data, tmp_path)
    assert "3 image(s) listed but not found" in str(err.value)
    assert all(i in str(err.value) for i in ids)


def test_undecodable_image(data, tmp_path):
    ids = pd.read_csv(data / "train.csv")["ID"].tolist()[:2]
    (data / "train" / ids[0]).write_bytes(b"not a jpeg at all" * 10)
    (data / "train" / ids[1]).write_bytes(b"")
    with pytest.raises(DataError, match="2 training image\\(s\\) cannot be decoded") as err:
        train(data, tmp_path)
    assert ids[0] in str(err.value) and ids[1] in str(err.value)


def test_class_with_fewer_samples_than_folds(data, tmp_path):
    with pytest.raises(DataError, match="folds.n=7: every class needs at least 7"):
        train(data, tmp_path, "folds.n=7")


def test_folds_run_out_of_range(data, tmp_path):
    with pytest.raises(DataError, match=r"folds.run=\[0, 5\]: fold\(s\) \[5\] out of range"):
        train(data, tmp_path, "folds.run=[0,5]")


def test_unknown_model_name(data, tmp_path):
    with pytest.raises(ModelConfigError, match="no_such_net.*no such architecture"):
        train(data, tmp_path, "model.timm_name=no_such_net")


def test_pretrained_offline_fails_fast_naming_both_ways_out(data, tmp_path):
    with pytest.raises(ModelConfigError) as err:
        train(data, tmp_path, "model=resnet18", "model.pretrained=true")
    msg = str(err.value)
    assert "resnet18" in msg and "model.pretrained=false" in msg and "model.weights=" in msg


def test_unknown_config_option_fails_in_hydra(tmp_path):
    proc = run_cli("docclassify.train", ["model=no_such_model", f"hydra.run.dir={tmp_path}"], check=False)
    assert proc.returncode != 0
    assert "no_such_model" in proc.stderr and "model" in proc.stderr
