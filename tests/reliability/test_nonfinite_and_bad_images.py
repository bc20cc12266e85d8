"""Non-finite losses (stop with step/epoch/lr, or skip and count) and undecodable images
(data.on_bad_image=error|skip)."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train

import docclassify.engine.parts as parts_mod
from docclassify.data.sources import DataError
from docclassify.engine.epoch import NonFiniteLossError
from docclassify.engine.kfold import run_kfold
from docclassify.models.checkpoint import read_checkpoint


def _overrides(root, *extra) -> list[str]:
    return ["data=competition", f"data.root={root}", *TINY, "folds.n=2", *extra]


@pytest.mark.slow
def test_diverging_lr_stops_naming_epoch_step_and_lr(tiny_data, tmp_path):
    # A real divergence: AdamW at lr 1e30 makes the weights huge after one update.
    with pytest.raises(NonFiniteLossError) as err:
        run_kfold(compose_train(_overrides(tiny_data, "folds.run=[0]", "trainer.lr=1e30"), tmp_path))
    msg = str(err.value)
    assert "non-finite loss" in msg and "epoch 0, step 1 of 3" in msg
    assert re.search(r"lr \d(\.\d+)?e\+29", msg)  # the lr of that step (cosine-decayed from 1e30)
    assert "trainer.skip_nonfinite=true" in msg and not (tmp_path / "results.json").exists()


@pytest.fixture
def nan_on_calls(monkeypatch):
    """nan_on_calls({2, 5}): the training loss is NaN on those calls (1-based) of the loss function."""

    def arm(calls: set[int]) -> None:
        build = parts_mod.build_train_loss

        def patched(*args, **kwargs):
            loss_fn, n = build(*args, **kwargs), {"calls": 0}

            def loss(logits, y):
                n["calls"] += 1
                value = loss_fn(logits, y)
                return value * float("nan") if n["calls"] in calls else value
            return loss

        monkeypatch.setattr(parts_mod, "build_train_loss", patched)

    return arm


@pytest.mark.slow
def test_nonfinite_steps_skipped_and_counted(tiny_data, tmp_path, nan_on_calls):
    nan_on_calls({2, 5})  # epoch 0 step 1 and epoch 1 step 1 (3 steps per epoch)
    results = run_kfold(compose_train(_overrides(tiny_data, "folds.run=[0]", "trainer.epochs=2",
                                                    "trainer.skip_nonfinite=true"), tmp_path))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["skipped_steps"] == 2 and saved["folds"][0]["skipped_steps"] == 2 == results["skipped_steps"]
    assert np.isfinite(np.load(tmp_path / "oof_logits.npy")).all()
    assert all(np.isfinite(h["train_loss"]) for h in saved["folds"][0]["history"])


@pytest.mark.slow
def test_injected_nonfinite_loss_stops_without_skip(tiny_data, tmp_path, nan_on_calls):
    nan_on_calls({2})
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 1 of 3 \(update 1\), lr "):
        run_kfold(compose_train(_overrides(tiny_data, "folds.run=[0]"), tmp_path))


def _break_images(root, n: int = 2) -> list[str]:
    """A zero-byte file and random bytes named .jpg."""
    ids = pd.read_csv(root / "train.csv")["ID"].tolist()[3:3 + n]
    (root / "train" / ids[0]).write_bytes(b"")
    (root / "train" / ids[1]).write_bytes(np.random.default_rng(0).bytes(2048))
    return ids


def test_bad_images_error_by_default_naming_every_file(data, tmp_path):
    bad = _break_images(data)
    with pytest.raises(DataError, match=r"2 training image\(s\) cannot be decoded") as err:
        run_kfold(compose_train(_overrides(data, "folds.run=[0]"), tmp_path))
    assert all(i in str(err.value) for i in bad) and "data.on_bad_image=skip" in str(err.value)
    assert not (tmp_path / "checkpoints" / "fold0_last.pt").exists()  # stopped before training


@pytest.mark.slow
def test_bad_images_skipped_listed_and_warned_once(data, tmp_path, caplog):
    bad = _break_images(data)
    # Two folds at two image sizes: two decode caches, still one decision and one warning.
    fold_models = "ensemble.fold_models={0:{model:tiny,img_size:32},1:{model:tiny,img_size:40}}"
    caplog.set_level(logging.WARNING)
    run_kfold(compose_train([*_overrides(data, "data.on_bad_image=skip", "ensemble=multi_model", fold_models)],
                               tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["skipped_images"] == sorted(bad) and results["n_oof_rows"] == 102 - 2
    warnings = [r.getMessage() for r in caplog.records if "on_bad_image=skip" in r.getMessage()]
    assert len(warnings) == 1 and "skipping 2 undecodable" in warnings[0]
    folds = pd.read_csv(tmp_path / "folds.csv")
    assert (folds.set_index("ID").loc[bad, "fold"] == -1).all()
    assert not set(bad) & set(pd.read_csv(tmp_path / "oof.csv")["ID"])
    assert {f["img_size"] for f in results["folds"]} == {32, 40}
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "fold1_best.safetensors")
    assert ckpt["meta"]["img_size"] == 40
