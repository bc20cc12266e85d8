"""End to end: the real `python -m docclassify.train` command on real (tiny) images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, run_cli
from sklearn.metrics import f1_score

from docclassify.models.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow  # the real training command


def test_two_fold_run_writes_consistent_outputs(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("docclassify.train", [
        "data=competition", f"data.root={tiny_data}", *TINY, "trainer.epochs=3", "trainer.lr=1e-2", "folds.n=3",
        "folds.run=[0,1]", "seed=7", f"hydra.run.dir={run_dir}",
    ])
    assert "cv macro F1" in proc.stdout + proc.stderr

    results = json.loads((run_dir / "results.json").read_text())
    assert results["metric"] == "macro_f1"
    assert [f["fold"] for f in results["folds"]] == [0, 1]
    for f in results["folds"]:
        assert f["model"] == "test_resnet"
        assert f["best_macro_f1"] > 1.5 / 17 and 0 <= f["best_epoch"] < 3  # learned: chance is 1/17
        ckpt = read_checkpoint(run_dir / f["checkpoint"])
        assert ckpt["meta"]["timm_name"] == "test_resnet" and len(ckpt["meta"]["classes"]) == 17

    oof = pd.read_csv(run_dir / "oof.csv")
    assert list(oof.columns[:3]) == ["ID", "target", "pred"] and len(oof.columns) == 3 + 17
    folds = pd.read_csv(run_dir / "folds.csv")
    expected = set(folds.loc[folds["fold"].isin([0, 1]), "ID"])
    assert oof["ID"].is_unique and set(oof["ID"]) == expected  # every val row of folds 0,1 exactly once
    probs = oof.iloc[:, 3:].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (oof["pred"].to_numpy() == probs.argmax(1)).all()
    assert results["cv_macro_f1"] == f1_score(oof["target"], oof["pred"], average="macro")
    assert results["n_oof_rows"] == len(oof)
    assert results["cv_macro_f1"] > 2 / 17  # the run learned (0.18 measured; chance: 1/17)
