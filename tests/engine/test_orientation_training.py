"""Orientation end to end: the head learns from the augmentation's own labels, its checkpoint feeds
tta=orient at inference, and a run without orientation is untouched.

Real training on real (synthetic) document images; the tiny timm test model at 32 px.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, compose_train, run_cli

from docclassify.models.checkpoint import read_checkpoint

HEAD_RUN = ["model=tiny", "model.pretrained=false", "data.img_size=32", "data.num_workers=0", "logger=none",
            "data.n_train_per_class=12", "data.n_test_per_class=1", "data.long_side=96", "folds.n=3", "folds.run=[0]",
            "trainer.epochs=30", "trainer.batch_size=16", "trainer.lr=5e-3", "validation=clean",
            "augment.orientation=rot90", "augment.orientation_p=0.75", "model.orientation_head=rot4",
            "regularization.orientation_loss_weight=1.0"]


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, isolated_env) -> Path:
    """A fold trained with quarter-turn augmentation and a rot4 head (about 20 CPU-seconds)."""
    run_dir = tmp_path_factory.mktemp("head_run")
    run_cli("docclassify.train", [*HEAD_RUN, f"hydra.run.dir={run_dir}"], env=isolated_env)
    return run_dir


@pytest.mark.slow
def test_the_head_learns_which_turn_was_applied(head_run):
    results = json.loads((head_run / "results.json").read_text())
    history = results["folds"][0]["history"]
    losses = [h["train_orientation_loss"] for h in history]
    assert np.mean(losses[-3:]) < 0.75 * np.mean(losses[:3]), losses  # the head's loss falls
    # Held-out validation images, each turned by a known quarter turn: chance is 1/4.
    last = history[-1]
    assert last["val_orientation_head"][1] >= 60
    assert last["val_orientation_accuracy"] >= 0.45, [h["val_orientation_accuracy"] for h in history]
    orientation = results["orientation"]
    assert orientation["head"] == "rot4" and orientation["head_chance"] == 0.25
    # the pooled figure is the best epoch's (one fold here), and above the 1-in-4 guess
    best = next(h for h in history if h["epoch"] == results["folds"][0]["best_epoch"])
    assert orientation["head_accuracy"] == pytest.approx(best["val_orientation_accuracy"])
    assert orientation["head_accuracy"] > orientation["head_chance"]
    assert set(orientation["accuracy_by_orientation"]) == {"upright", "turned"}  # rot90: no mirrors among the copies
    meta = read_checkpoint(head_run / "checkpoints" / "fold0_best.safetensors")["meta"]
    assert meta["orientation_head"] == "rot4"
    assert meta["trained_orientations"] == {"group": "rot90", "p": 0.75, "mirrors": False}
    report = (head_run / "report.md").read_text()
    assert "Accuracy by orientation" in report and "orientation head" in report


def _infer(run_dir: Path, out: Path, env, *overrides) -> dict:
    run_cli("docclassify.infer", [f"runs=[{run_dir}]", "calibrate=false", f"hydra.run.dir={out}", *overrides],
            env=env)
    return json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_tta_orient_uses_the_head_and_reports_orientation(head_run, tmp_path, isolated_env):
    plain = _infer(head_run, tmp_path / "none", isolated_env, "tta=none")
    orient = _infer(head_run, tmp_path / "orient", isolated_env, "tta=orient", "tta.deskew=false")
    _infer(head_run, tmp_path / "flip", isolated_env, "tta=orient", "tta.deskew=false", "tta.upright_flip=true")
    soft = _infer(head_run, tmp_path / "soft", isolated_env, "tta=orient_soft", "tta.deskew=true")
    o = orient["orientation"]
    assert o["estimator"] == "head" and sum(o["turned_back"].values()) == pytest.approx(1.0)
    assert o["by"] == "test_distortions.csv" and set(o["accuracy"]) <= {"upright", "turned", "mirrored"}
    # a whole element can only match where its quarter turns match; the head (above chance on its
    # validation copies) names the known turn more often than a 1-in-4 guess
    assert o["turns_match_known"] >= o["estimate_matches_known"] and o["turns_match_known"] > 0.25
    # A rot4 head turns back by quarter turns only: never a mirror image.
    assert all(v == 0 for k, v in o["turned_back"].items() if k.startswith("hflip"))
    assert plain["orientation"]["by"] == "test_distortions.csv" and "turned_back" not in plain["orientation"]
    assert soft["tta"]["deskew"]["n"] == 17 and soft["tta"]["deskew"]["readable"] > 0
    assert orient["tta"]["deskew"] is None

    def probs(name):
        return pd.read_csv(tmp_path / name / "test_probs.csv").drop(columns="ID").to_numpy()

    # tta.upright_flip and tta=orient_soft + tta.deskew change the predictions.
    assert not np.allclose(probs("orient"), probs("flip")) and not np.allclose(probs("orient"), probs("soft"))
    assert not np.allclose(probs("none"), probs("orient"))


@pytest.mark.slow
def test_highperf_dihedral_head_then_tta_orient_end_to_end(tiny_data, tmp_path, isolated_env):
    """The combination users run: pipeline=highperf (mixup, cutmix, EMA) with dihedral turns and a
    dihedral8 head, then infer with tta=orient on a competition-layout folder, calibrated on OOF rows."""
    run_dir = tmp_path / "run"
    run_cli("docclassify.train", [*TINY, "pipeline=highperf", "augment.orientation=dihedral",
                                  "model.orientation_head=dihedral8", "data=competition", f"data.root={tiny_data}",
                                  "folds.n=2", "trainer.epochs=2", "trainer.amp=none", f"hydra.run.dir={run_dir}"],
            env=isolated_env)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["orientation"]["head"] == "dihedral8"
    # the loss of an 8-way head that starts from chance (ln 8), with mixed (soft) targets
    assert all(abs(f["history"][0]["train_orientation_loss"] - math.log(8)) < 0.5 for f in results["folds"])
    # Robust validation (the default validation=both): the head and accuracy by orientation on the
    # distorted copies too, by the turn/mirror each copy was drawn with.
    robust = results["orientation"]["robust"]
    hits = [f["orientation"]["val_orientation_head_robust"] for f in results["folds"]]  # per fold: [right, n]
    assert robust["head_accuracy"] == pytest.approx(sum(h[0] for h in hits) / sum(h[1] for h in hits))
    assert sum(n for _, n in robust["counts"].values()) == 2 * results["n_oof_rows"]  # 2 copies per row
    assert "val_orientation_accuracy_robust" in results["folds"][0]["history"][-1]
    assert "robust copies" in (run_dir / "report.md").read_text()
    summary = _infer(run_dir, tmp_path / "infer", isolated_env, "tta=orient", "calibrate=true",
                     "data.test_labels=test_labels.csv")
    assert summary["orientation"]["estimator"] == "head" and summary["oof"]["predictions"] == "tta"
    assert len(pd.read_csv(tmp_path / "infer" / "submission.csv")) == summary["n_test"]
    report = (tmp_path / "infer" / "report.md").read_text()  # the test report: by test_distortions.csv
    assert "## Accuracy by orientation" in report and "Turned back (head estimate)" in report


@pytest.mark.slow
def test_a_run_without_orientation_is_untouched(tiny_data, tmp_path):
    """orientation=none and no head: no turned validation pass, no orientation keys, the plain timm
    checkpoint layout."""
    from docclassify.engine.kfold import run_kfold

    cfg = compose_train([*TINY, "data=competition", f"data.root={tiny_data}", "folds.n=2", "folds.run=[0]",
                         "validation=clean"], tmp_path)
    results = run_kfold(cfg)
    assert results["orientation"] is None and results["folds"][0]["orientation"] is None
    assert not [k for k in results["folds"][0]["history"][0] if "orientation" in k]
    meta = read_checkpoint(tmp_path / "checkpoints" / "fold0_best.safetensors")["meta"]
    assert meta["orientation_head"] == "none" and meta["trained_orientations"]["group"] == "none"


def test_a_tied_macro_f1_with_a_better_head_becomes_the_best(tmp_path):
    """A saturated validation macro F1 (1.0 for many epochs) must not freeze the checkpoint at the first
    such epoch while the orientation head keeps learning; without a head, ties keep the earlier epoch."""
    from types import SimpleNamespace

    import torch

    from docclassify.engine.fold import EpochScores, FoldState, keep_best

    job = SimpleNamespace(parts=SimpleNamespace(model=torch.nn.Linear(2, 2), ema=None),
                          meta={"orientation_head": "none"}, best_path=tmp_path / "best.safetensors", fold=0,
                          monitor="clean")

    def scores(f1):
        return EpochScores(np.zeros((2, 2)), None, {"val_monitored": f1, "val_macro_f1": f1,
                                                   "val_macro_f1_robust": None})

    state = FoldState()
    for epoch, (f1, head) in enumerate([(0.9, 0.2), (1.0, 0.3), (1.0, 0.5), (1.0, 0.4), (0.95, 0.9)]):
        keep_best(job, state, epoch, scores(f1), head)
    assert (state.best_epoch, state.best_f1, state.best_tiebreak, state.stale) == (2, 1.0, 0.5, 2)
    plain = FoldState()
    for epoch, f1 in enumerate([0.9, 1.0, 1.0]):
        keep_best(job, plain, epoch, scores(f1))
    assert (plain.best_epoch, plain.stale) == (1, 1)
